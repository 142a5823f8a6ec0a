"""SGLang engines (GPU machines): placement of engines on GPUs and the ``sglang.launch_server`` command line.

Each engine is one ``python -m sglang.launch_server`` process using ``num_gpus_per_engine`` consecutive GPUs of this
node (``--tp-size``, ``--base-gpu-id``). Engine ``i`` uses GPUs ``[i*tp, (i+1)*tp)``; ``--sglang-<opt>`` flags are
passed through without the prefix. The router is the client (:mod:`slime_entropy.rollout.client`): it spreads
requests over the engines by least outstanding requests and retries a request elsewhere when its engine dies, which
a separate router process could not do with exactly-once bookkeeping.

Nothing here imports SGLang, so the command lines are built and tested on CPU machines.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from slime_entropy.rollout.sglang_options import LAUNCHER_OWNED, to_cli

if TYPE_CHECKING:
    from slime_entropy.rollout.config import EngineConfig

__all__ = ["SGLangEnginePlacement", "plan_sglang_engines", "sglang_server_command", "engines_on_gpus"]


@dataclass(frozen=True)
class SGLangEnginePlacement:
    engine_index: int
    base_gpu_id: int
    tp_size: int


def plan_sglang_engines(
    *,
    num_engines: int,
    num_gpus_per_engine: int,
    num_gpus_per_node: int,
    gpu_ids: Sequence[int] = (),
) -> list[SGLangEnginePlacement]:
    """Place ``num_engines`` engines of ``num_gpus_per_engine`` GPUs each on this node's GPUs, in order.

    ``gpu_ids``: the physical ids the engines may use (e.g. the rollout GPUs of a Ray placement, after the training
    GPUs); default ``0 .. num_gpus_per_node - 1``. Each engine's ids must be consecutive (SGLang takes a base id and
    a TP size).
    """
    ids = list(gpu_ids) or list(range(num_gpus_per_node))
    needed = num_engines * num_gpus_per_engine
    if needed > len(ids):
        available = f"the engines' GPUs {ids}" if gpu_ids else f"--num-gpus-per-node {num_gpus_per_node}"
        raise ValueError(
            f"{num_engines} engines x {num_gpus_per_engine} GPUs = {needed} GPUs exceed {available}; slime_entropy "
            "launches engines on the local node only (start engines on other nodes yourself and pass "
            "--rollout-external-engine-addrs)"
        )
    placements = []
    for i in range(num_engines):
        own = ids[i * num_gpus_per_engine : (i + 1) * num_gpus_per_engine]
        if own != list(range(own[0], own[0] + num_gpus_per_engine)):
            raise ValueError(
                f"engine {i} would get GPUs {own}, which are not consecutive; SGLang needs a base GPU id and "
                "consecutive GPUs per engine"
            )
        placements.append(SGLangEnginePlacement(i, own[0], num_gpus_per_engine))
    return placements


def engines_on_gpus(engine: EngineConfig, gpu_ids: Sequence[int], *, memory_saver: bool) -> EngineConfig:
    """``engine`` as the trainer launches it: on the rollout placement's physical ``gpu_ids`` (empty: the node's
    GPUs from 0) and, when the engines must release their memory between rollouts (colocated offload, as slime),
    with SGLang's ``--enable-memory-saver``."""
    if gpu_ids:
        engine = replace(engine, gpu_ids=tuple(gpu_ids))
    if memory_saver and engine.backend == "sglang" and "enable-memory-saver" not in dict(engine.sglang_options):
        engine = replace(engine, sglang_options=(*engine.sglang_options, ("enable-memory-saver", True)))
    return engine


def sglang_server_command(
    *,
    model_path: str,
    host: str,
    port: int,
    placement: SGLangEnginePlacement,
    nccl_port: int,
    seed: int,
    options: Sequence[tuple[str, Any]] = (),
    python: str = sys.executable,
) -> list[str]:
    """argv of one SGLang server. ``options`` are ``(name, value)`` pass-through pairs (no ``--sglang-`` prefix)."""
    clash = sorted(name for name, _ in options if name in LAUNCHER_OWNED)
    if clash:
        raise ValueError(f"--sglang-{clash[0]} is set by the launcher for each engine; remove it")
    return [
        python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
        "--tp-size",
        str(placement.tp_size),
        "--base-gpu-id",
        str(placement.base_gpu_id),
        "--nccl-port",
        str(nccl_port),
        "--random-seed",
        str(seed + placement.engine_index),
        *to_cli(options),
    ]
