"""From finished groups to the per-DP-rank rollout data the trainer consumes (slime's key names).

    train_data = build_train_data(groups, reward_key="score", normalization="grpo", max_response_len=8192)
    per_rank = split_train_data(train_data, dp_size=4, n_samples_per_prompt=8, balance=True)

``build_train_data`` returns slime's rollout dict (one entry per sample, groups contiguous):

==================== =========================== ============================================================
key                  type                        meaning
==================== =========================== ============================================================
``tokens``           ``list[list[int]]``         prompt + response token ids
``response_lengths`` ``list[int]``               response tokens (the tail of ``tokens``)
``total_lengths``    ``list[int]``               ``len(tokens)``
``loss_masks``       ``list[list[int]]``         one 0/1 per response token
``rewards``          ``list[float]``             shaped, group-normalised rewards (the advantage per sample)
``raw_reward``       ``list[float]``             the scalar reward before shaping and normalisation
``rollout_log_probs`` ``list[list[float]]``      engine log-prob per response token
``truncated``        ``list[int]``               1 if the response hit the length limit
``sample_indices``   ``list[int]``               ``Sample.index``
``group_indices``    ``list[int]``               ``Sample.group_index``
==================== =========================== ============================================================

``split_train_data`` gives each DP rank the same keys for its share plus ``partition`` (the global positions of its
samples). Without balancing, rank ``r`` gets samples ``r, r + dp, r + 2*dp, ...`` (slime's round robin). With
``balance=True`` (``--balance-data``) each rank gets whole groups, the same number of groups per rank, chosen by
Karmarkar-Karp differencing so that the ranks' token totals are as equal as possible. Tensors are built on the
trainer side (packing into micro-batches is the trainer's job).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from slime_entropy.rollout.grouping import normalize_group_rewards, overlong_penalty
from slime_entropy.rollout.rewards.compute import scalar_reward
from slime_entropy.rollout.sample import Sample, SampleStatus

__all__ = ["build_train_data", "split_train_data", "karmarkar_karp", "PER_SAMPLE_KEYS"]

PER_SAMPLE_KEYS = (
    "tokens",
    "response_lengths",
    "total_lengths",
    "loss_masks",
    "rewards",
    "raw_reward",
    "rollout_log_probs",
    "truncated",
    "sample_indices",
    "group_indices",
)


def build_train_data(
    groups: Sequence[Sequence[Sample]],
    *,
    reward_key: str | None,
    normalization: str,
    max_response_len: int,
    overlong_buffer_len: int = 0,
    overlong_penalty_factor: float = 1.0,
) -> dict[str, list[Any]]:
    samples = [s for g in groups for s in g]
    for s in samples:
        if len(s.rollout_log_probs) != s.response_length:
            raise ValueError(
                f"sample {s.index}: {len(s.rollout_log_probs)} log-probs for {s.response_length} " "response tokens"
            )
    raw = [scalar_reward(s, reward_key) for s in samples]
    shaped = [
        r
        + overlong_penalty(
            s.response_length,
            max_response_len=max_response_len,
            buffer_len=overlong_buffer_len,
            factor=overlong_penalty_factor,
        )
        for r, s in zip(raw, samples, strict=True)
    ]
    rewards = normalize_group_rewards(shaped, [len(g) for g in groups], normalization)
    return {
        "tokens": [list(s.tokens) for s in samples],
        "response_lengths": [s.response_length for s in samples],
        "total_lengths": [len(s.tokens) for s in samples],
        "loss_masks": [s.effective_loss_mask() for s in samples],
        "rewards": rewards,
        "raw_reward": raw,
        "rollout_log_probs": [list(s.rollout_log_probs) for s in samples],
        "truncated": [int(s.status == SampleStatus.TRUNCATED) for s in samples],
        "sample_indices": [s.index for s in samples],
        "group_indices": [s.group_index for s in samples],
    }


def karmarkar_karp(weights: Sequence[float], num_parts: int, *, equal_size: bool) -> list[list[int]]:
    """Partition item indices into ``num_parts`` sets with near-equal weight sums (largest differencing method).

    With ``equal_size`` every part gets ``len(weights) / num_parts`` items (which must divide). Deterministic: ties
    are broken by item index. Returns parts sorted by their smallest index.
    """
    n = len(weights)
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if equal_size and n % num_parts:
        raise ValueError(f"{n} items cannot be split into {num_parts} equal parts")
    order = sorted(range(n), key=lambda i: (-weights[i], i))
    # A state: parts as (sum, items) sorted by sum descending; the heap is keyed by -(spread) so the largest
    # spread is merged first; the counter keeps comparisons away from lists.
    heap: list[tuple[float, int, list[tuple[float, list[int]]]]] = []
    counter = 0

    def push(parts):
        nonlocal counter
        parts = sorted(parts, key=lambda p: (-p[0], p[1][:1]))
        heapq.heappush(heap, (-(parts[0][0] - parts[-1][0]), counter, parts))
        counter += 1

    if equal_size:
        for c in range(0, n, num_parts):
            push([(weights[i], [i]) for i in order[c : c + num_parts]])
    else:
        for i in order:
            push([(weights[i], [i])] + [(0.0, []) for _ in range(num_parts - 1)])
    if not heap:
        return [[] for _ in range(num_parts)]
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        # Largest sums of one state meet the smallest sums of the other.
        push([(sa + sb, ia + ib) for (sa, ia), (sb, ib) in zip(a, reversed(b), strict=True)])
    parts = [sorted(items) for _, items in heap[0][2]]
    return sorted(parts, key=lambda p: (p[:1] or [n], len(p)))


def split_train_data(
    train_data: dict[str, list[Any]], dp_size: int, *, n_samples_per_prompt: int, balance: bool
) -> list[dict[str, list[Any]]]:
    """Split slime's rollout dict into ``dp_size`` per-rank dicts (see the module doc for the policy)."""
    num_samples = len(train_data["tokens"])
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1, got {dp_size}")
    if num_samples % dp_size:
        raise ValueError(
            f"the rollout has {num_samples} samples, not divisible by the data-parallel size {dp_size}; choose "
            "--rollout-batch-size * --n-samples-per-prompt divisible by the DP size"
        )
    if balance:
        if num_samples % n_samples_per_prompt:
            raise ValueError(f"{num_samples} samples do not form whole groups of {n_samples_per_prompt}")
        num_groups = num_samples // n_samples_per_prompt
        if num_groups % dp_size:
            raise ValueError(
                f"--balance-data keeps groups whole, but {num_groups} groups (--rollout-batch-size) do not divide "
                f"evenly over DP size {dp_size}; choose --rollout-batch-size divisible by {dp_size} or drop "
                "--balance-data"
            )
        lengths = train_data["total_lengths"]
        group_tokens = [
            sum(lengths[g * n_samples_per_prompt : (g + 1) * n_samples_per_prompt]) for g in range(num_groups)
        ]
        group_parts = karmarkar_karp(group_tokens, dp_size, equal_size=True)
        partitions = [
            [g * n_samples_per_prompt + j for g in part for j in range(n_samples_per_prompt)] for part in group_parts
        ]
    else:
        partitions = [list(range(r, num_samples, dp_size)) for r in range(dp_size)]
    return [{**{k: [v[i] for i in part] for k, v in train_data.items()}, "partition": part} for part in partitions]
