"""Per-rollout metrics: one JSON line per rollout in ``<run-dir>/metrics.jsonl``, a one-line summary on the console,
and (``--use-wandb``) the same numbers in Weights & Biases, with slime's metric names and the rollout id as step.

Names (slime's where slime has them):

- ``rollout/raw_reward`` (mean reward), ``rollout/rewards`` (mean normalised reward), ``rollout/response_lengths``,
  ``rollout/truncated``, ``rollout/entropy`` and ``rollout/log_probs`` (old policy, token means),
  ``rollout/num_*`` (sampling rounds, dropped groups, reward failures, retries, engine restarts);
- ``train/<loss metric>`` averaged over the rollout's optimizer steps: ``loss``, ``pg_loss``, ``entropy_loss``,
  ``pg_clipfrac``, ``ppo_kl``, ``entropy_token_ratio`` (kept ratio), ``entropy_threshold`` (tau), ``entropy_mean``,
  ``entropy_kept_mean``, ``grad_norm``, ``lr``; ``train/step`` = optimizer steps so far;
- ``perf/rollout_time``, ``perf/log_probs_time``, ``perf/train_time``, ``perf/save_time``,
  ``perf/update_weights_time``, ``perf/eval_time``, ``perf/step_time`` (the whole rollout),
  ``perf/rollout_tokens_per_s``;
- ``eval/<name>`` (mean reward over the evaluation set), ``eval/<name>/response_lengths``, ``eval/<name>/truncated``.

W&B runs offline into the run directory unless a key is available (``--wandb-key``, ``WANDB_API_KEY`` or a stored
login) or ``--wandb-mode online``; a resumed run continues the same W&B run (its id is kept in the run directory).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from slime_entropy.trainer.config import WandbConfig

__all__ = ["MetricsLogger", "summary_line", "read_metrics"]

logger = logging.getLogger(__name__)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` (complete lines only), in file order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


EVAL_BOOKKEEPING = ("eval/time_s", "eval/num_reward_failures")
"""``eval/*`` keys that are not a data set's score: seconds and a count."""


def is_eval_score(key: str) -> bool:
    """``eval/<name>``: the avg@n score of one evaluation data set (not its sub-metrics, timing or failure count)."""
    return key.startswith("eval/") and key.count("/") == 1 and key not in EVAL_BOOKKEEPING


def summary_line(rollout_id: int, num_rollout: int, m: dict[str, float]) -> str:
    """One line per rollout, numbered by rollout id (from 0, as metrics.jsonl, checkpoints, dumps and failure
    messages), with the progress count in brackets, e.g.
    ``rollout 6 [7/40] | reward 0.531 | kept 0.207 tau 0.912 | H 0.412 | len 17.3 | pg_loss -1.2e-02 gnorm 0.530 |
    3.2 s``.
    """
    parts = [
        f"rollout {rollout_id} [{rollout_id + 1}/{num_rollout}]",
        f"reward {_fmt(m.get('rollout/raw_reward'), '.3f')}",
        f"kept {_fmt(m.get('train/entropy_token_ratio'), '.3f')} tau {_fmt(m.get('train/entropy_threshold'), '.3f')}",
        f"H {_fmt(m.get('rollout/entropy'), '.3f')}",
        f"len {_fmt(m.get('rollout/response_lengths'), '.1f')}",
        f"pg_loss {_fmt(m.get('train/pg_loss'), '+.2e')} gnorm {_fmt(m.get('train/grad_norm'), '.3f')}",
    ]
    evals = [f"{k.removeprefix('eval/')} {v:.3f}" for k, v in m.items() if is_eval_score(k)]
    if evals:
        parts.append("eval " + ", ".join(evals))
    parts.append(f"{_fmt(m.get('perf/step_time'), '.1f')} s")
    return " | ".join(parts)


class MetricsLogger:
    def __init__(self, run_dir: Path, wandb_config: WandbConfig, run_config: dict[str, Any]):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._wandb = None
        if wandb_config.enabled:
            self._wandb = _init_wandb(Path(run_dir), wandb_config, run_config)

    def log(self, rollout_id: int, metrics: dict[str, float]) -> None:
        record = {"rollout_id": rollout_id, "time": time.time(), **metrics}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")  # one write per line: a crash never splits one
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({**metrics, "rollout/step": rollout_id}, step=rollout_id)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _init_wandb(run_dir: Path, config: WandbConfig, run_config: dict[str, Any]):
    import wandb

    key = config.key or os.environ.get("WANDB_API_KEY")
    mode = config.mode
    if mode == "auto":
        mode = "online" if key or _has_stored_login() else "offline"
    if key and mode == "online":
        wandb.login(key=key, relogin=False)
    id_path = run_dir / "wandb_run_id"
    run_id = id_path.read_text().strip() if id_path.is_file() else uuid.uuid4().hex[:12]
    id_path.write_text(run_id + "\n")
    run = wandb.init(
        project=config.project,
        group=config.group,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=run_config,
    )
    run.define_metric("rollout/step")
    run.define_metric("*", step_metric="rollout/step")
    if mode == "offline":
        logger.info("W&B: logging offline into %s (no key; upload later with `wandb sync`)", run_dir / "wandb")
    return run


def _has_stored_login() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
