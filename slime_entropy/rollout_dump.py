"""Rollout dumps: every sample of a rollout with its tokens, reward, advantage and the trainer's per-token entropy and
log-probs. Written by ``train.py --save-rollouts``; read by ``python -m slime_entropy.analysis`` and anyone else.

Layout: one file per rollout, ``<run-dir>/rollouts/rollout_<id, 6 digits>.jsonl``, UTF-8 JSON Lines. Line 1 is the
header, every further line one sample, in the rollout's order (groups contiguous, ordered by group index). Files are
written to a temporary name and renamed, so a file that exists is complete. After a resume the dumps of rollouts
that were redone are replaced, so each rollout id appears once.

Header (``DumpHeader``)::

    {"format": "slime_entropy.rollout_dump", "version": 1, "rollout_id": 12, "num_samples": 128,
     "weight_version": "12", "temperature": 1.0, "n_samples_per_prompt": 8,
     "entropy_filter": {"enabled": true, "keep_fraction": 0.2, "threshold_scope": "dp"},
     "hf_checkpoint": "/path/model", "metrics": {"rollout/raw_reward": 0.53, "train/entropy_threshold": 0.91, ...}}

Sample line (``SampleRecord``; ``P`` prompt tokens, ``R`` response tokens)::

    {"index": 1536, "group_index": 192, "prompt": <dataset prompt: text or message list>, "prompt_text": "...",
     "response": "...", "label": "9", "metadata": {...},
     "reward": 1.0,               # the scalar reward (dict rewards: the --reward-key entry; full dict in
     "reward_detail": null,       #  reward_detail)
     "advantage": 0.93,           # the GRPO-normalised reward the loss used (same on every response token)
     "status": "completed",       # completed | truncated | aborted
     "weight_version": "12",
     "prompt_tokens": [P ints], "response_tokens": [R ints],
     "loss_mask": [R 0/1],
     "rollout_log_probs": [R floats],   # the engine's log p(token) at --rollout-temperature
     "log_probs": [R floats],           # the trainer's old-policy log p(token) (same temperature, before the update)
     "entropy": [R floats]}             # the trainer's entropy (nats) of the full tempered next-token distribution

``entropy`` and ``log_probs`` come from the training ranks' no-grad pass over the rollout, before the optimizer steps
on it: the entropies the filter's threshold is computed from (exactly so with ``--entropy-threshold-scope step``;
``dp``/``local`` take their threshold per micro-batch from the current policy's entropies, identical on the first
step of a rollout). Floats are float32 values printed with 9 significant digits (exact round trip to float32).

Reading::

    from slime_entropy.rollout_dump import iter_rollout_dumps
    for dump in iter_rollout_dumps("runs/embedded"):              # sorted by rollout id
        for s in dump.samples:
            s.entropy            # numpy float32 [R]
            s.response_tokens    # numpy int64 [R]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "VERSION",
    "DumpHeader",
    "SampleRecord",
    "RolloutDump",
    "dump_path",
    "write_rollout_dump",
    "read_rollout_dump",
    "iter_rollout_dumps",
    "list_rollout_dumps",
]

FORMAT = "slime_entropy.rollout_dump"
VERSION = 1
_NAME = re.compile(r"^rollout_(\d{6,})\.jsonl$")
_FLOAT_FIELDS = ("rollout_log_probs", "log_probs", "entropy")
_INT_FIELDS = ("prompt_tokens", "response_tokens", "loss_mask")


@dataclass
class DumpHeader:
    rollout_id: int
    num_samples: int
    weight_version: str | None = None
    temperature: float = 1.0
    n_samples_per_prompt: int = 1
    entropy_filter: dict[str, Any] = field(default_factory=dict)
    hf_checkpoint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION


@dataclass
class SampleRecord:
    index: int
    group_index: int
    prompt: Any
    prompt_text: str
    response: str
    label: Any
    reward: float
    advantage: float
    status: str
    prompt_tokens: np.ndarray
    response_tokens: np.ndarray
    loss_mask: np.ndarray
    rollout_log_probs: np.ndarray
    log_probs: np.ndarray
    entropy: np.ndarray
    weight_version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reward_detail: Any = None

    @property
    def response_length(self) -> int:
        return int(self.response_tokens.shape[0])


@dataclass
class RolloutDump:
    header: DumpHeader
    samples: list[SampleRecord]
    path: Path | None = None


def dump_path(run_dir: str | Path, rollout_id: int) -> Path:
    """``<run_dir>/rollouts/rollout_<id>.jsonl``."""
    return Path(run_dir) / "rollouts" / f"rollout_{rollout_id:06d}.jsonl"


def _f32(values: Sequence[float]) -> list[float]:
    return [float(f"{v:.9g}") for v in np.asarray(values, dtype=np.float32).tolist()]


def write_rollout_dump(run_dir: str | Path, header: DumpHeader, samples: Sequence[dict[str, Any]]) -> Path:
    """Write one rollout atomically. ``samples``: dicts with the fields of :class:`SampleRecord` (lists or arrays).

    Every sample must have ``R`` entries in each per-token field, ``R = len(response_tokens)``; raises ``ValueError``
    naming the sample otherwise.
    """
    path = dump_path(run_dir, header.rollout_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    header_obj = {**header.__dict__, "num_samples": len(samples)}
    lines = [json.dumps(header_obj, sort_keys=True, default=_json_default)]
    for sample in samples:
        record = dict(sample)
        num_response = len(record["response_tokens"])
        for name in _FLOAT_FIELDS + ("loss_mask",):
            if len(record[name]) != num_response:
                raise ValueError(
                    f"sample {record.get('index')}: {name} has {len(record[name])} entries for {num_response} "
                    "response tokens"
                )
        for name in _FLOAT_FIELDS:
            record[name] = _f32(record[name])
        for name in _INT_FIELDS:
            record[name] = [int(t) for t in record[name]]
        record["reward"] = float(record["reward"])
        record["advantage"] = float(f"{float(record['advantage']):.9g}")
        lines.append(json.dumps(record, sort_keys=True, ensure_ascii=False, default=_json_default))
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _json_default(obj: Any):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def read_rollout_dump(path: str | Path) -> RolloutDump:
    """Read one dump file; raises ``ValueError`` naming the file and line for anything malformed."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty rollout dump")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:1: header is not JSON ({e})") from None
    if head.get("format") != FORMAT:
        raise ValueError(f"{path}:1: not a {FORMAT} file (format={head.get('format')!r})")
    if head.get("version") != VERSION:
        raise ValueError(f"{path}:1: format version {head.get('version')} is not supported (this reader: {VERSION})")
    known = set(DumpHeader.__dataclass_fields__)
    header = DumpHeader(**{k: v for k, v in head.items() if k in known})
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            raw = json.loads(line)
            for name in _FLOAT_FIELDS:
                raw[name] = np.asarray(raw[name], dtype=np.float32)
            for name in _INT_FIELDS:
                raw[name] = np.asarray(raw[name], dtype=np.int64)
            samples.append(SampleRecord(**{k: v for k, v in raw.items() if k in SampleRecord.__dataclass_fields__}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{number}: malformed sample ({type(e).__name__}: {e})") from None
    if len(samples) != header.num_samples:
        raise ValueError(f"{path}: header says {header.num_samples} samples, the file has {len(samples)}")
    return RolloutDump(header, samples, path)


def list_rollout_dumps(rollouts_dir: str | Path) -> list[tuple[int, Path]]:
    """``(rollout_id, path)`` of every dump in a ``rollouts/`` directory, sorted by rollout id."""
    rollouts_dir = Path(rollouts_dir)
    if not rollouts_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in rollouts_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def iter_rollout_dumps(run_dir: str | Path) -> Iterator[RolloutDump]:
    """Every rollout dump of a run directory (or of a ``rollouts/`` directory itself), by rollout id."""
    run_dir = Path(run_dir)
    directory = run_dir if run_dir.name == "rollouts" else run_dir / "rollouts"
    for _, path in list_rollout_dumps(directory):
        yield read_rollout_dump(path)
