"""Evaluation: avg@n and pass@k of the engines' current weights on eval sets, in training or standalone.

    from slime_entropy.evaluation import Evaluator, add_eval_arguments

    parser = add_eval_arguments(parser)                         # --eval-prompt-data NAME PATH ..., --eval-interval
    evaluator = Evaluator.from_args(args, tokenizer)            # None without --eval-prompt-data
    metrics = evaluator.evaluate(rollout_manager, rollout_id)   # {"eval/aime24": avg@n, "eval/aime24/pass@k": ...}

Module map: ``metrics`` (pass@k unbiased estimator, avg@n; pure), ``arguments`` and ``config`` (flags, frozen
config), ``evaluator`` (generation through the rollout engines, rewards, metrics, ``EngineSession``),
``checkpoints`` (HF / torch_dist detection and conversion), ``cli`` (``python -m slime_entropy.evaluation``).
Names are imported lazily.
"""

from __future__ import annotations

from slime_entropy._lazy import lazy_exports

__all__ = [
    "Evaluator",
    "EvalReport",
    "EngineSession",
    "EvalConfig",
    "add_eval_arguments",
    "pass_at_k",
    "avg_at_n",
    "dataset_pass_at_k",
]

_HOMES = {
    "Evaluator": "evaluator",
    "EvalReport": "evaluator",
    "EngineSession": "evaluator",
    "EvalConfig": "config",
    "add_eval_arguments": "arguments",
    "pass_at_k": "metrics",
    "avg_at_n": "metrics",
    "dataset_pass_at_k": "metrics",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
