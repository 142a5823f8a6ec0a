"""avg@k and pass@k from per-prompt correctness counts. Pure Python, no torch.

For one prompt with ``n`` sampled responses of which ``c`` are correct:

* **avg@n** (the paper's "avg@32") is the mean correctness of the n responses, ``c / n``; a dataset's avg@n is the
  mean over its prompts.
* **pass@k** (k <= n) is the probability that at least one of k responses drawn *without replacement* from the n
  is correct. The unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code",
  eq. 1) is ``1 - C(n - c, k) / C(n, k)``; a dataset's pass@k is the mean over its prompts. pass@1 equals avg@n.

Both are computed exactly: binomial coefficients are Python integers and the one division is correctly rounded,
so there is no cancellation for large n (the product form of the paper is only needed in floating point).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["pass_at_k", "avg_at_n", "dataset_pass_at_k", "default_pass_ks"]


def _check_counts(num_samples: int, num_correct: int) -> None:
    if isinstance(num_samples, bool) or isinstance(num_correct, bool):
        raise TypeError("counts must be integers, not booleans")
    if num_samples < 1:
        raise ValueError(f"a prompt needs at least one sample, got n={num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"the number of correct samples must lie in [0, n={num_samples}], got c={num_correct}")


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one prompt: ``1 - C(n-c, k) / C(n, k)`` for ``1 <= k <= n``.

    ``c = 0`` gives 0.0; ``n - c < k`` (every k-subset holds a correct sample) gives 1.0. Raises ``ValueError``
    for ``k < 1`` or ``k > n`` (pass@k needs at least k samples per prompt).
    """
    _check_counts(num_samples, num_correct)
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@{k} needs 1 <= k <= n, the samples per prompt (n={num_samples})")
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def avg_at_n(counts: Iterable[tuple[int, int]]) -> float:
    """Mean over prompts of ``c / n`` for ``(n, c)`` pairs; NaN for an empty dataset."""
    per_prompt = []
    for num_samples, num_correct in counts:
        _check_counts(num_samples, num_correct)
        per_prompt.append(num_correct / num_samples)
    return math.fsum(per_prompt) / len(per_prompt) if per_prompt else math.nan


def dataset_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean over prompts of :func:`pass_at_k`; NaN for an empty dataset."""
    if not counts:
        return math.nan
    return math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def default_pass_ks(num_samples: int) -> tuple[int, ...]:
    """1, the powers of two below n, and n: the k values reported when none are requested."""
    if num_samples < 1:
        raise ValueError(f"n must be >= 1, got {num_samples}")
    ks = {1, num_samples}
    k = 2
    while k < num_samples:
        ks.add(k)
        k *= 2
    return tuple(sorted(ks))
