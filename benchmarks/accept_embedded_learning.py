"""Acceptance check of the main job: ``python train.py`` (the built-in default task) learns, within 10 minutes.

    python benchmarks/accept_embedded_learning.py [--keep DIR] [--reuse-cache] [--min-gain 0.15] [--max-minutes 10]

Runs ``python train.py --run-dir <fresh dir>`` from the repository root with a fresh model cache (so the supervised
warm-up is part of the measured time, as on a first run; ``--reuse-cache`` uses the normal cache instead), then reads
its ``metrics.jsonl`` and checks:

- the run exits 0 and its wall time is at most ``--max-minutes`` (default 10);
- the mean reward of the last 5 rollouts exceeds that of the first 5 by at least ``--min-gain`` (default 0.15,
  absolute; the reward is 0/1 per sample, 128 samples per rollout);
- the held-out evaluation after training is above the one before training;
- the filter was on: every rollout kept between rho = 0.2 and 0.3 of the valid tokens.

Prints a table and writes ``benchmarks/results/embedded_learning.json``. Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", default=None, help="run directory to keep (default: a temporary one)")
    parser.add_argument("--reuse-cache", action="store_true", help="use the normal model cache (skip the warm-up)")
    parser.add_argument("--min-gain", type=float, default=0.15)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="accept-embedded-"))
    run_dir = Path(args.keep).resolve() if args.keep else workdir / "run"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    if not args.reuse_cache:
        env["SLIME_ENTROPY_CACHE"] = str(workdir / "cache")
    command = [sys.executable, "train.py", "--run-dir", str(run_dir)]
    print("running:", " ".join(["python", "train.py", "--run-dir", str(run_dir)]), flush=True)
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - started
    summary_lines = [line for line in done.stdout.splitlines() if line.startswith(("rollout ", "evaluation", "mean"))]
    print("\n".join(summary_lines))

    records = (
        [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if done.returncode == 0
        else []
    )
    rewards = [r["rollout/raw_reward"] for r in records if "rollout/raw_reward" in r]
    evals = [r["eval/heldout"] for r in records if "eval/heldout" in r]
    kept = [r["train/entropy_token_ratio"] for r in records if "train/entropy_token_ratio" in r]
    first5 = sum(rewards[:5]) / 5 if len(rewards) >= 10 else float("nan")
    last5 = sum(rewards[-5:]) / 5 if len(rewards) >= 10 else float("nan")
    checks = {
        "exit status 0": done.returncode == 0,
        f"wall time <= {args.max_minutes:g} min": wall <= 60 * args.max_minutes,
        f"last 5 - first 5 >= {args.min_gain:g}": last5 - first5 >= args.min_gain,
        "held-out eval improved": len(evals) >= 2 and evals[-1] > evals[0],
        "kept ratio in [0.2, 0.3)": bool(kept) and all(0.2 <= k < 0.3 for k in kept),
    }
    result = {
        "command": "python train.py",
        "wall_time_s": round(wall, 1),
        "num_rollouts": len(rewards),
        "mean_reward_first5": first5,
        "mean_reward_last5": last5,
        "gain": last5 - first5,
        "eval_heldout": evals,
        "kept_ratio_min_max": [min(kept), max(kept)] if kept else None,
        "fresh_cache": not args.reuse_cache,
        "checks": checks,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    print(f"\n{'check':<32} result")
    for name, ok in checks.items():
        print(f"{name:<32} {'ok' if ok else 'FAILED'}")
    print(
        f"\nwall time {wall:.0f} s | rollouts {len(rewards)} | mean reward first 5 {first5:.3f} -> last 5 {last5:.3f} "
        f"({last5 - first5:+.3f}) | held-out eval {' -> '.join(f'{e:.3f}' for e in evals)}"
    )
    out = ROOT / "benchmarks" / "results" / "embedded_learning.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if done.returncode != 0:
        print(done.stdout[-4000:], file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)  # the fresh cache (and the run, unless --keep put it elsewhere)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
