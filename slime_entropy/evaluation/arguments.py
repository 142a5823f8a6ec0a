"""``add_eval_arguments(parser) -> parser``: evaluation flags, with slime's names and defaults.

slime's evaluation flags keep slime's meaning: ``--eval-prompt-data NAME PATH [NAME PATH ...]``, ``--eval-interval``
(rollouts between evaluations), ``--skip-eval-before-train``, ``--n-samples-per-eval-prompt`` (default 1), and the
overrides ``--eval-temperature``, ``--eval-top-p``, ``--eval-top-k``, ``--eval-max-response-len``,
``--eval-input-key``, ``--eval-label-key``, each defaulting to its rollout counterpart. Flags this project adds are
marked "(ours)". The evaluation package owns every ``--eval-*`` flag and ``--n-samples-per-eval-prompt``; they are
for our trainer and ``python -m slime_entropy.evaluation`` (inside a slime install, slime registers its own).
:func:`add_checkpoint_arguments` registers the standalone command's checkpoint flags.

Turn the namespace into a validated :class:`~slime_entropy.evaluation.config.EvalConfig` once with
``EvalConfig.from_args(args)``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_eval_arguments", "add_checkpoint_arguments"]


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the evaluation flags on ``parser`` and return it (slime's ``add_custom_arguments`` contract)."""
    g = parser.add_argument_group("evaluation (avg@k, pass@k)")
    g.add_argument(
        "--eval-prompt-data",
        type=str,
        nargs="+",
        default=None,
        metavar="NAME PATH",
        help="evaluation sets as name/path pairs, e.g. 'aime24 /data/aime-2024.jsonl math500 /data/math500.jsonl' "
        "(.jsonl, .json or .parquet; same keys as --prompt-data unless --eval-input-key/--eval-label-key). Each is "
        "logged as eval/NAME (avg@n) and eval/NAME/pass@k.",
    )
    g.add_argument(
        "--eval-interval",
        type=int,
        default=None,
        help="evaluate every this many rollouts (after rollout i when (i + 1) %% interval == 0, and at each epoch "
        "end) and once before training unless --skip-eval-before-train.",
    )
    g.add_argument(
        "--skip-eval-before-train",
        action="store_true",
        default=False,
        help="do not evaluate the initial weights before the first rollout.",
    )
    g.add_argument("--eval-input-key", type=str, default=None, help="prompt field of the eval files (--input-key).")
    g.add_argument("--eval-label-key", type=str, default=None, help="label field of the eval files (--label-key).")
    g.add_argument(
        "--n-samples-per-eval-prompt",
        type=int,
        default=1,
        help="responses per eval prompt, n: avg@n is their mean correctness, pass@k uses k <= n (avg@32 in the "
        "paper).",
    )
    g.add_argument(
        "--eval-temperature",
        type=float,
        default=None,
        help="eval sampling temperature, 0 = greedy (default: --rollout-temperature).",
    )
    g.add_argument("--eval-top-p", type=float, default=None, help="eval nucleus sampling mass (rollout's).")
    g.add_argument("--eval-top-k", type=int, default=None, help="eval top-k, -1 = off (rollout's).")
    g.add_argument(
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


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``python -m slime_entropy.evaluation`` beyond the rollout and evaluation flags: which weights to
    evaluate and where the metrics go."""
    g = parser.add_argument_group("checkpoint")
    g.add_argument(
        "--torch-dist-checkpoint",
        default=None,
        help="evaluate this torch_dist checkpoint (a --save root or an iter_*/release directory) instead of the "
        "--hf-checkpoint weights; it is converted to HF first (architecture and tokenizer from --hf-checkpoint).",
    )
    g.add_argument(
        "--convert-args",
        default="",
        help="extra flags for the torch_dist -> HF converter that must match training, e.g. "
        "'--make-vocab-size-divisible-by 1'.",
    )
    g.add_argument("--convert-timeout", type=float, default=3600.0, help="seconds the conversion may take.")
    g.add_argument(
        "--rollout-id",
        type=int,
        default=0,
        help="label of this evaluation in the --eval-output-dir file names (e.g. the training step).",
    )
    g.add_argument("--metrics-json", default=None, help="write the metrics to this JSON file.")
    return parser
