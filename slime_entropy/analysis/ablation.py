"""The rho ablation: train once per (rho, seed), collect the metrics, write a table and reward curves with bands.

    python -m slime_entropy.analysis.ablation --out-dir runs/ablation --rhos 0.1 0.2 0.5 1.0 --seeds 1 2 3
    python -m slime_entropy.analysis.ablation --out-dir runs/abl-qwen --rhos 0.2 1.0 --seeds 1 2 -- \\
        --hf-checkpoint /models/Qwen3-4B --prompt-data dapo.jsonl ...        # any train.py configuration

Each grid point runs ``python train.py [flags after --] --high-entropy-token-filter --entropy-percentile RHO --seed S
--rollout-seed S --run-dir OUT/rho<RHO>/seed<S> --save OUT/rho<RHO>/seed<S>/checkpoints --load (the same)`` in its
own process group, one after another (``--run-timeout`` each; a run that fails or times out is reported and the
others go on). Without flags after ``--`` it is train.py's built-in default task. rho = 1 keeps every token: the
unfiltered loss, bit for bit. Rerunning the same command skips finished runs and resumes unfinished ones (train.py
resumes from its last checkpoint).

Outputs in ``--out-dir``: ``ablation.md`` / ``ablation.csv`` / ``ablation.json`` (per rho, over seeds: mean reward of
the last ``--window`` rollouts, of the first ``--window``, their difference, the mean over all rollouts, the last
held-out evaluation, the final entropy and kept ratio; each as mean ± the half-width of a 95% Student-t interval) and
``ablation.png`` (reward, held-out evaluation and entropy over rollouts: per rho the mean over seeds with its 95%
band; rewards smoothed with a trailing ``--smooth``-rollout mean per seed first).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from slime_entropy.analysis.arguments import add_ablation_arguments

__all__ = [
    "AblationRun",
    "run_grid",
    "collect",
    "summarize_grid",
    "plot_grid",
    "main",
    "build_parser",
    "t_quantile_975",
]

logger = logging.getLogger(__name__)

DONE_MARKER = "ablation_done.json"
REWARD_KEY = "rollout/raw_reward"
ENTROPY_KEYS = ("rollout/entropy", "train/entropy_mean")
KEPT_KEY = "train/entropy_token_ratio"
# Flags the runner sets per grid point; given after "--" they would make every run share them.
RESERVED_FLAGS = ("--entropy-percentile", "--seed", "--rollout-seed", "--run-dir", "--save", "--load")

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard table values); the normal 1.96 beyond.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_and_halfwidth(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (NaN with fewer than two values)."""
    xs = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if xs.size == 0:
        return math.nan, math.nan
    if xs.size == 1:
        return float(xs[0]), math.nan
    return float(xs.mean()), float(t_quantile_975(xs.size - 1) * xs.std(ddof=1) / math.sqrt(xs.size))


@dataclass
class AblationRun:
    rho: float
    seed: int
    run_dir: Path
    returncode: int | None = None
    """None: not run (or still unfinished)."""
    seconds: float = 0.0
    message: str = ""
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    """metric -> {rollout_id: value} (rollout_id -1: before training)."""

    @property
    def name(self) -> str:
        return f"rho={self.rho:g} seed={self.seed}"

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_dir_for(out_dir: Path, rho: float, seed: int) -> Path:
    return out_dir / f"rho{rho:g}" / f"seed{seed}"


def train_command(train_script: str, extra: Sequence[str], rho: float, seed: int, run_dir: Path) -> list[str]:
    checkpoints = str(run_dir / "checkpoints")
    return [
        sys.executable,
        train_script,
        *extra,
        "--high-entropy-token-filter",
        "--entropy-percentile",
        repr(float(rho)),
        "--seed",
        str(seed),
        "--rollout-seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--save",
        checkpoints,
        "--load",
        checkpoints,
    ]


