"""The trainer's command line: every provider's flags on one parser, parsed once, unknown flags rejected by name.

``build_parser()`` composes the providers of :func:`argument_providers`, in this order; each flag is registered by
exactly one of them, the package that owns it (``tests/test_flags.py`` freezes the list and the owners):

1. ``add_trainer_arguments`` (this module): cluster and placement (slime's ``--actor-num-nodes``,
   ``--actor-num-gpus-per-node``, ``--colocate``, ``--offload*``), the rollout-train loop
   (``--num-steps-per-rollout``, ``--kl-coef``), weight updates, the run directory, logging (``--use-wandb`` ...) and
   the built-in default task;
2. ``slime_entropy.add_arguments``: the high-entropy filter and our policy-loss options;
3. ``slime_entropy.loss.arguments.add_slime_loss_arguments``: slime's own loss flags (``--eps-clip``,
   ``--use-kl-loss``...);
4. ``slime_entropy.rollout.arguments.add_rollout_arguments``: engines (with ``--hf-checkpoint``), sampling (with
   ``--rollout-temperature``, which the loss reads too), data, rewards, groups, FR3E;
5. ``slime_entropy.megatron.arguments.add_megatron_arguments``: MODEL_ARGS, parallelism, optimizer, batching and
   checkpoints in Megatron's spelling;
6. ``slime_entropy.evaluation.arguments.add_eval_arguments``: the ``--eval-*`` flags;
7. ``slime_entropy.launch.arguments.add_plan_arguments``: ``--dry-run`` and the GPU the plan is checked against.

``parse_args(argv)`` parses once. Flags no provider registered are an error that names each of them (with the
closest known spelling), abbreviations are not accepted (``--entropy-perc`` must not silently mean
``--entropy-percentile``), and without ``--hf-checkpoint`` and ``--prompt-data`` the built-in default task fills in
every flag the user did not give (see :mod:`slime_entropy.trainer.default_task`).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence

from slime_entropy.loss.arguments import add_arguments, add_slime_loss_arguments
from slime_entropy.rollout.sglang_options import describe_unknown
from slime_entropy.trainer.config import DEFAULT_GPUS_PER_NODE
from slime_entropy.trainer.default_task import DefaultTaskSpec

__all__ = [
    "add_trainer_arguments",
    "argument_providers",
    "build_parser",
    "parse_args",
    "ConciseParser",
    "UPDATE_WEIGHT_TRANSPORTS",
]

UPDATE_WEIGHT_TRANSPORTS = ("auto", "disk", "broadcast")

DESCRIPTION = """\
RLVR on Ray with slime's flags: rollouts on SGLang (GPU) or the built-in engine (CPU), Megatron training with the
high-entropy ("forking") token filter of "Beyond the 80/20 Rule" (arXiv 2506.01939).

