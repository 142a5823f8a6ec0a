"""Entropy statistics of scored responses: percentiles, the low-entropy share, the top-rho selection, per response.

The population is every *valid* response token (``response_mask``) of the samples analysed. The top-rho tokens are
chosen exactly as in training, by :func:`slime_entropy.ops.selection.select_top_fraction`: with N tokens in the
population, ``k = ceil(rho * N)`` (rho read exactly, 0.2 = 1/5), ``tau`` = the k-th largest entropy, and every
token with ``H >= tau`` is kept (ties kept). ``scope="all"`` takes one threshold over all analysed tokens (like
``--entropy-threshold-scope step`` over a whole batch); ``scope="response"`` one per response. The *bottom*-rho
tokens mirror it: the k smallest entropies and their ties (the k-th largest of ``-H``).

Percentiles use numpy's linear interpolation over float64 copies of the float32 entropies; ``tau`` is an actual
entropy value (the k-th largest), which for rho = 0.2 is the paper's "80th percentile" (0.672 for Qwen3-8B).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from slime_entropy.analysis.records import AnalysisSample, require_scored
from slime_entropy.ops.selection import num_kept_for, select_top_fraction

__all__ = [
    "PERCENTILES",
    "LOW_ENTROPY_BOUND",
    "SCOPES",
    "Selection",
    "select_top",
    "select_bottom",
    "ResponseStats",
    "EntropySummary",
    "summarize",
    "valid_entropies",
]

PERCENTILES = (1, 5, 10, 25, 50, 75, 80, 90, 95, 99)
LOW_ENTROPY_BOUND = 0.01
"""The paper's "low entropy" bound: more than half of Qwen3-8B's CoT tokens lie below it."""
SCOPES = ("all", "response")


def valid_entropies(samples: Sequence[AnalysisSample]) -> np.ndarray:
    """float32 [N]: the entropies of every valid response token, samples in order."""
    require_scored(samples, "entropy statistics")
    parts = [s.entropy[s.response_mask] for s in samples]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@dataclass(frozen=True)
class Selection:
    """The kept positions: ``masks[i]`` is bool ``[R_i]`` (False outside the response mask).

    ``thresholds``: one tau per population (one for scope "all", one per response for "response"; +inf for an empty
    population). For a bottom selection, a token is kept when ``H <= threshold``.
    """

    masks: list[np.ndarray]
    thresholds: list[float]
    num_population: int
    num_kept: int
    scope: str
    fraction: float
    side: str  # "top" or "bottom"

    @property
    def threshold(self) -> float:
        """The single threshold of scope "all" (NaN for scope "response")."""
        return self.thresholds[0] if self.scope == "all" else math.nan


def _select(samples: Sequence[AnalysisSample], fraction: float, scope: str, side: str) -> Selection:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    require_scored(samples, "the top-rho selection")
    sign = 1.0 if side == "top" else -1.0
    masks: list[np.ndarray] = []
    thresholds: list[float] = []

    def run(values: np.ndarray) -> float:
        result = select_top_fraction(torch.from_numpy(sign * values.astype(np.float32)), fraction, None)
        return float(result.threshold)

    if scope == "all":
        tau = run(valid_entropies(samples))
        thresholds.append(sign * tau)
        for s in samples:
            masks.append(s.response_mask & (sign * s.entropy >= np.float32(tau)))
    else:
        for s in samples:
            tau = run(s.entropy[s.response_mask])
            thresholds.append(sign * tau)
            masks.append(s.response_mask & (sign * s.entropy >= np.float32(tau)))
    num_population = sum(s.num_valid for s in samples)
    return Selection(
        masks=masks,
        thresholds=thresholds,
        num_population=num_population,
        num_kept=int(sum(m.sum() for m in masks)),
        scope=scope,
        fraction=fraction,
        side=side,
    )


def select_top(samples: Sequence[AnalysisSample], fraction: float, scope: str = "all") -> Selection:
    """The top-``fraction`` tokens by entropy, the training rule (see the module docstring)."""
    return _select(samples, fraction, scope, "top")


def select_bottom(samples: Sequence[AnalysisSample], fraction: float, scope: str = "all") -> Selection:
    """The bottom-``fraction`` tokens by entropy: the ``ceil(rho * N)`` lowest and their ties."""
    return _select(samples, fraction, scope, "bottom")


@dataclass(frozen=True)
class ResponseStats:
    sample_id: str
    group: str
    num_tokens: int
    """Valid response tokens."""
    entropy_mean: float
    entropy_median: float
    entropy_max: float
    frac_below_low: float
    num_kept: int
    kept_ratio: float
    reward: float | None


@dataclass(frozen=True)
class EntropySummary:
    num_responses: int
    num_tokens: int
    entropy_mean: float
    entropy_std: float
    entropy_max: float
    percentiles: dict[str, float]
    """``"p80"`` -> value (numpy linear interpolation)."""
    frac_below_low: float
    """Share of tokens with H < ``LOW_ENTROPY_BOUND`` (0.01)."""
    frac_zero: float
    rho: float
    scope: str
    threshold: float
    """tau of scope "all" (the k-th largest entropy, k = ceil(rho N)); NaN for scope "response"."""
    num_kept_target: int
    num_kept: int
    kept_ratio: float
    kept_entropy_mean: float
    rest_entropy_mean: float
    low_threshold: float
    """The bottom-rho bound (scope "all"): the k-th smallest entropy."""
    responses: tuple[ResponseStats, ...]
    response_summary: dict[str, dict[str, float]]
    """mean / median / min / max over responses of entropy_mean, frac_below_low, kept_ratio, num_tokens."""

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("responses")
        return out


def _finite_or_nan(x: float) -> float:
    return float(x) if np.isfinite(x) else math.nan


def summarize(
    samples: Sequence[AnalysisSample], rho: float, scope: str = "all", selection: Selection | None = None
) -> EntropySummary:
    """All statistics of ``samples`` (every sample must be scored). ``selection``: a precomputed
    :func:`select_top` result for the same arguments (saves recomputing it)."""
    values = valid_entropies(samples).astype(np.float64)
    if values.size == 0:
        raise ValueError("no valid response token to analyse (every response mask is empty)")
    selection = selection or select_top(samples, rho, scope)
    bottom = select_bottom(samples, rho, "all")
    kept_values = np.concatenate([s.entropy[m] for s, m in zip(samples, selection.masks, strict=True)])
    rest_values = np.concatenate(
        [s.entropy[s.response_mask & ~m] for s, m in zip(samples, selection.masks, strict=True)]
    )
    kept_values, rest_values = kept_values.astype(np.float64), rest_values.astype(np.float64)
    responses = []
    for s, kept in zip(samples, selection.masks, strict=True):
        h = s.entropy[s.response_mask].astype(np.float64)
        n = h.size
        responses.append(
            ResponseStats(
                sample_id=s.sample_id,
                group=s.group,
                num_tokens=n,
                entropy_mean=float(h.mean()) if n else math.nan,
                entropy_median=float(np.median(h)) if n else math.nan,
                entropy_max=float(h.max()) if n else math.nan,
                frac_below_low=float((h < LOW_ENTROPY_BOUND).mean()) if n else math.nan,
                num_kept=int(kept.sum()),
                kept_ratio=float(kept.sum() / n) if n else math.nan,
                reward=s.reward,
            )
        )
    response_summary = {}
    for name in ("entropy_mean", "frac_below_low", "kept_ratio", "num_tokens"):
        column = np.array([getattr(r, name) for r in responses if r.num_tokens], dtype=np.float64)
        response_summary[name] = {
            "mean": float(column.mean()),
            "median": float(np.median(column)),
            "min": float(column.min()),
            "max": float(column.max()),
        }
    return EntropySummary(
        num_responses=len(samples),
        num_tokens=int(values.size),
        entropy_mean=float(values.mean()),
        entropy_std=float(values.std()),
        entropy_max=float(values.max()),
        percentiles={f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)},
        frac_below_low=float((values < LOW_ENTROPY_BOUND).mean()),
        frac_zero=float((values == 0).mean()),
        rho=rho,
        scope=scope,
        threshold=_finite_or_nan(selection.threshold),
        num_kept_target=(
            num_kept_for(int(values.size), rho)
            if scope == "all"
            else sum(num_kept_for(s.num_valid, rho) for s in samples)
        ),
        num_kept=selection.num_kept,
        kept_ratio=selection.num_kept / values.size,
        kept_entropy_mean=float(kept_values.mean()) if kept_values.size else math.nan,
        rest_entropy_mean=float(rest_values.mean()) if rest_values.size else math.nan,
        low_threshold=_finite_or_nan(bottom.threshold),
        responses=tuple(responses),
        response_summary=response_summary,
    )
