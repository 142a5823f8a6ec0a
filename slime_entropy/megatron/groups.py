"""The actor's view of Megatron's process groups, read from ``parallel_state`` once and passed down.

It holds the loss's groups (``slime_entropy.parallel.ParallelGroups``: TP, CP, DP x CP, read once here and bound
into the actor's loss) and adds what the actor needs beyond the loss: the pipeline group and stage flags (which ranks
compute losses), the data-parallel group (which ranks must run the same number of micro-batches), and the global
rank for checkpoint bookkeeping.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from slime_entropy import collectives
from slime_entropy.parallel import ParallelGroups

__all__ = ["ActorGroups", "comm_device", "init_default_process_group"]


def init_default_process_group() -> bool:
    """Join the default process group for a command-line tool: torchrun's (``RANK``/``WORLD_SIZE`` set; NCCL with
    the ``LOCAL_RANK`` GPU when CUDA is present, else gloo) or a world of one on a free 127.0.0.1 port. Returns
    False when a group already existed (the caller must then not destroy it), True when this call created it."""
    if dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return True


def comm_device() -> torch.device:
    """Where tensors handed to collectives live: the current GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class ActorGroups:
    """Groups of the current layout; ``None`` = a group of one (no communication)."""

    world: ProcessGroup | None
    pp: ProcessGroup | None
    loss: ParallelGroups
    is_first_stage: bool
    is_last_stage: bool
    global_rank: int

    @property
    def dp_cp(self) -> ProcessGroup | None:
        return self.loss.dp_cp

    @property
    def dp_cp_size(self) -> int:
        return collectives.group_size(self.dp_cp)

    @property
    def dp_cp_rank(self) -> int:
        return collectives.group_rank(self.dp_cp)

    @classmethod
    def from_megatron(cls) -> ActorGroups:
        from megatron.core import parallel_state as mpu

        if not dist.is_initialized():
            return cls(None, None, ParallelGroups(), True, True, 0)

        def nontrivial(group: ProcessGroup) -> ProcessGroup | None:
            return group if dist.get_world_size(group) > 1 else None

        return cls(
            world=nontrivial(dist.group.WORLD),
            pp=nontrivial(mpu.get_pipeline_model_parallel_group()),
            loss=ParallelGroups.from_megatron(),
            is_first_stage=mpu.is_pipeline_first_stage(ignore_virtual=True),
            is_last_stage=mpu.is_pipeline_last_stage(ignore_virtual=True),
            global_rank=dist.get_rank(),
        )

    def barrier(self) -> None:
        """Every rank of the world waits for all (one tiny all-reduce)."""
        collectives.all_reduce_sum_(torch.zeros(1, device=comm_device()), self.world)

    def shared_token(self) -> str:
        """A random hex token that every rank agrees on (global rank 0's, summed with zeros). Collective."""
        local = int.from_bytes(os.urandom(6), "little") if self.global_rank == 0 else 0
        value = torch.tensor([local], dtype=torch.int64, device=comm_device())
        collectives.all_reduce_sum_(value, self.world)
        return f"{int(value.item()):012x}"
