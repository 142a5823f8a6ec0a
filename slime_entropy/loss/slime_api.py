"""slime's Megatron loss contract (v0.1.0 signatures), backed by ``policy_loss.compute_policy_loss``.

- ``policy_loss_function(args, batch, logits, sum_of_sample_mean) -> (loss, metrics)``: usable as slime's custom
  loss: ``--loss-type custom_loss --custom-loss-function-path slime_entropy.loss.policy_loss_function``
  (slime v0.1.0 calls it by keyword, HEAD positionally; the names and order here satisfy both).
- ``loss_function(args, batch, num_microbatches, logits) -> (loss, num_tokens, {"keys", "values"})``: the
  drop-in for slime's ``loss_function`` including Megatron's scaling and slime's metric record.
- ``get_log_probs_and_entropy(logits, *, args, unconcat_tokens, total_lengths, response_lengths,
  with_entropy=False, non_loss_data=True)``: slime's forward-only helper (old/ref log-prob passes).

slime calls these with its ``args`` in every micro-batch, so each call resolves ``LossConfig.from_args(args)`` and
``ParallelGroups.from_megatron()``; outside slime the same computation runs through ``bound`` (the loss bound once
to its config and groups, as slime_entropy's own actor uses it), whose functions these call.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

import torch
from torch.utils.checkpoint import checkpoint

from .bound import load_function, megatron_scaled, split_log_probs_and_entropy, standalone_loss
from .config import LossConfig
from ..parallel import ParallelGroups
from .policy_loss import compute_policy_loss
from .slime_release import SlimeRelease, detect_slime_release

_CP_UTILS = "slime.backends.megatron_utils.cp_utils"

__all__ = ["policy_loss_function", "loss_function", "get_log_probs_and_entropy"]


def policy_loss_function(args: argparse.Namespace, batch: Mapping, logits: torch.Tensor, sum_of_sample_mean):
    """slime's policy loss with the high-entropy token filter. Returns (loss, metrics).

    Inside slime (its loss module is imported; ``slime_release``): without slime_entropy's loss features (the
    filter, --policy-loss-mode gpg/clip_cov/kl_cov/gmpo, --dual-clip-c, entropy advantage shaping) this *is*
    slime's own ``policy_loss_function`` of the running release (every slime option, metric and rounding exactly
    slime's); with any of them, ``compute_policy_loss`` computes the documented semantics with slime's options of
    that release reproduced or refused by name (``config``). Outside slime it is ``compute_policy_loss`` (slime v0.1.0
    semantics). Per-token loss with kept-token normalisation cannot be expressed through slime's hook (the token
    count is slime's) and is refused with the alternatives.
    """
    config = LossConfig.from_args(args)
    release = detect_slime_release()
    filt = config.entropy_filter
    if release is not None and not config.own_features:
        return release.loss_module.policy_loss_function(args, batch, logits, sum_of_sample_mean)
    if filt.enabled and config.policy.per_token_loss and filt.denominator == "kept":
        raise ValueError(
            "--calculate-per-token-loss with --high-entropy-token-filter normalises by the number of kept tokens, "
            "which needs slime_entropy.loss.loss_function outside slime (it reports that count to Megatron); "
            "through slime's loss use --entropy-filter-denominator all, or per-sample loss"
        )
    tis_hook, style, capture = None, "standalone", None
    if release is not None:
        _check_release_options(args, release)
        style = release.family
        if release.tis_hook:
            tis_hook = _bind_tis_function(args, release, batch)
        if hasattr(release.loss_module, "_maybe_capture_log_probs"):  # main: --debug-train-dump capture

            def capture(log_probs, _capture=release.loss_module._maybe_capture_log_probs):
                _capture(batch, log_probs)

    result = compute_policy_loss(
        config,
        ParallelGroups.from_megatron(),
        batch,
        logits,
        sum_of_sample_mean,
        tis_hook=tis_hook,
        metric_style=style,
        on_log_probs=capture,
    )
    return result.loss, result.metrics


def _check_release_options(args: argparse.Namespace, release: SlimeRelease) -> None:
    """Refusals that depend on the running slime release (slime_entropy's loss features are in use)."""
    if getattr(args, "eps_clip_c", None) is not None and not release.dual_clip:
        raise ValueError(
            "--eps-clip-c is registered by this slime release but its own policy loss never applies it, so "
            "slime_entropy's loss cannot be both equal to slime and dual-clipped: drop --eps-clip-c, or use "
            "slime_entropy's --dual-clip-c to dual-clip explicitly, or upgrade slime (main applies it)"
        )


def _bind_tis_function(args: argparse.Namespace, release: SlimeRelease, batch: Mapping):
    """slime >= 0.3's TIS function (--custom-tis-function-path, else slime's vanilla one) bound to this batch."""
    path = getattr(args, "custom_tis_function_path", None)
    function = load_function(path, "--custom-tis-function-path") if path else release.vanilla_tis_function()

    def hook(pg_tok: torch.Tensor, train_log_probs: list):
        return function(
            args=args,
            pg_loss=pg_tok,
            train_log_probs=train_log_probs,
            rollout_log_probs=batch["rollout_log_probs"],
            loss_masks=batch["loss_masks"],
            total_lengths=batch["total_lengths"],
            response_lengths=batch["response_lengths"],
        )

    return hook


def _slime_reducer(release: SlimeRelease, batch: Mapping, per_token: bool):
    """The reducer slime's own loss_function builds (its cp_utils, keyword arguments: the positional order
    changed between releases)."""
    cp_utils = sys.modules[_CP_UTILS]
    kwargs = dict(
        total_lengths=batch["total_lengths"],
        response_lengths=batch["response_lengths"],
        loss_masks=batch["loss_masks"],
        calculate_per_token_loss=per_token,
    )
    if release.rollout_denominators:
        kwargs["sample_denoms"] = batch["rollout_mask_sums"]
    return cp_utils.get_sum_of_sample_mean(**kwargs)


def loss_function(args: argparse.Namespace, batch: Mapping, num_microbatches: int, *step_size_and_logits):
    """One micro-batch's loss for Megatron's forward_backward, with slime's scaling and metric record.

    Accepts both of slime's signatures: ``(args, batch, num_microbatches, logits)`` (slime v0.1.0, and this
    project's trainer) and ``(args, batch, num_microbatches, step_global_batch_size, logits)`` (slime >= 0.3).

    Per-sample mode: ``loss * num_microbatches / B * dp_cp_size`` with B = ``--global-batch-size`` (v0.1.0
    signature) or ``step_global_batch_size`` (the step's rollout count); Megatron divides by num_microbatches,
    DDP averages over DP x CP, so the step's gradient is that of ``(1 / B) * sum over the step's samples of their
    means``, whatever the layout. Per-token mode: ``loss * cp_size`` and ``num_tokens`` = valid tokens (kept
    tokens with the filter and ``--entropy-filter-denominator kept``, outside slime); Megatron divides by the
    all-reduced token count (slime >= #990 semantics; slime v0.1.0's own loss_function still applied the
    per-sample scale, so per-token loss is refused there: use slime's loss_function with the custom-loss hook).

    Returns ``(loss, num_tokens, {"keys": [...], "values": tensor([weight, *metric values])})``; num_tokens is a
    0-d int tensor (1 in per-sample mode); weight is what slime's metric reduction divides by: the sample count
    (v0.1.0 signature), 0 (slime >= 0.3 substitutes step_global_batch_size) or the token count (per-token mode).
    """
    if len(step_size_and_logits) == 1:
        step_global_batch_size, logits = None, step_size_and_logits[0]
    elif len(step_size_and_logits) == 2:
        step_global_batch_size, logits = step_size_and_logits
    else:
        raise TypeError(
            "loss_function(args, batch, num_microbatches, [step_global_batch_size,] logits): got "
            f"{3 + len(step_size_and_logits)} arguments"
        )
    release = detect_slime_release()
    if release is not None and release.step_scaled != (step_global_batch_size is not None):
        raise TypeError(
            f"slime release family {release.family} calls loss_function "
            + ("with" if release.step_scaled else "without")
            + " step_global_batch_size, but this call did not match; pass the arguments your slime passes"
        )
    config = LossConfig.from_args(args)
    groups = ParallelGroups.from_megatron()
    per_token = config.policy.per_token_loss
    if release is not None and release.family == "v0.1" and per_token:
        raise ValueError(
            "--calculate-per-token-loss: slime v0.1.0's own loss_function scales per-token losses by the per-sample "
            "factor (fixed in later slime), which slime_entropy.loss.loss_function does not reproduce; under slime "
            "v0.1.0 keep slime's loss_function and select the loss with --loss-type custom_loss "
            "--custom-loss-function-path slime_entropy.loss.policy_loss_function, or upgrade slime"
        )
    loss_type = args.loss_type
    num_tokens = None
    if release is not None:
        reducer = _slime_reducer(release, batch, per_token)
        if loss_type == "policy_loss":
            function = policy_loss_function
        elif loss_type == "custom_loss":
            function = load_function(args.custom_loss_function_path)
        elif hasattr(release.loss_module, f"{loss_type}_function"):
            function = getattr(release.loss_module, f"{loss_type}_function")
        else:
            raise ValueError(f"--loss-type {loss_type!r} is not known to this slime release")
        if getattr(args, "recompute_loss_function", False):
            loss, metrics = checkpoint(function, args, batch, logits, reducer, use_reentrant=False)
        else:
            loss, metrics = function(args, batch, logits, reducer)
        if getattr(args, "allgather_cp", False) and groups.cp_size > 1:
            loss = loss + 0 * logits.sum()  # as slime: every CP rank traverses the gather's backward
    elif loss_type in ("policy_loss", "custom_loss"):
        custom = load_function(config.custom_loss_function_path) if config.custom_loss_function_path else None
        loss, metrics, num_tokens = standalone_loss(config, groups, batch, logits, custom_loss=custom, hook_args=args)
    else:
        raise ValueError(f"--loss-type {loss_type!r} is not supported by slime_entropy (policy_loss, custom_loss)")
    return megatron_scaled(
        loss,
        metrics,
        num_tokens,
        batch,
        logits,
        groups=groups,
        per_token=per_token,
        num_microbatches=num_microbatches,
        batch_size=args.global_batch_size if step_global_batch_size is None else step_global_batch_size,
        step_scaled=step_global_batch_size is not None,
        metric_style=release.family if release is not None else "standalone",
    )


def get_log_probs_and_entropy(
    logits: torch.Tensor,
    *,
    args: argparse.Namespace,
    unconcat_tokens: list[torch.Tensor],
    total_lengths: list[int],
    response_lengths: list[int],
    with_entropy: bool = False,
    non_loss_data: bool = True,
) -> dict[str, list[torch.Tensor]]:
    """Per-sample log-probs (and entropies) of the local response tokens, slime's forward-only helper.

    Unlike slime v0.1.0 this does not divide ``logits`` in place. Gradient flows through the log-probs when the
    caller has grad enabled.
    """
    batch = {"unconcat_tokens": unconcat_tokens, "total_lengths": total_lengths, "response_lengths": response_lengths}
    return split_log_probs_and_entropy(
        LossConfig.from_args(args), ParallelGroups.from_megatron(), batch, logits, with_entropy=with_entropy
    )
