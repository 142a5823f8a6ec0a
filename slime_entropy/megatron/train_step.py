"""Megatron forward/backward passes over packed micro-batches: the no-grad log-prob pass and the training step.

One optimizer step::

    samples of this DP rank ──plan_micro_batches (same count on every DP rank)──► micro-batches
    no-grad pass (old policy; ref model swapped in for ref log-probs) ──► per-sample log_probs, entropy
    [--entropy-threshold-scope step] valid old-policy entropies of the step ──select_top_fraction over DP──► tau
    forward_backward(loss_function per micro-batch) ──finalize grads (DP reduce)──► optimizer.step ──► lr step

The loss (``slime_entropy.loss.bound.BoundLoss``, bound once by the actor to its config and process groups) runs
only on the last pipeline stage, once per micro-batch, inside Megatron's schedule, with slime's scaling: the step's
gradient is that of (1/global_batch_size) x the sum over the step's samples of their per-sample means, for any
TP/DP/micro-batch split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from slime_entropy import collectives
from slime_entropy.loss.bound import BoundLoss
from slime_entropy.loss.policy_loss import STEP_THRESHOLD_KEY
from slime_entropy.megatron.batching import TrainSample, build_micro_batch, plan_micro_batches
from slime_entropy.megatron.groups import ActorGroups, comm_device

__all__ = ["forward_logits", "compute_log_probs", "train_step", "compute_step_threshold", "STEP_THRESHOLD_KEY"]

logger = logging.getLogger(__name__)


def forward_logits(model, batch: dict) -> torch.Tensor:
    """Run the (wrapped) GPTModel on a packed micro-batch; the last stage returns ``[1, T_pad, V/TP]``."""
    return model(batch["tokens"], None, None, packed_seq_params=batch["packed_seq_params"])


def _max_segment(batches: Sequence[dict]) -> int:
    return max(int(b["tokens"].shape[1]) for b in batches)


def _run_schedule(model, batches: list[dict], loss_func_for: Callable[[dict, int], Callable], forward_only: bool):
    """Megatron's forward_backward over ``batches``; returns the loss_func records of the last stage."""
    num_micro_batches = len(batches)
    iterator = iter(batches)

    def forward_step(data_iterator, wrapped_model):
        batch = next(data_iterator)
        return forward_logits(wrapped_model, batch), loss_func_for(batch, num_micro_batches)

    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterator,
        model=[model],
        num_microbatches=num_micro_batches,
        seq_length=_max_segment(batches),
        micro_batch_size=1,
        forward_only=forward_only,
    )


@torch.no_grad()
def compute_log_probs(
    model,
    samples: Sequence[TrainSample],
    *,
    loss: BoundLoss,
    groups: ActorGroups,
    micro_batch_size: int | None,
    max_tokens: int | None,
    pad_multiple: int,
    store_as: str,
    with_entropy: bool,
) -> None:
    """No-grad pass: store per-sample log-probs (``sample.fields[store_as]``) and, optionally, entropies
    (``sample.fields["entropy"]``) of the response tokens under the model's current weights.

    Uses ``loss.log_probs_and_entropy`` (tempered by ``--rollout-temperature``). Results exist on the last pipeline
    stage only (the only stage with logits); other stages store nothing. Collective.
    """
    if not samples and groups.dp_cp is None:
        return
    device = comm_device()
    plan = plan_micro_batches(
        [s.total_length for s in samples],
        micro_batch_size=micro_batch_size,
        max_tokens=max_tokens,
        dp_group=groups.dp_cp,
    )
    batches = [build_micro_batch([samples[i] for i in idx], pad_multiple, device, fields=()) for idx in plan]
    results: list[dict] = []

    def loss_func_for(batch: dict, num_micro_batches: int):
        def loss_func(logits: torch.Tensor):
            out = loss.log_probs_and_entropy(batch, logits.float(), with_entropy=with_entropy)
            results.append(out)
            return logits.new_zeros(()), torch.ones((), dtype=torch.int, device=logits.device), {}

        return loss_func

    was_training = model.training
    model.eval()
    try:
        _run_schedule(model, batches, loss_func_for, forward_only=True)
    finally:
        model.train(was_training)
    if not groups.is_last_stage:
        return
    for idx, out in zip(plan, results, strict=True):
        for j, sample_index in enumerate(idx):
            samples[sample_index].fields[store_as] = out["log_probs"][j].float().cpu()
            if with_entropy:
                samples[sample_index].fields["entropy"] = out["entropy"][j].float().cpu()


