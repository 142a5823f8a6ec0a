"""Build slime-shaped micro-batches for any TP x CP x DP layout from one global set of samples, run
``slime_entropy.loss.loss_function`` on every rank, and emulate what Megatron and slime do with the result
(gradient scaling, metric reduction), so that the outcome can be compared with ``reference.reference_step``.

The CP slicing here is written independently of ``slime_entropy.loss.spans``: a rank owns the logits rows of
its two zigzag chunks, and a response token is local iff its predicting row is.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

import torch

from slime_entropy.loss.arguments import add_arguments, add_slime_loss_arguments
from slime_entropy.rollout.arguments import add_rollout_temperature_argument

from .reference import RefSample


def make_args(cli: str, *, global_batch_size: int, vocab_size: int | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_slime_loss_arguments(parser)
    add_rollout_temperature_argument(parser)
    parser.add_argument("--global-batch-size", type=int)
    parser.add_argument("--vocab-size", type=int, default=None)
    argv = shlex.split(cli) + ["--global-batch-size", str(global_batch_size)]
    if vocab_size is not None:
        argv += ["--vocab-size", str(vocab_size)]
    return parser.parse_args(argv)


def make_samples(
    seed: int,
    num_samples: int,
    vocab: int,
    *,
    min_len: int = 6,
    max_len: int = 24,
    per_token_advantages: bool = False,
    padded_columns: int = 0,
    duplicate_rows: bool = True,
) -> list[RefSample]:
    """Random samples with varied prompt/response lengths, partly masked responses, and logits whose entropies
    spread widely (row-dependent scale). The last ``padded_columns`` vocab columns get large logits: they are
    Megatron padding and must not count."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_samples):
        total = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        prompt = int(torch.randint(1, total - 1, (1,), generator=g))
        response = total - prompt
        tokens = torch.randint(0, vocab - padded_columns, (total,), generator=g)
        scale = torch.rand(total, 1, generator=g) * 6 + 0.05
        logits = (torch.randn(total, vocab, generator=g) * scale).float()
        if padded_columns:
            logits[:, vocab - padded_columns :] = 8.0
        if duplicate_rows and total > 3:
            logits[-2] = logits[prompt - 1]  # an exact entropy tie inside the population
        mask = (torch.rand(response, generator=g) > 0.2).long()
        if i == 1:
            mask.zero_()  # a sample with no valid token
        if per_token_advantages:
            adv = torch.randn(response, generator=g)
        else:
            adv = torch.full((response,), float(torch.randn(1, generator=g)))
        old = -torch.rand(response, generator=g) * 3
        samples.append(
            RefSample(
                tokens=tokens,
                prompt_len=prompt,
                logits=logits.double(),
                loss_mask=mask,
                advantages=adv,
                old_log_probs=old,
                ref_log_probs=old + torch.randn(response, generator=g) * 0.1,
                rollout_log_probs=old + torch.randn(response, generator=g) * 0.2,
            )
        )
    return samples


