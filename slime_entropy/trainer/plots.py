"""PNG plots of a run from its ``metrics.jsonl``, one quantity per axis.

    python -m slime_entropy.trainer.plots RUN_DIR        # on demand, also while the run is going

``train.py`` redraws them every ``--plot-interval`` rollouts and at the end. Files (in ``<run-dir>/plots/``):
``reward.png`` (mean raw reward per rollout, its 5-rollout moving average, and the evaluation scores ``eval/<set>``,
all rewards), ``kept_ratio.png`` (kept / valid tokens, with the target rho), ``threshold.png`` (tau),
``entropy.png`` (mean token entropy of the rollout's responses under the old policy, and of the kept tokens),
``eval_time.png`` (seconds per evaluation) and ``eval_reward_failures.png`` (rewards that failed per evaluation), and
``overview.png`` with all six.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["plot_run", "main", "PANELS"]

# name -> (axis title, keys drawn on it); the keys of one panel are one quantity in one unit
PANELS = {
    "reward": ("mean reward", ["rollout/raw_reward"]),
    "kept_ratio": ("kept token ratio", ["train/entropy_token_ratio"]),
    "threshold": ("entropy threshold tau (nats)", ["train/entropy_threshold"]),
    "entropy": ("token entropy (nats)", ["rollout/entropy", "train/entropy_kept_mean"]),
    "eval_time": ("evaluation time (s)", ["eval/time_s"]),
    "eval_reward_failures": ("reward failures per evaluation", ["eval/num_reward_failures"]),
}
_EMPTY = {"eval_time": "no evaluation", "eval_reward_failures": "no evaluation"}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if key in r and r[key] is not None:
            xs.append(int(r["rollout_id"]))
            ys.append(float(r[key]))
    return xs, ys


def _moving_average(ys: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(ys)):
        chunk = ys[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _draw(ax, name: str, records: list[dict], keep_fraction: float | None) -> bool:
    from matplotlib.ticker import MaxNLocator

    from slime_entropy.trainer.metrics import is_eval_score

    title, keys = PANELS[name]
    drawn = False
    for key in keys:
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, marker=".", linewidth=1, label=key)
            drawn = True
            if name == "reward" and len(ys) >= 5:
                ax.plot(xs, _moving_average(ys, 5), linewidth=2, label="5-rollout mean")
    if name == "reward":
        eval_keys = sorted({k for r in records for k in r if is_eval_score(k)})
        for key in eval_keys:
            xs, ys = _series(records, key)
            ax.plot(xs, ys, marker="o", linestyle="--", label=key)
            drawn = drawn or bool(xs)
    if name == "kept_ratio" and keep_fraction is not None and drawn:
        ax.axhline(keep_fraction, color="gray", linestyle=":", label=f"rho = {keep_fraction:g}")
    ax.set_title(title)
    ax.set_xlabel("rollout")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    else:
        text = _EMPTY.get(name, "no data (filter off?)")
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    return drawn


def plot_run(run_dir: str | Path, keep_fraction: float | None = None) -> list[Path]:
    """Draw the PNGs of ``run_dir``; returns the files written (none without metrics). Each file is written to a
    temporary name and renamed, so a viewer never sees half a PNG."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slime_entropy.trainer.metrics import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return []
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = out_dir / f"{name}.png"
        tmp = out_dir / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    for name in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        _draw(ax, name, records, keep_fraction)
        save(fig, name)
    fig, axes = plt.subplots(3, 2, figsize=(11, 10))
    for ax, name in zip(axes.flat, PANELS, strict=True):
        _draw(ax, name, records, keep_fraction)
    num_rollouts = sum("rollout/raw_reward" in r for r in records)
    fig.suptitle(f"{run_dir.name}: {num_rollouts} rollouts")
    fig.tight_layout()
    save(fig, "overview")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the PNG plots of a train.py run directory.")
    parser.add_argument("run_dir")
    parser.add_argument("--rho", type=float, default=None, help="draw the target kept ratio")
    args = parser.parse_args(argv)
    written = plot_run(args.run_dir, args.rho)
    if not written:
        print(f"no metrics in {args.run_dir}/metrics.jsonl yet", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
