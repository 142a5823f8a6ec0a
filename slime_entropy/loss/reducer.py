"""slime's ``sum_of_sample_mean`` reducer, as a pure function of masks and denominators.

A reducer maps per-token values ``x`` (``[N]``, the local response tokens of a micro-batch, sample-major) to a
0-d tensor:

- per-sample mode: ``sum_i  sum_t x_it * m_it / max(d_i, 1)``, a *sum over samples* of per-sample means, where
  ``m_i`` is the sample's local mask and ``d_i`` its denominator counted over the *whole* response (with context
  parallelism each CP rank sums its own tokens, and the CP ranks' results add up to the full mean);
- per-token mode (``--calculate-per-token-loss``): ``sum_i sum_t x_it * m_it`` (Megatron divides by the token
  count later).

Gradient flows through ``x``; masks and denominators are data. No communication.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Reducer", "sample_mean_reducer"]

Reducer = Callable[[torch.Tensor], torch.Tensor]


def sample_mean_reducer(
    local_masks: Sequence[torch.Tensor],
    denominators: Sequence[torch.Tensor | float] | torch.Tensor | None,
    per_token: bool,
) -> Reducer:
    """Build the reducer for samples with local masks ``local_masks`` (one 1-D tensor per sample).

    ``denominators[i]`` is sample i's full-response count (ignored in per-token mode; ``None`` means
    ``local_masks[i].sum()``, correct when there is no context parallelism).
    """
    lengths = [int(mask.numel()) for mask in local_masks]
    if not per_token and denominators is None:
        denominators = [mask.sum() for mask in local_masks]

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != sum(lengths):
            raise ValueError(f"reducer got {x.shape[0]} token values for {sum(lengths)} local tokens")
        if not lengths:
            return x.sum() * 0  # no samples: a zero that keeps the graph connected
        total = None
        for i, (x_i, mask_i) in enumerate(zip(x.split(lengths), local_masks, strict=True)):
            term = (x_i * mask_i).sum()
            if not per_token:
                term = term / torch.clamp_min(torch.as_tensor(denominators[i], device=term.device), 1)
            total = term if total is None else total + term
        return total

    return reduce
