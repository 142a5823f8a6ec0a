"""Exact top-fraction threshold over a process group without gathering the values (radix select).

Given each rank's population members ``values`` (e.g. the entropies of its valid response tokens) and a fraction
rho, find ``tau`` = the k-th largest value of the *group's* population, ``k = ceil(rho * N)`` with ``N`` the group
population size. The caller keeps ``value >= tau``; ties at the boundary are kept, so at least k values survive
and every rank, whatever its share, applies the same threshold.

Algorithm (``method="radix"``, the default)
-------------------------------------------
A float32 ``x`` is read as its IEEE bit pattern ``b`` (int32, after ``-0.0`` is canonicalised to ``+0.0``).
Within one sign the bit patterns are ordered like the floats (ascending for ``x >= 0``, descending for
``x < 0``), so the order key is ``key = b ^ (0x7FFFFFFF if b < 0 else 0)``, a signed int32 that sorts exactly
like the floats. The k-th largest key is found digit by digit, most significant first, in 3 rounds of
11, 11 and 10 bits:

1. each rank histograms the digit of its *candidates* (values whose higher digits equal the prefix chosen so
   far) -- :func:`local_histogram`, pure and local;
2. the histograms are summed over the group -- one ``all_reduce(SUM)`` per round, in float64 (exact counts up
   to 2^53), the first round also carrying each rank's non-finite count and the caller's ``extra`` vector;
3. every rank picks the same bucket from the identical global histogram -- :func:`combine_round`, pure: the
   suffix sums from the top find the bucket holding the k-th largest; the counts above it are subtracted
   from k, and the prefix is extended by the digit.

After the third round the key is complete: ``tau`` is rebuilt from it and ``num_kept = (#keys above) + (#keys equal)``
falls out of the histograms. Nothing is sorted and no value crosses the wire.

Design choices
--------------
- **Rounds and bytes.** 3 rounds of 2048 + W + E, 2048 and 1024 float64 = 16 KiB + 8(W + E) B, 16 KiB, 8 KiB per
  rank, whatever N is. Two 16-bit rounds would need 512 KiB float64 (or int32 counts, which overflow at 2^31)
  per round; a third small round costs one more latency (~15 us on NCCL) and keeps every message tiny.
  ``bisect`` (31 rounds) is latency-bound and an all-gather moves 4 * N * W bytes.
- **No host sync between rounds.** The bucket choice is done on the device (cumsum + comparison count), the
  next round's prefix stays a 0-d device tensor, and the histogram uses ``index_add_`` (``torch.bincount``
  syncs on CUDA to size its output). The only host sync is at the very end, to learn whether any rank had
  NaN/Inf -- which then raises on *every* rank, after all collectives have been joined, so nobody hangs.
- **Digits in raw bit space.** Digits are read from the raw bits (``b >> shift``), not from a materialised key
  tensor; the per-sign reversal is applied to the 2^11-bin histogram instead (first round: the negative half
  is flipped; later rounds: flipped when the chosen prefix is negative). This saves three full passes.
- **Non-finite values cost nothing extra.** NaN and +/-Inf have an all-ones exponent, so their top 11 bits fall
  in raw digits 1020-1023 and 2044-2047 of the first round, which hold no finite value. Those bins are read off as the
  rank's non-finite count and zeroed before the bucket choice.
- **CPU shortcut.** On CPU (where reading a tensor on the host is free) each rank drops the non-candidates
  after every round, so the later rounds touch only the chosen bucket. Accelerators keep the full arrays and
  send non-candidates to trash bins instead (no data-dependent shapes, hence no sync), counting into 256
  interleaved copies of the histogram so that the hot trash bins do not serialise the atomics. Results are
  identical either way (tests run both paths on CPU).
- **Deterministic.** Histograms are ``index_add_`` of int64 ones and float64 sums of integers < 2^53: exact in
  any order, so the result does not depend on thread or rank scheduling.

Cost (``benchmarks/bench_selection.py``): CPU (2 threads) at 16M values ~0.05x ``torch.quantile``'s time and
~0.3x ``kthvalue``'s. On an H100 it is ~2.5 ms flat up to 16M values -- about 150 small kernel launches, not
bandwidth (``torch.topk`` alone is faster for one local tensor); the win is in the group setting, where it
replaces an all-gather of every value. Fusing :func:`combine_round` (fixed shapes) is the next step there.

``method="allgather"`` is the baseline of the design card: ``all_gather_variable`` of the values, then a local
``kthvalue``/``topk`` with the same k and tie rule. It moves (W - 1) * N * 4 bytes per rank, holds W * N values
and host-syncs; it exists to compare against.

Shapes and scope: ``values`` is [n] on any device (float dtypes; converted to float32, so for float64 input the
selection is over the float32-rounded values). Nothing here carries gradient. ``group=None`` is local scope.
Every rank of ``group`` must call :func:`select_top_fraction` with the same ``fraction``, ``method`` and
``extra`` length, including ranks with zero values.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch.distributed import ProcessGroup

from slime_entropy import collectives

__all__ = [
    "TopFractionSelection",
    "select_top_fraction",
    "num_kept_for",
    "canonical_bits",
    "local_histogram",
    "RadixState",
    "combine_round",
    "initial_state",
    "num_nonfinite_in",
    "radix_select",
    "ROUND_BITS",
    "NUM_ROUNDS",
    "METHODS",
]

ROUND_BITS: tuple[int, ...] = (11, 11, 10)
"""Digit width of each round, most significant first (sums to 32)."""
NUM_ROUNDS = len(ROUND_BITS)
_ROUND_SHIFTS: tuple[int, ...] = (21, 10, 0)
METHODS = ("radix", "allgather")

_MAX_DENOMINATOR = 10**6
_NUM_LANES = 256  # histogram copies on accelerators (see _count); a power of two
_LANE_STRIDE = (1 << max(ROUND_BITS)) + 2
_MIN_VALUES_FOR_LANES = 4096
# Raw first-round digits ((bits >> 21) + 1024) whose bit patterns have an all-ones exponent: -Inf/-NaN and +Inf/+NaN.
_NONFINITE_RAW_DIGITS = (slice(1020, 1024), slice(2044, 2048))


# ---------------------------------------------------------------------------------------------------------------
# k = ceil(rho * N)
# ---------------------------------------------------------------------------------------------------------------


def _rational(fraction: float) -> tuple[int, int]:
    """(p, q): the rational nearest ``fraction`` with q <= 10**6, after validating 0 < fraction <= 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise ValueError(f"fraction (rho) must be a real number in (0, 1], got {fraction!r}")
    if not (0.0 < float(fraction) <= 1.0):  # also rejects NaN
        raise ValueError(
            f"fraction (rho) must be in (0, 1], got {fraction!r}: it is the share of tokens kept (0.2 keeps the "
            f"top 20% by entropy; 1.0 keeps all)"
        )
    ratio = Fraction(fraction).limit_denominator(_MAX_DENOMINATOR)
    return ratio.numerator, ratio.denominator


