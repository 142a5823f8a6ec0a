"""The policy loss of one micro-batch, with the high-entropy token filter.

This module composes the pure pieces (layout, policy, reducer, filter_metrics) with the two communicating
kernels (``ops.logprob_entropy`` over the tensor-parallel group, ``ops.selection`` over the threshold group)
and, for sequence-level objectives and kept-token denominators, per-sample sums over the context-parallel group.
Every collective is unconditional for a given configuration, so every rank joins it whatever its token count.

Data flow for one micro-batch on one rank::

    logits [1, T, V/TP] ──fused log-prob + entropy (TP: 1 all-gather of O(N) stats)──► logp, H   [N local tokens]
    H.detach()[valid] ──top-rho threshold over the scope's group (3 small all-reduces)──► tau
    kept = valid & (H >= tau)
    advantages ──(optional entropy shaping)──► A
    surrogate(logp, old, A) ──× TIS weights──► pg_tok ──reducer over kept tokens──► pg_loss
    loss = pg_loss - entropy_coef·reduce(H) + kl_loss_coef·reduce(KL)        (reduce: all valid tokens by default)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .. import collectives
from .config import LossConfig
from ..ops.logprob_entropy import vocab_parallel_logprob_entropy
from ..ops.selection import TopFractionSelection, select_top_fraction
from ..parallel import ParallelGroups
from . import surrogates
from .filter_metrics import population_metrics
from .spans import ResponseSpans
from .reducer import Reducer, sample_mean_reducer

__all__ = [
    "PolicyLossResult",
    "compute_policy_loss",
    "slime_reducer",
    "metric_weight",
    "compute_log_probs_and_entropy",
    "STEP_THRESHOLD_KEY",
]

#: Micro-batch key of the step-scope threshold (0-d float32, identical on every rank), set by the trainer.
STEP_THRESHOLD_KEY = "entropy_threshold"


@dataclass(frozen=True)
class PolicyLossResult:
    """loss: 0-d, carries gradient. metrics: detached 0-d tensors in slime's units (sum over samples, or over
    tokens in per-token mode), keys in a fixed order for a given configuration. num_tokens: the token count
    Megatron must normalise by in per-token mode, or None to use slime's default (valid tokens)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    num_tokens: torch.Tensor | None


_REQUIRED_KEYS = ("unconcat_tokens", "total_lengths", "response_lengths", "loss_masks", "advantages")


def _check_batch(batch: Mapping, config: LossConfig) -> None:
    pol = config.policy
    needed = list(_REQUIRED_KEYS)
    why = {}
    if pol.use_kl_loss:
        needed.append("ref_log_probs")
        why["ref_log_probs"] = " (needed by --use-kl-loss)"
    for flag, on in (
        ("--use-rollout-logprobs", pol.use_rollout_logprobs),
        ("--get-mismatch-metrics", pol.mismatch_metrics),
        ("--use-tis", pol.use_tis),
    ):
        if on and "rollout_log_probs" not in needed:
            needed.append("rollout_log_probs")
            why["rollout_log_probs"] = f" (needed by {flag})"
    missing = [key for key in needed if not _present(batch, key)]
    if missing:
        raise KeyError(
            "micro-batch lacks " + ", ".join(f"'{k}'{why.get(k, '')}" for k in missing) + f"; it has {sorted(batch)}"
        )


def _present(batch: Mapping, key: str) -> bool:
    # slime >= 0.3 stores None (or an empty list) for per-token fields it did not compute
    value = batch.get(key)
    return value is not None and (len(value) > 0 or len(batch["loss_masks"]) == 0)


def _cat(parts, name: str, expected: int, device) -> torch.Tensor:
    flat = torch.cat([p.reshape(-1) for p in parts]) if len(parts) else torch.zeros(0, device=device)
    if flat.numel() != expected:
        raise ValueError(
            f"batch['{name}'] holds {flat.numel()} values but this rank scores {expected} response tokens "
            "(per-token fields must cover exactly the rank's local response tokens, CP-sliced when CP > 1)"
        )
    return flat.to(device)


