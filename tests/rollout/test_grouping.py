"""Group normalisation, overlong shaping, the DAPO filter, Karmarkar-Karp and the per-DP-rank split."""

import itertools
import math
import random
from argparse import Namespace

import pytest

from slime_entropy.rollout.batching import build_train_data, karmarkar_karp, split_train_data
from slime_entropy.rollout.filters import check_reward_nonzero_std
from slime_entropy.rollout.grouping import normalize_group_rewards, overlong_penalty
from slime_entropy.rollout.sample import Sample, SampleStatus


def _reference(rewards, sizes, mode):
    """Plain float64 reference: (r - mean) / (sample std + 1e-6), group by group."""
    out, start = [], 0
    for size in sizes:
        group = rewards[start : start + size]
        start += size
        mean = sum(group) / size
        if mode == "none":
            out += group
        elif mode == "mean":
            out += [r - mean for r in group]
        elif size == 1:
            out += [0.0]
        else:
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / (size - 1))
            out += [(r - mean) / (std + 1e-6) for r in group]
    return out


@pytest.mark.parametrize("mode", ["grpo", "mean", "none"])
def test_group_normalisation_matches_reference(mode):
    rng = random.Random(0)
    sizes = [4, 4, 1, 3, 8]
    rewards = [rng.choice([0.0, 1.0, -1.0, 0.5]) for _ in range(sum(sizes))]
    rewards[:4] = [1.0, 1.0, 1.0, 1.0]  # a uniform group: zero advantages, no NaN
    got = normalize_group_rewards(rewards, sizes, mode)
    assert got == pytest.approx(_reference(rewards, sizes, mode), abs=1e-12)
    if mode != "none":
        assert got[:4] == [0.0] * 4


def test_grpo_known_values_and_errors():
    # Group [1, 0, 0, 0]: mean 0.25, sample std 0.5 -> (0.75/0.5, -0.25/0.5, ...)
    got = normalize_group_rewards([1.0, 0.0, 0.0, 0.0], [4], "grpo")
    assert got == pytest.approx([1.5 / (1 + 2e-6), -0.5 / (1 + 2e-6)] + [-0.5 / (1 + 2e-6)] * 2, rel=1e-9)
    assert normalize_group_rewards([1.0, 0.0, 0.0, 0.0], [4], "mean") == [0.75, -0.25, -0.25, -0.25]
    with pytest.raises(ValueError, match="do not add up"):
        normalize_group_rewards([1.0, 2.0], [3], "grpo")
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_group_rewards([1.0], [1], "zscore")


def test_overlong_penalty_is_dapo_linear_ramp():
    kw = {"max_response_len": 100, "buffer_len": 20, "factor": 1.0}
    assert [overlong_penalty(n, **kw) for n in (10, 80, 90, 100)] == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(95, max_response_len=100, buffer_len=20, factor=0.4) == pytest.approx(-0.3)
    assert overlong_penalty(100, max_response_len=100, buffer_len=0, factor=1.0) == 0.0


def _samples(rewards, group_size, lengths=None, prompt_len=3):
    out = []
    for i, r in enumerate(rewards):
        n = lengths[i] if lengths else 2
        out.append(
            Sample(
                index=100 + i,
                group_index=i // group_size,
                prompt="p",
                tokens=list(range(prompt_len + n)),
                response_length=n,
                rollout_log_probs=[-0.5] * n,
                reward=r,
                status=SampleStatus.TRUNCATED if n >= 10 else SampleStatus.COMPLETED,
            )
        )
    return [out[i : i + group_size] for i in range(0, len(out), group_size)]


def test_dapo_filter_drops_uniform_groups():
    keep = [check_reward_nonzero_std(None, g) for g in _samples([1, 1, 0, 1, 1, 0, 0, 0], 2)]
    assert keep == [False, True, True, False]
    dict_groups = _samples([{"score": -1.0}, {"score": -1.0}, {"score": 1.0}, {"score": -1.0}], 2)
    assert [check_reward_nonzero_std(Namespace(reward_key="score"), g) for g in dict_groups] == [False, True]


