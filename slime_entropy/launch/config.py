"""Frozen configs of the launch tools, built from the flags ``slime_entropy.launch.arguments`` registers.

- :class:`PlanConfig`: the GPU the dry-run plan is checked against (``--plan-gpu-memory-gib``,
  ``--plan-memory-reserve-gib``); a parser without those flags (slime's own, or a tool's) gets the defaults;
- :class:`ClusterWaitConfig`: what ``python -m slime_entropy.launch.ray_cluster wait`` waits for.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from slime_entropy.launch.memory import DEFAULT_GPU_MEMORY_GIB, DEFAULT_RESERVE_GIB, GiB
from slime_entropy.problems import Problems

__all__ = ["PlanConfig", "ClusterWaitConfig"]


@dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """One GPU of the planned run: its memory and the per-GPU allowance the estimate keeps free."""

    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB
    memory_reserve_gib: float = DEFAULT_RESERVE_GIB

    def __post_init__(self) -> None:
        problems = Problems()
        problems.check(self.gpu_memory_gib > 0, f"--plan-gpu-memory-gib must be > 0, got {self.gpu_memory_gib:g}")
        problems.check(
            0 <= self.memory_reserve_gib < self.gpu_memory_gib,
            f"--plan-memory-reserve-gib must lie in [0, --plan-gpu-memory-gib {self.gpu_memory_gib:g}), got "
            f"{self.memory_reserve_gib:g}",
        )
        problems.raise_if_any("dry-run flags")

    @property
    def gpu_memory_bytes(self) -> int:
        return int(self.gpu_memory_gib * GiB)

    @property
    def memory_reserve_bytes(self) -> int:
        return int(self.memory_reserve_gib * GiB)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PlanConfig:
        """The plan flags where the parser has them (``add_plan_arguments``), else the defaults."""
        given = {
            "gpu_memory_gib": getattr(args, "plan_gpu_memory_gib", None),
            "memory_reserve_gib": getattr(args, "plan_memory_reserve_gib", None),
        }
        return cls(**{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True, kw_only=True)
class ClusterWaitConfig:
    """The Ray cluster a Slurm job waits for before it starts the trainer."""

    address: str
    nodes: int
    gpus_per_node: int
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        problems = Problems()
        problems.check(self.nodes >= 1, f"--nodes must be >= 1, got {self.nodes}")
        problems.check(self.gpus_per_node >= 0, f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        problems.check(self.timeout_s > 0, f"--timeout must be > 0 seconds, got {self.timeout_s:g}")
        problems.check(":" in self.address, f"--address must be host:port (Ray's GCS address), got {self.address!r}")
        problems.raise_if_any("cluster wait flags")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClusterWaitConfig:
        return cls(address=args.address, nodes=args.nodes, gpus_per_node=args.gpus_per_node, timeout_s=args.timeout)
