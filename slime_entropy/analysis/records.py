"""``AnalysisSample``: one response with per-token entropy and log-probs, and the readers that produce it.

Every analysis works on this record, whatever the source:

* a responses file (JSON lines): what ``--eval-output-dir`` and this package's ``scored_responses.jsonl`` write, or
  any file whose lines carry ``tokens`` (prompt + response ids) and ``response_length``; optional ``loss_mask``,
  ``entropy`` and ``log_probs`` (one per response token), ``scalar_reward``/``reward``, ``index``/``id``,
  ``prompt_text``, ``dataset``;
* the trainer's rollout dumps (:mod:`slime_entropy.analysis.dump_adapter`, the only module that knows that format);
* rollout ``Sample`` objects generated here (:func:`from_rollout_sample`).

Arrays are numpy: ``tokens`` int64 ``[L]`` (prompt then response), ``response_mask`` bool ``[R]`` (the tokens that
count: the trainer's loss mask), ``entropy`` / ``log_probs`` float32 ``[R]`` or None until scored.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AnalysisSample",
    "load_responses",
    "write_responses",
    "from_rollout_sample",
    "require_scored",
    "require_finite",
]


@dataclass(frozen=True, eq=False)
class AnalysisSample:
    sample_id: str
    """Unique within one analysis (e.g. ``"aime24/17"``, ``"rollout3/120"``)."""
    tokens: np.ndarray
    response_length: int
    response_mask: np.ndarray
    entropy: np.ndarray | None = None
    log_probs: np.ndarray | None = None
    text_pieces: tuple[str, ...] | None = None
    """One decoded piece per response token (concatenating to the response text), when known."""
    reward: float | None = None
    prompt_text: str | None = None
    group: str = ""
    """Free label used to split reports (eval set name, ``rollout 3``...)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        tokens = np.asarray(self.tokens, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "tokens", tokens)
        if not 1 <= self.response_length <= tokens.size:
            raise ValueError(
                f"sample {self.sample_id}: response_length {self.response_length} must lie in [1, {tokens.size}] "
                "(the number of response tokens at the end of tokens)"
            )
        mask = np.asarray(self.response_mask).reshape(-1).astype(bool)
        object.__setattr__(self, "response_mask", mask)
        self._check_len("response_mask", mask)
        for name in ("entropy", "log_probs"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float32).reshape(-1)
                object.__setattr__(self, name, value)
                self._check_len(name, value)
        if self.text_pieces is not None:
            pieces = tuple(self.text_pieces)
            object.__setattr__(self, "text_pieces", pieces)
            self._check_len("text_pieces", pieces)

    def _check_len(self, name: str, value) -> None:
        if len(value) != self.response_length:
            raise ValueError(
                f"sample {self.sample_id}: {name} has {len(value)} entries for {self.response_length} response tokens"
            )

    @property
    def response_tokens(self) -> np.ndarray:
        return self.tokens[self.tokens.size - self.response_length :]

    @property
    def prompt_length(self) -> int:
        return self.tokens.size - self.response_length

    @property
    def num_valid(self) -> int:
        return int(self.response_mask.sum())

    @property
    def is_scored(self) -> bool:
        return self.entropy is not None

    def replace(self, **changes) -> AnalysisSample:
        return dataclasses.replace(self, **changes)


def require_scored(samples: Sequence[AnalysisSample], what: str) -> None:
    missing = [s.sample_id for s in samples if s.entropy is None]
    if missing:
        raise ValueError(
            f"{what} needs per-token entropies, but {len(missing)} sample(s) have none (first: {missing[0]}); "
            "give --hf-checkpoint (or --torch-dist-checkpoint) to score them"
        )