def num_kept_for(num_population: int, fraction: float) -> int:
    """k = ceil(rho * N) computed exactly, with rho read as the rational nearest `fraction` with denominator <= 10**6
    (so 0.2 means exactly 1/5; avoids float ceil errors like ceil(0.1*30)). k >= 1 whenever N >= 1; 0 when N == 0.

    Raises ``ValueError`` unless 0 < fraction <= 1 and N >= 0.
    """
    p, q = _rational(fraction)
    if num_population < 0:
        raise ValueError(f"num_population must be >= 0, got {num_population}")
    if num_population == 0:
        return 0
    return max(1, -(-p * num_population // q))


def _num_kept_tensor(num_population: torch.Tensor, fraction: float) -> torch.Tensor:
    """Device twin of :func:`num_kept_for` for a 0-d int64 ``num_population`` (no host sync)."""
    p, q = _rational(fraction)
    k = torch.div(num_population * p + (q - 1), q, rounding_mode="floor")
    return torch.where(num_population > 0, k.clamp(min=1), torch.zeros_like(k))


# ---------------------------------------------------------------------------------------------------------------
# Pure radix-select steps
# ---------------------------------------------------------------------------------------------------------------


def canonical_bits(values: torch.Tensor) -> torch.Tensor:
    """int32 [n]: the IEEE bit patterns of ``values`` as float32, with -0.0 replaced by +0.0 (a new tensor).

    ``-0.0 + 0.0 == +0.0`` in IEEE round-to-nearest, so one addition canonicalises zeros and copies.
    """
    values_f32 = values.detach().to(torch.float32)
    return (values_f32 + 0.0).view(torch.int32)


def _round_digits(bits: torch.Tensor, round_index: int, base: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    """Raw digit + 1 of every element of ``bits`` for ``round_index``; 0 and 2^w + 1 are trash bins.

    Round 0 has no prefix: digit = (bits >> 21) + 1024 in [0, 2047]. Later rounds: ``(bits >> shift) ^ base``
    (``base`` = the raw prefix << width) lies in [0, 2^w) exactly for candidates (higher bits equal the prefix);
    anything else is clamped into a trash bin. XOR cannot overflow, unlike a subtraction at shift 0.
    ``in_place`` overwrites ``bits`` (saves an allocation of 4n bytes).
    """
    shifted = bits.bitwise_right_shift_(_ROUND_SHIFTS[round_index]) if in_place else bits >> _ROUND_SHIFTS[round_index]
    if round_index == 0:
        return shifted.add_(1025)
    width = ROUND_BITS[round_index]
    return shifted.bitwise_xor_(base.to(torch.int32)).clamp_(-1, 1 << width).add_(1)


def _count(digits: torch.Tensor, num_bins: int, lane_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [num_bins] histogram of ``digits`` (int32, all in [0, num_bins)). Deterministic, no host sync.

    ``index_add_`` of int64 ones: integer sums are exact in any order and it needs no output-size pass (unlike
    ``torch.bincount``, which reads min/max and, on CUDA, syncs to size its output); on CPU it is ~2x faster than
    ``bincount`` and ~5x faster than ``scatter_add_``. With ``lane_offsets`` (accelerators) element i counts
    into copy ``i % lanes`` of the histogram, which are summed at the end: without it the atomics of a hot bin
    (the trash bins of rounds 2-3 take ~all elements) serialise, ~10x slower on an H100.
    """
    ones = torch.ones(1, dtype=torch.int64, device=digits.device).expand(digits.numel())
    if lane_offsets is None:
        return torch.zeros(num_bins, dtype=torch.int64, device=digits.device).index_add_(0, digits, ones)
    lanes = _NUM_LANES
    counts = torch.zeros(lanes * _LANE_STRIDE, dtype=torch.int64, device=digits.device)
    counts.index_add_(0, digits + lane_offsets, ones)
    return counts.view(lanes, _LANE_STRIDE)[:, :num_bins].sum(0)


def _lane_offsets(num_values: int, device: torch.device) -> torch.Tensor | None:
    """int32 [n]: (i % lanes) * stride, added to the digits so that neighbouring elements hit different copies.

    None below ``_MIN_VALUES_FOR_LANES``, where contention is negligible and the copies would dominate.
    """
    if num_values < _MIN_VALUES_FOR_LANES:
        return None
    lane = torch.arange(num_values, dtype=torch.int32, device=device).bitwise_and_(_NUM_LANES - 1)
    return lane.mul_(_LANE_STRIDE)


def local_histogram(bits: torch.Tensor, round_index: int, base: torch.Tensor) -> torch.Tensor:
    """int64 [2^w]: this rank's histogram of round ``round_index``'s raw digit over its candidates.

    ``bits`` is :func:`canonical_bits` output (or any superset of the candidates, e.g. after CPU compaction);
    ``base`` is ``RadixState.base`` (ignored in round 0). Bins are in *raw* digit order; :func:`combine_round`
    reorders the summed histogram. Pure and local: summing it over ranks is the only communication.
    """
    return _histogram_of_digits(_round_digits(bits, round_index, base), round_index)


def _histogram_of_digits(
    digits: torch.Tensor, round_index: int, lane_offsets: torch.Tensor | None = None
) -> torch.Tensor:
    return _count(digits, (1 << ROUND_BITS[round_index]) + 2, lane_offsets)[1:-1]  # drop the two trash bins


@dataclass(frozen=True)
class RadixState:
    """What every rank knows after a round; all fields are 0-d int64 tensors on the values' device.

    key_prefix: the top bits of the k-th largest order key resolved so far (arithmetic-shifted, signed)
    base: XOR mask for the next round's digits (raw prefix << next width); after the last round, the bit
        pattern of tau
    chosen_raw_digit: raw digit of the bucket just chosen (used to drop non-candidates on CPU)
    rank_remaining: the target's 1-based rank from the top among the current candidates
    num_greater: population values whose key is above every candidate
    num_equal_bucket: population values in the chosen bucket (after the last round: the ties of tau)
    num_population, num_kept_target: N and k
    """

    key_prefix: torch.Tensor
    base: torch.Tensor
    chosen_raw_digit: torch.Tensor
    rank_remaining: torch.Tensor
    num_greater: torch.Tensor
    num_equal_bucket: torch.Tensor
    num_population: torch.Tensor
    num_kept_target: torch.Tensor


def initial_state(device: torch.device | str) -> RadixState:
    """The state before round 0 (only ``base`` is read by :func:`local_histogram` there, and ignored)."""
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return RadixState(zero, zero, zero, zero, zero, zero, zero, zero)


def num_nonfinite_in(round0_histogram: torch.Tensor) -> torch.Tensor:
    """0-d: how many NaN/Inf a raw round-0 histogram (local or summed) holds."""
    return sum(round0_histogram[s].sum() for s in _NONFINITE_RAW_DIGITS)


def combine_round(global_histogram: torch.Tensor, round_index: int, state: RadixState, fraction: float) -> RadixState:
    """Choose the bucket of the k-th largest from the group-summed raw histogram of ``round_index``. Pure.

    ``global_histogram``: [2^w] counts (int64, or float64 holding integers) summed over the group, raw order as
    returned by :func:`local_histogram`. All work stays on the device; identical inputs give identical
    outputs on every rank.
    """
    width = ROUND_BITS[round_index]
    hist = global_histogram.to(torch.int64)
    if round_index == 0:
        hist = hist.clone()
        for s in _NONFINITE_RAW_DIGITS:
            hist[s] = 0
        # Raw digits 0..1023 are the negatives, whose bit patterns run opposite to their order.
        hist_key = torch.cat([hist[:1024].flip(0), hist[1024:]])
        num_population = hist_key.sum()
        k = _num_kept_tensor(num_population, fraction)
        state = dataclasses.replace(state, rank_remaining=k, num_population=num_population, num_kept_target=k)
    else:
        hist_key = torch.where(state.key_prefix < 0, hist.flip(0), hist)

    suffix = hist_key.flip(0).cumsum(0).flip(0)  # suffix[b] = candidates with key digit >= b
    # suffix is non-increasing, so the buckets with suffix >= rank form a prefix; its last one holds the target.
    bucket = ((suffix >= state.rank_remaining).sum() - 1).clamp(min=0)
    index = bucket.view(1)
    in_bucket = hist_key.index_select(0, index).squeeze(0)
    above = suffix.index_select(0, index).squeeze(0) - in_bucket

    if round_index == 0:
        key_prefix = bucket - 1024
    else:
        key_prefix = state.key_prefix * (1 << width) + bucket
    resolved_bits = sum(ROUND_BITS[: round_index + 1])
    negative = key_prefix < 0
    # key = bits ^ 0x7FFFFFFF for negatives, so over the top L bits: raw prefix = key prefix ^ (2^(L-1) - 1).
    raw_prefix = torch.where(negative, key_prefix ^ ((1 << (resolved_bits - 1)) - 1), key_prefix)
    if round_index == 0:
        chosen_raw_digit = raw_prefix + 1024
    else:
        chosen_raw_digit = torch.where(negative, ((1 << width) - 1) - bucket, bucket)
    next_width = ROUND_BITS[round_index + 1] if round_index + 1 < NUM_ROUNDS else 0
    return RadixState(
        key_prefix=key_prefix,
        base=raw_prefix * (1 << next_width),
        chosen_raw_digit=chosen_raw_digit,
        rank_remaining=state.rank_remaining - above,
        num_greater=state.num_greater + above,
        num_equal_bucket=in_bucket,
        num_population=state.num_population,
        num_kept_target=state.num_kept_target,
    )


def _finish(state: RadixState) -> tuple[torch.Tensor, torch.Tensor]:
    """(threshold float32 0-d, num_kept int64 0-d) from the state after the last round."""
    empty = state.num_population == 0
    tau = state.base.to(torch.int32).view(torch.float32)
    tau = torch.where(empty, torch.full_like(tau, math.inf), tau)
    num_kept = torch.where(empty, torch.zeros_like(state.num_greater), state.num_greater + state.num_equal_bucket)
    return tau, num_kept


def _sum_over_parts(histograms: list[torch.Tensor], round_index: int) -> torch.Tensor:
    return torch.stack(histograms).sum(0)


def radix_select(
    parts: Sequence[torch.Tensor],
    fraction: float,
    reduce: Callable[[list[torch.Tensor], int], torch.Tensor] = _sum_over_parts,
    *,
    compact: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the 3 rounds over ``parts``: the values ([n] float, any float dtype) of one or more ranks held here.

    ``reduce(local_histograms, round_index)`` turns the parts' raw histograms into the group's; the default sums
    them, which simulates a group of ``len(parts)`` ranks in one process. :func:`select_top_fraction` passes one
    part and an all-reduce. Returns ``(threshold, num_population, num_kept)`` as 0-d device tensors; non-finite
    values are excluded from the population (the caller checks for them). ``compact`` (default: on CPU only)
    drops non-candidates between rounds; ``False`` runs the sync-free accelerator path (tests use it on CPU).
    """
    if not parts:
        raise ValueError("radix_select needs at least one part (pass an empty tensor for an empty rank)")
    device = parts[0].device
    if compact is None:
        compact = device.type == "cpu"
    parts = [values.detach() for values in parts]
    candidates = [canonical_bits(values) for values in parts]  # owned copies
    lane_offsets = [None if compact else _lane_offsets(values.numel(), device) for values in parts]
    state = initial_state(device)
    for round_index in range(NUM_ROUNDS):
        # The CPU path overwrites the round-0 bits with their digits and re-reads its candidates from `parts`.
        in_place = compact and round_index == 0
        digits = [_round_digits(bits, round_index, state.base, in_place=in_place) for bits in candidates]
        local = [_histogram_of_digits(d, round_index, o) for d, o in zip(digits, lane_offsets, strict=True)]
        state = combine_round(reduce(local, round_index), round_index, state, fraction)
        if compact and round_index + 1 < NUM_ROUNDS:
            # CPU only: a boolean index reads a count on the host, which is free here and shrinks later rounds
            # to the chosen bucket. On accelerators the trash bins of _round_digits do this without a sync.
            chosen = state.chosen_raw_digit + 1
            if round_index == 0:
                candidates = [canonical_bits(v[d == chosen]) for v, d in zip(parts, digits, strict=True)]
            else:
                candidates = [bits[d == chosen] for bits, d in zip(candidates, digits, strict=True)]
        del digits
    threshold, num_kept = _finish(state)
    return threshold, state.num_population, num_kept


# ---------------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopFractionSelection:
    """Result of :func:`select_top_fraction`; identical on every rank of the group.

    threshold: 0-d float32 on the values' device: tau = the k-th largest value of the group population
        (k = ``num_kept_for(N, fraction)``); +inf when the population is empty. A zero tau is +0.0.
    num_population: 0-d int64: N, the population size over the group
    num_kept: 0-d int64: how many population values are >= tau (ties kept, so >= k)
    extra_sum: float64 [E]: the group SUM of the ``extra`` vector the caller passed, else None
    """

    threshold: torch.Tensor
    num_population: torch.Tensor
    num_kept: torch.Tensor
    extra_sum: torch.Tensor | None


def _raise_if_nonfinite(counts_per_rank: list[int], rank: int, describe: Callable[[], str] | None) -> None:
    """Raise the same-meaning ValueError on every rank once any rank reported NaN/Inf values."""
    total = int(sum(counts_per_rank))
    if total == 0:
        return
    bad_ranks = [r for r, c in enumerate(counts_per_rank) if c]
    where = describe() if describe is not None else "(no description passed)"
    if counts_per_rank[rank]:
        raise ValueError(
            f"select_top_fraction: {int(counts_per_rank[rank])} non-finite (NaN or Inf) value(s) on group rank "
            f"{rank} in {where}. The token entropies must be finite; non-finite entropy usually comes from "
            f"non-finite logits (loss scale, learning rate, or an fp16 overflow upstream)."
        )
    raise ValueError(
        f"select_top_fraction: group rank(s) {bad_ranks} passed {total} non-finite (NaN or Inf) value(s); this "
        f"rank's values are finite ({where}). See the error raised on rank {bad_ranks[0]} for its micro-batch."
    )


def _check_inputs(values: torch.Tensor, method: str, extra: torch.Tensor | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if values.dim() != 1:
        raise ValueError(
            f"values must be 1-D (this rank's population members, e.g. entropy[loss_mask]), got shape "
            f"{tuple(values.shape)}"
        )
    if not values.dtype.is_floating_point:
        raise ValueError(f"values must be a floating-point tensor, got {values.dtype}")
    if extra is not None and extra.dim() != 1:
        raise ValueError(f"extra must be a 1-D vector, got shape {tuple(extra.shape)}")


def select_top_fraction(
    values: torch.Tensor,
    fraction: float,
    group: ProcessGroup | None,
    *,
    method: str = "radix",
    extra: torch.Tensor | None = None,
    describe: Callable[[], str] | None = None,
) -> TopFractionSelection:
    """Threshold tau keeping the top ``fraction`` of the group's population; keep ``values >= tau``.

    values: [n] float (any float dtype, read as float32; may be empty): this rank's population members.
    fraction: rho in (0, 1]; k = :func:`num_kept_for` (N, rho) with N the group population size.
    group: the ranks that share the population (DP x CP); None = local scope, no communication.
    method: "radix" (3 all-reduces of <= 16 KiB + 8 (W + E) bytes, no values moved) or "allgather" (baseline).
    extra: optional [E] vector (any float dtype, same E on every rank), summed over the group in float64 along
        with the first round (no extra collective with "radix").
    describe: called only to build error messages, e.g. ``lambda: "micro-batch 3 (4 samples, ...)"``.

    tau is bit-identical to ``torch.topk(all_values, k).values[-1]`` over the concatenated population (a zero
    tau is returned as +0.0), deterministic, and exact beyond 2^24 values. Every rank joins the same
    collectives whatever its n. NaN/Inf in any rank's values raise ``ValueError`` on every rank (after the
    collectives, so none hangs): the owning rank names itself and ``describe()``. No gradient flows.
    """
    _check_inputs(values, method, extra)
    _rational(fraction)  # validate before any collective; every rank passes the same fraction
    extra64 = None if extra is None else extra.detach().to(device=values.device, dtype=torch.float64)
    if method == "allgather":
        return _select_allgather(values, fraction, group, extra64, describe)

    world = collectives.group_size(group)
    rank = collectives.group_rank(group)
    num_bins0 = 1 << ROUND_BITS[0]
    packed: dict[str, torch.Tensor] = {}

    def all_reduce(local: list[torch.Tensor], round_index: int) -> torch.Tensor:
        (hist,) = local
        if round_index > 0:
            return collectives.all_reduce_sum_(hist.to(torch.float64), group)
        # The first round also carries each rank's NaN/Inf count (one slot per rank, so all learn who) and `extra`.
        num_extra = 0 if extra64 is None else extra64.numel()
        buffer = torch.zeros(num_bins0 + world + num_extra, dtype=torch.float64, device=values.device)
        buffer[:num_bins0] = hist
        buffer[num_bins0 + rank] = num_nonfinite_in(hist)
        if extra64 is not None:
            buffer[num_bins0 + world :] = extra64
        collectives.all_reduce_sum_(buffer, group)
        packed["nonfinite"] = buffer[num_bins0 : num_bins0 + world]
        packed["extra"] = buffer[num_bins0 + world :]
        return buffer[:num_bins0]

    threshold, num_population, num_kept = radix_select([values], fraction, all_reduce)
    _raise_if_nonfinite(packed["nonfinite"].tolist(), rank, describe)  # the one host sync
    extra_sum = None if extra64 is None else packed["extra"].clone()
    return TopFractionSelection(threshold, num_population, num_kept, extra_sum)


def _kth_largest(population: torch.Tensor, k: int) -> torch.Tensor:
    if population.device.type == "cpu":  # quickselect
        return torch.kthvalue(population, population.numel() - k + 1).values
    return torch.topk(population, k, sorted=False).values.min()  # kthvalue is one block per slice on CUDA


def _select_allgather(
    values: torch.Tensor,
    fraction: float,
    group: ProcessGroup | None,
    extra64: torch.Tensor | None,
    describe: Callable[[], str] | None,
) -> TopFractionSelection:
    """Baseline: gather every value to every rank, then select locally (same k, tie rule and outputs)."""
    rank = collectives.group_rank(group)
    values_f32 = values.detach().to(torch.float32)
    num_nonfinite = (~torch.isfinite(values_f32)).sum().view(1)
    nonfinite_per_rank = collectives.all_gather_stacked(num_nonfinite, group).view(-1)
    gathered = collectives.all_gather_variable(values_f32, group)
    extra_sum = None if extra64 is None else collectives.all_reduce_sum_(extra64.clone(), group)
    _raise_if_nonfinite(nonfinite_per_rank.tolist(), rank, describe)

    population = gathered + 0.0  # -0.0 -> +0.0, as in the radix path
    num_population = population.numel()
    k = num_kept_for(num_population, fraction)
    if num_population == 0:
        threshold = torch.full((), math.inf, dtype=torch.float32, device=values.device)
        num_kept = torch.zeros((), dtype=torch.int64, device=values.device)
    else:
        threshold = _kth_largest(population, k)
        num_kept = (population >= threshold).sum()
    num_population_t = torch.tensor(num_population, dtype=torch.int64, device=values.device)
    return TopFractionSelection(threshold, num_population_t, num_kept, extra_sum)
