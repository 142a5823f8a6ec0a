"""Rollout generation: engines behind SGLang's HTTP API, prompt data, rewards, group sampling, DP batches.

    from slime_entropy.rollout import RolloutManager, add_rollout_arguments

    args = add_rollout_arguments(parser).parse_args()
    with RolloutManager.from_args(args) as rollout:
        result = rollout.generate(rollout_id=0)
        per_rank = rollout.train_data(result, dp_size=4)

Module map: ``arguments`` (flags) and ``config`` (validated configs); ``data`` and ``sample``; ``rewards/`` (answer
extraction, math-verify grading, grading processes, dispatch); ``grouping`` (normalisation, overlong shaping),
``filters`` (dynamic sampling), ``batching`` (slime's rollout dict, Karmarkar-Karp, per-rank split); ``generation``
and ``engine_builtin`` (the CPU engine), ``engine_sglang`` and ``sglang_options`` (SGLang launch),
``engine_process`` (process lifecycle), ``client`` (routing, retries, restarts, disk weight updates),
``weight_sync`` (broadcast weight updates); ``manager`` (the rollout loop).

Names are imported lazily, so importing this package (e.g. in an engine or grading process) costs nothing extra.
"""

from __future__ import annotations

from slime_entropy._lazy import lazy_exports

__all__ = [
    "RolloutManager",
    "RolloutResult",
    "RolloutConfig",
    "add_rollout_arguments",
    "Sample",
    "SampleStatus",
    "EnginePool",
    "WeightBroadcaster",
    "build_train_data",
    "split_train_data",
]

_HOMES = {
    "RolloutManager": "manager",
    "RolloutResult": "manager",
    "RolloutConfig": "config",
    "add_rollout_arguments": "arguments",
    "Sample": "sample",
    "SampleStatus": "sample",
    "EnginePool": "client",
    "WeightBroadcaster": "weight_sync",
    "build_train_data": "batching",
    "split_train_data": "batching",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
