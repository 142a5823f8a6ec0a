"""Rollout-side advantage arithmetic: group reward normalisation and DAPO overlong shaping (pure functions).

Group normalisation (slime's ``_post_process_rewards``), per group ``g`` of rewards ``r``:

- ``grpo``: ``(r - mean_g) / (std_g + 1e-6)`` with the unbiased (Bessel) std, as ``torch.std``;
- ``mean`` (``--disable-grpo-std-normalization``, Dr. GRPO): ``r - mean_g``;
- ``none`` (``--disable-rewards-normalization``): ``r`` unchanged.

A group of one sample has no spread: ``grpo`` gives 0 for it (slime would produce NaN).

DAPO overlong shaping (verl's DAPO reward manager): with buffer ``B`` and maximum response length ``L_max``, a
response of ``L`` tokens gets ``min(0, -(L - (L_max - B)) / B * factor)`` added to its reward: 0 up to
``L_max - B`` tokens, falling linearly to ``-factor`` at ``L_max``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["normalize_group_rewards", "overlong_penalty", "GRPO_EPS"]

GRPO_EPS = 1e-6


def normalize_group_rewards(rewards: Sequence[float], group_sizes: Sequence[int], mode: str) -> list[float]:
    """Normalise ``rewards`` (flat, groups contiguous, sizes ``group_sizes``) with ``mode`` in grpo/mean/none."""
    if sum(group_sizes) != len(rewards):
        raise ValueError(f"group sizes {list(group_sizes)} do not add up to {len(rewards)} rewards")
    if mode == "none":
        return [float(r) for r in rewards]
    if mode not in ("grpo", "mean"):
        raise ValueError(f"unknown normalisation mode {mode!r}")
    out: list[float] = []
    start = 0
    for size in group_sizes:
        group = torch.tensor(rewards[start : start + size], dtype=torch.float64)
        start += size
        centered = group - group.mean()
        if mode == "grpo":
            if size > 1:
                centered = centered / (group.std(unbiased=True) + GRPO_EPS)
            else:
                centered = torch.zeros_like(centered)
        out.extend(float(x) for x in centered)
    return out


def overlong_penalty(response_length: int, *, max_response_len: int, buffer_len: int, factor: float) -> float:
    """DAPO's soft overlong punishment for one response (0 when ``buffer_len`` is 0)."""
    if buffer_len <= 0:
        return 0.0
    exceed = response_length - (max_response_len - buffer_len)
    return min(0.0, -exceed / buffer_len * factor)
