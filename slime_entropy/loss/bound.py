"""The loss bound once to its configuration and process groups: what the Megatron actor runs in every micro-batch.

:class:`BoundLoss` is built once per actor (``LossConfig`` + ``ParallelGroups`` + the global batch size) and
called inside Megatron's schedule::

    loss = BoundLoss(config, groups, global_batch_size=64, vocab_size=arch.vocab_size)
    loss.training_loss(batch, num_microbatches, logits)   # -> (loss, num_tokens, {"keys", "values"})
    loss.log_probs_and_entropy(batch, logits, with_entropy=True)

``slime_api.loss_function`` (slime's adapter, which resolves ``args`` on every call because that is how slime calls
it) runs the same three functions below (:func:`standalone_loss`, :func:`megatron_scaled`,
:func:`split_log_probs_and_entropy`), so the two paths cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable, Mapping

import torch

from ..parallel import ParallelGroups
from .config import LossConfig
from .policy_loss import compute_log_probs_and_entropy, compute_policy_loss, metric_weight, slime_reducer
from .spans import ResponseSpans

__all__ = ["BoundLoss", "standalone_loss", "megatron_scaled", "split_log_probs_and_entropy", "load_function"]

#: ``(loss, num_tokens, {"keys": [...], "values": tensor([weight, *metric values])})``, Megatron's loss_func result
MicroBatchLoss = tuple[torch.Tensor, torch.Tensor, dict]


def load_function(path: str, flag: str = "--custom-loss-function-path") -> Callable:
    """The function at ``package.module.function``."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{flag} must be 'package.module.function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def standalone_loss(
    config: LossConfig,
    groups: ParallelGroups,
    batch: Mapping,
    logits: torch.Tensor,
    *,
    custom_loss: Callable | None = None,
    hook_args: argparse.Namespace | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """One micro-batch's unscaled ``(loss, metrics, num_tokens)`` outside slime.

    ``custom_loss`` None: :func:`compute_policy_loss` (``num_tokens``: its kept-token count in per-token mode with
    kept denominators, else None). Otherwise the user's ``--custom-loss-function-path`` function, called as slime
    calls it: ``(args=hook_args, batch=, logits=, sum_of_sample_mean=)`` with slime's reducer; num_tokens None.
    """
    if custom_loss is None:
        result = compute_policy_loss(config, groups, batch, logits)
        return result.loss, result.metrics, result.num_tokens
    spans = ResponseSpans.build(
        batch["unconcat_tokens"], batch["total_lengths"], batch["response_lengths"], groups.cp_rank, groups.cp_size
    )
    reducer = slime_reducer(spans, batch, config.policy.per_token_loss)
    loss, metrics = custom_loss(args=hook_args, batch=batch, logits=logits, sum_of_sample_mean=reducer)
    return loss, metrics, None


def megatron_scaled(
    loss: torch.Tensor,
    metrics: Mapping[str, torch.Tensor],
    num_tokens: torch.Tensor | None,
    batch: Mapping,
    logits: torch.Tensor,
    *,
    groups: ParallelGroups,
    per_token: bool,
    num_microbatches: int,
    batch_size: int | None,
    step_scaled: bool = False,
    metric_style: str = "standalone",
) -> MicroBatchLoss:
    """slime's scaling of a micro-batch loss for Megatron's forward_backward, and its metric record.

    Per-sample mode: ``loss * num_microbatches / batch_size * dp_cp_size`` (Megatron divides by num_microbatches and
    DDP averages over DP x CP, so the step's gradient is that of ``(1 / batch_size)`` x the sum of the step's
    per-sample means); num_tokens 1. Per-token mode: ``loss * cp_size``; num_tokens = ``num_tokens`` when given (the
    kept-token count), else the valid tokens (Megatron divides by their all-reduced sum). The record's weight is
    what slime's metric reduction divides by: ``metric_weight`` of the batch (``metric_style``), num_tokens in
    per-token mode, 0 when ``step_scaled`` (slime >= 0.3 substitutes its step_global_batch_size).
    num_tokens is returned as a 0-d int32 tensor on the logits' device (megatron-core clamps it with torch).
    """
    weight = metric_weight(batch, per_token, metric_style)
    if per_token:
        if num_tokens is None:
            num_tokens = weight.round().to(torch.int64)
        else:
            weight = num_tokens.double()
        loss = loss * groups.cp_size
    else:
        if batch_size is None:
            raise ValueError("per-sample loss scaling needs --global-batch-size (samples per optimizer step)")
        loss = loss * num_microbatches / batch_size * groups.dp_cp_size
        if step_scaled:
            weight = torch.zeros((), dtype=torch.float64)
    values = torch.stack(
        [weight.to(logits.device, torch.float32)] + [v.to(logits.device, torch.float32) for v in metrics.values()]
    )
    count = num_tokens if per_token else torch.ones((), dtype=torch.int64)
    return loss, count.to(logits.device, torch.int32), {"keys": list(metrics.keys()), "values": values}


