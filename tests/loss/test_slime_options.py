"""slime >= 0.3 loss options in one process, without slime's trees: refusals with the filter, the old policy
with --use-rollout-logprobs, per-rollout metric weights, and loss_function's two signatures."""

import shlex

import pytest
import torch

from slime_entropy.loss import loss_function
from slime_entropy.loss.policy_loss import metric_weight
from slime_entropy.testing.slime_source import slime_loss_args

from .harness import build_rank_input, make_samples

BASE = "--rollout-temperature 0.8 --eps-clip 0.2 --eps-clip-high 0.28 --logprob-entropy-backend eager"
FILTER = "--high-entropy-token-filter --entropy-percentile 0.3"


def _args(cli, global_batch_size=6):
    return slime_loss_args("v0.3", shlex.split(f"{BASE} {cli}"), global_batch_size=global_batch_size)


def _run(cli, samples, *extra, batch_edit=None):
    rank_input = build_rank_input(samples, list(range(len(samples))), 0, 1, 0, 1)
    if batch_edit:
        batch_edit(rank_input.batch)
    loss, _, record = loss_function(_args(cli, len(samples)), rank_input.batch, 1, *extra, rank_input.logits)
    loss.backward()
    return loss.detach(), rank_input.logits.grad.clone(), record


@pytest.mark.parametrize(
    "flags,named",
    [
        ("--rollout-top-p 0.9", "--rollout-top-p"),
        ("--allgather-cp", "--allgather-cp"),
        ("--use-opsm", "--use-opsm"),
        ("--custom-pg-loss-reducer-function-path a.b", "--custom-pg-loss-reducer-function-path"),
    ],
)
def test_unreproduced_slime_options_are_refused_with_the_filter(flags, named):
    samples = make_samples(3, 4, 32)
    with pytest.raises(ValueError, match=f"{named} is not supported with --high-entropy-token-filter"):
        _run(f"{flags} {FILTER}", samples)


def test_rollout_logprobs_are_the_old_policy_and_log_probs_may_be_absent():
    samples = make_samples(5, 4, 32)
    for sample in samples:
        sample.old_log_probs = sample.rollout_log_probs  # what the loss must use
    reference, reference_grad, _ = _run(FILTER, samples)
    for sample in samples:
        sample.old_log_probs = torch.zeros_like(sample.old_log_probs)  # must not be read

    def drop(batch):
        batch["log_probs"] = None

    loss, grad, _ = _run(f"--use-rollout-logprobs {FILTER}", samples, batch_edit=drop)
    assert torch.equal(loss, reference)
    assert torch.equal(grad, reference_grad)


def test_split_rollouts_weigh_metrics_by_rollout_share_and_refuse_kept_denominators():
    samples = make_samples(7, 4, 32)
    masks = [s.loss_mask for s in samples]
    sums = [masks[0].sum() + masks[1].sum()] * 2 + [masks[2].sum(), masks[3].sum()]
    batch = {"loss_masks": masks, "response_lengths": [m.numel() for m in masks], "rollout_mask_sums": sums}
    # sample 1 has no valid token: its rollout is sample 0's; samples 2 and 3 are rollouts of their own
    assert float(metric_weight(batch, per_token=False)) == pytest.approx(3.0)

    # a rollout split over two samples that both have valid tokens: kept-token denominators are refused
    split = make_samples(7, 4, 32)
    split[1].loss_mask = torch.ones_like(split[1].loss_mask)
    split_sums = [split[0].loss_mask.sum() + split[1].loss_mask.sum()] * 2 + sums[2:]
    with pytest.raises(ValueError, match="--entropy-filter-denominator all"):
        _run(FILTER, split, batch_edit=lambda b: b.__setitem__("rollout_mask_sums", split_sums))


def test_loss_function_takes_both_signatures():
    samples = make_samples(9, 6, 32)
    loss_v01, grad_v01, record_v01 = _run(FILTER, samples)
    loss_v03, grad_v03, record_v03 = _run(FILTER, samples, len(samples))  # step_global_batch_size = 6 rollouts
    assert torch.equal(loss_v01, loss_v03) and torch.equal(grad_v01, grad_v03)
    assert float(record_v01["values"][0]) == len(samples)  # v0.1.0: slime divides by the summed sample counts
    assert float(record_v03["values"][0]) == 0  # >= 0.3: slime divides by step_global_batch_size itself
    assert torch.equal(record_v01["values"][1:], record_v03["values"][1:])
    with pytest.raises(TypeError, match="step_global_batch_size"):
        loss_function(_args(FILTER), {}, 1, 6, 6, torch.zeros(1, 1, 1))


def test_own_loss_features_select_slime_entropys_loss():
    from slime_entropy.loss.config import LossConfig

    assert LossConfig.from_args(_args("")).own_features == ()
    features = LossConfig.from_args(_args("--policy-loss-mode gpg --entropy-advantage-alpha 0.1"))
    assert features.own_features == ("--policy-loss-mode gpg", "--entropy-advantage-alpha")
    assert LossConfig.from_args(_args("--dual-clip-c 3")).own_features == ("--dual-clip-c",)
    # slime's own loss would run top-p replay; slime_entropy's does not, so the combination is refused by name
    with pytest.raises(ValueError, match="--rollout-top-p is not supported with --policy-loss-mode gpg"):
        LossConfig.from_args(_args("--rollout-top-p 0.9 --policy-loss-mode gpg"))
