"""What the driver records about each rollout: metrics (JSONL, W&B), the console summary, rollout dumps and plots.

    report = RunReport(config, run_dir, num_rollout, start_rollout_id)
    for rollout_id in report.progress():                     # tqdm over the remaining rollouts
        ...
        metrics = report.trained(rollout_id, batch, trained) # + the rollout dump, before the checkpoint commits
        ...
        report.rollout(rollout_id, metrics, timings, evaluation)
    report.finish()                                          # plots, the learning summary

At the end it prints the mean reward of the first and last five rollouts of the whole run (from ``metrics.jsonl``, so
it covers the run's earlier attempts too).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from slime_entropy.rollout_dump import DumpHeader, write_rollout_dump
from slime_entropy.trainer.config import TrainerConfig
from slime_entropy.trainer.handles import RolloutBatch, TrainResult
from slime_entropy.trainer.metrics import MetricsLogger, read_metrics, summary_line
from slime_entropy.trainer.plots import plot_run

__all__ = ["RunReport", "learning_summary", "report_finished_run"]

logger = logging.getLogger(__name__)


def learning_summary(run_dir: str | Path, window: int = 5) -> dict[str, float] | None:
    """Mean ``rollout/raw_reward`` of the first and last ``window`` rollouts of a run (None if it has fewer)."""
    rewards = [r["rollout/raw_reward"] for r in read_metrics(run_dir) if "rollout/raw_reward" in r]
    if len(rewards) < 2 * window:
        return None
    first, last = sum(rewards[:window]) / window, sum(rewards[-window:]) / window
    return {"first": first, "last": last, "gain": last - first, "num_rollouts": len(rewards)}


def report_finished_run(config: TrainerConfig) -> None:
    """What a rerun of a finished run prints (without starting anything)."""
    lines = [
        f"nothing to do: {config.load_dir} holds the checkpoint of the last rollout ({config.run.num_rollout} "
        "rollouts); raise --num-rollout to train further, or use another --run-dir/--save/--load for a new run"
    ]
    summary = learning_summary(config.run.run_dir)
    if summary is not None:
        lines.append(_summary_text(summary))
    print("\n".join(lines))


def _summary_text(summary: dict[str, float]) -> str:
    return (
        f"mean reward: first 5 rollouts {summary['first']:.3f}, last 5 rollouts {summary['last']:.3f} "
        f"({summary['gain']:+.3f} over {summary['num_rollouts']} rollouts)"
    )


class RunReport:
    def __init__(self, config: TrainerConfig, run_dir: Path, num_rollout: int, start_rollout_id: int):
        self.config = config
        self.run_dir = Path(run_dir)
        self.num_rollout = num_rollout
        self.start = start_rollout_id
        self.keep_fraction = config.loss.entropy_filter.keep_fraction if config.loss.entropy_filter.enabled else None
        self.metrics = MetricsLogger(self.run_dir, config.wandb, _flat_config(config))
        self.num_steps_done = start_rollout_id * config.batch.num_steps_per_rollout
        self.interactive = sys.stderr.isatty()

    def progress(self) -> Iterator[int]:
        bar = tqdm(
            range(self.start, self.num_rollout),
            initial=self.start,
            total=self.num_rollout,
            desc="rollouts",
            unit="rollout",
            disable=not self.interactive,
            dynamic_ncols=True,
        )
        yield from bar

    def evaluation(self, rollout_id: int, metrics: dict[str, float]) -> None:
        """Evaluation results not tied to a trained rollout (before the first one: ``rollout_id`` -1)."""
        self.metrics.log(rollout_id, metrics)
        tqdm.write("evaluation before training: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                             if k.count("/") == 1))  # fmt: skip

    def trained(self, rollout_id: int, batch: RolloutBatch, trained: TrainResult) -> dict[str, float]:
        """The rollout's metrics as of the end of training, and its dump (``--save-rollouts``) written: both before
        the checkpoint commits, so that a crash right after the commit loses neither (see ``resume``)."""
        self.num_steps_done += self.config.batch.num_steps_per_rollout
        metrics = {**batch.metrics, **trained.metrics, "train/step": self.num_steps_done}
        if batch.records is not None:
            self._dump(rollout_id, batch, trained, metrics)
        return metrics

    def rollout(
        self, rollout_id: int, metrics: dict[str, float], timings: dict[str, float], evaluation: dict[str, float]
    ) -> None:
        """Log the finished rollout: metrics.jsonl, W&B, the summary line, and the plots every --plot-interval."""
        metrics = {**metrics, **timings, **evaluation}
        self.metrics.log(rollout_id, metrics)
        tqdm.write(summary_line(rollout_id, self.num_rollout, metrics))
        interval = self.config.run.plot_interval
        if interval and (rollout_id + 1) % interval == 0:
            self._plot()

    def _dump(self, rollout_id: int, batch: RolloutBatch, trained: TrainResult, metrics: dict[str, float]) -> None:
        samples = []
        for position, record in enumerate(batch.records):
            entropy, log_probs = trained.fields[position]
            samples.append({**record, "entropy": entropy, "log_probs": log_probs})
        entropy_filter = self.config.loss.entropy_filter
        header = DumpHeader(
            rollout_id=rollout_id,
            num_samples=len(samples),
            weight_version=str(rollout_id),
            temperature=self.config.rollout.sampling.temperature,
            n_samples_per_prompt=self.config.batch.n_samples_per_prompt,
            entropy_filter={
                "enabled": entropy_filter.enabled,
                "keep_fraction": entropy_filter.keep_fraction,
                "threshold_scope": entropy_filter.threshold_scope,
            },
            hf_checkpoint=self.config.megatron.checkpoint.hf_checkpoint,
            metrics=metrics,
        )
        write_rollout_dump(self.run_dir, header, samples)

    def _plot(self) -> None:
        try:
            plot_run(self.run_dir, self.keep_fraction)
        except Exception:  # noqa: BLE001 - a plotting problem must not stop training
            logger.exception("drawing the plots failed")

    def finish(self) -> None:
        self.metrics.close()
        self._plot()
        summary = learning_summary(self.run_dir)
        lines = [f"run directory: {self.run_dir} (metrics.jsonl, plots/overview.png"
                 + (", rollouts/" if self.config.run.save_rollouts else "") + ")"]  # fmt: skip
        if summary is not None:
            lines.append(_summary_text(summary))
        tqdm.write("\n".join(lines))

    def close(self) -> None:
        self.metrics.close()


def _flat_config(config: TrainerConfig) -> dict:
    return {k: v for k, v in vars(config.slime_args).items() if isinstance(v, str | int | float | bool | type(None))}
