"""Checkpoints, resume and the run directory: what makes "rerun the same command" continue exactly.

A checkpoint of rollout ``N`` is two things, committed in this order:

1. ``<save>/rollout/data_state_0000N.json``: the prompt source's position after rollout ``N`` (epoch, offset,
   handed-back prompts, next sample/group indices), written atomically (temporary file, fsync, rename);
2. the Megatron checkpoint ``<save>/iter_000000N`` (weights, optimizer, LR schedule, RNG), whose tracker file
   ``latest_checkpointed_iteration.txt`` is replaced last. The tracker is the commit point.

A crash anywhere leaves the tracker at the previous checkpoint, whose data state exists. Resuming (``--load``) starts
at rollout ``N + 1`` with the model, optimizer, schedule, RNG and data position of that moment; the built-in engine
samples each prompt with a seed derived from the sample's index (``sampling_seed``), so the resumed run regenerates
the uninterrupted run's samples and its next loss is the uninterrupted run's.

The run directory keeps the rest of the story consistent with the checkpoint: on resume, ``metrics.jsonl`` lines and
rollout dumps of rollouts ``>= N + 1`` (work after the checkpoint, redone now) are dropped, so every rollout appears
once. ``args.json`` records the flags; resuming with different training flags is refused with the difference
(a different run would silently continue from someone else's checkpoint), except for flags that may change between
attempts (:data:`RESUMABLE_CHANGES`: run length, logging, timeouts, evaluation, resources).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from slime_entropy.trainer.session import TrainerFailure

__all__ = [
    "RunDirectory",
    "Checkpointer",
    "expected_start",
    "data_state_path",
    "write_json_atomic",
    "read_data_state",
    "RESUMABLE_CHANGES",
]

logger = logging.getLogger(__name__)

# Flags that may differ between a run and its resumption. --num-steps-per-rollout: the resolved
# --global-batch-size is recorded and compared, and with the rollout size it fixes the steps per rollout.
RESUMABLE_CHANGES = frozenset(
    {
        "num_steps_per_rollout",
        "num_rollout", "num_epoch", "load", "save", "run_dir", "ckpt_step", "no_load_optim", "no_load_rng",
        "save_interval", "save_hf", "save_rollouts", "plot_interval", "log_level", "dry_run", "use_wandb",
        "wandb_project", "wandb_group", "wandb_key", "wandb_mode", "distributed_timeout_minutes", "eval_interval",
        "eval_prompt_data", "n_samples_per_eval_prompt", "eval_max_response_len", "eval_temperature", "eval_top_p",
        "embedded_cache_dir", "rollout_health_check_interval", "rollout_health_check_timeout",
        "rollout_engine_startup_timeout", "rollout_max_request_retries", "sglang_router_request_timeout_secs",
        "reward_num_workers", "reward_timeout", "builtin_engine_num_threads", "builtin_engine_max_batch_size",
        "rollout_num_engines", "rollout_external_engine_addrs", "rollout_engine_host", "sglang_server_concurrency",
    }
)  # fmt: skip


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def data_state_path(ckpt_dir: str | Path, rollout_id: int) -> Path:
    return Path(ckpt_dir) / "rollout" / f"data_state_{rollout_id:07d}.json"


def read_data_state(path: Path) -> dict:
    """A checkpoint's data position (``data_state_*.json``); a damaged file is a ``ValueError`` that says so."""
    try:
        state = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = getattr(e, "msg", e)
        raise ValueError(f"{path} is damaged (not valid JSON: {reason}; cut short by a crash?)") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is damaged (holds a {type(state).__name__}, not the data position)")
    return state


def _unset_on_one_side(key: str, previous: dict[str, Any], current: dict[str, Any]) -> bool:
    """A flag one attempt's parser did not have and the other left unset (None, or False for a switch): the
    ``--sglang-*`` options mirrored from the installed SGLang exist only where it is installed, so installing or
    removing SGLang between attempts changes the recorded keys, not the training."""
    present = previous if key in previous else current
    return (key in previous) != (key in current) and present[key] in (None, False)


def _jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: v for k, v in sorted(vars(args).items()) if isinstance(v, str | int | float | bool | list | dict | None)
    }


