"""``add_rollout_arguments(parser) -> parser``: the rollout flags, with slime's names and defaults.

Flags that also exist in slime keep slime's name, type and default. Flags this project adds are marked "(ours)" in
their help. Turn the parsed namespace into validated config objects once, with
:meth:`slime_entropy.rollout.config.RolloutConfig.from_args`.

``--hf-checkpoint``, ``--rollout-temperature``, ``--rollout-num-gpus`` and ``--num-gpus-per-node`` are shared with
the training side (``slime_entropy.megatron.arguments``, ``slime_entropy.loss.arguments``); they are added only if the
parser does not have them yet, so the order in which argument providers run does not matter.
"""

from __future__ import annotations

import argparse
import json

from slime_entropy.loss.arguments import has_option
from slime_entropy.rollout.fr3e_arguments import add_fr3e_arguments
from slime_entropy.rollout.sglang_options import register_passthrough

__all__ = ["add_rollout_arguments"]


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout engines")
    if not has_option(parser, "--hf-checkpoint"):
        g.add_argument(
            "--hf-checkpoint",
            type=str,
            default=None,
            help="HF checkpoint directory: engine initial weights and the tokenizer.",
        )
    if not has_option(parser, "--rollout-num-gpus"):
        g.add_argument("--rollout-num-gpus", type=int, default=None, help="GPUs for SGLang engines in total.")
    if not has_option(parser, "--num-gpus-per-node"):
        g.add_argument("--num-gpus-per-node", type=int, default=8, help="GPUs per node.")
    g.add_argument(
        "--rollout-backend",
        choices=("auto", "sglang", "builtin"),
        default="auto",
        help="(ours) auto: SGLang when it is importable and a CUDA GPU is visible, else the built-in "
        "transformers engine (CPU/CI). Both speak SGLang's HTTP API.",
    )
    g.add_argument("--rollout-num-gpus-per-engine", type=int, default=1, help="GPUs (TP size) per SGLang engine.")
    g.add_argument(
        "--rollout-num-engines",
        type=int,
        default=1,
        help="(ours) number of built-in engine processes (SGLang: rollout-num-gpus / gpus-per-engine).",
    )
    g.add_argument(
        "--rollout-external-engine-addrs",
        type=str,
        nargs="+",
        default=None,
        help="host:port of already running engines to use instead of launching any (no restarts).",
    )
    g.add_argument(
        "--sglang-router-ip",
        type=str,
        default=None,
        help="address of an already running SGLang router; with --sglang-router-port, all requests go to it "
        "(like --rollout-external-engine-addrs with one address; the router owns engine health).",
    )
    g.add_argument("--sglang-router-port", type=int, default=None, help="port of that router.")
    g.add_argument(
        "--rollout-engine-host",
        type=str,
        default="127.0.0.1",
        help="(ours) interface the launched engines bind to; 127.0.0.1 keeps them private.",
    )
    g.add_argument(
        "--sglang-server-concurrency", type=int, default=512, help="max in-flight /generate requests per engine."
    )
    g.add_argument(
        "--sglang-router-request-timeout-secs",
        type=int,
        default=14400,
        help="timeout of one /generate request, in seconds.",
    )
    g.add_argument(
        "--rollout-health-check-interval",
        type=float,
        default=30.0,
        help="seconds between /health probes of the engines during a rollout (failed engines are restarted).",
    )
    g.add_argument(
        "--rollout-health-check-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for an engine's /health answer before it counts as down.",
    )
    g.add_argument(
        "--rollout-engine-startup-timeout",
        type=float,
        default=900.0,
        help="(ours) seconds an engine may take to become healthy after (re)start.",
    )
    g.add_argument(
        "--rollout-max-request-retries",
        type=int,
        default=3,
        help="(ours) times one request is retried after engine failures before the rollout fails.",
    )
    g.add_argument(
        "--builtin-engine-max-batch-size",
        type=int,
        default=64,
        help="(ours) built-in engine: most sequences generated together in one batch.",
    )
    g.add_argument(
        "--builtin-engine-num-threads",
        type=int,
        default=None,
        help="(ours) built-in engine: torch CPU threads per engine (default: cores / engines).",
    )
    register_passthrough(parser)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout sampling")
    if not has_option(parser, "--rollout-temperature"):  # also registered by slime_entropy.loss.arguments (the loss)
        g.add_argument(
            "--rollout-temperature",
            type=float,
            default=1.0,
            help="sampling temperature; the trainer also divides its logits by it.",
        )
    g.add_argument("--rollout-top-p", type=float, default=1.0, help="nucleus sampling mass.")
    g.add_argument("--rollout-top-k", type=int, default=-1, help="top-k sampling; -1 disables it.")
    g.add_argument("--rollout-max-response-len", type=int, default=None, help="max new tokens per response.")
    g.add_argument(
        "--rollout-max-context-len",
        type=int,
        default=None,
        help="cap on prompt + response tokens (max new tokens shrink for long prompts).",
    )
    g.add_argument(
        "--rollout-max-prompt-len",
        type=int,
        default=None,
        help="drop prompts longer than this many tokens when loading the data.",
    )
    g.add_argument("--rollout-stop", type=str, nargs="+", default=None, help="stop strings.")
    g.add_argument(
        "--rollout-stop-token-ids",
        type=int,
        nargs="+",
        default=None,
        help="stop token ids (in addition to the tokenizer's EOS).",
    )
    g.add_argument(
        "--rollout-skip-special-tokens",
        action="store_true",
        default=False,
        help="drop special tokens from the response text (token ids are unaffected).",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout data")
    g.add_argument("--prompt-data", type=str, default=None, help="prompts: .jsonl, .json or .parquet.")
    g.add_argument("--input-key", type=str, default="input", help="field holding the prompt (text or messages).")
    g.add_argument("--label-key", type=str, default=None, help="field holding the ground-truth answer.")
    g.add_argument("--metadata-key", type=str, default="metadata", help="field holding per-prompt metadata.")
    g.add_argument(
        "--apply-chat-template",
        action="store_true",
        default=False,
        help="render prompts with the tokenizer's chat template (add_generation_prompt=True).",
    )
    g.add_argument(
        "--apply-chat-template-kwargs",
        type=_json_object,
        default={},
        help="JSON object of extra chat-template arguments, e.g. '{\"enable_thinking\": false}'.",
    )
    g.add_argument("--rollout-shuffle", action="store_true", default=False, help="shuffle prompts every epoch.")
    g.add_argument(
        "--rollout-seed",
        type=int,
        default=42,
        help="seed of the prompt shuffle (epoch e uses seed + e) and of engine sampling.",
    )
    g.add_argument("--num-rollout", type=int, default=None, help="rollout steps; default from --num-epoch.")
    g.add_argument(
        "--num-epoch",
        type=int,
        default=None,
        help="epochs; num_rollout = num_epoch * len(data) // rollout_batch_size when --num-rollout is unset.",
    )


def _add_reward_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout rewards")
    g.add_argument(
        "--rm-type", type=str, default=None, help="rule-based reward: deepscaler, math, dapo, or boxed_<type>."
    )
    g.add_argument(
        "--custom-rm-path",
        type=str,
        default=None,
        help="pkg.module.fn scoring one sample, fn(args, sample) (may be async).",
    )
    g.add_argument(
        "--group-rm",
        action="store_true",
        default=False,
        help="call --custom-rm-path once per prompt group: fn(args, samples) -> list.",
    )
    g.add_argument(
        "--reward-key",
        type=str,
        default=None,
        help="key of the scalar in dict rewards (e.g. 'score' for --rm-type dapo).",
    )
    g.add_argument(
        "--reward-timeout",
        type=float,
        default=10.0,
        help="(ours) seconds one sample's reward may take; beyond it the reward is 0 (counted).",
    )
    g.add_argument(
        "--reward-num-workers", type=int, default=2, help="(ours) grading processes for rule-based rewards."
    )


def _add_group_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout groups, advantages and batching")
    g.add_argument(
        "--rollout-batch-size",
        type=int,
        default=None,
        help="prompts per rollout (required); a rollout yields rollout_batch_size * n_samples_per_prompt samples.",
    )
    g.add_argument("--n-samples-per-prompt", type=int, default=1, help="responses per prompt (group size G).")
    g.add_argument(
        "--disable-rewards-normalization",
        action="store_false",
        dest="rewards_normalization",
        help="use raw rewards (no group baseline).",
    )
    g.add_argument(
        "--disable-grpo-std-normalization",
        action="store_false",
        dest="grpo_std_normalization",
        help="subtract the group mean but do not divide by the group std (Dr. GRPO).",
    )
    g.add_argument(
        "--over-sampling-batch-size",
        type=int,
        default=None,
        help="prompts submitted per sampling round under dynamic sampling (default: rollout batch size).",
    )
    g.add_argument(
        "--dynamic-sampling-filter-path",
        type=str,
        default=None,
        help="pkg.module.fn(args, samples) -> bool deciding whether a group is kept, e.g. "
        "slime_entropy.rollout.filters.check_reward_nonzero_std (DAPO).",
    )
    g.add_argument(
        "--dynamic-sampling-max-rounds",
        type=int,
        default=10,
        help="(ours) give up after this many sampling rounds without enough kept groups.",
    )
    g.add_argument(
        "--overlong-buffer-len",
        type=int,
        default=0,
        help="(ours) DAPO overlong shaping: penalise responses longer than max_response_len - this; 0 = off.",
    )
    g.add_argument(
        "--overlong-penalty-factor",
        type=float,
        default=1.0,
        help="(ours) DAPO overlong shaping: penalty at max_response_len.",
    )
    g.add_argument(
        "--balance-data",
        action="store_true",
        default=False,
        help="give each DP rank whole groups, balanced by token count (Karmarkar-Karp).",
    )


def add_rollout_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the rollout flags on ``parser`` and return it (slime's ``add_custom_arguments`` contract)."""
    _add_engine_arguments(parser)
    _add_sampling_arguments(parser)
    _add_data_arguments(parser)
    _add_reward_arguments(parser)
    _add_group_arguments(parser)
    add_fr3e_arguments(parser)
    return parser
