"""``add_rollout_arguments(parser) -> parser``: the rollout flags, with slime's names and defaults (their frozen
configs: ``slime_entropy.rollout.config``).

Flags that also exist in slime keep slime's name, type and default. Flags this project adds are marked "(ours)" in
their help. Turn the parsed namespace into validated config objects once, with
:meth:`slime_entropy.rollout.config.RolloutConfig.from_args`.

The rollout package owns ``--hf-checkpoint`` (the engines load the model from it) and ``--rollout-temperature`` (the
engines sample with it); the Megatron actor and the loss read them from the composed namespace. A parser without the
rollout flags that needs one of them registers it from here: :func:`add_hf_checkpoint_argument`,
:func:`add_rollout_temperature_argument`.
"""

from __future__ import annotations

import argparse
import json

from slime_entropy.rollout.config import ANCHOR_SCORES, MODULATIONS, NORMALIZATION_SCOPES, Fr3eConfig
from slime_entropy.rollout.sglang_options import register_passthrough

__all__ = [
    "add_rollout_arguments",
    "add_hf_checkpoint_argument",
    "add_rollout_temperature_argument",
    "add_fr3e_arguments",
    "add_smoke_arguments",
]


def add_hf_checkpoint_argument(parser) -> None:
    """Register ``--hf-checkpoint`` on ``parser`` (or an argument group), for parsers without the rollout flags."""
    parser.add_argument(
        "--hf-checkpoint",
        type=str,
        default=None,
        help="HF checkpoint directory: the model's architecture, tokenizer and initial weights (engines and "
        "training).",
    )


def add_rollout_temperature_argument(parser) -> None:
    """Register ``--rollout-temperature`` on ``parser`` (or an argument group), for parsers without the rollout
    flags (the loss reads it: the trainer divides its logits by it). Checked (> 0) by the configs that use it."""
    parser.add_argument(
        "--rollout-temperature",
        type=float,
        default=1.0,
        help="sampling temperature; the trainer also divides its logits by it.",
    )


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout engines")
    add_hf_checkpoint_argument(g)
    g.add_argument("--rollout-num-gpus", type=int, default=None, help="GPUs for SGLang engines in total.")
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
    add_rollout_temperature_argument(g)
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


def add_fr3e_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the FR3E mode's flags (``--fr3e``, ``--fr3e-*``; resolved by ``Fr3eConfig.from_args``)."""
    g = parser.add_argument_group("FR3E: entropy-anchored partial rollouts (arXiv 2507.07017; docs/fr3e.md)")
    g.add_argument(
        "--fr3e",
        action="store_true",
        help="(ours) After the base rollout, continue each explored base trajectory from its K most uncertain "
        "positions with M partial rollouts each; V(S_j) = fraction correct; per-state group-relative advantages "
        "modulated by exp(-dV). The partial rollouts join the training batch.",
    )
    g.add_argument(
        "--fr3e-num-anchors",
        type=int,
        default=None,
        help=f"K anchors (states) per explored trajectory (default {Fr3eConfig.num_anchors}).",
    )
    g.add_argument(
        "--fr3e-rollouts-per-anchor",
        type=int,
        default=None,
        help=f"M partial rollouts from each state (default {Fr3eConfig.rollouts_per_anchor}).",
    )
    g.add_argument(
        "--fr3e-base-per-prompt",
        type=int,
        default=None,
        help="B base trajectories explored per prompt, correct and wrong ones alternately (default "
        f"{Fr3eConfig.base_per_prompt}; the released code explores one correct and one wrong: 2).",
    )
    g.add_argument(
        "--fr3e-anchor-score",
        choices=ANCHOR_SCORES,
        default=None,
        help="entropy: the full-distribution entropy from the trainer's old-policy pass; surprisal: -log p of the "
        "sampled token from the engine (the released code's proxy, no extra pass). "
        f"Default: {Fr3eConfig.anchor_score}.",
    )
    g.add_argument(
        "--fr3e-modulation",
        choices=MODULATIONS,
        default=None,
        help=f"exp: advantages of state j times exp(-dV_j); none: unmodulated. Default: {Fr3eConfig.modulation}.",
    )
    g.add_argument(
        "--fr3e-sharpen-power",
        type=float,
        default=None,
        help="Sharpen dV before the exponential: sign(d)|d|^p / sum|d|^p (the released code's option, p = 1.5). "
        "Default: off.",
    )
    g.add_argument(
        "--fr3e-normalization-scope",
        choices=NORMALIZATION_SCOPES,
        default=None,
        help="state: rewards normalised within each state's group; prompt: over all of the prompt's samples at once "
        "(the released code). The normalisation itself follows the group options (GRPO std or mean only). "
        f"Default: {Fr3eConfig.normalization_scope}.",
    )
    g.add_argument(
        "--fr3e-correct-threshold",
        type=float,
        default=None,
        help="A rollout counts as correct for V(S) when its reward exceeds this "
        f"(default {Fr3eConfig.correct_threshold:g}).",
    )
    return parser


def add_rollout_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the rollout flags on ``parser`` and return it (slime's ``add_custom_arguments`` contract)."""
    _add_engine_arguments(parser)
    _add_sampling_arguments(parser)
    _add_data_arguments(parser)
    _add_reward_arguments(parser)
    _add_group_arguments(parser)
    add_fr3e_arguments(parser)
    return parser


def add_smoke_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``python -m slime_entropy.rollout`` beyond the rollout flags."""
    parser.add_argument("--smoke-dp-size", type=int, default=1, help="split each rollout for this many DP ranks")
    return parser