def _run_one(command: list[str], run_dir: Path, timeout: float) -> tuple[int, str]:
    """Run ``command`` in its own process group (killed as a whole on time-out); output to ``run_dir/train.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGTERM)  # train.py turns SIGTERM into a clean interrupt
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(timeout=60)
            return -1, f"timed out after {timeout:.0f} s (rerun the command to resume it)"
        except BaseException:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
            raise
        finally:
            _kill_group(proc, signal.SIGKILL)  # leftovers of the run's group (Ray workers) once it has exited
    if returncode != 0:
        tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-5:]
        return returncode, f"exit {returncode}: " + " | ".join(tail)
    return 0, ""


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_grid(
    out_dir: str | Path,
    rhos: Sequence[float],
    seeds: Sequence[int],
    *,
    extra: Sequence[str] = (),
    train_script: str = "train.py",
    timeout: float = 7200.0,
) -> list[AblationRun]:
    """Run every (rho, seed) not finished yet, sequentially; finished runs are read back. Returns every run."""
    bad = [flag for flag in extra if flag.split("=")[0] in RESERVED_FLAGS]
    if bad:
        raise ValueError(f"{bad}: the ablation sets these per run; remove them from the train.py flags")
    for rho in rhos:
        if not 0 < rho <= 1:
            raise ValueError(f"--rhos: every rho must lie in (0, 1], got {rho}")
    if len(set(rhos)) != len(rhos) or len(set(seeds)) != len(seeds):
        raise ValueError("--rhos and --seeds must not repeat values")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for rho in rhos:
        for seed in seeds:
            run = AblationRun(rho, seed, run_dir_for(out_dir, rho, seed))
            marker = run.run_dir / DONE_MARKER
            if marker.is_file():
                done = json.loads(marker.read_text())
                run.returncode, run.seconds = done["returncode"], done["seconds"]
                logger.info("%s: finished earlier, skipped", run.name)
            else:
                command = train_command(train_script, extra, rho, seed, run.run_dir)
                logger.info("%s: %s", run.name, " ".join(command))
                started = time.monotonic()
                run.returncode, run.message = _run_one(command, run.run_dir, timeout)
                run.seconds = time.monotonic() - started
                if run.ok:
                    marker.write_text(json.dumps({"returncode": 0, "seconds": run.seconds, "command": command}) + "\n")
                    logger.info("%s: done in %.0f s", run.name, run.seconds)
                else:
                    logger.error("%s: FAILED (%s); see %s", run.name, run.message, run.run_dir / "train.log")
            runs.append(run)
    return runs


def read_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """metric -> {rollout_id: value} from ``run_dir/metrics.jsonl`` (later lines win: a redone rollout replaces)."""
    path = run_dir / "metrics.jsonl"
    series: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return series
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        rollout_id = record.get("rollout_id")
        if not isinstance(rollout_id, int):
            continue
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("rollout_id", "time"):
                series.setdefault(key, {})[rollout_id] = float(value)
    return series


def collect(runs: Sequence[AblationRun]) -> None:
    for run in runs:
        run.series = read_series(run.run_dir)


def _eval_key(runs: Sequence[AblationRun]) -> str | None:
    """The first held-out evaluation metric (``eval/<name>``) the runs logged."""
    from slime_entropy.trainer.metrics import is_eval_score

    keys = sorted({k for r in runs for k in r.series if is_eval_score(k)})
    return keys[0] if keys else None


def _entropy_key(runs: Sequence[AblationRun]) -> str | None:
    for key in ENTROPY_KEYS:
        if any(key in r.series for r in runs):
            return key
    return None


def _values(series: dict[int, float]) -> list[float]:
    return [series[i] for i in sorted(series) if i >= 0]


def summarize_grid(runs: Sequence[AblationRun], window: int = 5) -> list[dict]:
    """One row per rho: statistics over its successful seeds (see the module docstring)."""
    if window < 1:
        raise ValueError(f"--window must be >= 1, got {window}")
    eval_key, entropy_key = _eval_key(runs), _entropy_key(runs)
    rows = []
    for rho in sorted({r.rho for r in runs}):
        members = [r for r in runs if r.rho == rho and r.ok and REWARD_KEY in r.series]
        per_seed: dict[str, list[float]] = {
            "reward_last": [],
            "reward_first": [],
            "reward_gain": [],
            "reward_mean": [],
            "eval_last": [],
            "entropy_last": [],
            "kept_ratio": [],
        }
        num_rollouts = []
        for run in members:
            rewards = _values(run.series[REWARD_KEY])
            num_rollouts.append(len(rewards))
            w = min(window, len(rewards))
            per_seed["reward_last"].append(float(np.mean(rewards[-w:])))
            per_seed["reward_first"].append(float(np.mean(rewards[:w])))
            per_seed["reward_gain"].append(per_seed["reward_last"][-1] - per_seed["reward_first"][-1])
            per_seed["reward_mean"].append(float(np.mean(rewards)))
            if eval_key and run.series.get(eval_key):
                evals = run.series[eval_key]
                per_seed["eval_last"].append(evals[max(evals)])
            if entropy_key and _values(run.series.get(entropy_key, {})):
                per_seed["entropy_last"].append(_values(run.series[entropy_key])[-1])
            if _values(run.series.get(KEPT_KEY, {})):
                per_seed["kept_ratio"].append(float(np.mean(_values(run.series[KEPT_KEY]))))
        row: dict = {
            "rho": rho,
            "num_seeds": len(members),
            "num_failed": sum(1 for r in runs if r.rho == rho and not r.ok),
            "num_rollouts": min(num_rollouts) if num_rollouts else 0,
            "eval_key": eval_key,
            "entropy_key": entropy_key,
        }
        for key, values in per_seed.items():
            row[key], row[f"{key}_ci95"] = mean_and_halfwidth(values)
        rows.append(row)
    return rows


def _band(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-band over equally long curves (trimmed to the shortest)."""
    length = min(c.size for c in curves)
    stack = np.stack([c[:length] for c in curves])
    mean = stack.mean(axis=0)
    if stack.shape[0] < 2:
        return mean, mean, mean
    half = t_quantile_975(stack.shape[0] - 1) * stack.std(axis=0, ddof=1) / math.sqrt(stack.shape[0])
    return mean, mean - half, mean + half


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, values.size + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, values.size + 1) - window, 0)]) / counts


