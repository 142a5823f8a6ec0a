"""Run rollouts from the command line (a smoke test of data, engines and rewards; no training).

    python -m slime_entropy.testing.tiny_models /tmp/tiny             # a tiny random Qwen3 (CPU smoke runs)
    python -m slime_entropy.rollout --hf-checkpoint /tmp/tiny --prompt-data examples/data/math_prompts.jsonl \\
        --input-key prompt --label-key label --apply-chat-template --rm-type math \\
        --rollout-batch-size 4 --n-samples-per-prompt 4 --rollout-max-response-len 32 --num-rollout 2

Prints each rollout's metrics and one sample, and the per-rank batch shapes for ``--smoke-dp-size`` ranks.
"""

from __future__ import annotations

import argparse
import json
import logging

from slime_entropy.rollout.arguments import add_rollout_arguments, add_smoke_arguments
from slime_entropy.rollout.manager import RolloutManager
from slime_entropy.rollout.sglang_options import describe_unknown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slime_entropy.rollout", description=__doc__.split("\n\n")[0])
    return add_smoke_arguments(add_rollout_arguments(parser))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error("unrecognized arguments: " + "; ".join(describe_unknown(u) or u for u in unknown))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with RolloutManager.from_args(args) as rollout:
        for rollout_id in range(rollout.num_rollout if args.num_rollout or args.num_epoch else 1):
            result = rollout.generate(rollout_id)
            print(json.dumps({"rollout_id": rollout_id, **result.metrics}, indent=1))
            sample = result.samples[0]
            print(
                f"sample {sample.index} ({sample.status.value}, reward {sample.reward!r}):\n"
                f"{sample.prompt_text}{sample.response}\n"
            )
            for rank, batch in enumerate(rollout.train_data(result, args.smoke_dp_size)):
                print(f"rank {rank}: {len(batch['tokens'])} samples, {sum(batch['total_lengths'])} tokens")


if __name__ == "__main__":
    main()
