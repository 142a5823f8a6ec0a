"""The loss bound once to its config and groups (``BoundLoss``, the actor's path) equals slime's adapter
(``loss_function(args, batch, num_microbatches, logits)``, resolving ``args`` per call) bit for bit: loss,
num_tokens, metric record and logits gradients, in one process and on a gloo TP2 x DP2 world."""

from __future__ import annotations

import pytest
import torch

from slime_entropy.loss import get_log_probs_and_entropy, loss_function
from slime_entropy.loss.bound import BoundLoss
from slime_entropy.loss.config import LossConfig
from slime_entropy.parallel import ParallelGroups
from tests.distributed import run_world

from .harness import build_rank_input, make_args, make_samples

VOCAB = 48
BASE = "--rollout-temperature 0.8 --eps-clip 0.2 --eps-clip-high 0.28 --logprob-entropy-backend eager"
CASES = {
    "filter off, kl + entropy": "--use-kl-loss --kl-loss-coef 0.1 --kl-loss-type low_var_kl --entropy-coef 0.01",
    "filter, kept denominators": "--high-entropy-token-filter --entropy-percentile 0.3",
    "filter, all denominators": "--high-entropy-token-filter --entropy-percentile 0.3 "
    "--entropy-filter-denominator all",
    "per-token, kept": "--high-entropy-token-filter --entropy-percentile 0.2 --calculate-per-token-loss",
    "per-token, all": "--high-entropy-token-filter --entropy-percentile 0.2 --calculate-per-token-loss "
    "--entropy-filter-denominator all --entropy-coef 0.02",
    "per-token, filter off": "--calculate-per-token-loss --use-tis",
    "custom loss hook": "--loss-type custom_loss --custom-loss-function-path slime_entropy.loss.policy_loss_function",
}


def _both_paths(cli, samples, micro_batches, groups, where, *, padded_columns=0):
    """Run every micro-batch through the adapter and through one BoundLoss; returns both outcomes."""
    vocab_size = VOCAB - padded_columns if padded_columns else None
    args = make_args(f"{BASE} {cli}", global_batch_size=len(samples), vocab_size=vocab_size)
    # the actor's binding: --vocab-size not given, the model's true vocabulary handed in
    config = LossConfig.from_args(make_args(f"{BASE} {cli}", global_batch_size=len(samples)))
    bound = BoundLoss(config, groups, global_batch_size=len(samples), vocab_size=vocab_size, hook_args=args)
    outcomes = []
    for path in ("adapter", "bound"):
        out = []
        for m, ids in enumerate(micro_batches):
            rank_input = build_rank_input(samples, ids, *where, seed=m)
            if path == "adapter":
                loss, num_tokens, record = loss_function(args, rank_input.batch, len(micro_batches), rank_input.logits)
            else:
                loss, num_tokens, record = bound.training_loss(rank_input.batch, len(micro_batches), rank_input.logits)
            loss.backward()
            with torch.no_grad():
                if path == "adapter":
                    b = rank_input.batch
                    passes = get_log_probs_and_entropy(
                        rank_input.logits, args=args, unconcat_tokens=b["unconcat_tokens"],
                        total_lengths=b["total_lengths"], response_lengths=b["response_lengths"], with_entropy=True,
                    )  # fmt: skip
                else:
                    passes = bound.log_probs_and_entropy(rank_input.batch, rank_input.logits, with_entropy=True)
            out.append((loss.detach(), num_tokens, record, rank_input.logits.grad, passes))
        outcomes.append(out)
    return outcomes


def _assert_identical(adapter, bound, label):
    assert len(adapter) == len(bound)
    for (loss_a, tok_a, rec_a, grad_a, pass_a), (loss_b, tok_b, rec_b, grad_b, pass_b) in zip(
        adapter, bound, strict=True
    ):
        assert torch.equal(loss_a, loss_b), (label, loss_a, loss_b)
        assert tok_a.dtype == tok_b.dtype == torch.int32 and torch.equal(tok_a, tok_b), label
        assert rec_a["keys"] == rec_b["keys"] and torch.equal(rec_a["values"], rec_b["values"]), label
        assert torch.equal(grad_a, grad_b), label
        for key in ("log_probs", "entropy"):
            assert all(torch.equal(x, y) for x, y in zip(pass_a[key], pass_b[key], strict=True)), (label, key)


@pytest.mark.parametrize("name", list(CASES))
def test_bound_loss_equals_the_adapter_bit_for_bit(name):
    samples = make_samples(21, 6, VOCAB, padded_columns=4)
    adapter, bound = _both_paths(
        CASES[name], samples, [[0, 1, 2], [3, 4, 5]], ParallelGroups(), (0, 1, 0, 1), padded_columns=4
    )
    _assert_identical(adapter, bound, name)
    # the padded vocabulary columns are excluded on both paths (they would dominate the softmax)
    assert all(torch.count_nonzero(grad[0, :, -4:]) == 0 for _, _, _, grad, _ in bound)


def test_binding_needs_the_hook_namespace_for_a_custom_loss_and_the_batch_size_per_sample():
    cli = f"{BASE} {CASES['custom loss hook']}"
    with pytest.raises(ValueError, match="custom-loss-function-path .* bind the loss with hook_args"):
        BoundLoss(LossConfig.from_args(make_args(cli, global_batch_size=2)), ParallelGroups(), global_batch_size=2)
    bound = BoundLoss(
        LossConfig.from_args(make_args(BASE, global_batch_size=2)), ParallelGroups(), global_batch_size=None
    )
    rank_input = build_rank_input(make_samples(3, 2, VOCAB), [0, 1], 0, 1, 0, 1)
    with pytest.raises(ValueError, match="needs --global-batch-size"):
        bound.training_loss(rank_input.batch, 1, rank_input.logits)


def _world_worker(rank, world_size, tp):
    from megatron.core import parallel_state as mpu

    mpu.initialize_model_parallel(tensor_model_parallel_size=tp)
    groups = ParallelGroups.from_megatron()
    dp_rank = mpu.get_data_parallel_rank()
    where = (mpu.get_tensor_model_parallel_rank(), tp, 0, 1)
    samples = make_samples(5, 8, VOCAB)
    micro_batches = [[4 * dp_rank, 4 * dp_rank + 1], [4 * dp_rank + 2, 4 * dp_rank + 3]]
    failures = []
    for name in ("filter, kept denominators", "per-token, kept", "filter, all denominators"):
        adapter, bound = _both_paths(CASES[name], samples, micro_batches, groups, where)
        try:
            _assert_identical(adapter, bound, name)
        except AssertionError as err:
            failures.append(f"rank {rank}: {err}")
    mpu.destroy_model_parallel()
    return failures


@pytest.mark.multiprocess
def test_bound_loss_equals_the_adapter_on_a_tp2_dp2_world():
    results = run_world(_world_worker, 4, args=(2,), timeout=300)
    assert results == [[]] * 4, results
