"""avg@n and the unbiased pass@k estimator against brute-force enumeration of k-subsets."""

import itertools
import math
from fractions import Fraction

import pytest

from slime_entropy.evaluation.metrics import avg_at_n, dataset_pass_at_k, default_pass_ks, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) that contain a correct one."""
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(outcomes[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = brute_force_pass_at_k(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-15), (n, c, k)


def test_edge_cases():
    assert pass_at_k(5, 0, 3) == 0.0  # c = 0
    assert pass_at_k(5, 5, 1) == 1.0  # c = n
    assert pass_at_k(7, 1, 7) == 1.0  # k = n: every subset is everything
    assert pass_at_k(7, 0, 7) == 0.0
    assert pass_at_k(6, 3, 4) == 1.0  # n - c < k: a correct sample is unavoidable
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    for bad in [(5, 2, 0), (5, 2, 6), (0, 0, 1), (5, 6, 1), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    with pytest.raises(TypeError):
        pass_at_k(5, True, 1)


def test_large_n_is_exact():
    # 1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i): compared exactly with Fractions, n = 1000.
    n, c, k = 1000, 37, 64
    product = Fraction(1)
    for i in range(n - c + 1, n + 1):
        product *= 1 - Fraction(k, i)
    assert pass_at_k(n, c, k) == float(1 - product)


def test_dataset_aggregates():
    counts = [(4, 0), (4, 1), (4, 4), (4, 2)]
    assert avg_at_n(counts) == pytest.approx((0 + 0.25 + 1 + 0.5) / 4)
    for k in (1, 2, 3, 4):
        expected = sum(float(brute_force_pass_at_k(n, c, k)) for n, c in counts) / len(counts)
        assert dataset_pass_at_k(counts, k) == pytest.approx(expected, abs=1e-15)
    assert dataset_pass_at_k(counts, 1) == pytest.approx(avg_at_n(counts))  # pass@1 == avg@n
    assert math.isnan(avg_at_n([])) and math.isnan(dataset_pass_at_k([], 1))
    with pytest.raises(ValueError):
        dataset_pass_at_k(counts, 5)  # k > n


def test_default_pass_ks():
    assert default_pass_ks(1) == (1,)
    assert default_pass_ks(4) == (1, 2, 4)
    assert default_pass_ks(32) == (1, 2, 4, 8, 16, 32)
    assert default_pass_ks(12) == (1, 2, 4, 8, 12)