def require_finite(samples: Sequence[AnalysisSample], scorer: str) -> None:
    """Raise unless every per-token entropy ``scorer`` produced is finite."""
    bad = [s.sample_id for s in samples if not np.isfinite(s.entropy).all()]
    if bad:
        raise ValueError(f"{scorer}: non-finite entropy in {len(bad)} response(s) (first {bad[0]})")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _scalar(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _iter_lines(path: Path) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{lineno}", row


def load_responses(path: str | Path, *, limit: int | None = None) -> list[AnalysisSample]:
    """Read a responses file (``.jsonl`` or ``.jsonl.gz``; see the module docstring). Errors name ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--responses {path}: no such file")
    samples: list[AnalysisSample] = []
    seen: set[str] = set()
    for origin, row in _iter_lines(path):
        if limit is not None and len(samples) >= limit:
            break
        for key in ("tokens", "response_length"):
            if key not in row:
                raise ValueError(f"{origin}: missing '{key}' (a responses line needs tokens and response_length)")
        response_length = row["response_length"]
        if not isinstance(response_length, int) or response_length < 1:
            raise ValueError(f"{origin}: response_length must be a positive integer, got {response_length!r}")
        group = str(row.get("dataset") or row.get("group") or "")
        raw_id = row.get("id", row.get("index", len(samples)))
        sample_id = f"{group}/{raw_id}" if group else str(raw_id)
        if sample_id in seen:
            sample_id = f"{sample_id}@{origin.rsplit(':', 1)[1]}"
        seen.add(sample_id)
        mask = row.get("loss_mask")
        reward = _scalar(row.get("scalar_reward"))
        if reward is None:
            reward = _scalar(row.get("reward"))
        pieces = row.get("text_pieces")
        try:
            samples.append(
                AnalysisSample(
                    sample_id=sample_id,
                    tokens=np.asarray(row["tokens"], dtype=np.int64),
                    response_length=response_length,
                    response_mask=np.ones(response_length, bool) if mask is None else np.asarray(mask, bool),
                    entropy=row.get("entropy"),
                    log_probs=row.get("log_probs"),
                    text_pieces=tuple(pieces) if pieces is not None else None,
                    reward=reward,
                    prompt_text=row.get("prompt_text"),
                    group=group,
                    extra={"origin": origin, **({"correct": row["correct"]} if "correct" in row else {})},
                )
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"{origin}: {e}") from None
    if not samples:
        raise ValueError(f"--responses {path}: the file holds no responses")
    return samples


def write_responses(path: str | Path, samples: Sequence[AnalysisSample]) -> Path:
    """Write ``samples`` as a responses file that :func:`load_responses` reads back (entropies included)."""
    path = Path(path)
    with gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else path.open("w", encoding="utf-8") as f:
        for s in samples:
            row: dict[str, Any] = {
                "id": s.sample_id,
                "group": s.group,
                "tokens": s.tokens.tolist(),
                "response_length": s.response_length,
                "loss_mask": s.response_mask.astype(int).tolist(),
                "reward": s.reward,
                "prompt_text": s.prompt_text,
            }
            if s.entropy is not None:
                row["entropy"] = s.entropy.tolist()
            if s.log_probs is not None:
                row["log_probs"] = s.log_probs.tolist()
            if s.text_pieces is not None:
                row["text_pieces"] = list(s.text_pieces)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def from_rollout_sample(sample, *, group: str = "", reward_key: str | None = None) -> AnalysisSample:
    """An unscored record from a rollout ``Sample`` (``slime_entropy.rollout.sample``)."""
    from slime_entropy.rollout.rewards.compute import scalar_reward

    reward = None
    if sample.reward is not None:
        try:
            reward = scalar_reward(sample, reward_key)
        except ValueError:
            reward = None
    return AnalysisSample(
        sample_id=f"{group}/{sample.index}" if group else str(sample.index),
        tokens=np.asarray(sample.tokens, dtype=np.int64),
        response_length=sample.response_length,
        response_mask=np.asarray(sample.effective_loss_mask(), dtype=bool),
        reward=reward,
        prompt_text=sample.prompt_text,
        group=group,
        extra={"status": sample.status.value},
    )
