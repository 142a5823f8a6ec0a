"""Variable-length samples -> packed micro-batches in slime's layout.

A rank's samples for one optimizer step are split into micro-batches either by count (``--micro-batch-size``) or by
token budget (``--use-dynamic-batch-size --max-tokens-per-gpu``). Every data-parallel rank must run the same number
of micro-batches (Megatron's schedule and any per-micro-batch collective in the loss rely on it), so the count is
agreed with one MAX all-reduce over the data-parallel group; a rank with fewer samples than micro-batches gets empty
micro-batches (pure padding; the loss contributes zero but still joins its collectives).

Each micro-batch is slime's dict: ``tokens [1, T_pad]`` (samples back to back, then padding to a multiple of
``pad_multiple`` = TP x 128), ``packed_seq_params`` (THD; the padding is one extra segment), ``unconcat_tokens``,
``total_lengths``, ``response_lengths``, ``loss_masks`` and the per-token fields that exist (``advantages``,
``log_probs``, ``ref_log_probs``, ``rollout_log_probs``), each a list with one 1-D tensor per sample over its
response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from slime_entropy import collectives
from slime_entropy.megatron.model import packed_seq_params_from_lengths

__all__ = ["TrainSample", "plan_micro_batches", "first_fit_count", "build_micro_batch", "PER_TOKEN_FIELDS"]

PER_TOKEN_FIELDS = ("advantages", "log_probs", "ref_log_probs", "rollout_log_probs")


@dataclass
class TrainSample:
    """One prompt+response sequence of a rollout.

    tokens: [total_length] int64, prompt then response.
    response_length: number of response tokens (the last ``response_length`` of ``tokens``).
    loss_mask: [response_length] int, 1 where the token is trained on.
    fields: per-token float tensors over the response (``advantages``, and once computed ``log_probs``,
        ``ref_log_probs``, ``entropy``; ``rollout_log_probs`` from the engine).
    """

    tokens: torch.Tensor
    response_length: int
    loss_mask: torch.Tensor
    fields: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens.dim() != 1:
            raise ValueError(f"Sample.tokens must be 1-D, got shape {tuple(self.tokens.shape)}")
        if not 0 < self.response_length <= self.tokens.numel():
            raise ValueError(
                f"response_length {self.response_length} must lie in [1, total length {self.tokens.numel()}]"
            )
        if self.loss_mask.numel() != self.response_length:
            raise ValueError(
                f"loss_mask has {self.loss_mask.numel()} entries, response_length is {self.response_length}"
            )

    @property
    def total_length(self) -> int:
        return int(self.tokens.numel())


def first_fit_count(lengths: Sequence[int], budget: int) -> int:
    """Number of bins first-fit-decreasing needs to pack ``lengths`` into bins of ``budget`` tokens."""
    bins: list[int] = []
    for n in sorted(lengths, reverse=True):
        for i, load in enumerate(bins):
            if load + n <= budget:
                bins[i] += n
                break
        else:
            bins.append(n)
    return len(bins)


def _partition_by_tokens(lengths: Sequence[int], num_bins: int, budget: int) -> list[list[int]]:
    """Sample indices of ``num_bins`` micro-batches, each within ``budget`` tokens, balanced by token count.

    Longest-first onto the least-loaded bin that fits; falls back to first-fit-decreasing (which fits in at most
    ``num_bins`` bins by construction of ``num_bins``) padded with empty bins. Indices keep their input order inside
    a bin, so the result is deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    loads = [0] * num_bins
    for i in order:
        candidates = [b for b in range(num_bins) if loads[b] + lengths[i] <= budget]
        if not candidates:
            return _first_fit_bins(lengths, num_bins, budget)
        b = min(candidates, key=lambda c: (loads[c], c))
        bins[b].append(i)
        loads[b] += lengths[i]
    return [sorted(b) for b in bins]


def _first_fit_bins(lengths: Sequence[int], num_bins: int, budget: int) -> list[list[int]]:
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, load in enumerate(loads):
            if load + lengths[i] <= budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    assert len(bins) <= num_bins, (len(bins), num_bins)
    return [sorted(b) for b in bins] + [[] for _ in range(num_bins - len(bins))]


def plan_micro_batches(
    lengths: Sequence[int],
    *,
    micro_batch_size: int | None,
    max_tokens: int | None,
    dp_group,
) -> list[list[int]]:
    """Split this rank's samples (by index) into micro-batches; the count is the same on every rank of ``dp_group``.

    Exactly one of ``micro_batch_size`` (fixed count) and ``max_tokens`` (dynamic, token budget) is given. A sample
    longer than ``max_tokens`` is an error naming both numbers. Collective over ``dp_group`` (one MAX all-reduce).
    """
    if (micro_batch_size is None) == (max_tokens is None):
        raise ValueError("give exactly one of micro_batch_size and max_tokens")
    if max_tokens is not None:
        too_long = [n for n in lengths if n > max_tokens]
        if too_long:
            raise ValueError(
                f"a sample of {max(too_long)} tokens exceeds --max-tokens-per-gpu {max_tokens} (or "
                "--log-probs-max-tokens-per-gpu); raise the budget to at least the longest prompt+response"
            )
        local_count = first_fit_count(lengths, max_tokens) if lengths else 0
    else:
        local_count = -(-len(lengths) // micro_batch_size)
    from slime_entropy.megatron.groups import comm_device

    count = torch.tensor([max(local_count, 1)], dtype=torch.int64, device=comm_device())
    collectives.all_reduce_max_(count, dp_group)
    num_micro_batches = int(count.item())
    if max_tokens is not None:
        return _partition_by_tokens(lengths, num_micro_batches, max_tokens)
    indices = list(range(len(lengths)))
    bins = [indices[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(num_micro_batches)]
    return bins


def build_micro_batch(
    samples: Sequence[TrainSample], pad_multiple: int, device: torch.device, fields: Sequence[str] = PER_TOKEN_FIELDS
) -> dict:
    """slime's micro-batch dict for ``samples`` (possibly none) on ``device``.

    ``fields``: per-token fields to include; a field is included only if every sample has it.
    """
    lengths = [s.total_length for s in samples]
    used = sum(lengths)
    padded = max(pad_multiple, -(-used // pad_multiple) * pad_multiple) if pad_multiple > 1 else max(used, 1)
    tokens = torch.zeros(padded, dtype=torch.int64)
    offset = 0
    for s in samples:
        tokens[offset : offset + s.total_length] = s.tokens
        offset += s.total_length
    segment_lengths = lengths + ([padded - used] if padded > used else [])
    batch = {
        "tokens": tokens.unsqueeze(0).to(device),
        "packed_seq_params": packed_seq_params_from_lengths(segment_lengths, device),
        "unconcat_tokens": [s.tokens.to(device) for s in samples],
        "total_lengths": lengths,
        "response_lengths": [s.response_length for s in samples],
        "loss_masks": [s.loss_mask.to(device) for s in samples],
    }
    for name in fields:
        if samples and all(name in s.fields for s in samples):
            batch[name] = [s.fields[name].to(device) for s in samples]
        elif not samples:
            batch[name] = []
    return batch
