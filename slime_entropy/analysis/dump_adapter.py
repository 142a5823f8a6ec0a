"""The trainer's rollout dumps (:mod:`slime_entropy.rollout_dump`) -> analysis records (``AnalysisSample``).

The only module of the analysis that knows the dump format. Each ``--rollout-dump`` path is a dump file
(``rollout_000012.jsonl``), a ``rollouts/`` directory or a run directory (every dump in it, by rollout id). Every
sample becomes one record: prompt + response tokens, the loss mask, the trainer's entropy and old-policy log-probs,
the scalar reward, grouped as ``rollout <id>`` so the report's per-group table follows the entropy over training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slime_entropy.analysis.records import AnalysisSample

__all__ = ["load_rollout_dumps", "samples_from_dump", "DumpInfo"]

logger = logging.getLogger(__name__)


class DumpInfo:
    """What the dump headers say about how the entropies were computed (for consistency checks)."""

    def __init__(self):
        self.temperatures: set[float] = set()
        self.hf_checkpoints: set[str] = set()
        self.rollout_ids: list[int] = []


def samples_from_dump(dump) -> list[AnalysisSample]:
    """Records of one :class:`slime_entropy.rollout_dump.RolloutDump`."""
    group = f"rollout {dump.header.rollout_id}"
    out = []
    for s in dump.samples:
        out.append(
            AnalysisSample(
                sample_id=f"{group}/{s.index}",
                tokens=np.concatenate([s.prompt_tokens, s.response_tokens]),
                response_length=s.response_length,
                response_mask=np.asarray(s.loss_mask) > 0,
                entropy=s.entropy,
                log_probs=s.log_probs,
                reward=float(s.reward),
                prompt_text=s.prompt_text,
                group=group,
                extra={
                    "advantage": s.advantage,
                    "status": s.status,
                    "group_index": s.group_index,
                    "origin": str(dump.path) if dump.path else "",
                },
            )
        )
    return out


def _dumps(path: Path):
    from slime_entropy.rollout_dump import iter_rollout_dumps, read_rollout_dump

    if path.is_file():
        return [read_rollout_dump(path)]
    if path.is_dir():
        dumps = list(iter_rollout_dumps(path))
        if not dumps:
            raise ValueError(f"--rollout-dump {path}: no rollout_<id>.jsonl in it (nor in {path}/rollouts)")
        return dumps
    raise ValueError(f"--rollout-dump {path}: no such file or directory")


def load_rollout_dumps(paths: Sequence[str | Path], info: DumpInfo | None = None) -> list[AnalysisSample]:
    """Every sample of every dump under ``paths``, in rollout order; ``info`` (optional) collects the headers."""
    samples: list[AnalysisSample] = []
    info = info if info is not None else DumpInfo()
    for raw in paths:
        for dump in _dumps(Path(raw)):
            if dump.header.rollout_id in info.rollout_ids:
                raise ValueError(
                    f"--rollout-dump: rollout {dump.header.rollout_id} is given twice ({dump.path}); give each once"
                )
            info.rollout_ids.append(dump.header.rollout_id)
            info.temperatures.add(float(dump.header.temperature))
            if dump.header.hf_checkpoint:
                info.hf_checkpoints.add(dump.header.hf_checkpoint)
            samples.extend(samples_from_dump(dump))
    if not samples:
        raise ValueError("--rollout-dump: the dumps hold no sample")
    if len(info.temperatures) > 1:
        logger.warning("the dumps' entropies were computed at different temperatures: %s", sorted(info.temperatures))
    return samples