def slime_reducer(layout: ResponseSpans, batch: Mapping, per_token: bool) -> Reducer:
    """slime's ``sum_of_sample_mean`` for this micro-batch (full-response denominators, or slime HEAD's
    ``rollout_mask_sums`` when the batch carries them)."""
    local_masks = layout.local_masks(batch["loss_masks"])
    denominators = batch.get("rollout_mask_sums")
    if denominators is None:
        denominators = [mask.sum() for mask in batch["loss_masks"]]
    return sample_mean_reducer(local_masks, denominators, per_token)


def metric_weight(batch: Mapping, per_token: bool, metric_style: str = "v0.3") -> torch.Tensor:
    """slime's reporting weight of a micro-batch: what slime divides the summed metrics by, this micro-batch's part.

    Per-sample mode: the sample count (slime v0.1), or with slime >= 0.3's per-rollout denominators the number of
    rollouts, each sample counting as its share ``mask_sum / rollout_mask_sum`` of its rollout (1 when the rollout
    is the sample alone, also for a sample without valid tokens). Per-token mode: the number of valid tokens, each
    sample counting at least 1, as slime does (slime v0.1.0, ``metric_style`` 'v0.1': all response tokens).
    """
    if per_token and metric_style == "v0.1":
        return torch.tensor(float(sum(batch["response_lengths"])), dtype=torch.float64)
    if per_token:
        counts = [torch.clamp_min(mask.sum(), 1) for mask in batch["loss_masks"]]
        return torch.stack(counts).sum().double().cpu() if counts else torch.tensor(0.0, dtype=torch.float64)
    rollout_sums = batch.get("rollout_mask_sums")
    if rollout_sums is None:
        return torch.tensor(float(len(batch["response_lengths"])), dtype=torch.float64)
    shares = [
        1.0 if int(total) == int(mask.sum()) else float(mask.sum()) / float(total)
        for mask, total in zip(batch["loss_masks"], rollout_sums, strict=True)
    ]
    return torch.tensor(sum(shares), dtype=torch.float64)


def _split_rollouts(batch: Mapping) -> list[int]:
    """Indices of samples that are part of a rollout split into several samples (slime >= 0.3 rollout ids)."""
    rollout_sums = batch.get("rollout_mask_sums")
    if rollout_sums is None:
        return []
    return [
        i
        for i, (mask, total) in enumerate(zip(batch["loss_masks"], rollout_sums, strict=True))
        if int(total) != int(mask.sum())
    ]


