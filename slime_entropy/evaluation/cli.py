"""Evaluate a checkpoint (HF, or torch_dist through the converter) on eval files: avg@n and pass@k.

    python -m slime_entropy.evaluation --hf-checkpoint /models/Qwen3-8B \\
        --eval-prompt-data aime24 /data/aime-2024.jsonl --input-key prompt --label-key label \\
        --apply-chat-template --rm-type deepscaler --n-samples-per-eval-prompt 32 \\
        --eval-temperature 1.0 --eval-top-p 0.7 --eval-max-response-len 20480 \\
        --rollout-num-gpus 8 --rollout-num-gpus-per-engine 1 --eval-output-dir /runs/eval-base

    # a training checkpoint: --hf-checkpoint gives the architecture, tokenizer and chat template
    python -m slime_entropy.evaluation --hf-checkpoint /models/Qwen3-8B --torch-dist-checkpoint /ckpt/run \\
        --eval-prompt-data aime24 /data/aime-2024.jsonl ...

Every rollout flag applies (engines, ``--sglang-*``, rewards, keys, chat template); the ``--eval-*`` flags override
the sampling ones. Prints one table row per eval set and, with ``--metrics-json``, writes the metrics.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

__all__ = ["build_parser", "main", "evaluate_checkpoint", "engine_and_reward_configs"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from slime_entropy.evaluation.arguments import add_checkpoint_arguments, add_eval_arguments
    from slime_entropy.rollout.arguments import add_rollout_arguments

    parser = argparse.ArgumentParser(
        prog="python -m slime_entropy.evaluation",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    add_rollout_arguments(parser)
    add_eval_arguments(parser)
    add_checkpoint_arguments(parser)
    return parser


def engine_and_reward_configs(args: argparse.Namespace):
    """``(EngineConfig, RewardConfig)`` from the rollout flags, without needing the training-only ones."""
    from slime_entropy.rollout.config import RolloutConfig

    filled = copy.copy(args)
    if filled.prompt_data is None:
        filled.prompt_data = "(unused: evaluation reads --eval-prompt-data)"
    if filled.rollout_batch_size is None:
        filled.rollout_batch_size = 1
    if filled.rollout_max_response_len is None:
        filled.rollout_max_response_len = args.eval_max_response_len or 1
    filled.rewards_normalization = False  # unused here; avoids the group-of-one warning
    filled.overlong_buffer_len = 0
    config = RolloutConfig.from_args(filled)
    return config.engine, config.reward


def evaluate_checkpoint(args: argparse.Namespace):
    """Resolve the weights, launch engines and grading workers, evaluate, stop everything. Returns the report."""
    from transformers import AutoTokenizer

    from slime_entropy.evaluation.checkpoints import convert_torch_dist_to_hf
    from slime_entropy.evaluation.config import EvalConfig
    from slime_entropy.evaluation.evaluator import EngineSession, Evaluator

    config = EvalConfig.from_args(args, training=False)
    if config is None:
        raise ValueError("--eval-prompt-data NAME PATH [NAME PATH ...] is required")
    if args.hf_checkpoint is None:
        raise ValueError("--hf-checkpoint is required (the model, or the origin of --torch-dist-checkpoint)")
    with tempfile.TemporaryDirectory(prefix="slime-entropy-eval-") as workdir:
        if args.torch_dist_checkpoint is not None:
            hf_dir = convert_torch_dist_to_hf(
                args.torch_dist_checkpoint,
                origin_hf_dir=args.hf_checkpoint,
                output_dir=Path(workdir) / "hf",
                extra_args=shlex.split(args.convert_args),
                timeout=args.convert_timeout,
            )
            args = copy.copy(args)
            args.hf_checkpoint = str(hf_dir)
        engine_config, reward_config = engine_and_reward_configs(args)
        tokenizer = AutoTokenizer.from_pretrained(args.hf_checkpoint)
        evaluator = Evaluator(config, tokenizer)
        with EngineSession(engine_config, reward_config, hook_args=args, log_dir=Path(workdir) / "engine-logs") as e:
            return e.run(evaluator.evaluate_async(e.pool, e.rewards, args.rollout_id))


def format_table(report) -> str:
    """Markdown table: one row per eval set."""
    rows = []
    ks: list[str] = []
    for result in report.datasets.values():
        ks = [key.rsplit("/", 1)[1] for key in result.metrics if "/pass@" in key]
        break
    header = ["set", "prompts", "n", "avg@n", *ks, "reward", "truncated", "length"]
    for name, result in report.datasets.items():
        m, prefix = result.metrics, f"eval/{name}"
        n = len(result.groups[0]) if result.groups else 0
        rows.append(
            [name, str(len(result.groups)), str(n), f"{m[prefix]:.4f}"]
            + [f"{m[f'{prefix}/{k}']:.4f}" for k in ks]
            + [
                f"{m[f'{prefix}/reward_mean']:.4f}",
                f"{m[f'{prefix}/truncated_ratio']:.3f}",
                f"{m[f'{prefix}/response_length_mean']:.1f}",
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = evaluate_checkpoint(args)
    except ValueError as e:
        parser.error(str(e))
    print(format_table(report))
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(report.metrics, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