class RunDirectory:
    """``<run-dir>``: ``args.json``, ``metrics.jsonl``, ``plots/``, ``rollouts/``, ``engines/`` (engine logs),
    ``engine_weights/``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def rollouts_dir(self) -> Path:
        return self.root / "rollouts"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @staticmethod
    def flag_differences(recorded: Path, args: argparse.Namespace) -> list[str]:
        """Why resuming the run whose flags ``recorded`` (an ``args.json``) holds with ``args`` is refused: one
        problem naming every training flag that differs (none: resumable)."""
        previous = json.loads(Path(recorded).read_text())
        current = _jsonable_args(args)
        differences = [
            f"--{key.replace('_', '-')}: {previous.get(key)!r} then, {current.get(key)!r} now"
            for key in sorted(set(previous) | set(current))
            if key not in RESUMABLE_CHANGES
            and previous.get(key) != current.get(key)
            and not _unset_on_one_side(key, previous, current)
        ]
        if not differences:
            return []
        return [
            f"{Path(recorded).parent} holds a run made with other flags, and resuming it with these would continue "
            "someone else's training:\n  " + "\n  ".join(differences) + "\nUse another --run-dir (and --save), or "
            f"rerun with the flags recorded in {recorded}"
        ]

    def check_flags(self, args: argparse.Namespace, *, resuming: bool) -> None:
        """Refuse to resume with different training flags; record the flags of this attempt."""
        path = self.root / "args.json"
        if resuming and path.is_file():
            differences = self.flag_differences(path, args)
            if differences:
                raise TrainerFailure(differences[0])
        write_json_atomic(path, _jsonable_args(args))

    def record_processes(self, actors, rollout) -> None:
        """``processes.json``: which process is which (driver, training ranks with their nodes, rollout worker,
        engines), for whoever has to find, watch or stop one of them."""
        write_json_atomic(
            self.root / "processes.json",
            {
                "driver": os.getpid(),
                "train_ranks": [
                    {**info, "node_id": slot.node_id, "node_ip": slot.node_ip, "gpu_id": slot.gpu_id}
                    for info, slot in zip(actors.infos, actors.placement.train, strict=True)
                ],
                "rollout_worker": rollout.pid,
                "engines": rollout.engine_pids(),
            },
        )

    def forget_after(self, last_kept_rollout: int, checkpointed_record: dict | None = None) -> None:
        """Drop metrics lines and rollout dumps of rollouts after ``last_kept_rollout`` (redone on resume; from
        scratch, ``-1``, the evaluation before training is redone too). ``checkpointed_record``: the metrics the
        checkpoint of ``last_kept_rollout`` carries, appended if a crash right after that checkpoint lost its line."""
        if self.metrics_path.is_file() or checkpointed_record is not None:
            kept, dropped = [], 0
            lines = self.metrics_path.read_text().splitlines() if self.metrics_path.is_file() else []
            logged = set()
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    dropped += 1
                    continue
                if last_kept_rollout >= 0 and record.get("rollout_id", -1) <= last_kept_rollout:
                    kept.append(line)
                    logged.add(record.get("rollout_id"))
                else:
                    dropped += 1
            if checkpointed_record is not None and last_kept_rollout not in logged:
                kept.append(json.dumps({**checkpointed_record, "rollout_id": last_kept_rollout, "recovered": True}))
                dropped += 1  # forces the rewrite
                logger.info("resume: metrics of rollout %d recovered from its checkpoint", last_kept_rollout)
            if dropped:
                tmp = self.metrics_path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(f"{line}\n" for line in kept))
                os.replace(tmp, self.metrics_path)
                logger.info("resume: dropped %d metrics records after rollout %d", dropped, last_kept_rollout)
        from slime_entropy.rollout_dump import list_rollout_dumps

        for rollout_id, path in list_rollout_dumps(self.rollouts_dir):
            if rollout_id > last_kept_rollout:
                path.unlink()


def expected_start(checkpoint) -> int:
    """The rollout a run with these checkpoint settings (``MegatronConfig.checkpoint``) starts at, read from the
    ``--load`` tracker as the training ranks will (they decide; this only lets the driver say it early)."""
    from slime_entropy.megatron.checkpoint import read_tracker

    if checkpoint.load is None or checkpoint.finetune:
        return 0
    iteration = checkpoint.ckpt_step if checkpoint.ckpt_step is not None else read_tracker(checkpoint.load)
    return 0 if iteration in (None, "release") else int(iteration) + 1


class Checkpointer:
    """slime's save rule (every ``--save-interval`` rollouts and at the last) with the data position alongside."""

    def __init__(self, save_dir: str | None, load_dir: str | None, save_interval: int | None):
        self.save_dir, self.load_dir, self.save_interval = save_dir, load_dir, save_interval

    def due(self, rollout_id: int, num_rollout: int) -> bool:
        if self.save_dir is None or self.save_interval is None:
            return False
        return (rollout_id + 1) % self.save_interval == 0 or rollout_id + 1 == num_rollout

    def save(self, rollout_id: int, num_rollout: int, actors, rollout, metrics: dict | None = None) -> bool:
        """Checkpoint rollout ``rollout_id`` if due: its data position (and metrics so far) first, then the Megatron
        commit."""
        if not self.due(rollout_id, num_rollout):
            return False
        state = {"rollout_id": rollout_id, "metrics": metrics, **rollout.state_dict()}
        write_json_atomic(data_state_path(self.save_dir, rollout_id), state)
        actors.save(rollout_id)
        return True

    def checkpointed_metrics(self, rollout_id: int) -> dict | None:
        """The metrics stored with the checkpoint of ``rollout_id`` (None without one)."""
        if rollout_id < 0 or self.load_dir is None:
            return None
        path = data_state_path(self.load_dir, rollout_id)
        return self._read(path).get("metrics") if path.is_file() else None

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return read_data_state(path)
        except ValueError as e:
            step = int(path.stem.rsplit("_", 1)[1])
            raise TrainerFailure(f"{e}; resume from an earlier checkpoint with --ckpt-step N (N < {step})") from None

    def restore(self, start_rollout_id: int, rollout, rollout_batch_size: int) -> None:
        """Put the prompt source where it was after rollout ``start_rollout_id - 1``."""
        if start_rollout_id == 0:
            return
        path = data_state_path(self.load_dir, start_rollout_id - 1) if self.load_dir else None
        if path is not None and path.is_file():
            state = self._read(path)
            rollout.load_state_dict({k: v for k, v in state.items() if k not in ("rollout_id", "metrics")})
            logger.info("resume: data position of rollout %d restored from %s", start_rollout_id - 1, path)
            return
        logger.warning(
            "resume: %s has no data position for rollout %d (a checkpoint not written by train.py); skipping %d "
            "prompts instead: the resumed run will not see exactly the prompts the original run would have",
            self.load_dir, start_rollout_id - 1, start_rollout_id * rollout_batch_size,
        )  # fmt: skip
        rollout.skip_prompts(start_rollout_id * rollout_batch_size)