def plot_grid(runs: Sequence[AblationRun], path: str | Path, *, smooth: int = 5, title: str = "") -> Path:
    """Reward, held-out evaluation and entropy curves: per rho the mean over seeds and its 95% band."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    eval_key, entropy_key = _eval_key(runs), _entropy_key(runs)
    panels = [(REWARD_KEY, f"training reward (trailing mean of {smooth})" if smooth > 1 else "training reward")]
    if eval_key:
        panels.append((eval_key, f"evaluation {eval_key} (mean reward)"))
    if entropy_key:
        panels.append((entropy_key, f"token entropy ({entropy_key})"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rho in enumerate(sorted({r.rho for r in runs})):
        members = [r for r in runs if r.rho == rho and r.ok]
        color = colors[i % len(colors)]
        for ax, (key, _) in zip(axes[0], panels, strict=True):
            curves, xs = [], None
            for run in members:
                series = run.series.get(key, {})
                ids = sorted(k for k in series if key != REWARD_KEY or k >= 0)
                if not ids:
                    continue
                values = np.array([series[k] for k in ids])
                if key == REWARD_KEY:
                    values = _trailing_mean(values, smooth)
                curves.append(values)
                xs = ids if xs is None or len(ids) < len(xs) else xs
            if not curves:
                continue
            mean, low, high = _band(curves)
            x = np.array(xs[: mean.size]) + (1 if key.startswith("eval/") else 0)  # eval after rollout i: i + 1 done
            label = f"ρ={rho:g} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
            ax.plot(x, mean, color=color, label=label, marker="o" if key.startswith("eval/") else None, markersize=3)
            if len(curves) > 1:
                ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
    for ax, (_, label) in zip(axes[0], panels, strict=True):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("rollouts trained")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


_COLUMNS = (
    ("reward_last", "reward, last {w}"),
    ("reward_first", "reward, first {w}"),
    ("reward_gain", "gain"),
    ("reward_mean", "reward, all rollouts"),
    ("eval_last", "held-out, last eval"),
    ("entropy_last", "entropy, last"),
    ("kept_ratio", "kept ratio"),
)


def format_table(rows: Sequence[dict], window: int) -> str:
    def cell(row, key):
        mean, half = row[key], row[f"{key}_ci95"]
        if math.isnan(mean):
            return "–"
        return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"

    header = ["ρ", "seeds", "rollouts"] + [label.format(w=window) for _, label in _COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seeds = f"{row['num_seeds']}" + (f" ({row['num_failed']} failed)" if row["num_failed"] else "")
        cells = [f"{row['rho']:g}", seeds, str(row["num_rollouts"])] + [cell(row, key) for key, _ in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, runs: Sequence[AblationRun], *, window: int, smooth: int, command: str) -> dict:
    out_dir = Path(out_dir)
    rows = summarize_grid(runs, window)
    table = format_table(rows, window)
    note = (
        f"Mean over seeds ± half-width of the 95% Student-t interval. Reward: `{REWARD_KEY}` (mean reward of the "
        f"rollout's samples), first/last {window} rollouts per seed; held-out: the last `{rows[0]['eval_key']}`."
        if rows
        else ""
    )
    (out_dir / "ablation.md").write_text(f"# ρ ablation\n\n`{command}`\n\n{table}\n\n{note}\n", encoding="utf-8")
    with (out_dir / "ablation.csv").open("w", encoding="utf-8") as f:
        keys = list(rows[0]) if rows else []
        f.write(",".join(keys) + "\n")
        for row in rows:
            f.write(",".join("" if row[k] is None else str(row[k]) for k in keys) + "\n")
    payload = {
        "command": command,
        "window": window,
        "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows],
        "runs": [
            {k: str(v) if isinstance(v, Path) else v for k, v in asdict(r).items() if k != "series"} for r in runs
        ],
    }
    (out_dir / "ablation.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot_grid(runs, out_dir / "ablation.png", smooth=smooth, title="ρ ablation: mean over seeds, 95% bands")
    return {"rows": rows, "table": table}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m slime_entropy.analysis.ablation",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_ablation_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.collect_only and not Path(args.train_script).is_file():
        parser.error(f"--train-script {args.train_script}: no such file (run from the repository root)")
    try:
        if args.collect_only:
            runs = [
                AblationRun(rho, seed, run_dir_for(Path(args.out_dir), rho, seed), returncode=0)
                for rho in args.rhos
                for seed in args.seeds
                if (run_dir_for(Path(args.out_dir), rho, seed) / "metrics.jsonl").is_file()
            ]
        else:
            runs = run_grid(
                args.out_dir,
                args.rhos,
                args.seeds,
                extra=extra,
                train_script=args.train_script,
                timeout=args.run_timeout,
            )
    except ValueError as e:
        parser.error(str(e))
    collect(runs)
    command = "python -m slime_entropy.analysis.ablation " + " ".join(argv + (["--", *extra] if extra else []))
    result = write_outputs(args.out_dir, runs, window=args.window, smooth=args.smooth, command=command)
    print(result["table"])
    print(f"\n{Path(args.out_dir) / 'ablation.md'}, ablation.png, ablation.csv, ablation.json")
    failed = [r for r in runs if not r.ok]
    for run in failed:
        print(f"FAILED {run.name}: {run.message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