def compute_step_threshold(
    samples: Sequence[TrainSample], keep_fraction: float, groups: ActorGroups, method: str = "radix"
):
    """The step-scope threshold: tau over the valid response tokens of the whole global batch.

    Population: ``sample.fields["entropy"]`` (the old-policy pass) where ``loss_mask`` is 1, over this rank's step
    samples and, through ``select_top_fraction`` over the data-parallel group, every other DP rank's. Identical on
    every rank; independent of micro-batching and of the parallel layout. Returns ``TopFractionSelection``.
    Collective over the DP group (last pipeline stage only: call it where the entropies exist).
    """
    from slime_entropy.ops.selection import select_top_fraction

    device = comm_device()
    parts = [s.fields["entropy"][s.loss_mask.bool()] for s in samples]
    values = torch.cat(parts).to(device) if parts else torch.zeros(0, device=device)
    return select_top_fraction(values, keep_fraction, groups.dp_cp, method=method)


def train_step(
    model,
    optimizer,
    scheduler,
    samples: Sequence[TrainSample],
    *,
    loss: BoundLoss,
    groups: ActorGroups,
    micro_batch_size: int | None,
    max_tokens: int | None,
    pad_multiple: int,
    step_threshold: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimizer step over this DP rank's ``samples`` (its share of one global batch).

    ``samples`` carry ``advantages`` and the old-policy ``log_probs`` (and ``ref_log_probs`` with the KL loss).
    ``step_threshold``: the step-scope tau, handed to the loss in every micro-batch under ``STEP_THRESHOLD_KEY``.
    Returns slime's reduced metrics (``loss``, ``pg_loss`` ... as ``value * cp_size / weight`` summed over DP;
    last pipeline stage only) plus ``grad_norm``, ``lr`` and ``update_successful`` on every rank.
    """
    device = comm_device()
    plan = plan_micro_batches(
        [s.total_length for s in samples],
        micro_batch_size=micro_batch_size,
        max_tokens=max_tokens,
        dp_group=groups.dp_cp,
    )
    batches = [build_micro_batch([samples[i] for i in idx], pad_multiple, device) for idx in plan]
    if step_threshold is not None:
        for batch in batches:
            batch[STEP_THRESHOLD_KEY] = step_threshold.to(device)

    def loss_func_for(batch: dict, num_micro_batches: int):
        return partial(loss.training_loss, batch, num_micro_batches)

    model.train()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    records = _run_schedule(model, batches, loss_func_for, forward_only=False)
    update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        scheduler.step(increment=1)
    metrics = _reduce_metrics(records, groups) if groups.is_last_stage else {}
    metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
    metrics["lr"] = float(optimizer.param_groups[0]["lr"])
    metrics["update_successful"] = float(bool(update_successful))
    metrics["num_micro_batches"] = float(len(batches))
    return metrics


def _reduce_metrics(records: list[dict], groups: ActorGroups) -> dict[str, float]:
    """slime v0.1.0's reduction: sum the records over micro-batches and DP ranks, divide by the summed weight."""
    if not records:
        return {}
    keys = records[0]["keys"]
    for record in records[1:]:
        if record["keys"] != keys:
            raise RuntimeError(f"loss metric keys differ between micro-batches: {keys} vs {record['keys']}")
    total = torch.stack([r["values"].detach().to(torch.float64) for r in records]).sum(0).to(comm_device())
    collectives.all_reduce_sum_(total, groups.dp_cp)
    weight = float(total[0])
    return {key: float(total[i + 1]) / weight if weight else 0.0 for i, key in enumerate(keys)}