Without --hf-checkpoint and --prompt-data it runs the built-in default: a tiny Qwen3-architecture model on a
synthetic arithmetic task, CPU only, a few minutes (any flag you pass overrides the default's)."""

EPILOG = """\
examples:
  python train.py                                         # built-in default task on this machine
  python train.py --num-rollout 10 --entropy-percentile 0.5
  python train.py --hf-checkpoint Qwen3-4B --ref-load Qwen3-4B_torch_dist --load ckpt --save ckpt \\
      --save-interval 20 --prompt-data dapo-math-17k.jsonl --input-key prompt --label-key label \\
      --apply-chat-template --rm-type deepscaler --rollout-batch-size 32 --n-samples-per-prompt 8 \\
      --global-batch-size 256 --rollout-max-response-len 8192 --actor-num-nodes 1 \\
      --actor-num-gpus-per-node 8 --colocate --tensor-model-parallel-size 2 \\
      --high-entropy-token-filter --entropy-percentile 0.2 ...

A run directory (--run-dir) collects metrics.jsonl, plots/, rollouts/ (--save-rollouts) and logs; rerunning the
same command resumes from the last checkpoint in --load (default: --save)."""


def add_trainer_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the trainer's own flags (cluster, loop, weights, run, logging, default task) and return ``parser``."""
    g = parser.add_argument_group("trainer: cluster and placement (slime's names)")
    g.add_argument("--actor-num-nodes", type=int, default=1, help="Nodes of training ranks.")
    g.add_argument(
        "--actor-num-gpus-per-node",
        type=int,
        default=None,
        help=f"Training ranks per node: GPUs on GPU clusters (default {DEFAULT_GPUS_PER_NODE}, as slime), CPU "
        "processes on CPU machines (default: one model replica, TP x PP x CP).",
    )
    g.add_argument(
        "--colocate",
        action="store_true",
        help="Training and rollout engines share the same GPUs, taking turns (implies --offload-train and "
        "--offload-rollout). On CPU machines the built-in engine always shares the machine; the flag then only runs "
        "the same offload sequence against it.",
    )
    g.add_argument("--offload", action="store_true", help="Shorthand for --offload-train --offload-rollout.")
    g.add_argument(
        "--offload-train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Release the training GPU memory while the engines generate (torch_memory_saver). Default: --colocate.",
    )
    g.add_argument(
        "--offload-rollout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Release the engines' weights and KV cache while training (SGLang /release_memory_occupation). "
        "Default: --colocate.",
    )
    g.add_argument(
        "--distributed-backend",
        choices=("nccl", "gloo"),
        default=None,
        help="torch.distributed backend of the training ranks (default: nccl on GPUs, gloo on CPUs).",
    )
    g.add_argument(
        "--distributed-timeout-minutes",
        type=int,
        default=10,
        help="Timeout of the training ranks' collectives, and of any single trainer call the driver waits for.",
    )

    g = parser.add_argument_group("trainer: rollout-train loop")
    g.add_argument(
        "--num-steps-per-rollout",
        type=int,
        default=None,
        help="Optimizer steps per rollout: global_batch_size = rollout_batch_size x n_samples_per_prompt / this. "
        "Give it or --global-batch-size (default: 1 step per rollout).",
    )
    g.add_argument(
        "--kl-coef",
        type=float,
        default=0.0,
        help="slime's reward-side KL penalty; not supported here (use --use-kl-loss --kl-loss-coef): non-zero is an "
        "error.",
    )

    g = parser.add_argument_group("trainer: weight updates to the engines")
    g.add_argument(
        "--update-weight-transport",
        choices=UPDATE_WEIGHT_TRANSPORTS,
        default="auto",
        help="(ours) disk: the training ranks write an HF checkpoint that the engines load "
        "(/update_weights_from_disk; needs a filesystem shared with the engines). broadcast: training rank 0 "
        "broadcasts the weights to the engines over NCCL (gloo on CPU), SGLang's "
        "/update_weights_from_distributed. auto: broadcast for disaggregated GPU runs with PP = EP = 1, else disk.",
    )
    g.add_argument(
        "--update-weight-buffer-size",
        type=int,
        default=512 * 1024**2,
        help="Bytes of weights per broadcast bucket (slime's name and default).",
    )

    g = parser.add_argument_group("trainer: run directory, logging and plots")
    g.add_argument(
        "--run-dir",
        default=None,
        help="(ours) Where metrics.jsonl, plots/, rollouts/, logs and the engines' weight copies go. Default: --save "
        "if given, else runs/<start time> (runs/embedded for the built-in default task).",
    )
    g.add_argument(
        "--save-rollouts",
        action="store_true",
        help="(ours) Write every rollout's samples to <run-dir>/rollouts/ with token ids, rewards, advantages and the "
        "trainer's per-token entropy and log-probs (format: slime_entropy.rollout_dump; read by "
        "python -m slime_entropy.analysis).",
    )
    g.add_argument(
        "--plot-interval",
        type=int,
        default=10,
        help="(ours) Redraw <run-dir>/plots/*.png every N rollouts (0: only at the end). On demand: "
        "python -m slime_entropy.trainer.plots RUN_DIR.",
    )
    g.add_argument(
        "--log-level", choices=("debug", "info", "warning"), default="info", help="(ours) Driver log level."
    )
    g.add_argument("--use-wandb", action="store_true", help="Log to Weights & Biases (slime's metric names).")
    g.add_argument("--wandb-project", default="slime_entropy", help="W&B project.")
    g.add_argument("--wandb-group", default=None, help="W&B group.")
    g.add_argument("--wandb-key", default=None, help="W&B API key (else WANDB_API_KEY or a stored login).")
    g.add_argument(
        "--wandb-mode",
        choices=("auto", "online", "offline"),
        default="auto",
        help="(ours) auto: online when a key is available, else offline into the run directory (wandb sync later).",
    )

    g = parser.add_argument_group("trainer: built-in default task (used without --hf-checkpoint and --prompt-data)")
    g.add_argument(
        "--embedded-cache-dir",
        default=None,
        help="(ours) Where the default task's model, warm-up and data are cached (default: $SLIME_ENTROPY_CACHE or "
        "~/.cache/slime_entropy).",
    )
    g.add_argument(
        "--embedded-sft-steps",
        type=int,
        default=None,
        help="(ours) Supervised warm-up steps of the default task's tiny model "
        f"(default {DefaultTaskSpec.sft_steps}; cached per value).",
    )
    return parser


class ConciseParser(argparse.ArgumentParser):
    """argparse whose errors are one short usage line and the error: the full usage of a parser with hundreds of
    flags would scroll the one line that matters away. ``help_command``: how to see every flag."""

    def __init__(self, *args, help_command: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_command = help_command or f"{self.prog} --help"

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"usage: {self.prog} [flags]   (all flags: {self.help_command})\n{self.prog}: error: {message}\n")


class _Parser(ConciseParser):
    """The trainer's parser: also unknown flags reported by name (and the nearest known spelling)."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(_describe_unknown(self, unknown))
        return parsed


def _describe_unknown(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    known = list(parser._option_string_actions)  # argparse has no public list of option strings
    flags = [u.split("=", 1)[0] for u in unknown if u.startswith("-")]
    values = [u for u in unknown if not u.startswith("-")]
    lines = []
    for flag in flags:
        sglang = describe_unknown(flag)  # an SGLang server option: the nearest names SGLang has
        if sglang is not None:
            lines.append(f"  {sglang}")
            continue
        close = difflib.get_close_matches(flag, known, n=2, cutoff=0.75)
        lines.append(f"  {flag}" + (f"   (did you mean {' or '.join(close)}?)" if close else ""))
    if values and not flags:
        lines.append(f"  stray values {values}: a flag that takes no value was given one, or a value lacks its flag")
    return "unrecognized arguments (no slime_entropy/slime/Megatron provider registers them):\n" + "\n".join(lines)


def argument_providers() -> tuple[Callable[[argparse.ArgumentParser], argparse.ArgumentParser], ...]:
    """The argument providers of train.py's parser, in ``--help`` order; no two register the same flag."""
    from slime_entropy.evaluation.arguments import add_eval_arguments
    from slime_entropy.launch.arguments import add_plan_arguments
    from slime_entropy.megatron.arguments import add_megatron_arguments
    from slime_entropy.rollout.arguments import add_rollout_arguments

    return (
        add_trainer_arguments,
        add_arguments,
        add_slime_loss_arguments,
        add_rollout_arguments,
        add_megatron_arguments,
        add_eval_arguments,
        add_plan_arguments,
    )


def build_parser() -> argparse.ArgumentParser:
    """The full trainer parser, grouped for ``--help``."""
    parser = _Parser(
        prog="train.py",
        help_command="python train.py --help",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for provider in argument_providers():
        provider(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) once; fill the built-in default task's flags when no model and no
    data are given. ``args.embedded`` says which case applies."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hf_checkpoint is None and args.prompt_data is None:
        from slime_entropy.trainer.default_task import default_task_argv

        # The default task's flags first, the user's after them: anything the user gave wins.
        args = parser.parse_args(default_task_argv(args) + argv)
        args.embedded = True
    elif (args.hf_checkpoint is None) != (args.prompt_data is None):
        missing = "--hf-checkpoint" if args.hf_checkpoint is None else "--prompt-data"
        parser.error(
            f"{missing} is missing: give both --hf-checkpoint and --prompt-data, or neither (built-in default task)"
        )
    else:
        args.embedded = False
    if args.save is not None and args.load is None:
        args.load = args.save  # a rerun resumes where the run saves (slime needs --load for that; train.py does not)
    args.given_flags = _given_dests(parser, argv)
    return args


def _given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> frozenset[str]:
    """The destinations of the flags the user wrote (not the defaults, nor the default task's), for rules such as
    "this flag does nothing without that one". A frozenset, so it is not recorded in ``args.json``."""
    given = argparse.Namespace()
    suppressed = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in suppressed:
            action.default = argparse.SUPPRESS
        parser.parse_known_args(argv, given)
    finally:
        for action, default in suppressed:
            action.default = default
    return frozenset(vars(given))
