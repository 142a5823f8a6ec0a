"""Process groups of the loss, read from Megatron's ``parallel_state`` in exactly one place.

The loss needs three groups:

- ``tp``: tensor-parallel ranks holding the vocabulary shards of the same logits rows;
- ``cp``: context-parallel ranks holding the zigzag chunks of the same sequences;
- ``dp_cp``: data x context parallel ranks, whose valid tokens together form one micro-batch's population.

``None`` means a group of one (nothing to communicate). Tests and non-Megatron callers build ``ParallelGroups``
directly with real ``torch.distributed`` groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed import ProcessGroup

from .collectives import group_rank, group_size

__all__ = ["ParallelGroups"]


@dataclass(frozen=True)
class ParallelGroups:
    tp: ProcessGroup | None = None
    cp: ProcessGroup | None = None
    dp_cp: ProcessGroup | None = None

    @property
    def tp_rank(self) -> int:
        return group_rank(self.tp)

    @property
    def tp_size(self) -> int:
        return group_size(self.tp)

    @property
    def cp_rank(self) -> int:
        return group_rank(self.cp)

    @property
    def cp_size(self) -> int:
        return group_size(self.cp)

    @property
    def dp_cp_size(self) -> int:
        return group_size(self.dp_cp)

    @classmethod
    def from_megatron(cls) -> ParallelGroups:
        """Groups of the current Megatron parallel layout.

        A single process without Megatron gets all-local groups. Several processes without an initialised
        Megatron layout are an error: the loss cannot tell which ranks share vocabulary shards or a micro-batch.
        """
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return cls()
        try:
            from megatron.core import parallel_state as mpu
        except ImportError as err:
            raise RuntimeError(
                "slime_entropy.loss runs in a distributed job but megatron-core is not importable; install "
                "megatron-core, or call slime_entropy.loss.compute_policy_loss with explicit ParallelGroups"
            ) from err
        if not mpu.model_parallel_is_initialized():
            raise RuntimeError(
                "slime_entropy.loss runs in a distributed job but Megatron's parallel_state is not initialised "
                "(megatron.core.parallel_state.initialize_model_parallel); call it first, or call "
                "slime_entropy.loss.compute_policy_loss with explicit ParallelGroups"
            )

        def nontrivial(group: ProcessGroup) -> ProcessGroup | None:
            return group if dist.get_world_size(group) > 1 else None

        return cls(
            tp=nontrivial(mpu.get_tensor_model_parallel_group()),
            cp=nontrivial(mpu.get_context_parallel_group()),
            dp_cp=nontrivial(mpu.get_data_parallel_group(with_context_parallel=True)),
        )