def split_log_probs_and_entropy(
    config: LossConfig, groups: ParallelGroups, batch: Mapping, logits: torch.Tensor, *, with_entropy: bool
) -> dict[str, list[torch.Tensor]]:
    """Per-sample log-probs (and entropies, no gradient) of this rank's response tokens: ``{"log_probs": [...],
    "entropy": [...]}``. ``batch`` needs ``unconcat_tokens``, ``total_lengths``, ``response_lengths``. Gradient
    flows through the log-probs when the caller has grad enabled."""
    spans, log_probs, entropy = compute_log_probs_and_entropy(config, groups, batch, logits, entropy_grad=False)
    result = {"log_probs": list(log_probs.split(spans.local_lengths))}
    if with_entropy:
        result["entropy"] = list(entropy.split(spans.local_lengths))
    return result


class BoundLoss:
    """The loss of one Megatron actor (see module doc).

    Args:
        config: the loss configuration.
        groups: the actor's tensor-, context- and data x context-parallel groups.
        global_batch_size: samples per optimizer step (per-sample scaling); None for a log-prob-only binding.
        vocab_size: the model's true vocabulary; the kernel ignores Megatron's padded columns beyond it.
            ``--vocab-size`` (``config.kernel.vocab_size``), when given, wins.
        hook_args: the namespace handed to a ``--custom-loss-function-path`` function (slime's hook signature);
            required with one, never read here.
    """

    def __init__(
        self,
        config: LossConfig,
        groups: ParallelGroups,
        *,
        global_batch_size: int | None,
        vocab_size: int | None = None,
        hook_args: argparse.Namespace | None = None,
    ):
        if config.kernel.vocab_size is None and vocab_size is not None:
            config = dataclasses.replace(config, kernel=dataclasses.replace(config.kernel, vocab_size=vocab_size))
        self.config, self.groups, self.global_batch_size = config, groups, global_batch_size
        self._custom_loss = None
        self._hook_args = hook_args
        if config.custom_loss_function_path is not None:
            if hook_args is None:
                raise ValueError(
                    f"--custom-loss-function-path {config.custom_loss_function_path} is called with the run's "
                    "argument namespace (slime's signature): bind the loss with hook_args"
                )
            self._custom_loss = load_function(config.custom_loss_function_path)

    def training_loss(self, batch: Mapping, num_microbatches: int, logits: torch.Tensor) -> MicroBatchLoss:
        """One micro-batch's loss, token count and metric record, scaled as ``slime_api.loss_function`` (slime
        v0.1.0 signature) scales them. Collective over the loss's groups."""
        loss, metrics, num_tokens = standalone_loss(
            self.config, self.groups, batch, logits, custom_loss=self._custom_loss, hook_args=self._hook_args
        )
        return megatron_scaled(
            loss,
            metrics,
            num_tokens,
            batch,
            logits,
            groups=self.groups,
            per_token=self.config.policy.per_token_loss,
            num_microbatches=num_microbatches,
            batch_size=self.global_batch_size,
        )

    def log_probs_and_entropy(
        self, batch: Mapping, logits: torch.Tensor, *, with_entropy: bool
    ) -> dict[str, list[torch.Tensor]]:
        """:func:`split_log_probs_and_entropy` with this binding's config and groups."""
        return split_log_probs_and_entropy(self.config, self.groups, batch, logits, with_entropy=with_entropy)