def compute_log_probs_and_entropy(
    config: LossConfig, groups: ParallelGroups, batch: Mapping, logits: torch.Tensor, *, entropy_grad: bool
) -> tuple[ResponseSpans, torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of this rank's response tokens from packed vocab-parallel logits ``[1, T, V/TP]``.

    Both are of the tempered distribution softmax(logits / temperature). Returns (layout, log_probs [N], entropy
    [N]); gradient flows through log_probs, and through entropy only if ``entropy_grad``.
    """
    if logits.dim() != 3 or logits.shape[0] != 1:
        raise ValueError(f"expected packed logits of shape [1, T, V/TP], got {tuple(logits.shape)}")
    logits_TV = logits[0]
    layout = ResponseSpans.build(
        batch["unconcat_tokens"],
        batch["total_lengths"],
        batch["response_lengths"],
        cp_rank=groups.cp_rank,
        cp_size=groups.cp_size,
        device=logits.device,
    )
    if layout.rows.numel() and int(layout.rows.max()) >= logits_TV.shape[0]:
        raise ValueError(
            f"the batch's samples need {int(layout.rows.max()) + 1} logits rows but logits has {logits_TV.shape[0]} "
            f"(total_lengths={list(batch['total_lengths'])}, cp_size={groups.cp_size})"
        )
    log_probs, entropy = vocab_parallel_logprob_entropy(
        logits_TV,
        layout.targets,
        layout.rows,
        tp_group=groups.tp,
        vocab_start=groups.tp_rank * logits_TV.shape[-1],
        vocab_size=config.kernel.vocab_size,
        inv_temperature=1.0 / config.policy.temperature,
        entropy_grad=entropy_grad,
        chunk_rows=config.kernel.chunk_rows,
        backend=config.kernel.backend,
    )
    return layout, log_probs, entropy


def _split_sums(values_tok: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """[S] per-sample sums of a [N] tensor (gradient flows)."""
    if not lengths:
        return values_tok.new_zeros(0)
    return torch.stack([part.sum() for part in values_tok.split(lengths)])


def _expand(per_sample: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """[N] tensor repeating per_sample[i] over sample i's local tokens."""
    return torch.repeat_interleave(
        per_sample, torch.tensor(lengths, device=per_sample.device), output_size=sum(lengths)
    )


def _clip_cov_generator(batch: Mapping) -> torch.Generator:
    # Every tensor-parallel rank must pick the same tokens, and a recomputed loss must pick them again, so the
    # seed comes from the micro-batch itself rather than from a global RNG.
    key = repr((list(batch["total_lengths"]), list(batch["response_lengths"]))).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def _step_selection(batch, entropy_data, valid_tok, weight_local, dp_cp_group, describe) -> TopFractionSelection:
    """The trainer's per-step threshold, with this micro-batch's population figures over DP x CP (one
    all-reduce of 4 numbers) for the metrics, and the same NaN/Inf guarantee as the selection: every rank raises."""
    if STEP_THRESHOLD_KEY not in batch:
        raise ValueError(
            f"--entropy-threshold-scope step needs the per-step threshold in batch['{STEP_THRESHOLD_KEY}'], which "
            "slime_entropy's trainer computes from the old-policy entropies of the whole global batch; slime's own "
            "trainer does not, so use --entropy-threshold-scope dp or local there"
        )
    device = entropy_data.device
    threshold = torch.as_tensor(batch[STEP_THRESHOLD_KEY], device=device, dtype=torch.float32).reshape(())
    valid_entropy = entropy_data[valid_tok]
    stats = torch.stack(
        [
            torch.tensor(float(valid_entropy.numel()), dtype=torch.float64, device=device),
            (valid_entropy >= threshold).sum().double(),
            (~torch.isfinite(valid_entropy)).sum().double(),
            weight_local.to(device, torch.float64),
        ]
    )
    local_nonfinite = int(stats[2])
    collectives.all_reduce_sum_(stats, dp_cp_group)
    if int(stats[2]) > 0:
        where = describe() if local_nonfinite else "another data/context-parallel rank's micro-batch"
        raise ValueError(f"non-finite (NaN/Inf) entropy with --entropy-threshold-scope step in {where}")
    return TopFractionSelection(
        threshold=threshold,
        num_population=stats[0].round().to(torch.int64),
        num_kept=stats[1].round().to(torch.int64),
        extra_sum=stats[3:4],
    )


@dataclass(frozen=True)
class _GradientTokens:
    """Which local tokens receive the policy gradient, and how their terms are reduced.

    local_masks / full_counts: per-sample masks of those tokens (local) and their full-response counts (over the
    CP group), the weights of the sequence-level objectives. pg_reducer: reduces the policy-gradient term.
    all_token_scale: factor on terms over all valid tokens (per-token mode with kept-token normalisation), else None.
    num_tokens: Megatron's token count override (per-token mode, kept-token normalisation), else None.
    metrics: the filter's metrics in slime's units (empty without the filter).
    """

    local_masks: list[torch.Tensor]
    full_counts: torch.Tensor
    pg_reducer: Reducer
    all_token_scale: torch.Tensor | None
    num_tokens: torch.Tensor | None
    metrics: dict[str, torch.Tensor]


def _all_valid_tokens(batch: Mapping, local_masks: list[torch.Tensor], base: Reducer, device) -> _GradientTokens:
    counts = [mask.sum() for mask in batch["loss_masks"]]
    full_counts = torch.stack(counts).to(device) if counts else torch.zeros(0, dtype=torch.int64, device=device)
    return _GradientTokens(local_masks, full_counts, base, None, None, {})


def _high_entropy_tokens(
    config: LossConfig,
    groups: ParallelGroups,
    batch: Mapping,
    lengths: list[int],
    entropy: torch.Tensor,
    valid_tok: torch.Tensor,
    mask_dtype: torch.dtype,
    base: Reducer,
    metric_style: str,
) -> _GradientTokens:
    """The filter: tau over the scope's population, kept = valid & H >= tau, the rebuilt reducer, the metrics."""
    filt, per_token = config.entropy_filter, config.policy.per_token_loss
    device = entropy.device
    split = _split_rollouts(batch)
    if split and filt.denominator == "kept" and not per_token:
        raise ValueError(
            f"samples {split} of this micro-batch are parts of rollouts split into several samples (slime's "
            "per-rollout denominators, batch['rollout_mask_sums']); a per-rollout mean over kept tokens needs the "
            "kept counts of sibling samples in other micro-batches, so --entropy-filter-denominator kept is refused "
            "here: use --entropy-filter-denominator all (slime's per-rollout denominators, numerators over kept "
            "tokens; equal to slime at --entropy-percentile 1)"
        )
    weight_local = metric_weight(batch, per_token, metric_style)

    def describe() -> str:
        bad = [i for i, part in enumerate(entropy.split(lengths)) if part.numel() and not torch.isfinite(part).all()]
        return (
            f"micro-batch of {len(lengths)} samples (total_lengths={list(batch['total_lengths'])}, "
            f"response_lengths={list(batch['response_lengths'])}); samples with non-finite entropy here: {bad} "
            f"(check the logits: NaN/Inf usually means diverged training or a bad learning rate)"
        )

    if filt.threshold_scope == "step":
        selection = _step_selection(batch, entropy, valid_tok, weight_local, groups.dp_cp, describe)
    else:
        selection = select_top_fraction(
            entropy[valid_tok],
            filt.keep_fraction,
            groups.dp_cp if filt.threshold_scope == "dp" else groups.cp,
            method=filt.selection_method,
            extra=weight_local.reshape(1).to(device, torch.float64),
            describe=describe,
        )
    kept_tok = valid_tok & (entropy >= selection.threshold)
    kept_local_masks = [part.to(mask_dtype) for part in kept_tok.split(lengths)]
    # full-response kept counts per sample (integers, like slime's mask sums, so rho = 1 is bit-exact)
    kept_counts = _split_sums(kept_tok.to(torch.int64), lengths)
    collectives.all_reduce_sum_(kept_counts, groups.cp)

    # In per-token mode with kept-token normalisation Megatron divides by the kept count (reported as num_tokens);
    # terms over all valid tokens are rescaled by kept/population so each stays a mean over its own tokens.
    kept_normalises_tokens = per_token and filt.denominator == "kept"
    num_tokens = all_token_scale = None
    if kept_normalises_tokens:
        num_tokens = kept_counts.sum()
        weight_local = num_tokens.double()
        group_weight = selection.num_kept.double() * groups.cp_size
        all_token_scale = (selection.num_kept.double() / selection.num_population.double().clamp_min(1)).float()
    else:
        group_weight = selection.extra_sum[0]
    metrics = population_metrics(
        threshold=selection.threshold,
        num_population=selection.num_population,
        num_kept=selection.num_kept,
        local_entropy_sum=(entropy * valid_tok).double().sum(),
        local_kept_entropy_sum=(entropy * kept_tok).double().sum(),
        local_weight=weight_local.to(device),
        group_weight=group_weight,
        cp_size=groups.cp_size,
    )

    if per_token or filt.denominator == "all":
        # numerators over kept tokens, slime's denominators (per-token mode: Megatron's count decides)
        kept_float = kept_tok.float()

        def pg_reducer(x: torch.Tensor) -> torch.Tensor:
            return base(x * kept_float.to(x.dtype))

    else:
        pg_reducer = sample_mean_reducer(kept_local_masks, kept_counts, per_token=False)
    return _GradientTokens(kept_local_masks, kept_counts, pg_reducer, all_token_scale, num_tokens, metrics)


def _surrogate(
    config: LossConfig,
    groups: ParallelGroups,
    batch: Mapping,
    lengths: list[int],
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    tokens: _GradientTokens,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pg_tok, clipfrac_tok, ppo_kl_tok) of the configured objective; see ``policy`` for the formulas.

    Sequence-level objectives (gspo, gmpo) average over the gradient tokens of each full sequence (CP ranks add
    their parts with a differentiable all-reduce), so with the filter no gradient reaches a non-kept token.
    """
    pol = config.policy
    device = log_probs.device
    weight_tok = torch.cat(tokens.local_masks).to(device, torch.float32) if lengths else torch.zeros(0, device=device)
    full_counts = tokens.full_counts.to(device, torch.float32).clamp_min(1)
    if pol.mode == "gspo":
        numerator = _split_sums((old_log_probs - log_probs) * weight_tok, lengths)
        seq_kl = collectives.differentiable_all_reduce_sum(numerator, groups.cp) / full_counts
        ppo_kl = _expand(seq_kl, lengths)
        pg_tok, clipfrac_tok = surrogates.clipped_surrogate(
            ppo_kl, advantages, pol.eps_clip, pol.eps_clip_high, pol.dual_clip_c
        )
        return pg_tok, clipfrac_tok, ppo_kl
    ppo_kl = old_log_probs - log_probs
    if pol.mode == "gmpo":
        log_ratio_tok, clipfrac_tok = surrogates.gmpo_clipped_log_ratio(
            log_probs, old_log_probs, advantages, pol.eps_clip, pol.eps_clip_high
        )
        sums = torch.stack(
            [_split_sums(log_ratio_tok * weight_tok, lengths), _split_sums(advantages * weight_tok, lengths)], dim=-1
        )
        sums = collectives.differentiable_all_reduce_sum(sums, groups.cp)
        seq_loss = -(sums[:, 1] / full_counts) * torch.exp(sums[:, 0] / full_counts)
        return _expand(seq_loss, lengths), clipfrac_tok, ppo_kl
    if pol.mode == "ppo":
        pg_tok, clipfrac_tok = surrogates.clipped_surrogate(
            ppo_kl, advantages, pol.eps_clip, pol.eps_clip_high, pol.dual_clip_c
        )
    elif pol.mode == "gpg":
        pg_tok, clipfrac_tok = surrogates.gpg_surrogate(log_probs, advantages)
    elif pol.mode == "cispo":
        pg_tok, clipfrac_tok = surrogates.cispo_surrogate(
            log_probs, old_log_probs, advantages, pol.eps_clip, pol.eps_clip_high
        )
    elif pol.mode == "clip_cov":
        pg_tok, clipfrac_tok = surrogates.clip_cov_surrogate(
            log_probs,
            old_log_probs,
            advantages,
            weight_tok > 0,
            eps_clip=pol.eps_clip,
            eps_clip_high=pol.eps_clip_high,
            ratio=pol.clip_cov_ratio,
            lower_bound=pol.clip_cov_lb,
            upper_bound=pol.clip_cov_ub,
            generator=_clip_cov_generator(batch),
        )
    elif pol.mode == "kl_cov":
        pg_tok, clipfrac_tok = surrogates.kl_cov_surrogate(
            log_probs, old_log_probs, advantages, weight_tok > 0, ratio=pol.kl_cov_ratio, coef=pol.kl_cov_coef
        )
    else:  # config validation makes this unreachable
        raise AssertionError(pol.mode)
    return pg_tok, clipfrac_tok, ppo_kl


#: slime >= 0.3's TIS function hook bound to args: (pg_tok, train_log_probs per sample) -> (pg_tok, loss masks,
#: per-token metrics). See ``slime_api``.
TisHook = Callable[[torch.Tensor, list], tuple[torch.Tensor, list, dict]]


def compute_policy_loss(
    config: LossConfig,
    groups: ParallelGroups,
    batch: Mapping,
    logits: torch.Tensor,
    sum_of_sample_mean: Reducer | None = None,
    *,
    tis_hook: TisHook | None = None,
    metric_style: str = "standalone",
    on_log_probs: Callable[[list[torch.Tensor]], None] | None = None,
) -> PolicyLossResult:
    """slime's policy loss of one micro-batch (filter off: slime's semantics), with the filter.

    Args:
        config: resolved loss configuration.
        groups: tensor-, context- and data x context-parallel groups (the actor's, bound once in
            ``bound.BoundLoss``; ``ParallelGroups.from_megatron()`` in slime's adapter).
        batch: slime's micro-batch dict: per-sample lists ``unconcat_tokens``, ``total_lengths``,
            ``response_lengths``, ``loss_masks``, ``advantages``, ``log_probs`` (old policy) and, as the options need
            them, ``ref_log_probs``, ``rollout_log_probs``, ``rollout_mask_sums``; per-token fields cover this
            rank's local response tokens.
        logits: ``[1, T, V/TP]`` packed vocab-parallel logits of the last pipeline stage.
        sum_of_sample_mean: slime's reducer for this micro-batch; None builds the identical one.
        tis_hook: slime >= 0.3's TIS function (run when --use-tis or --get-mismatch-metrics); None: slime v0.1's
            inline TIS (--use-tis only).
        metric_style: the units and keys of the slime release calling: 'v0.1' (v0.1.0's keys; per-token weight:
            all response tokens), 'v0.3' (adds ``train_rollout_logprob_abs_diff`` whenever rollout log-probs are
            present, the TIS function's metrics and ``opd_reverse_kl``, in slime's order) or 'standalone' (this
            project's trainer: v0.1.0's keys, the fixed per-token weights).
        on_log_probs: called with the per-sample current log-probs (slime main's train-dump capture).

    Returns:
        PolicyLossResult. ``loss`` is in slime's units (a sum over samples of per-sample means, or a token sum in
        per-token mode), before ``loss_function``'s Megatron scaling.
    """
    _check_batch(batch, config)
    pol, filt = config.policy, config.entropy_filter
    layout, log_probs, entropy = compute_log_probs_and_entropy(
        config, groups, batch, logits, entropy_grad=pol.entropy_coef != 0
    )
    num_local, device, lengths = log_probs.numel(), log_probs.device, layout.local_lengths
    if on_log_probs is not None:
        on_log_probs(list(log_probs.split(lengths)))
    base = sum_of_sample_mean if sum_of_sample_mean is not None else slime_reducer(layout, batch, pol.per_token_loss)
    local_masks = layout.local_masks(batch["loss_masks"])
    advantages = _cat(batch["advantages"], "advantages", num_local, device).float()
    train_log_probs = (
        _cat(batch["log_probs"], "log_probs", num_local, device).float()
        if _present(batch, "log_probs")
        else log_probs.detach()  # slime >= 0.3 skips the old-policy pass when the policy has not moved yet
    )
    rollout_log_probs = (
        _cat(batch["rollout_log_probs"], "rollout_log_probs", num_local, device).float()
        if _present(batch, "rollout_log_probs")
        else None
    )
    old_log_probs = rollout_log_probs if pol.use_rollout_logprobs else train_log_probs

    if filt.enabled:
        valid_tok = (
            torch.cat(local_masks).to(device) > 0 if lengths else torch.zeros(0, dtype=torch.bool, device=device)
        )
        mask_dtype = local_masks[0].dtype if local_masks else torch.int64
        tokens = _high_entropy_tokens(
            config, groups, batch, lengths, entropy.detach(), valid_tok, mask_dtype, base, metric_style
        )
    else:
        tokens = _all_valid_tokens(batch, local_masks, base, device)

    def reduce_all(x: torch.Tensor) -> torch.Tensor:
        """Reduce a term over all valid tokens."""
        value = base(x)
        return value if tokens.all_token_scale is None else value * tokens.all_token_scale

    metrics_extra = dict(tokens.metrics)
    if pol.advantage_alpha > 0:
        advantages, bonus = surrogates.shape_advantages(advantages, entropy, pol.advantage_alpha, pol.advantage_kappa)
        metrics_extra["entropy_adv_bonus"] = reduce_all(bonus).detach()

    pg_tok, clipfrac_tok, ppo_kl = _surrogate(
        config, groups, batch, lengths, log_probs, old_log_probs, advantages, tokens
    )
    pg_reduce, reduce_terms, tis_metrics = tokens.pg_reducer, reduce_all, {}
    if tis_hook is not None and (pol.use_tis or pol.mismatch_metrics):
        tis_metrics["ois"] = reduce_all((-ppo_kl).exp()).detach()
        pg_tok, tis_masks, hook_metrics = tis_hook(pg_tok, list(train_log_probs.split(lengths)))
        tis_metrics.update({key: reduce_all(value) for key, value in hook_metrics.items()})
        if tis_masks is not batch["loss_masks"]:
            # slime rebuilds its reducer from the masks the TIS function returns (rejection sampling), keeping the
            # denominators; every term after it is reduced over the surviving tokens.
            keep = torch.cat(layout.local_masks(tis_masks)).to(device, torch.float32) if lengths else None

            def pg_reduce(x, _inner=tokens.pg_reducer, _keep=keep):
                return _inner(x if _keep is None else x * _keep)

            def reduce_terms(x, _keep=keep):
                return reduce_all(x if _keep is None else x * _keep)

    elif pol.use_tis:
        tis_w, tis_ratio, tis_clipfrac = surrogates.tis_weights(
            train_log_probs, rollout_log_probs, pol.tis_clip_low, pol.tis_clip
        )
        pg_tok = pg_tok * tis_w
        tis_metrics = {
            "tis": reduce_all(tis_ratio).detach(),
            "ois": reduce_all((-ppo_kl).exp()).detach(),
            "tis_clipfrac": reduce_all(tis_clipfrac).detach(),
        }

    pg_loss = pg_reduce(pg_tok)
    entropy_loss = (pg_reduce if filt.enabled and filt.mask_entropy_loss else reduce_terms)(entropy)
    loss = pg_loss - pol.entropy_coef * entropy_loss
    if pol.use_kl_loss:
        ref_log_probs = _cat(batch["ref_log_probs"], "ref_log_probs", num_local, device)
        ratio = torch.exp(log_probs - old_log_probs) if pol.unbiased_kl else None
        kl_tok = surrogates.approx_kl(log_probs, ref_log_probs, pol.kl_estimator, importance_ratio=ratio)
        kl_loss = (pg_reduce if filt.mask_kl_loss else reduce_terms)(kl_tok)
        loss = loss + pol.kl_loss_coef * kl_loss
    if num_local == 0:
        loss = loss + log_probs.sum() * 0  # keep the backward path to the logits alive on token-less ranks

    metrics = {
        "loss": loss.detach().clone(),
        "pg_loss": pg_loss.detach().clone(),
        "entropy_loss": entropy_loss.detach().clone(),
        "pg_clipfrac": reduce_terms(clipfrac_tok).detach(),
        "ppo_kl": reduce_terms(ppo_kl).detach(),
    }
    if metric_style == "v0.3" and batch.get("rollout_log_probs"):  # slime reports it iff the list is non-empty
        compared = log_probs if pol.use_rollout_logprobs else old_log_probs
        metrics["train_rollout_logprob_abs_diff"] = reduce_terms((compared - rollout_log_probs).abs()).detach()
    if pol.use_kl_loss:
        metrics["kl_loss"] = kl_loss.detach().clone()
    metrics.update(tis_metrics)
    if metric_style == "v0.3" and batch.get("opd_reverse_kl"):
        opd = _cat(batch["opd_reverse_kl"], "opd_reverse_kl", num_local, device)
        metrics["opd_reverse_kl"] = reduce_terms(opd).detach()
    metrics.update(metrics_extra)
    return PolicyLossResult(loss=loss, metrics=metrics, num_tokens=tokens.num_tokens)
