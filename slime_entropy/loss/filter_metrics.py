"""Entropy-filter metrics in slime's reporting units. Pure.

slime reduces a metric ``v`` by summing it over micro-batches and over the data x context parallel ranks, then
multiplying by ``cp_size`` and dividing by the summed weight ``values[0]`` (the sample count in per-sample mode,
the token count in per-token mode). A per-rank contribution therefore has to be pre-scaled so that this rule
yields the intended figure.

For a figure ``x`` that is a property of a whole threshold *population* (the group of ranks that shared one
threshold for this micro-batch), a rank contributes ``x * w_r / cp_size`` (``w_r``: its own weight). The group's
contributions then sum to ``x * W_g / cp_size`` and slime's rule reports ``x`` exactly when the step has one
micro-batch, or the weight-averaged ``x`` over the step's populations otherwise. A token mean over the
population (``sum / count`` with the sum spread over ranks) is contributed as ``local_sum / count * W_g /
cp_size``, which sums to the same shape.
"""

from __future__ import annotations

import torch

__all__ = ["population_metrics"]


def population_metrics(
    *,
    threshold: torch.Tensor,
    num_population: torch.Tensor,
    num_kept: torch.Tensor,
    local_entropy_sum: torch.Tensor,
    local_kept_entropy_sum: torch.Tensor,
    local_weight: float | torch.Tensor,
    group_weight: float | torch.Tensor,
    cp_size: int,
) -> dict[str, torch.Tensor]:
    """Contributions of this rank to the four filter metrics.

    Args:
        threshold: 0-d tau of the population (+inf when it is empty).
        num_population, num_kept: 0-d counts over the population (group totals).
        local_entropy_sum, local_kept_entropy_sum: 0-d sums of this rank's valid / kept token entropies.
        local_weight: this rank's slime weight (its ``values[0]``); group_weight: the sum of it over the group.
        cp_size: context-parallel size (slime multiplies by it when reducing).

    Returns detached fp32 0-d tensors keyed ``entropy_token_ratio`` (kept / population),
    ``entropy_threshold`` (tau; 0 for an empty population), ``entropy_mean`` (token mean over the population) and
    ``entropy_kept_mean`` (token mean over the kept tokens).
    """
    population = num_population.double()
    kept = num_kept.double()
    has_tokens = population > 0
    ratio = torch.where(has_tokens, kept / population.clamp_min(1), torch.zeros_like(population))
    tau = torch.where(has_tokens, threshold.double(), torch.zeros_like(population))
    local_weight = torch.as_tensor(local_weight, dtype=torch.float64, device=population.device)
    group_weight = torch.as_tensor(group_weight, dtype=torch.float64, device=population.device)
    per_rank = local_weight / cp_size
    share = group_weight / cp_size
    metrics = {
        "entropy_token_ratio": ratio * per_rank,
        "entropy_threshold": tau * per_rank,
        "entropy_mean": local_entropy_sum.double() / population.clamp_min(1) * share,
        "entropy_kept_mean": local_kept_entropy_sum.double() / kept.clamp_min(1) * share,
    }
    return {key: value.float().detach() for key, value in metrics.items()}
