"""Weights from the trainer to the engines by broadcast: SGLang's ``/init_weights_update_group`` +
``/update_weights_from_distributed`` protocol, both sides.

Disk updates (HF safetensors -> ``/update_weights_from_disk``) live in
:meth:`slime_entropy.rollout.client.EnginePool.update_weights_from_disk`; this module is the NCCL path used when
trainer and engines are on GPUs (SGLang), which the built-in engine also implements with the gloo backend so the
whole protocol runs in CPU tests.

Trainer side (rank 0 of a dedicated group; every engine rank joins at ``rank_offset``)::

    broadcaster = WeightBroadcaster(pool, master_address=ip, master_port=port, backend="nccl",
                                    ranks_per_engine=tp_size)
    await broadcaster.init_group()                              # POST /init_weights_update_group to every engine
    await broadcaster.update(model.named_parameters(), weight_version="3")
    # per bucket: POST /update_weights_from_distributed {names, dtypes, shapes, group_name, flush_cache,
    # weight_version} to every engine, while rank 0 broadcasts each tensor in order

Call shapes follow SGLang's ``InitWeightsUpdateGroupReqInput`` (``master_address``, ``master_port``,
``rank_offset``, ``world_size``, ``group_name``, ``backend``) and ``UpdateWeightsFromDistributedReqInput``
(``names``, ``dtypes`` like ``"bfloat16"``, ``shapes``, ``group_name``, ``flush_cache``, ``weight_version``).

The group is built like SGLang builds it (``init_custom_process_group``): a TCP rendezvous at
``master_address:master_port`` with the trainer as rank 0, a ``PrefixStore`` named after the group, and
``torch.distributed``'s process-group helper, so it coexists with the trainer's default (Megatron) group.
The helper is private torch API (as in SGLang, verl, OpenRLHF); it is checked against torch 2.13.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch

from slime_entropy import collectives
from slime_entropy.rollout.client import EnginePool

__all__ = [
    "WeightBroadcaster",
    "init_custom_process_group",
    "engine_join_update_group",
    "engine_receive_broadcast",
    "DEFAULT_GROUP_NAME",
]

DEFAULT_GROUP_NAME = "weight_update_group"


def init_custom_process_group(
    *,
    backend: str,
    master_address: str,
    master_port: int,
    world_size: int,
    rank: int,
    group_name: str,
    timeout_s: float = 600.0,
):
    """A process group of its own (not the default one), rendezvousing over TCP with rank 0 as the store server."""
    from torch.distributed.distributed_c10d import PrefixStore, _new_process_group_helper, _world, rendezvous

    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(
        rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout)
    )
    store.set_timeout(timeout)
    created = _new_process_group_helper(
        world_size, rank, [], backend, PrefixStore(group_name, store), group_name=group_name, timeout=timeout
    )
    group = created[0] if isinstance(created, tuple) else created
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


class WeightBroadcaster:
    """Trainer side: owns rank 0 of the update group and drives the engines over HTTP."""

    def __init__(
        self,
        pool: EnginePool,
        *,
        master_address: str,
        master_port: int,
        backend: str = "nccl",
        group_name: str = DEFAULT_GROUP_NAME,
        ranks_per_engine: int = 1,
        timeout_s: float = 600.0,
    ):
        self.pool = pool
        self.master_address = master_address
        self.master_port = master_port
        self.backend = backend
        self.group_name = group_name
        self.ranks_per_engine = ranks_per_engine
        self.timeout_s = timeout_s
        self.group = None
        self._engine_starts: list[int] = []

    @property
    def world_size(self) -> int:
        return 1 + self.ranks_per_engine * len(self._slots())

    def _slots(self):
        return self.pool.live_slots()

    def init_group_bodies(self) -> list[dict[str, Any]]:
        """The ``/init_weights_update_group`` body for each live engine, in engine order."""
        return [
            {
                "master_address": self.master_address,
                "master_port": self.master_port,
                "rank_offset": 1 + i * self.ranks_per_engine,
                "world_size": self.world_size,
                "group_name": self.group_name,
                "backend": self.backend,
            }
            for i in range(len(self._slots()))
        ]

    def update_body(self, names, dtypes, shapes, *, weight_version: str | None, flush_cache: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "names": list(names),
            "dtypes": list(dtypes),
            "shapes": [list(s) for s in shapes],
            "group_name": self.group_name,
            "flush_cache": flush_cache,
        }
        if weight_version is not None:
            body["weight_version"] = weight_version
        return body

    async def init_group(self) -> None:
        """Create the group: rank 0 here, the engines through ``/init_weights_update_group`` (concurrently)."""
        join = asyncio.to_thread(
            init_custom_process_group,
            backend=self.backend,
            master_address=self.master_address,
            master_port=self.master_port,
            world_size=self.world_size,
            rank=0,
            group_name=self.group_name,
            timeout_s=self.timeout_s,
        )
        post = self.pool.post_each("/init_weights_update_group", self.init_group_bodies(), timeout=self.timeout_s)
        self.group, _ = await asyncio.gather(join, post)
        self._engine_starts = self._starts()

    def _starts(self) -> list[int]:
        return [s.num_restarts for s in self._slots()]

    async def update(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        *,
        weight_version: str | None = None,
        flush_cache: bool = True,
    ) -> None:
        """Broadcast one bucket of tensors (HF names) to every engine; engines load them into their model."""
        if self.group is None:
            raise RuntimeError("call init_group() first")
        if self._starts() != self._engine_starts:
            raise RuntimeError(
                "an engine was restarted (or lost) since init_group(): the broadcast group no longer has all its "
                "members; create a new WeightBroadcaster (new port and group name) and call init_group(), or update "
                "from disk"
            )
        named = [(n, t.detach().contiguous()) for n, t in named_tensors]
        body = self.update_body(
            [n for n, _ in named],
            [_dtype_name(t.dtype) for _, t in named],
            [tuple(t.shape) for _, t in named],
            weight_version=weight_version,
            flush_cache=flush_cache,
        )

        def send() -> None:
            for _, tensor in named:
                collectives.broadcast_(tensor, 0, self.group)

        post = self.pool.post_each(
            "/update_weights_from_distributed", [body] * len(self._slots()), timeout=self.timeout_s
        )
        await asyncio.gather(asyncio.to_thread(send), post)
        self.pool.mark_distributed_update()


# ----- engine side (built-in engine) -----
def engine_join_update_group(body: dict[str, Any]):
    """Handle ``/init_weights_update_group`` in the built-in engine (one rank per engine)."""
    backend = body.get("backend", "nccl")
    if backend == "nccl" and not torch.cuda.is_available():
        backend = "gloo"  # the CPU engine joins NCCL-shaped requests over gloo (tests, CPU-only setups)
    return init_custom_process_group(
        backend=backend,
        master_address=body["master_address"],
        master_port=int(body["master_port"]),
        world_size=int(body["world_size"]),
        rank=int(body["rank_offset"]),
        group_name=body.get("group_name", DEFAULT_GROUP_NAME),
    )


def engine_receive_broadcast(model: torch.nn.Module, group, body: dict[str, Any]) -> int:
    """Handle ``/update_weights_from_distributed``: receive each tensor from rank 0 and copy it into ``model``."""
    names, dtypes, shapes = body["names"], body["dtypes"], body["shapes"]
    if not len(names) == len(dtypes) == len(shapes):
        raise ValueError("names, dtypes and shapes must have the same length")
    params = model.state_dict()
    received = []
    for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
        buffer = torch.empty(tuple(shape), dtype=_dtype_from_name(dtype))
        collectives.broadcast_(buffer, 0, group)  # every tensor is received, even a bad one, to stay in step
        received.append((name, buffer))
    for name, buffer in received:
        if name not in params:
            raise ValueError(f"unknown parameter {name!r}")
        if tuple(buffer.shape) != tuple(params[name].shape):
            raise ValueError(f"{name}: shape {tuple(buffer.shape)} != {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, buffer in received:
            params[name].copy_(buffer.to(params[name].dtype))
    return len(received)
