"""The analysis commands' flags (their config: ``slime_entropy.analysis.config``).

``add_analysis_arguments(parser)`` registers ``python -m slime_entropy.analysis``'s own flags (inputs, models,
statistics and report); the command adds the rollout flags (``slime_entropy.rollout.arguments``) for generation and
the scoring temperature. ``add_ablation_arguments(parser)`` registers ``python -m slime_entropy.analysis.ablation``'s.
"""

from __future__ import annotations

import argparse

from slime_entropy.analysis.config import ReportOptions
from slime_entropy.loss.config import LOGPROB_ENTROPY_BACKENDS

__all__ = ["add_analysis_arguments", "add_ablation_arguments", "SCORERS"]

SCORERS = ("megatron", "transformers")


def add_analysis_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the flags of ``python -m slime_entropy.analysis`` beyond the rollout flags and return ``parser``."""
    from slime_entropy.analysis.statistics import SCOPES

    g = parser.add_argument_group("analysis: inputs and outputs")
    g.add_argument("--out-dir", required=True, help="directory for the report (created).")
    g.add_argument("--responses", nargs="+", default=None, metavar="FILE", help="responses files (.jsonl[.gz]).")
    g.add_argument("--rollout-dump", nargs="+", default=None, metavar="PATH", help="the trainer's rollout dumps.")
    g.add_argument("--num-prompts", type=int, default=None, help="with --prompt-data: use only the first N prompts.")
    g.add_argument("--max-responses", type=int, default=None, help="analyse at most this many responses (first).")
    g.add_argument("--save-scored", action="store_true", help="also write scored_responses.jsonl.gz (re-analysable).")
    g.add_argument("--title", default=None, help=f"report title (default: {ReportOptions.title!r}).")

    g = parser.add_argument_group("analysis: models")
    g.add_argument(
        "--torch-dist-checkpoint",
        default=None,
        help="score with this torch_dist checkpoint (a --save root or iter_*/release dir); --hf-checkpoint gives "
        "the architecture and tokenizer.",
    )
    g.add_argument(
        "--compare-checkpoints",
        nargs="+",
        default=None,
        metavar="[NAME=]PATH",
        help="more models (HF dirs or torch_dist checkpoints, e.g. training steps in order) scored on the same "
        "responses; reports the top-rho position overlap vs the reference and vs the previous one.",
    )
    g.add_argument(
        "--scorer",
        choices=SCORERS,
        default="megatron",
        help="how torch_dist checkpoints are scored: megatron (the trainer's model and kernel) or transformers "
        "(converted to HF first); HF checkpoints always use transformers.",
    )
    g.add_argument(
        "--megatron-args",
        default="",
        help="the trainer's Megatron flags that shape the model, e.g. '--bf16 --make-vocab-size-divisible-by 128' "
        "(also passed to the torch_dist -> HF converter).",
    )
    g.add_argument(
        "--reference-name",
        default=None,
        help="name of the scoring model in the report (default: its directory name), e.g. 'base'.",
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --hf-checkpoint).")
    g.add_argument("--rescore", action="store_true", help="score with the model even if the input has entropies.")
    g.add_argument("--device", default=None, help="transformers scorer device (default: cuda if available).")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    g.add_argument(
        "--logprob-entropy-backend",
        choices=LOGPROB_ENTROPY_BACKENDS,
        default=None,
        help="fused op backend of the transformers scorer (default: auto on CUDA, eager on CPU).",
    )

    g = parser.add_argument_group("analysis: statistics and report")
    g.add_argument(
        "--rho",
        type=float,
        default=ReportOptions.rho,
        help="top fraction kept, as --entropy-percentile (%(default)g).",
    )
    g.add_argument(
        "--scope",
        choices=SCOPES,
        default=ReportOptions.scope,
        help="population of the top-rho threshold: all analysed tokens, or each response separately.",
    )
    g.add_argument(
        "--num-top-tokens",
        type=int,
        default=ReportOptions.num_top_tokens,
        help="rows of the token tables / words per cloud.",
    )
    g.add_argument(
        "--html-max-responses",
        type=int,
        default=ReportOptions.html_max_responses,
        help="responses shown in report.html.",
    )
    g.add_argument(
        "--html-max-tokens-per-response",
        type=int,
        default=ReportOptions.html_max_tokens_per_response,
        help="tokens shown per response.",
    )
    return parser


def add_ablation_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the flags of ``python -m slime_entropy.analysis.ablation`` and return ``parser``."""
    parser.add_argument("--out-dir", required=True, help="one run directory per (rho, seed) and the results.")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0], help="kept fractions.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="--seed and --rollout-seed values.")
    parser.add_argument("--train-script", default="train.py", help="the trainer entry point (default: train.py).")
    parser.add_argument("--run-timeout", type=float, default=7200.0, help="seconds one training run may take.")
    parser.add_argument("--window", type=int, default=5, help="rollouts averaged for the first/last reward.")
    parser.add_argument("--smooth", type=int, default=5, help="trailing mean over this many rollouts in the plot.")
    parser.add_argument("--collect-only", action="store_true", help="do not train; tabulate the runs that exist.")
    return parser
