"""``add_eval_arguments(parser) -> parser``: evaluation flags, with slime's names and defaults.

slime's evaluation flags keep slime's meaning: ``--eval-prompt-data NAME PATH [NAME PATH ...]``, ``--eval-interval``
(rollouts between evaluations), ``--skip-eval-before-train``, ``--n-samples-per-eval-prompt`` (default 1), and the
overrides ``--eval-temperature``, ``--eval-top-p``, ``--eval-top-k``, ``--eval-max-response-len``,
``--eval-input-key``, ``--eval-label-key``, each defaulting to its rollout counterpart. Flags this project adds are
marked "(ours)". A flag that another provider already registered (Megatron's ``--eval-interval``, or slime's own
evaluation flags inside a slime install) is left as it is, so the order of providers does not matter.

Turn the namespace into a validated :class:`~slime_entropy.evaluation.config.EvalConfig` once with
``EvalConfig.from_args(args)``.
"""

from __future__ import annotations

import argparse

from slime_entropy.loss.arguments import has_option

__all__ = ["add_eval_arguments"]


def _add(group, parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    if not has_option(parser, flag):
        group.add_argument(flag, **kwargs)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the evaluation flags on ``parser`` and return it (slime's ``add_custom_arguments`` contract)."""
    g = parser.add_argument_group("evaluation (avg@k, pass@k)")
    _add(
        g,
        parser,
        "--eval-prompt-data",
        type=str,
        nargs="+",
        default=None,
        metavar="NAME PATH",
        help="evaluation sets as name/path pairs, e.g. 'aime24 /data/aime-2024.jsonl math500 /data/math500.jsonl' "
        "(.jsonl, .json or .parquet; same keys as --prompt-data unless --eval-input-key/--eval-label-key). Each is "
        "logged as eval/NAME (avg@n) and eval/NAME/pass@k.",
    )
    _add(
        g,
        parser,
        "--eval-interval",
        type=int,
        default=None,
        help="evaluate every this many rollouts (after rollout i when (i + 1) %% interval == 0, and at each epoch "
        "end) and once before training unless --skip-eval-before-train.",
    )
    _add(
        g,
        parser,
        "--skip-eval-before-train",
        action="store_true",
        default=False,
        help="do not evaluate the initial weights before the first rollout.",
    )
    _add(g, parser, "--eval-input-key", type=str, default=None, help="prompt field of the eval files (--input-key).")
    _add(g, parser, "--eval-label-key", type=str, default=None, help="label field of the eval files (--label-key).")
    _add(
        g,
        parser,
        "--n-samples-per-eval-prompt",
        type=int,
        default=1,
        help="responses per eval prompt, n: avg@n is their mean correctness, pass@k uses k <= n (avg@32 in the "
        "paper).",
    )
    _add(
        g,
        parser,
        "--eval-temperature",
        type=float,
        default=None,
        help="eval sampling temperature, 0 = greedy (default: --rollout-temperature).",
    )
    _add(g, parser, "--eval-top-p", type=float, default=None, help="eval nucleus sampling mass (rollout's).")
    _add(g, parser, "--eval-top-k", type=int, default=None, help="eval top-k, -1 = off (rollout's).")
    _add(
        g,
        parser,
        "--eval-max-response-len",
        type=int,
        default=None,
        help="max new tokens per eval response (--rollout-max-response-len).",
    )
    g.add_argument(
        "--eval-pass-k",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="(ours) k values of the logged pass@k, each <= --n-samples-per-eval-prompt (default: 1, the powers of "
        "two below n, and n).",
    )
    g.add_argument(
        "--eval-correct-threshold",
        type=float,
        default=1.0,
        help="(ours) a response counts as correct when its scalar reward (after --reward-key) is >= this; 1.0 "
        "suits the rule-based rewards (math/deepscaler score 1/0, dapo's 'score' +1/-1).",
    )
    g.add_argument(
        "--eval-output-dir",
        type=str,
        default=None,
        help="(ours) write every evaluated response (tokens, text, reward, correctness, log-probs) to "
        "DIR/eval_<NAME>_rollout<ID>.jsonl and the metrics to DIR/eval_rollout<ID>.json; the jsonl is an input of "
        "'python -m slime_entropy.analysis --responses'.",
    )
    return parser