def local_positions(sample: RefSample, cp_rank: int, cp_size: int) -> tuple[list[int], list[int], int]:
    """(rows owned in sequence coordinates, in local order; local response indices in local order; chunk size)."""
    total = sample.total_len
    if cp_size == 1:
        rows = list(range(total))
        chunk = total
    else:
        chunk = -(-total // (2 * cp_size))
        rows = list(range(cp_rank * chunk, (cp_rank + 1) * chunk)) + list(
            range((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk)
        )
    response_idx = [p + 1 - sample.prompt_len for p in rows if sample.prompt_len - 1 <= p <= total - 2]
    return rows, response_idx, chunk


@dataclass
class RankInput:
    batch: dict
    logits: torch.Tensor  # [1, T_local, V_local] leaf
    row_map: list[tuple[int, int]]  # local row -> (sample index, sequence position) or (-1, -1) for padding


def build_rank_input(samples, sample_ids, tp_rank, tp_size, cp_rank, cp_size, seed=0) -> RankInput:
    vocab = samples[0].logits.shape[1]
    shard = vocab // tp_size
    cols = slice(tp_rank * shard, (tp_rank + 1) * shard)
    g = torch.Generator().manual_seed(1000 + seed)
    rows_out, row_map = [], []
    batch = {
        k: []
        for k in (
            "unconcat_tokens",
            "total_lengths",
            "response_lengths",
            "loss_masks",
            "advantages",
            "log_probs",
            "ref_log_probs",
            "rollout_log_probs",
        )
    }
    for i in sample_ids:
        s = samples[i]
        positions, response_idx, _ = local_positions(s, cp_rank, cp_size)
        for p in positions:
            if p < s.total_len:
                rows_out.append(s.logits[p, cols].float())
                row_map.append((i, p))
            else:  # zigzag padding of the sequence
                rows_out.append(torch.randn(shard, generator=g) * 5)
                row_map.append((-1, -1))
        idx = torch.tensor(response_idx, dtype=torch.long)
        batch["unconcat_tokens"].append(s.tokens)
        batch["total_lengths"].append(s.total_len)
        batch["response_lengths"].append(s.response_len)
        batch["loss_masks"].append(s.loss_mask)
        batch["advantages"].append(s.advantages[idx].float())
        batch["log_probs"].append(s.old_log_probs[idx].float())
        batch["ref_log_probs"].append(s.ref_log_probs[idx].float())
        batch["rollout_log_probs"].append(s.rollout_log_probs[idx].float())
    # slime pads the packed stream; padding rows must get no gradient
    for _ in range(3):
        rows_out.append(torch.randn(shard, generator=g) * 5)
        row_map.append((-1, -1))
    logits = torch.stack(rows_out).unsqueeze(0).requires_grad_(True)
    return RankInput(batch=batch, logits=logits, row_map=row_map)


def _step_threshold(args, samples, micro_batches, inputs, layout):
    """What slime_entropy's trainer does for --entropy-threshold-scope step: tau over the valid tokens of the whole
    global batch from a no-grad entropy pass (the old policy, identical to the current one before the update)."""
    from slime_entropy.loss import get_log_probs_and_entropy
    from slime_entropy.ops.selection import select_top_fraction

    values = []
    for ids, rank_input in zip(micro_batches, inputs, strict=True):
        batch = rank_input.batch
        with torch.no_grad():
            out = get_log_probs_and_entropy(
                rank_input.logits,
                args=args,
                unconcat_tokens=batch["unconcat_tokens"],
                total_lengths=batch["total_lengths"],
                response_lengths=batch["response_lengths"],
                with_entropy=True,
            )
        for i, entropy in zip(ids, out["entropy"], strict=True):
            _, response_idx, _ = local_positions(samples[i], layout["cp_rank"], layout["cp_size"])
            values.append(entropy[samples[i].loss_mask[response_idx] > 0])
    selection = select_top_fraction(torch.cat(values), args.entropy_percentile, layout["dp_cp_group"])
    return selection.threshold


def run_rank(args, samples, schedule, layout):
    """Run every micro-batch of this rank and emulate Megatron + slime.

    schedule[dp_rank] = list of micro-batches (lists of sample ids); all DP ranks have the same count.
    layout = dict(tp_rank, tp_size, cp_rank, cp_size, dp_rank, dp_size, dp_cp_group).
    Returns dict(loss=sum of effective losses, grads={(sample, pos): [V_local] effective grad}, reported=metrics).
    """
    from slime_entropy.loss import loss_function

    micro_batches = schedule[layout["dp_rank"]]
    num_mb = len(micro_batches)
    where = (layout["tp_rank"], layout["tp_size"], layout["cp_rank"], layout["cp_size"])
    inputs = [build_rank_input(samples, ids, *where, seed=m) for m, ids in enumerate(micro_batches)]
    if args.entropy_threshold_scope == "step":
        step_threshold = _step_threshold(args, samples, micro_batches, inputs, layout)
        for rank_input in inputs:
            rank_input.batch["entropy_threshold"] = step_threshold
    records = []
    for rank_input in inputs:
        loss, num_tokens, record = loss_function(args, rank_input.batch, num_mb, rank_input.logits)
        loss.backward()
        records.append((loss.detach(), num_tokens, record, rank_input))

    loss, grads, values, keys = megatron_outcome(records, layout, args.calculate_per_token_loss)
    reported = {k: float(v) * layout["cp_size"] / float(values[0]) for k, v in zip(keys, values[1:], strict=False)}
    return {"loss": loss, "grads": grads, "reported": reported, "keys": keys}


def megatron_outcome(records, layout, per_token: bool, *, check_padding: bool = True):
    """What Megatron and DDP make of one rank's micro-batch results ``(loss, num_tokens, record, RankInput)``
    whose backward has run: the effective loss, the effective gradient of every owned logits row (keyed
    (sample, position)), the metric values summed over micro-batches and all-reduced over DP x CP, and the keys.

    Megatron divides each loss by num_tokens (per-token mode: all-reduced) or by the micro-batch count, and DDP
    averages over DP x CP.
    """
    import torch.distributed as dist

    group = layout["dp_cp_group"]
    if per_token:
        total_tokens = torch.tensor(float(sum(int(r[1]) for r in records)))
        dist.all_reduce(total_tokens, group=group)
        scale = 1.0 / max(float(total_tokens), 1.0)
    else:
        scale = 1.0 / (len(records) * layout["dp_size"] * layout["cp_size"])
    grads, effective_loss = {}, 0.0
    for loss, _, _, rank_input in records:
        effective_loss += float(loss) * scale
        grad = rank_input.logits.grad[0] * scale
        for r, key in enumerate(rank_input.row_map):
            if key == (-1, -1):
                assert not check_padding or torch.count_nonzero(grad[r]) == 0, "padding rows must get no gradient"
            else:
                grads[key] = grad[r].clone()
    values = sum(r[2]["values"].double() for r in records)
    dist.all_reduce(values, group=group)
    keys = records[0][2]["keys"]
    assert all(r[2]["keys"] == keys for r in records), "metric keys differ between micro-batches"
    return effective_loss, grads, values, keys


def megatron_layout(tp: int, cp: int) -> dict:
    """This rank's place in Megatron's current parallel layout, and its data x context parallel group."""
    from megatron.core import parallel_state as mpu

    return dict(
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        tp_size=tp,
        cp_rank=mpu.get_context_parallel_rank(),
        cp_size=cp,
        dp_rank=mpu.get_data_parallel_rank(),
        dp_size=mpu.get_data_parallel_world_size(),
        dp_cp_group=mpu.get_data_parallel_group(with_context_parallel=True),
    )
