"""slime's Megatron loss contract (v0.1.0 signatures), backed by ``compute.compute_policy_loss``.

- ``policy_loss_function(args, batch, logits, sum_of_sample_mean) -> (loss, metrics)``: usable as slime's custom
  loss: ``--loss-type custom_loss --custom-loss-function-path slime_entropy.loss.policy_loss_function``
  (slime v0.1.0 calls it by keyword, HEAD positionally; the names and order here satisfy both).
- ``loss_function(args, batch, num_microbatches, logits) -> (loss, num_tokens, {"keys", "values"})``: the
  drop-in for slime's ``loss_function`` including Megatron's scaling and slime's metric record.
- ``get_log_probs_and_entropy(logits, *, args, unconcat_tokens, total_lengths, response_lengths,
  with_entropy=False, non_loss_data=True)``: slime's forward-only helper (old/ref log-prob passes).

Process groups come from Megatron's parallel_state (``ParallelGroups.from_megatron``).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping

import torch

from ..config import LossConfig
from ..parallel import ParallelGroups
from .compute import compute_log_probs_and_entropy, compute_policy_loss, metric_weight, slime_reducer
from .layout import ResponseLayout

__all__ = ["policy_loss_function", "loss_function", "get_log_probs_and_entropy"]


def policy_loss_function(args: argparse.Namespace, batch: Mapping, logits: torch.Tensor, sum_of_sample_mean):
    """slime's policy loss with the high-entropy token filter. Returns (loss, metrics); see compute_policy_loss.

    Under slime's own ``loss_function`` the Megatron token count is slime's, so kept-token normalisation in
    per-token mode cannot be expressed here; that combination is refused with the alternatives.
    """
    config = LossConfig.from_args(args)
    filt = config.entropy_filter
    if filt.enabled and config.policy.per_token_loss and filt.denominator == "kept":
        raise ValueError(
            "--calculate-per-token-loss with --high-entropy-token-filter normalises by the number of kept tokens, "
            "which needs slime_entropy.loss.loss_function (it reports that count to Megatron); through slime's "
            "custom-loss hook use --entropy-filter-denominator all, or per-sample loss"
        )
    result = compute_policy_loss(config, ParallelGroups.from_megatron(), batch, logits, sum_of_sample_mean)
    return result.loss, result.metrics


def _load_function(path: str):
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"--custom-loss-function-path must be 'package.module.function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def loss_function(args: argparse.Namespace, batch: Mapping, num_microbatches: int, logits: torch.Tensor):
    """One micro-batch's loss for Megatron's forward_backward, with slime's scaling and metric record.

    Per-sample mode: ``loss * num_microbatches / global_batch_size * dp_cp_size``; Megatron divides by
    num_microbatches, DDP averages over DP x CP, so the step's gradient is that of
    ``(1 / global_batch_size) * sum over the step's samples of their means``, whatever the layout.
    Per-token mode: ``loss * cp_size`` and ``num_tokens`` = valid tokens (kept tokens with the filter and
    ``--entropy-filter-denominator kept``); Megatron divides by the all-reduced token count (slime >= #990
    semantics; v0.1.0 still applied the per-sample scale here, which was a bug).

    Returns ``(loss, num_tokens, {"keys": [...], "values": tensor([weight, *metric values])})`` with num_tokens a
    0-d int32 tensor (1 in per-sample mode) and weight the sample count (per-token mode: the token count) that
    slime's reduction divides by.
    """
    config = LossConfig.from_args(args)
    groups = ParallelGroups.from_megatron()
    per_token = config.policy.per_token_loss
    loss_type = args.loss_type
    if loss_type == "policy_loss":
        result = compute_policy_loss(config, groups, batch, logits)
        loss, metrics, num_tokens = result.loss, result.metrics, result.num_tokens
    elif loss_type == "custom_loss":
        layout = ResponseLayout.build(
            batch["unconcat_tokens"], batch["total_lengths"], batch["response_lengths"], groups.cp_rank, groups.cp_size
        )
        reducer = slime_reducer(layout, batch, per_token)
        loss, metrics = _load_function(args.custom_loss_function_path)(
            args=args, batch=batch, logits=logits, sum_of_sample_mean=reducer
        )
        num_tokens = None
    else:
        raise ValueError(f"--loss-type {loss_type!r} is not supported by slime_entropy (policy_loss, custom_loss)")

    weight = metric_weight(batch, per_token)
    if per_token:
        if num_tokens is None:
            num_tokens = weight.round().to(torch.int64)
        else:
            weight = num_tokens.double()
        loss = loss * groups.cp_size
    else:
        loss = loss * num_microbatches / args.global_batch_size * groups.dp_cp_size
    values = torch.stack(
        [weight.to(logits.device, torch.float32)] + [v.to(logits.device, torch.float32) for v in metrics.values()]
    )
    # A 0-d int32 tensor either way: megatron-core clamps it with torch and accumulates it in an int32 tensor.
    count = num_tokens if per_token else torch.ones((), dtype=torch.int64)
    return loss, count.to(logits.device, torch.int32), {"keys": list(metrics.keys()), "values": values}


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
    config = LossConfig.from_args(args)
    batch = {"unconcat_tokens": unconcat_tokens, "total_lengths": total_lengths, "response_lengths": response_lengths}
    layout, log_probs, entropy = compute_log_probs_and_entropy(
        config, ParallelGroups.from_megatron(), batch, logits, entropy_grad=False
    )
    result = {"log_probs": list(log_probs.split(layout.local_lengths))}
    if with_entropy:
        result["entropy"] = list(entropy.split(layout.local_lengths))
    return result
