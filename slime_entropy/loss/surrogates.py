"""Per-token policy-loss math. Pure: no megatron, no ray, no collectives.

Shapes: every argument and result named ``*_tok`` is ``[N]``, the concatenated local response tokens of a
micro-batch (sample-major, see ``layout.ResponseSpans``). Values are per token and *unreduced*: the caller
reduces them with a sample-mean reducer (``reducer.py``). Gradients flow through ``log_probs`` only;
``old_log_probs``, ``ref_log_probs``, ``rollout_log_probs`` and ``advantages`` are data.

Sign convention (slime): ``ppo_kl = old_log_probs - log_probs`` and the importance ratio is ``exp(-ppo_kl)``;
losses are minimised.
"""

from __future__ import annotations

import torch

__all__ = [
    "approx_kl",
    "clipped_surrogate",
    "gpg_surrogate",
    "cispo_surrogate",
    "clip_cov_surrogate",
    "kl_cov_surrogate",
    "gmpo_clipped_log_ratio",
    "tis_weights",
    "shape_advantages",
]


def approx_kl(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    estimator: str,
    importance_ratio: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from samples of pi (Schulman's k1/k2/k3), slime's definitions.

    ``lr = log_probs - ref_log_probs``; k1 = lr; k2 = lr^2 / 2; k3 = exp(-lr) - 1 + lr; low_var_kl = k3 clamped
    to [-10, 10]. ``importance_ratio`` (slime's --use-unbiased-kl: pi/pi_old, not detached) multiplies the
    estimate before the clamp. Gradient flows through ``log_probs`` (and the ratio). Returns fp32 ``[N]``.
    """
    log_ratio = log_probs.float() - ref_log_probs.float()
    if estimator in ("k1", "kl"):
        kl = log_ratio
    elif estimator == "k2":
        kl = log_ratio**2 / 2.0
    elif estimator in ("k3", "low_var_kl"):
        kl = (-log_ratio).exp() - 1 + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r} (--kl-loss-type: kl, k1, k2, k3, low_var_kl)")
    if importance_ratio is not None:
        kl = importance_ratio * kl
    return kl.clamp(min=-10, max=10) if estimator == "low_var_kl" else kl


def clipped_surrogate(
    ppo_kl_tok: torch.Tensor,
    advantages_tok: torch.Tensor,
    eps_clip: float,
    eps_clip_high: float,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, optionally dual-clipped.

    ``r = exp(-ppo_kl)``; loss = max(-r*A, -clip(r, 1 - eps_clip, 1 + eps_clip_high)*A); with ``dual_clip_c``
    tokens with A < 0 get min(loss, -c*A). Returns (loss_tok, clipfrac_tok) where clipfrac marks tokens whose
    clipped branch is the active (larger) one. For GSPO pass the per-sequence log-ratio expanded to tokens.
    """
    ratio = (-ppo_kl_tok).exp()
    loss_unclipped = -ratio * advantages_tok
    loss_clipped = -ratio.clamp(1 - eps_clip, 1 + eps_clip_high) * advantages_tok
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipfrac = torch.gt(loss_clipped, loss_unclipped).float()
    if dual_clip_c is not None:
        loss = torch.where(advantages_tok < 0, torch.minimum(loss, -dual_clip_c * advantages_tok), loss)
    return loss, clipfrac


def gpg_surrogate(log_probs_tok: torch.Tensor, advantages_tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GPG (plain policy gradient): loss = -A * logp; no ratio, nothing clipped."""
    return -advantages_tok * log_probs_tok, torch.zeros_like(log_probs_tok)


def cispo_surrogate(
    log_probs_tok: torch.Tensor,
    old_log_probs_tok: torch.Tensor,
    advantages_tok: torch.Tensor,
    eps_clip: float,
    eps_clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO: loss = -sg(clip(r, 1 - eps_clip, 1 + eps_clip_high)) * A * logp; the clipped weight carries no
    gradient, so every token keeps a (bounded) gradient. clipfrac marks tokens whose weight was clipped."""
    ratio = (log_probs_tok - old_log_probs_tok).exp().detach()
    weight = ratio.clamp(1 - eps_clip, 1 + eps_clip_high)
    return -weight * advantages_tok * log_probs_tok, (weight != ratio).float()


def _centred_covariance(
    advantages_tok: torch.Tensor, log_probs_tok: torch.Tensor, population: torch.Tensor
) -> torch.Tensor:
    """(A - mean A) * (logp - mean logp), means over ``population`` (bool [N]); detached."""
    count = population.sum().clamp_min(1)
    weights = population.float()
    logp = log_probs_tok.detach()
    mean_a = (advantages_tok * weights).sum() / count
    mean_logp = (logp * weights).sum() / count
    return (advantages_tok - mean_a) * (logp - mean_logp)


def clip_cov_surrogate(
    log_probs_tok: torch.Tensor,
    old_log_probs_tok: torch.Tensor,
    advantages_tok: torch.Tensor,
    population: torch.Tensor,
    *,
    eps_clip: float,
    eps_clip_high: float,
    ratio: float,
    lower_bound: float,
    upper_bound: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-Cov (Cui et al., arXiv 2505.22617): detach the gradient of a few high-covariance tokens.

    Among ``population`` tokens (bool [N]: the tokens that receive policy gradient) that PPO did not already clip
    and whose covariance lies in (lower_bound, upper_bound), ``max(1, floor(ratio * |population|))`` are chosen at
    random with ``generator`` and their loss is multiplied by 0. Statistics are over this call's tokens only (as
    in verl). clipfrac marks the detached tokens.
    """
    ppo_kl = old_log_probs_tok - log_probs_tok
    base, ppo_clipped = clipped_surrogate(ppo_kl, advantages_tok, eps_clip, eps_clip_high)
    covariance = _centred_covariance(advantages_tok, log_probs_tok, population)
    eligible = population & (ppo_clipped == 0) & (covariance > lower_bound) & (covariance < upper_bound)
    candidates = eligible.nonzero(as_tuple=True)[0]
    corr = torch.ones_like(base)
    if candidates.numel() > 0:
        num_clip = max(1, int(ratio * int(population.sum())))
        order = torch.randperm(candidates.numel(), generator=generator, device="cpu").to(candidates.device)
        corr[candidates[order[:num_clip]]] = 0.0
    return base * corr, (corr == 0).float()


def kl_cov_surrogate(
    log_probs_tok: torch.Tensor,
    old_log_probs_tok: torch.Tensor,
    advantages_tok: torch.Tensor,
    population: torch.Tensor,
    *,
    ratio: float,
    coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-Cov (Cui et al., arXiv 2505.22617): unclipped -A*r, plus ``coef * |logp - old|`` on the
    ``max(1, floor(ratio * |population|))`` population tokens with the largest covariance (as in verl; statistics
    over this call's tokens). clipfrac is 0 (nothing is clipped)."""
    log_ratio = log_probs_tok - old_log_probs_tok
    loss = -advantages_tok * log_ratio.exp()
    index = population.nonzero(as_tuple=True)[0]
    if index.numel() > 0:
        covariance = _centred_covariance(advantages_tok, log_probs_tok, population)[index]
        num_penalised = max(1, int(ratio * index.numel()))
        chosen = index[torch.topk(covariance, num_penalised, sorted=False).indices]
        penalty = torch.zeros_like(loss)
        penalty[chosen] = coef * log_ratio[chosen].abs()
        loss = loss + penalty
    return loss, torch.zeros_like(loss)


def gmpo_clipped_log_ratio(
    log_probs_tok: torch.Tensor,
    old_log_probs_tok: torch.Tensor,
    advantages_tok: torch.Tensor,
    eps_clip: float,
    eps_clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GMPO's token log-ratio with sign-aware clipping in log space.

    x = logp - old; the clipped value clamp(x, -eps_clip, eps_clip_high) or x, whichever is pessimistic for the
    sign of A (the smaller of sgn(A)*x and sgn(A)*clamp(x)). The caller averages it over each sequence and
    exponentiates: the sequence ratio is a geometric mean of token ratios. Returns (log_ratio_tok, clipfrac_tok).
    """
    log_ratio = log_probs_tok - old_log_probs_tok
    clamped = log_ratio.clamp(-eps_clip, eps_clip_high)
    sign = torch.sign(advantages_tok)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clamped)
    return pessimistic, (pessimistic != log_ratio).float()


def tis_weights(
    old_log_probs_tok: torch.Tensor, rollout_log_probs_tok: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated importance sampling between the rollout engine and the trainer's old policy (slime --use-tis).

    Returns (weights, raw ratio, clipfrac) with ratio = exp(old - rollout) and weights = clamp(ratio, low, high).
    """
    ratio = torch.exp(old_log_probs_tok - rollout_log_probs_tok)
    weights = ratio.clamp(min=low, max=high)
    return weights, ratio, (weights != ratio).float()


def shape_advantages(
    advantages_tok: torch.Tensor, entropy_tok: torch.Tensor, alpha: float, kappa: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy advantage shaping (Cheng et al., arXiv 2506.14758): A + min(alpha * sg(H), |A| / kappa).

    The bonus is >= 0 and at most |A|/kappa with kappa >= 1, so the sign of A never flips; tokens with A = 0 are
    unchanged. The entropy is detached: this is not an entropy bonus. Returns (shaped advantages, bonus).
    """
    bonus = torch.minimum(alpha * entropy_tok.detach(), advantages_tok.abs() / kappa)
    return advantages_tok + bonus, bonus
