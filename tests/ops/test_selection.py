"""Exact top-fraction threshold (slime_entropy.ops.selection) against torch.topk on the concatenated population.

The reference for every case is written plainly here: k = ceil(rho * N) with rho as a Fraction, tau =
torch.topk(concat, k).values[-1] (zero sign dropped), num_kept = (concat >= tau).sum(). Thresholds are compared
bit for bit through .view(torch.int32).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slime_entropy.ops import selection as sel
from slime_entropy.ops.selection import (
    ROUND_BITS,
    TopFractionSelection,
    canonical_bits,
    combine_round,
    initial_state,
    local_histogram,
    num_kept_for,
    radix_select,
    select_top_fraction,
)
from tests.distributed import run_world

FLT_MAX = 3.4028234663852886e38
FLT_TRUE_MIN = 1.401298464324817e-45  # smallest subnormal
FLT_MIN_NORMAL = 1.1754943508222875e-38


# ---------------------------------------------------------------------------------------------------------------
# Plain reference
# ---------------------------------------------------------------------------------------------------------------


def reference_k(num_population: int, fraction: float) -> int:
    if num_population == 0:
        return 0
    rho = Fraction(fraction).limit_denominator(10**6)
    return max(1, math.ceil(rho * num_population))


def reference(concat: torch.Tensor, fraction: float) -> tuple[int | None, int, int]:
    """(bits of tau or None when empty, num_population, num_kept) over a float32 population."""
    n = concat.numel()
    if n == 0:
        return None, 0, 0
    tau = torch.topk(concat, reference_k(n, fraction)).values[-1]
    if tau == 0:
        tau = torch.zeros_like(tau)  # +0.0: -0.0 and +0.0 are the same threshold
    return int(tau.view(torch.int32)), n, int((concat >= tau).sum())


def as_tuple(threshold: torch.Tensor, num_population: torch.Tensor, num_kept: torch.Tensor):
    assert threshold.dtype == torch.float32 and threshold.dim() == 0
    assert num_population.dtype == torch.int64 and num_kept.dtype == torch.int64
    if int(num_population) == 0:
        assert math.isinf(float(threshold)) and float(threshold) > 0
        return None, 0, int(num_kept)
    return int(threshold.view(torch.int32)), int(num_population), int(num_kept)


def result_tuple(result: TopFractionSelection):
    return as_tuple(result.threshold, result.num_population, result.num_kept)


def to_f32(parts: list[list[float]]) -> list[torch.Tensor]:
    return [torch.tensor(p, dtype=torch.float32) for p in parts]


def simulate(parts: list[torch.Tensor], fraction: float, compact: bool | None = None):
    """A group of len(parts) ranks in one process: histograms are summed instead of all-reduced."""
    return as_tuple(*radix_select(parts, fraction, compact=compact))


# ---------------------------------------------------------------------------------------------------------------
# num_kept_for
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, fraction, k",
    [
        (0, 0.2, 0),
        (1, 0.2, 1),
        (5, 0.2, 1),
        (6, 0.2, 2),
        (30, 0.1, 3),  # float: ceil(0.1 * 30) = ceil(3.0000000000000004) = 4
        (100, 0.07, 7),  # float: ceil(0.07 * 100) = ceil(7.000000000000001) = 8
        (7, 1.0, 7),
        (10, 1e-12, 1),  # rho rounds to 0/1, but at least one is kept
        (2**24 + 1, 0.2, 3355444),
        (10**12, 0.2, 2 * 10**11),
    ],
)
def test_num_kept_for_examples(n, fraction, k):
    assert num_kept_for(n, fraction) == k
    assert int(sel._num_kept_tensor(torch.tensor(n), fraction)) == k


@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(0, 10**9))
def test_num_kept_for_is_exact_ceil(p, q, n):
    if p > q:
        p, q = q, p
    expected = 0 if n == 0 else max(1, -(-p * n // q))
    assert num_kept_for(n, p / q) == expected
    assert int(sel._num_kept_tensor(torch.tensor(n), p / q)) == expected


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0000001, 2, float("nan"), float("inf"), True, "0.2", None])
def test_invalid_fraction_raises(fraction):
    with pytest.raises(ValueError, match="fraction"):
        num_kept_for(10, fraction)
    with pytest.raises(ValueError, match="fraction"):
        select_top_fraction(torch.ones(3), fraction, None)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="method"):
        select_top_fraction(torch.ones(3), 0.2, None, method="quantile")
    with pytest.raises(ValueError, match="1-D"):
        select_top_fraction(torch.ones(2, 3), 0.2, None)
    with pytest.raises(ValueError, match="floating"):
        select_top_fraction(torch.ones(3, dtype=torch.int64), 0.2, None)
    with pytest.raises(ValueError, match="extra"):
        select_top_fraction(torch.ones(3), 0.2, None, extra=torch.ones(2, 2))
    with pytest.raises(ValueError, match="num_population"):
        num_kept_for(-1, 0.2)


# ---------------------------------------------------------------------------------------------------------------
# Properties: single process, simulated ranks, both methods
# ---------------------------------------------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, FLT_TRUE_MIN, -FLT_TRUE_MIN, FLT_MIN_NORMAL, -FLT_MIN_NORMAL, 2.5e-39, -2.5e-39,
           FLT_MAX, -FLT_MAX, 1e30, -1e30, 1.0, -1.0, 0.5, 2.0, 0.672, 1.0000001]  # fmt: skip
element = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from(SPECIAL),
    st.floats(min_value=0.0, max_value=12.0, width=32),  # entropy-like
)
fractions = st.one_of(
    st.sampled_from([1.0, 0.2, 0.5, 0.1, 1e-9, 0.999999, 1 / 3]),
    st.floats(min_value=1e-7, max_value=1.0),
)


@st.composite
def populations(draw, max_ranks: int = 6, max_size: int = 40) -> list[list[float]]:
    """Per-rank lists (some empty); half the time drawn from a pool of <= 3 values, so ties are everywhere."""
    num_ranks = draw(st.integers(1, max_ranks))
    member = element
    if draw(st.booleans()):
        member = st.sampled_from(draw(st.lists(element, min_size=1, max_size=3)))
    return [draw(st.lists(member, max_size=max_size)) for _ in range(num_ranks)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(populations(), fractions)
def test_matches_topk_single_and_simulated(parts_lists, fraction):
    parts = to_f32(parts_lists)
    concat = torch.cat(parts)
    expected = reference(concat, fraction)
    assert result_tuple(select_top_fraction(concat, fraction, None)) == expected
    assert result_tuple(select_top_fraction(concat, fraction, None, method="allgather")) == expected
    assert simulate(parts, fraction) == expected  # CPU path: compaction between rounds
    assert simulate(parts, fraction, compact=False) == expected  # accelerator path: trash bins, no sync


@settings(max_examples=100, deadline=None)
@given(populations(max_ranks=4), st.integers(0, len(ROUND_BITS) - 1), st.integers(-(2**31), 2**31 - 1))
def test_local_histograms_add_up(parts_lists, round_index, base_seed):
    """The local step is additive over ranks, which is what lets an all-reduce (or a sum) combine them."""
    parts = [canonical_bits(p) for p in to_f32(parts_lists)]
    width = ROUND_BITS[round_index]
    base = torch.tensor((base_seed >> width) << width if round_index else 0, dtype=torch.int64)
    per_rank = [local_histogram(p, round_index, base) for p in parts]
    assert all(h.shape == (1 << width,) and h.dtype == torch.int64 for h in per_rank)
    assert torch.equal(torch.stack(per_rank).sum(0), local_histogram(torch.cat(parts), round_index, base))


def test_manual_rounds_equal_driver():
    """Drive the pure steps by hand over 3 'ranks' (what a new transport would do) and match radix_select."""
    gen = torch.Generator().manual_seed(1)
    parts = [torch.randn(n, generator=gen) for n in (100, 0, 37)]
    bits = [canonical_bits(p) for p in parts]
    state = initial_state("cpu")
    for round_index in range(len(ROUND_BITS)):
        summed = sum(local_histogram(b, round_index, state.base) for b in bits)
        state = combine_round(summed.to(torch.float64), round_index, state, 0.3)
    tau = state.base.to(torch.int32).view(torch.float32)
    assert int(tau.view(torch.int32)) == reference(torch.cat(parts), 0.3)[0]


CASES = {
    "one value": ([[1.5]], 0.2),
    "one negative value": ([[], [-7.0], []], 0.5),
    "all equal": ([[0.3] * 7, [0.3] * 5], 0.2),
    "ties at the boundary": ([[5.0, 3.0, 3.0], [3.0, 1.0], [3.0]], 0.5),
    "rho = 1 keeps all, tau = min": ([[4.0, -2.0, 9.0], [0.0]], 1.0),
    "tiny rho keeps one, tau = max": ([[4.0, -2.0, 9.0], [0.0]], 1e-9),
    "empty": ([[], [], []], 0.2),
    "only -0.0 and +0.0": ([[-0.0, 0.0, -0.0], [0.0]], 1.0),
    "-0.0 ties +0.0 at tau": ([[-0.0, 1.0], [0.0, -1.0]], 0.5),
    "subnormals": ([[FLT_TRUE_MIN, 2 * FLT_TRUE_MIN, 0.0, -FLT_TRUE_MIN], [FLT_MIN_NORMAL]], 0.4),
    "large magnitudes": ([[FLT_MAX, -FLT_MAX, 1e38], [3e38, -3e38]], 0.6),
    "negatives only": ([[-1.0, -2.0, -3.0, -0.5], [-1e-30]], 0.4),
    "neighbouring floats": ([[1.0, 1.0000001, 1.0000002], [0.99999994]], 0.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_named_cases(name):
    parts_lists, fraction = CASES[name]
    parts = to_f32(parts_lists)
    concat = torch.cat(parts)
    expected = reference(concat, fraction)
    for method in ("radix", "allgather"):
        assert result_tuple(select_top_fraction(concat, fraction, None, method=method)) == expected, method
    assert simulate(parts, fraction) == expected
    assert simulate(parts, fraction, compact=False) == expected


def test_edge_semantics():
    x = torch.tensor([4.0, -2.0, 9.0, 0.0])
    assert float(select_top_fraction(x, 1.0, None).threshold) == -2.0
    assert int(select_top_fraction(x, 1.0, None).num_kept) == 4
    assert float(select_top_fraction(x, 1e-9, None).threshold) == 9.0
    empty = select_top_fraction(torch.empty(0), 0.2, None)
    assert empty.threshold.item() == math.inf and int(empty.num_kept) == 0 and int(empty.num_population) == 0
    zero = select_top_fraction(torch.tensor([-0.0, -0.0, 1.0]), 1.0, None)
    assert int(zero.threshold.view(torch.int32)) == 0 and int(zero.num_kept) == 3  # tau is +0.0


def test_other_dtypes_are_read_as_float32():
    gen = torch.Generator().manual_seed(2)
    bf16 = (torch.rand(5000, generator=gen) * 4).to(torch.bfloat16)  # 3 significant digits: many ties
    expected = reference(bf16.float(), 0.2)
    assert result_tuple(select_top_fraction(bf16, 0.2, None)) == expected
    assert result_tuple(select_top_fraction(bf16, 0.2, None, method="allgather")) == expected
    f64 = torch.randn(300, dtype=torch.float64, generator=gen)
    assert result_tuple(select_top_fraction(f64, 0.3, None)) == reference(f64.float(), 0.3)


def test_accelerator_path_with_histogram_lanes():
    """compact=False on CPU runs the sync-free path; parts this large also use the interleaved histogram copies."""
    gen = torch.Generator().manual_seed(6)
    parts = [torch.randn(n, generator=gen) for n in (sel._MIN_VALUES_FOR_LANES * 3 + 7, 0, 5, 20_000)]
    parts[3][::7] = 1.25  # a heavy tie
    for fraction in (0.2, 0.9, 1.0):
        expected = reference(torch.cat(parts), fraction)
        assert simulate(parts, fraction, compact=False) == expected
        assert simulate(parts, fraction, compact=True) == expected


def test_extra_is_returned_as_float64_and_gradients_are_ignored():
    x = torch.rand(10, requires_grad=True)
    out = select_top_fraction(x, 0.2, None, extra=torch.tensor([1.0, 2.5], dtype=torch.float32))
    assert out.extra_sum.dtype == torch.float64 and out.extra_sum.tolist() == [1.0, 2.5]
    assert not out.threshold.requires_grad
    assert select_top_fraction(x, 0.2, None).extra_sum is None


def test_deterministic_mode_and_repeatability():
    x = torch.rand(20_000, generator=torch.Generator().manual_seed(3))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = result_tuple(select_top_fraction(x, 0.2, None))
        assert all(result_tuple(select_top_fraction(x, 0.2, None)) == first for _ in range(3))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert first == reference(x, 0.2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["radix", "allgather"])
def test_nonfinite_raises_naming_the_micro_batch(bad, method):
    calls = []

    def describe():
        calls.append(1)
        return "micro-batch with 4 samples, total_lengths=[3, 5, 2, 7]"

    select_top_fraction(torch.rand(8), 0.2, None, method=method, describe=describe)
    assert calls == []  # only called to build an error message
    x = torch.rand(8)
    x[3] = bad
    with pytest.raises(ValueError, match=r"1 non-finite \(NaN or Inf\).*group rank 0.*total_lengths=\[3, 5, 2, 7\]"):
        select_top_fraction(x, 0.2, None, method=method, describe=describe)


# ---------------------------------------------------------------------------------------------------------------
# Beyond 2^24: torch.quantile refuses; the radix select over 8 simulated ranks is exact
# ---------------------------------------------------------------------------------------------------------------


def test_beyond_2_pow_24_over_eight_simulated_ranks():
    m = 2**24 + 1
    gen = torch.Generator().manual_seed(4)
    # bf16-quantised entropies in [0, 8): ~1000 distinct values, so ties are huge at this size.
    x = (torch.rand(m, generator=gen) * 8).to(torch.bfloat16).float()
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(x, 0.8)
    cuts = sorted(torch.randint(0, m, (6,), generator=gen).tolist())
    parts = list(torch.tensor_split(x, [cuts[0], cuts[0], *cuts[1:]]))  # 8 ranks, one of them empty
    assert len(parts) == 8 and sum(p.numel() for p in parts) == m and parts[1].numel() == 0

    k = reference_k(m, 0.2)
    assert k == 3355444
    tau = torch.topk(x, k, sorted=False).values.min()
    expected = (int(tau.view(torch.int32)), m, int((x >= tau).sum()))
    assert expected[2] > k  # the boundary really is tied

    assert simulate(parts, 0.2) == expected
    assert simulate(parts, 0.2, compact=False) == expected
    assert result_tuple(select_top_fraction(x, 0.2, None)) == expected


# ---------------------------------------------------------------------------------------------------------------
# Real gloo groups (2 and 4 processes): both methods, empty ranks, subgroups, NaN without hangs
# ---------------------------------------------------------------------------------------------------------------


def _world_cases(world_size: int) -> list[tuple[str, list[torch.Tensor], float]]:
    gen = torch.Generator().manual_seed(world_size)
    big = [torch.rand(n, generator=gen) * 6 for n in (100_000, 0, 70_000, 3)[:world_size]]
    cases = [
        ("random", [torch.randn(50 + 13 * r, generator=gen) for r in range(world_size)], 0.2),
        ("rank 0 empty", [torch.empty(0)] + [torch.rand(20, generator=gen) for _ in range(world_size - 1)], 0.3),
        ("all empty", [torch.empty(0) for _ in range(world_size)], 0.2),
        ("only the last rank", [torch.empty(0)] * (world_size - 1) + [torch.tensor([2.0, -1.0, 2.0])], 0.5),
        ("ties", [torch.tensor([1.0, 1.0, 0.5, -0.0]) for _ in range(world_size)], 0.2),
        ("rho 1", [torch.randn(9, generator=gen) for _ in range(world_size)], 1.0),
        ("tiny rho", [torch.randn(9, generator=gen) for _ in range(world_size)], 1e-9),
        ("bf16 entropies", [(torch.rand(4000, generator=gen) * 3).to(torch.bfloat16) for _ in range(world_size)], 0.2),
        ("large", big, 0.2),
    ]
    nan = [torch.rand(10, generator=gen) for _ in range(world_size)]
    nan[1][4] = float("nan")
    inf = [torch.rand(10, generator=gen) for _ in range(world_size)]
    inf[0][0] = float("inf")
    inf[world_size - 1] = torch.empty(0)
    cases += [("nan on rank 1", nan, 0.2), ("inf on rank 0", inf, 0.2)]
    cases += [("after the errors", [torch.rand(30, generator=gen) for _ in range(world_size)], 0.25)]
    return cases


def _extra_for(rank: int) -> torch.Tensor:
    return torch.tensor([1.0, rank + 0.5, 2.0**40 * (rank + 1), -0.25 * rank], dtype=torch.float64)


def _run_cases(group, group_rank, cases):
    out = []
    for name, parts, fraction in cases:
        row = {}
        for method in ("radix", "allgather"):
            try:
                r = select_top_fraction(
                    parts[group_rank],
                    fraction,
                    group,
                    method=method,
                    extra=_extra_for(group_rank),
                    describe=lambda name=name, group_rank=group_rank: f"case '{name}' on rank {group_rank}",
                )
                row[method] = (result_tuple(r), r.extra_sum.tolist())
            except ValueError as error:
                row[method] = ("error", str(error))
        out.append((name, row))
    return out


def _selection_worker(rank: int, world_size: int, cases, subgroup_cases):
    world = dist.new_group(list(range(world_size)))
    results = {"world": _run_cases(world, dist.get_rank(world), cases)}
    if world_size == 4:  # two "DP groups" of 2: {0, 2} and {1, 3}
        groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
        mine = groups[rank % 2]
        results["sub"] = _run_cases(mine, dist.get_rank(mine), subgroup_cases[rank % 2])
    return results


def _check_world(results: list[dict], cases, key: str, members: list[int]):
    size = len(members)
    expected_extra = sum(_extra_for(r) for r in range(size)).tolist()
    for case_index, (name, parts, fraction) in enumerate(cases):
        bad = [r for r, p in enumerate(parts) if not bool(torch.isfinite(p.float()).all())]
        for method in ("radix", "allgather"):
            rows = [results[m][key][case_index] for m in members]
            assert all(row[0] == name for row in rows)
            outcomes = [row[1][method] for row in rows]
            if bad:
                for group_rank, outcome in enumerate(outcomes):
                    assert outcome[0] == "error", (name, method, group_rank)
                    if group_rank in bad:
                        assert f"group rank {group_rank} in case '{name}' on rank {group_rank}." in outcome[1]
                    else:
                        assert f"group rank(s) {bad}" in outcome[1] and "finite" in outcome[1]
                continue
            expected = reference(torch.cat([p.float() for p in parts]), fraction)
            for outcome in outcomes:
                assert outcome[0] == expected, (name, method)
                assert outcome[1] == expected_extra, (name, method)


@pytest.mark.multiprocess
@pytest.mark.parametrize("world_size", [2, 4])
def test_gloo_worlds(world_size):
    cases = _world_cases(world_size)
    subgroup_cases = [
        [(n, [p[0], p[1]], f) for n, p, f in _world_cases(2)],
        [(n, [p[1], p[0]], f) for n, p, f in _world_cases(2)],
    ]
    results = run_world(_selection_worker, world_size, args=(cases, subgroup_cases))
    _check_world(results, cases, "world", list(range(world_size)))
    if world_size == 4:
        _check_world(results, subgroup_cases[0], "sub", [0, 2])
        _check_world(results, subgroup_cases[1], "sub", [1, 3])


# ---------------------------------------------------------------------------------------------------------------
# CUDA: exactness, no host sync between rounds, deterministic mode
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_topk_without_host_syncs():
    gen = torch.Generator().manual_seed(5)
    populations = [
        (torch.rand(2**24 + 1, generator=gen) * 8).to(torch.bfloat16).float(),
        torch.randn(100_003, generator=gen),
        torch.tensor([-0.0, 0.0, FLT_TRUE_MIN, -FLT_MAX, FLT_MAX, 1.0, 1.0]),
        torch.empty(0),
    ]
    for x in populations:
        parts = [p.cuda() for p in torch.tensor_split(x, 5)]
        x_cuda = x.cuda()
        expected = reference(x_cuda, 0.2)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any device->host sync raises
        try:
            simulated = radix_select(parts, 0.2)
            local = radix_select([x_cuda], 0.2)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert as_tuple(*simulated) == expected
        assert as_tuple(*local) == expected
        assert simulated[0].device.type == "cuda"
        for method in ("radix", "allgather"):
            assert result_tuple(select_top_fraction(x_cuda, 0.2, None, method=method)) == expected

    x = torch.rand(1_000_000, device="cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = [result_tuple(select_top_fraction(x, 0.2, None)) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(previous)
    assert results[0] == results[1] == results[2] == reference(x, 0.2)


@pytest.mark.gpu
def test_cuda_select_top_fraction_syncs_once():
    import warnings

    x = torch.rand(300_000, device="cuda")
    select_top_fraction(x, 0.2, None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            select_top_fraction(x, 0.2, None, extra=torch.ones(3, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
