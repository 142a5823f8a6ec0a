"""Edge cases across data-parallel ranks: a rank without valid tokens, a rank without response tokens at all, and
non-finite logits on one rank. Nothing may hang; errors surface on every rank."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_world

from .harness import build_rank_input, make_args, make_samples

pytestmark = pytest.mark.multiprocess

VOCAB = 32
CLI = "--high-entropy-token-filter --entropy-percentile 0.2 --logprob-entropy-backend eager"


def _worker(rank, world):
    from megatron.core import parallel_state as mpu

    from slime_entropy.loss import loss_function

    mpu.initialize_model_parallel(tensor_model_parallel_size=1)
    out = {}
    samples = make_samples(4, 6, VOCAB)
    args = make_args(CLI, global_batch_size=6)

    # 1. rank 1's micro-batch has no valid token: it still joins the threshold collectives, trains nothing,
    #    and rank 0 keeps ceil(0.2 * its tokens)
    if rank == 1:
        for i in (3, 4, 5):
            samples[i].loss_mask.zero_()
    ids = [0, 1, 2] if rank == 0 else [3, 4, 5]
    rank_input = build_rank_input(samples, ids, 0, 1, 0, 1)
    loss, _, record = loss_function(args, rank_input.batch, 1, rank_input.logits)
    loss.backward()
    values = record["values"].clone()
    torch.distributed.all_reduce(values)
    out["empty_rank"] = dict(
        grad_nonzero=int(torch.count_nonzero(rank_input.logits.grad)),
        ratio=float(values[record["keys"].index("entropy_token_ratio") + 1] / values[0]),
        valid=int(sum(int(samples[i].loss_mask.sum()) for i in ids)),
    )

    # 2. all ranks without valid tokens: tau is +inf, nothing is kept, the loss is 0 with a zero gradient
    for s in samples:
        s.loss_mask.zero_()
    rank_input = build_rank_input(samples, ids, 0, 1, 0, 1)
    loss, _, record = loss_function(args, rank_input.batch, 1, rank_input.logits)
    loss.backward()
    out["all_empty"] = dict(
        loss=float(loss.detach()),
        grad_nonzero=int(torch.count_nonzero(rank_input.logits.grad)),
        metrics=record["values"].tolist(),
    )

    # 3. NaN logits on rank 0 only: every rank raises a ValueError, none hangs
    samples = make_samples(5, 6, VOCAB)
    rank_input = build_rank_input(samples, ids, 0, 1, 0, 1)
    if rank == 0:
        with torch.no_grad():
            rank_input.logits[0, samples[0].prompt_len - 1, 0] = float("nan")
    try:
        loss_function(args, rank_input.batch, 1, rank_input.logits)
        out["nan"] = "no error"
    except ValueError as err:
        out["nan"] = str(err)
    mpu.destroy_model_parallel()
    return out


def test_data_parallel_edge_cases():
    results = run_world(_worker, 2, timeout=240)
    zero, one = results[0]["empty_rank"], results[1]["empty_rank"]
    assert one["grad_nonzero"] == 0 and zero["grad_nonzero"] > 0
    # the population is rank 0's tokens only; slime's reduction averages the ratio over the 6 samples
    assert zero["ratio"] == pytest.approx(one["ratio"])
    assert zero["ratio"] >= 0.2

    for r in results:
        assert r["all_empty"]["loss"] == 0.0 and r["all_empty"]["grad_nonzero"] == 0
        assert all(v == v for v in r["all_empty"]["metrics"])  # no NaN in the metric record

    assert "non-finite" in results[0]["nan"] and "samples with non-finite entropy here: [0]" in results[0]["nan"]
    assert "non-finite" in results[1]["nan"] and "rank 0" in results[1]["nan"]