def test_train_data_keys_shaping_and_normalisation():
    groups = _samples([1.0, 0.0, 1.0, 1.0], 2, lengths=[2, 10, 6, 9])
    groups[0][1].loss_mask = [1] * 9 + [0]
    data = build_train_data(
        groups,
        reward_key=None,
        normalization="mean",
        max_response_len=10,
        overlong_buffer_len=4,
        overlong_penalty_factor=1.0,
    )
    assert data["raw_reward"] == [1.0, 0.0, 1.0, 1.0]
    shaped = [1.0, 0.0 - 1.0, 1.0, 1.0 - 0.75]  # lengths 10 and 9 fall into the 4-token buffer before 10
    assert data["rewards"] == pytest.approx(
        [
            shaped[0] - (shaped[0] + shaped[1]) / 2,
            shaped[1] - (shaped[0] + shaped[1]) / 2,
            shaped[2] - (shaped[2] + shaped[3]) / 2,
            shaped[3] - (shaped[2] + shaped[3]) / 2,
        ]
    )
    assert data["response_lengths"] == [2, 10, 6, 9]
    assert data["total_lengths"] == [5, 13, 9, 12]
    assert data["loss_masks"][1] == [1] * 9 + [0] and data["loss_masks"][0] == [1, 1]
    assert data["truncated"] == [0, 1, 0, 0]
    assert data["sample_indices"] == [100, 101, 102, 103] and data["group_indices"] == [0, 0, 1, 1]
    assert data["rollout_log_probs"][2] == [-0.5] * 6
    groups[1][0].rollout_log_probs = [-0.5]
    with pytest.raises(ValueError, match="1 log-probs for 6 response tokens"):
        build_train_data(groups, reward_key=None, normalization="grpo", max_response_len=10)


def _spread(weights, parts):
    sums = [sum(weights[i] for i in p) for p in parts]
    return max(sums) - min(sums)


def _best_equal_split_spread(weights, k):
    n, best = len(weights), float("inf")
    size = n // k

    def rec(remaining, sums):  # noqa: E306
        nonlocal best
        if not remaining:
            best = min(best, max(sums) - min(sums))
            return
        first, rest = remaining[0], remaining[1:]
        for combo in itertools.combinations(rest, size - 1):
            left = [i for i in rest if i not in combo]
            rec(left, sums + [weights[first] + sum(weights[i] for i in combo)])

    rec(list(range(n)), [])
    return best


def test_karmarkar_karp_partitions():
    rng = random.Random(1)
    for _ in range(20):
        k = rng.choice([2, 3])
        n = k * rng.choice([2, 3])
        weights = [rng.randint(1, 100) for _ in range(n)]
        parts = karmarkar_karp(weights, k, equal_size=True)
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert all(len(p) == n // k for p in parts)
        naive = [list(range(r, n, k)) for r in range(k)]
        assert _spread(weights, parts) <= max(_spread(weights, naive), max(weights))
        assert _spread(weights, parts) <= _best_equal_split_spread(weights, k) + max(weights) // 2, (weights, parts)
    assert _spread([8, 7, 6, 5, 4, 3, 2, 1], karmarkar_karp([8, 7, 6, 5, 4, 3, 2, 1], 2, equal_size=True)) == 0
    free = karmarkar_karp([10, 1, 1, 1, 1], 2, equal_size=False)
    assert sorted(map(len, free)) == [1, 4] and _spread([10, 1, 1, 1, 1], free) == 6
    with pytest.raises(ValueError, match="cannot be split into 2 equal parts"):
        karmarkar_karp([1, 2, 3], 2, equal_size=True)


def test_split_round_robin_and_balanced_whole_groups():
    lengths = [2, 2, 30, 30, 2, 2, 2, 2]  # group 1 (samples 2,3) is long
    data = build_train_data(
        _samples([1, 0] * 4, 2, lengths=lengths), reward_key=None, normalization="grpo", max_response_len=64
    )
    plain = split_train_data(data, 2, n_samples_per_prompt=2, balance=False)
    assert [d["partition"] for d in plain] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert plain[1]["tokens"] == [data["tokens"][i] for i in (1, 3, 5, 7)]
    assert set(plain[0]) == set(data) | {"partition"}
    balanced = split_train_data(data, 2, n_samples_per_prompt=2, balance=True)
    groups_per_rank = [sorted({data["group_indices"][i] for i in d["partition"]}) for d in balanced]
    assert sorted(g for gs in groups_per_rank for g in gs) == [0, 1, 2, 3] and all(
        len(g) == 2 for g in groups_per_rank
    )
    totals = [sum(d["total_lengths"]) for d in balanced]
    assert abs(totals[0] - totals[1]) == (33 + 33 + 5 + 5) - (5 + 5 + 5 + 5)  # long group + one short vs two short
    for d in balanced:
        assert d["rewards"] == [data["rewards"][i] for i in d["partition"]]
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 3"):
        split_train_data(data, 3, n_samples_per_prompt=2, balance=False)
    with pytest.raises(ValueError, match="4 groups .* do not divide evenly over DP size 8"):
        split_train_data(data, 8, n_samples_per_prompt=2, balance=True)
