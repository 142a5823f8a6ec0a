"""One rank of a gloo world that drives a slime release's own ``loss_function`` on slime-shaped micro-batches and
emulates what Megatron and slime do with the result (gradient scaling, the release's metric reduction).

Micro-batches come from ``tests/loss/harness.build_rank_input`` (zigzag CP slices written independently of both
slime and slime_entropy); slime >= 0.3 batches also carry ``rollout_mask_sums`` built from rollout ids, as slime's
actor does (each sample's denominator is its rollout's total mask count over the whole step).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from slime_entropy.testing.slime_source import CP_UTILS, slime_loss_args
from tests.loss.harness import build_rank_input, megatron_outcome

OUR_LOSS = "slime_entropy.loss.policy_loss_function"


def slime_args(release_family: str, cli: str, *, global_batch_size: int) -> argparse.Namespace:
    return slime_loss_args(release_family, shlex.split(cli), global_batch_size=global_batch_size)


def rollout_mask_sums(samples, rollout_ids):
    totals: dict[int, int] = {}
    for sample, rid in zip(samples, rollout_ids, strict=True):
        totals[rid] = totals.get(rid, 0) + int(sample.loss_mask.sum())
    return [torch.tensor(totals[rid]) for rid in rollout_ids]


_PER_TOKEN_FIELDS = {
    "advantages": "advantages",
    "log_probs": "old_log_probs",
    "ref_log_probs": "ref_log_probs",
    "rollout_log_probs": "rollout_log_probs",
}


def _take_slime_data_path(batch, row_map, samples):
    """Per-token fields CP-sliced by slime's own ``slice_log_prob_with_cp`` (the actor's data path), and the
    harness's logits rows checked against slime's own ``slice_with_cp`` of each sequence."""
    cp_utils = sys.modules[CP_UTILS]
    for j, sample in enumerate(samples):
        for key, attribute in _PER_TOKEN_FIELDS.items():
            full = getattr(sample, attribute).float().tolist()  # v0.1.0 slices Python lists
            local = cp_utils.slice_log_prob_with_cp(full, sample.total_len, sample.response_len)
            batch[key][j] = torch.tensor(local, dtype=torch.float32)
    slime_rows = torch.cat([cp_utils.slice_with_cp(torch.arange(s.total_len), -1) for s in samples]).tolist()
    harness_rows = [position for _, position in row_map[: len(slime_rows)]]
    assert harness_rows == slime_rows, "the harness's CP layout differs from slime's slice_with_cp"


def run_slime_rank(loss_module, family, args, samples, schedule, layout, *, rollout_ids=None, drop_log_probs=False):
    """Every micro-batch of this rank through ``loss_module.loss_function``; returns the effective loss, the
    effective gradient of every owned logits row (keyed (sample, position)), the reported metrics and keys."""
    micro_batches = schedule[layout["dp_rank"]]
    num_mb = len(micro_batches)
    rollout_ids = list(range(len(samples))) if rollout_ids is None else rollout_ids
    step_size = len(set(rollout_ids))
    denominators = rollout_mask_sums(samples, rollout_ids)
    where = (layout["tp_rank"], layout["tp_size"], layout["cp_rank"], layout["cp_size"])
    records = []
    for m, ids in enumerate(micro_batches):
        rank_input = build_rank_input(samples, ids, *where, seed=m)
        batch = rank_input.batch
        _take_slime_data_path(batch, rank_input.row_map, [samples[i] for i in ids])
        if family == "v0.3":
            batch["rollout_mask_sums"] = [denominators[i] for i in ids]
            if drop_log_probs:
                batch["log_probs"] = None  # slime skips the old-policy pass with --use-rollout-logprobs
        extra = (step_size,) if family == "v0.3" else ()
        loss, num_tokens, record = loss_module.loss_function(args, batch, num_mb, *extra, rank_input.logits)
        loss.backward()
        records.append((loss.detach(), num_tokens, record, rank_input))

    per_token = args.calculate_per_token_loss
    # slime's loss on a padding row is not ours to check: slime's own code decides (its gradients are compared)
    effective_loss, grads, values, keys = megatron_outcome(records, layout, per_token, check_padding=False)
    if family == "v0.3" and not per_token:
        divisor, factor = float(step_size), 1.0
    else:
        divisor, factor = float(values[0]), float(layout["cp_size"])
    reported = {k: float(v) * factor / divisor for k, v in zip(keys, values[1:], strict=True)}
    return {"loss": effective_loss, "grads": grads, "reported": reported, "keys": keys}
