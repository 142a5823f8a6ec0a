"""Overlap of the top-rho positions between models scored on the same responses (the paper's Table 1 analog).

For a reference model A and another model B, each selects its top-rho positions over the same tokens (the training
rule, :func:`~slime_entropy.analysis.statistics.select_top`). The overlap is ``|K_A ∩ K_B| / |K_A|``: the share of
A's forking positions that are still forking positions under B (the paper reports > 86% between the base and the
RL-trained Qwen3-14B at every training step). The Jaccard index ``|K_A ∩ K_B| / |K_A ∪ K_B|`` and the Pearson
correlation of the two models' entropies over the valid tokens are reported too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from slime_entropy.analysis.records import AnalysisSample
from slime_entropy.analysis.statistics import Selection, select_top, valid_entropies

__all__ = ["OverlapResult", "position_overlap", "compare_models"]


@dataclass(frozen=True)
class OverlapResult:
    reference: str
    other: str
    num_tokens: int
    num_reference_kept: int
    num_other_kept: int
    num_common: int
    overlap: float
    """|K_ref ∩ K_other| / |K_ref|"""
    jaccard: float
    entropy_pearson: float
    reference_entropy_mean: float
    other_entropy_mean: float

    def to_dict(self) -> dict:
        return asdict(self)


def _same_responses(a: Sequence[AnalysisSample], b: Sequence[AnalysisSample]) -> None:
    if len(a) != len(b):
        raise ValueError(f"overlap needs the same responses: {len(a)} vs {len(b)} samples")
    for x, y in zip(a, b, strict=True):
        if (
            x.sample_id != y.sample_id
            or not np.array_equal(x.tokens, y.tokens)
            or x.response_length != y.response_length
        ):
            raise ValueError(f"overlap needs the same responses: sample {x.sample_id} differs from {y.sample_id}")
        if not np.array_equal(x.response_mask, y.response_mask):
            raise ValueError(f"overlap needs the same response masks: sample {x.sample_id}")


def position_overlap(
    reference: Sequence[AnalysisSample],
    other: Sequence[AnalysisSample],
    *,
    reference_selection: Selection,
    other_selection: Selection,
    names: tuple[str, str] = ("reference", "other"),
) -> OverlapResult:
    """Overlap of two selections over the same responses (masks aligned sample by sample)."""
    _same_responses(reference, other)
    common = sum(
        int((m_a & m_b).sum()) for m_a, m_b in zip(reference_selection.masks, other_selection.masks, strict=True)
    )
    union = reference_selection.num_kept + other_selection.num_kept - common
    h_a = valid_entropies(reference).astype(np.float64)
    h_b = valid_entropies(other).astype(np.float64)
    if h_a.size > 1 and h_a.std() > 0 and h_b.std() > 0:
        pearson = float(np.corrcoef(h_a, h_b)[0, 1])
    else:
        pearson = math.nan
    return OverlapResult(
        reference=names[0],
        other=names[1],
        num_tokens=int(h_a.size),
        num_reference_kept=reference_selection.num_kept,
        num_other_kept=other_selection.num_kept,
        num_common=common,
        overlap=common / reference_selection.num_kept if reference_selection.num_kept else math.nan,
        jaccard=common / union if union else math.nan,
        entropy_pearson=pearson,
        reference_entropy_mean=float(h_a.mean()) if h_a.size else math.nan,
        other_entropy_mean=float(h_b.mean()) if h_b.size else math.nan,
    )


def compare_models(
    scored: Sequence[tuple[str, Sequence[AnalysisSample]]], rho: float, scope: str = "all"
) -> dict[str, list[OverlapResult]]:
    """Overlaps for models/checkpoints scored on the same responses, in the given order (reference first).

    Returns ``{"vs_reference": [A-B, A-C, ...], "vs_previous": [A-B, B-C, ...]}``; with training checkpoints in
    order, the first row says how far each step moved from the start, the second how much each step changed.
    """
    if len(scored) < 2:
        raise ValueError("comparing top-rho positions needs at least two scored models")
    selections = [select_top(samples, rho, scope) for _, samples in scored]
    ref_name, ref_samples = scored[0]
    vs_reference, vs_previous = [], []
    for i in range(1, len(scored)):
        name, samples = scored[i]
        vs_reference.append(
            position_overlap(
                ref_samples,
                samples,
                reference_selection=selections[0],
                other_selection=selections[i],
                names=(ref_name, name),
            )
        )
        prev_name, prev_samples = scored[i - 1]
        vs_previous.append(
            position_overlap(
                prev_samples,
                samples,
                reference_selection=selections[i - 1],
                other_selection=selections[i],
                names=(prev_name, name),
            )
        )
    return {"vs_reference": vs_reference, "vs_previous": vs_previous}
