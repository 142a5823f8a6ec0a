"""The launch tools' flags: the dry-run planner's (on train.py's parser) and ``python -m
slime_entropy.launch.ray_cluster``'s.

``add_plan_arguments(parser)`` registers ``--dry-run`` and the GPU the plan is checked against
(:func:`slime_entropy.launch.plan.plan_from_args` reads them); ``add_ray_wait_arguments(parser)`` the ``wait``
command of the Slurm job's cluster check. Their configs: ``slime_entropy.launch.config`` (``PlanConfig``,
``ClusterWaitConfig``).
"""

from __future__ import annotations

import argparse

from slime_entropy.launch.config import ClusterWaitConfig, PlanConfig

__all__ = ["add_plan_arguments", "add_ray_wait_arguments"]


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the dry-run planner's flags and return the parser."""
    g = parser.add_argument_group("dry run (slime_entropy.launch.plan)")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="Resolve and check everything (layout, batch arithmetic, MODEL_ARGS vs config.json, memory per GPU), "
        "print the plan and exit without starting anything.",
    )
    g.add_argument(
        "--plan-gpu-memory-gib",
        type=float,
        default=PlanConfig.gpu_memory_gib,
        help="(ours) memory of one GPU the dry-run plan is checked against, in GiB (80 for H100/A100-80GB, 141 for "
        "H200)",
    )
    g.add_argument(
        "--plan-memory-reserve-gib",
        type=float,
        default=PlanConfig.memory_reserve_gib,
        help="(ours) per-GPU allowance for the CUDA context, NCCL, workspaces and fragmentation in the dry-run "
        "estimate, in GiB",
    )
    return parser


def add_ray_wait_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the flags of ``python -m slime_entropy.launch.ray_cluster wait`` and return the parser."""
    parser.add_argument("--address", required=True, help="GCS address host:port")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True)
    parser.add_argument(
        "--timeout", type=float, default=ClusterWaitConfig.timeout_s, help="seconds (default %(default)g)"
    )
    return parser
