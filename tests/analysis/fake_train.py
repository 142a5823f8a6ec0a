"""A stand-in for train.py in the ablation runner's fast tests: writes a metrics.jsonl like the trainer's, with
rewards that are a known function of (rho, seed, rollout), instantly. Not a test module (no test_ prefix)."""

import argparse
import json
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--high-entropy-token-filter", action="store_true")
parser.add_argument("--entropy-percentile", type=float, required=True)
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--rollout-seed", type=int, required=True)
parser.add_argument("--run-dir", required=True)
parser.add_argument("--save", required=True)
parser.add_argument("--load", required=True)
parser.add_argument("--num-rollout", type=int, default=8)
parser.add_argument("--fail-rho", type=float, default=None)
args = parser.parse_args()

run_dir = Path(args.run_dir)
assert args.high_entropy_token_filter and args.seed == args.rollout_seed
assert args.save == args.load == str(run_dir / "checkpoints")
with open(run_dir / "invocations.txt", "a") as f:
    f.write("run\n")
if args.fail_rho == args.entropy_percentile:
    print("simulated failure", file=sys.stderr)
    sys.exit(3)
rho, seed = args.entropy_percentile, args.seed
with open(run_dir / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"rollout_id": -1, "eval/heldout": 0.1 * seed}) + "\n")
    for t in range(args.num_rollout):
        record = {
            "rollout_id": t,
            "rollout/raw_reward": 0.2 + 0.05 * t * rho + 0.01 * seed,
            "rollout/entropy": 1.0 - 0.1 * t * rho,
            "train/entropy_token_ratio": rho,
        }
        if (t + 1) % 4 == 0:
            record["eval/heldout"] = 0.3 + rho * (t + 1) * 0.01 + 0.02 * seed
        f.write(json.dumps(record) + "\n")
    f.write("{broken line")  # a crash mid-write must not break the reader
