"""GRPO vs FR3E vs FR3E + the high-entropy filter on train.py's built-in task, side by side, a few seeds.

    python benchmarks/fr3e_comparison.py --out-dir runs/fr3e-comparison --seeds 1 2 [--num-rollout 40]

Per (method, seed) one ``python train.py`` run (the built-in default task: 16 prompts x 8 samples per rollout, one
optimizer step per rollout, lr 1e-3, held-out evaluation every 10 rollouts) with ``--seed S --rollout-seed S`` and:

=============  ===========================================================================================
grpo           ``--entropy-percentile 1.0``: every token (the unfiltered loss), plain GRPO advantages
fr3e           ``--fr3e --entropy-percentile 1.0``: + 1 base trajectory x 4 anchors x 4 partial rollouts per prompt
fr3e_filter    ``--fr3e`` with the task's filter (rho 0.2)
grpo_n24       ``--entropy-percentile 1.0 --n-samples-per-prompt 24``: GRPO trained on as many samples per rollout
               as FR3E (16 x 24 = 16 x (8 + 16)), the sample-matched control
=============  ===========================================================================================

Runs go one after another, each in its own process group with ``--run-timeout``; rerunning the command resumes
unfinished runs (train.py resumes from its checkpoint). Writes ``--out-dir``/fr3e_comparison.{json,md,png} and, with
``--results``, a copy of the JSON: per method, mean ± 95% t half-width over seeds of the base reward (first and last
``--window`` rollouts), the last held-out evaluation, the final entropy of the base responses, the generated tokens
per rollout (base + partial) and the wall time per rollout. The figure has the reward, held-out, entropy and
generated-token curves (mean over seeds, band = min..max).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from slime_entropy.analysis.ablation import _run_one, mean_and_halfwidth, read_series

METHODS = {
    "grpo": ["--entropy-percentile", "1.0"],
    "fr3e": ["--fr3e", "--entropy-percentile", "1.0"],
    "fr3e_filter": ["--fr3e"],
    "grpo_n24": ["--entropy-percentile", "1.0", "--n-samples-per-prompt", "24"],
}
LABELS = {"grpo": "GRPO (all tokens)", "fr3e": "FR3E (all tokens)", "fr3e_filter": "FR3E + filter (rho 0.2)",
          "grpo_n24": "GRPO, n = 24 (all tokens)"}  # fmt: skip


def run_dir(out_dir: Path, method: str, seed: int) -> Path:
    return out_dir / method / f"seed{seed}"


def command(method: str, seed: int, directory: Path, extra: list[str]) -> list[str]:
    checkpoints = str(directory / "checkpoints")
    return [sys.executable, "train.py", *METHODS[method], "--seed", str(seed), "--rollout-seed", str(seed),
            "--run-dir", str(directory), "--save", checkpoints, "--load", checkpoints, *extra]  # fmt: skip


def series_of(directory: Path) -> dict[str, np.ndarray]:
    """Per rollout: base reward, base entropy, generated tokens (base + partial), wall time; held-out by rollout."""
    s = read_series(directory)
    ids = sorted(i for i in s.get("rollout/raw_reward", {}) if i >= 0)

    def column(key, fallback=None):
        values = s.get(key) or (s.get(fallback) if fallback else None) or {}
        return np.array([values.get(i, np.nan) for i in ids], dtype=np.float64)

    # the base responses' entropy: FR3E's rollout/entropy also covers the partial rollouts' own tokens
    entropy = column("fr3e/base_entropy", "rollout/entropy")
    length = column("rollout/response_lengths")
    base_tokens = column("fr3e/base_response_tokens")
    flags = json.loads((directory / "args.json").read_text()) if (directory / "args.json").is_file() else {}
    num_base = flags.get("rollout_batch_size", 16) * flags.get("n_samples_per_prompt", 8)
    base_tokens = np.where(np.isnan(base_tokens), length * num_base, base_tokens)  # GRPO: all samples are base
    generated = base_tokens + np.nan_to_num(column("fr3e/partial_generated_tokens"), nan=0.0)
    evals = {i: v for i, v in (s.get("eval/heldout") or {}).items()}
    return {
        "rollout": np.array(ids, dtype=np.float64),
        "reward": column("rollout/raw_reward"),
        "entropy": entropy,
        "generated_tokens": generated,
        "step_time": column("perf/step_time"),
        "rollout_time": column("perf/rollout_time")
        + np.nan_to_num(column("perf/fr3e_rollout_time"), nan=0.0)
        + np.nan_to_num(column("perf/fr3e_entropy_time"), nan=0.0),
        "eval_ids": np.array(sorted(evals), dtype=np.float64),
        "eval": np.array([evals[i] for i in sorted(evals)], dtype=np.float64),
    }


def summarize(runs: dict[str, dict[int, dict]], window: int) -> list[dict]:
    rows = []
    for method, by_seed in runs.items():
        per_seed = [v for v in by_seed.values() if v is not None and v["reward"].size]
        if not per_seed:
            continue

        def stat(fn, per_seed=per_seed):
            return mean_and_halfwidth([fn(v) for v in per_seed])

        rows.append({
            "method": method,
            "num_seeds": len(per_seed),
            "num_rollouts": min(v["reward"].size for v in per_seed),
            "reward_first": stat(lambda v: float(np.nanmean(v["reward"][:window]))),
            "reward_last": stat(lambda v: float(np.nanmean(v["reward"][-window:]))),
            "heldout_last": stat(lambda v: float(v["eval"][-1]) if v["eval"].size else float("nan")),
            "entropy_last": stat(lambda v: float(np.nanmean(v["entropy"][-window:]))),
            "generated_tokens_per_rollout": stat(lambda v: float(np.nanmean(v["generated_tokens"]))),
            "rollout_time_s": stat(lambda v: float(np.nanmean(v["rollout_time"]))),
            "step_time_s": stat(lambda v: float(np.nanmean(v["step_time"]))),
        })  # fmt: skip
    return rows


def table(rows: list[dict], window: int) -> str:
    def cell(pair, digits=3):
        mean, half = pair
        if not np.isfinite(mean):
            return "-"
        return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if np.isfinite(half) else "")

    head = (f"| method | seeds | reward, first {window} | reward, last {window} | held-out, last | entropy, last "
            f"{window} | generated tokens / rollout | generation s / rollout | s / rollout |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {LABELS[r['method']]} | {r['num_seeds']} | {cell(r['reward_first'])} | {cell(r['reward_last'])} | "
            f"{cell(r['heldout_last'])} | {cell(r['entropy_last'])} | {cell(r['generated_tokens_per_rollout'], 0)} | "
            f"{cell(r['rollout_time_s'], 1)} | {cell(r['step_time_s'], 1)} |"
        )
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict]], path: Path, smooth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    panels = (
        ("reward", "base reward (trailing mean)"),
        ("eval", "held-out accuracy"),
        ("entropy", "entropy of base responses"),
        ("generated_tokens", "generated tokens / rollout"),
    )  # noqa: E501
    for method, by_seed in runs.items():
        curves = [v for v in by_seed.values() if v is not None and v["reward"].size]
        if not curves:
            continue
        for ax, (key, title) in zip(axes, panels, strict=True):
            xkey = "eval_ids" if key == "eval" else "rollout"
            n = min(c[key].size for c in curves)
            if n == 0:
                continue
            ys = np.stack([c[key][:n] for c in curves])
            if key == "reward":
                kernel = np.ones(smooth)
                ys = np.stack([np.convolve(y, kernel)[:n] / np.minimum(np.arange(1, n + 1), smooth) for y in ys])
            x = curves[0][xkey][:n]
            ax.plot(x, ys.mean(0), label=LABELS[method], marker="o" if key == "eval" else None)
            ax.fill_between(x, ys.min(0), ys.max(0), alpha=0.2)
            ax.set_title(title)
            ax.set_xlabel("rollout")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--num-rollout", type=int, default=None, help="default: the task's 40")
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--smooth", type=int, default=5)
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    extra = [] if args.num_rollout is None else ["--num-rollout", str(args.num_rollout)]
    failures = {}
    for seed in args.seeds:  # seed-major: a cut-short comparison still has every method for the first seeds
        for method in args.methods:
            directory = run_dir(args.out_dir, method, seed)
            if args.collect_only:
                continue
            started = time.monotonic()
            code, message = _run_one(command(method, seed, directory, extra), directory, args.run_timeout)
            print(f"{method} seed {seed}: {'ok' if code == 0 else message} ({time.monotonic() - started:.0f} s)",
                  flush=True)  # fmt: skip
            if code != 0:
                failures[f"{method}/seed{seed}"] = message
    runs = {m: {s: series_of(run_dir(args.out_dir, m, s)) for s in args.seeds} for m in args.methods}
    # only finished runs count (a run cut short, or still running with --collect-only, would skew "last 5")
    full = max((v["reward"].size for by_seed in runs.values() for v in by_seed.values()), default=0)
    runs = {m: {s: v for s, v in by_seed.items() if v["reward"].size == full} for m, by_seed in runs.items()}
    rows = summarize(runs, args.window)
    text = table(rows, args.window)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "fr3e_comparison.md").write_text(text + "\n")
    payload = {"command": " ".join(sys.argv), "seeds": args.seeds, "window": args.window, "rows": rows,
               "failures": failures}  # fmt: skip
    for path in [args.out_dir / "fr3e_comparison.json"] + ([args.results] if args.results else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
    plot(runs, args.out_dir / "fr3e_comparison.png", args.smooth)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
