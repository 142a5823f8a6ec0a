"""slime's loss contract in one process: equivalence with slime's semantics, the filter's visible effect, and
clear errors."""

import pytest
import torch

from slime_entropy.loss.config import LossConfig
from slime_entropy.loss import get_log_probs_and_entropy, loss_function, policy_loss_function
from slime_entropy.loss.policy_loss import slime_reducer
from slime_entropy.loss.spans import ResponseSpans

from .harness import build_rank_input, make_args, make_samples
from .reference import reference_step

VOCAB = 48
BASE = "--rollout-temperature 0.8 --eps-clip 0.2 --eps-clip-high 0.28 --logprob-entropy-backend eager"


def run(cli, samples, *, loss_fn=loss_function):
    args = make_args(f"{BASE} {cli}", global_batch_size=len(samples))
    rank_input = build_rank_input(samples, list(range(len(samples))), 0, 1, 0, 1)
    loss, num_tokens, record = loss_fn(args, rank_input.batch, 1, rank_input.logits)
    loss.backward()
    metrics = dict(zip(record["keys"], (record["values"][1:] / record["values"][0]).tolist(), strict=False))
    return loss, rank_input, metrics, args


@pytest.mark.parametrize(
    "cli",
    [
        "",
        "--use-kl-loss --kl-loss-coef 0.2 --kl-loss-type kl --entropy-coef 0.01",
        "--use-kl-loss --kl-loss-coef 0.2 --kl-loss-type k3 --use-tis",
        "--advantage-estimator gspo --use-kl-loss --kl-loss-coef 0.1 --kl-loss-type low_var_kl",
        "--calculate-per-token-loss --entropy-coef 0.03",
    ],
)
def test_filter_off_equals_slime_semantics(cli):
    samples = make_samples(11, 6, VOCAB)
    loss, rank_input, metrics, args = run(cli, samples)
    ref = reference_step(samples, LossConfig.from_args(args), [list(range(6))])
    # loss_function's value: the step objective (per-sample mode), or the token sum Megatron divides by the count
    token_count = sum(max(int(s.loss_mask.sum()), 1) for s in samples)
    expected = ref["loss"] * (token_count if args.calculate_per_token_loss else 1)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    for key in ("pg_loss", "entropy_loss", "pg_clipfrac", "ppo_kl"):
        assert metrics[key] == pytest.approx(ref["reported"][key], rel=1e-4, abs=1e-6)
    expected_keys = ["loss", "pg_loss", "entropy_loss", "pg_clipfrac", "ppo_kl"]
    if args.use_kl_loss:
        expected_keys.append("kl_loss")
    if args.use_tis:
        expected_keys += ["tis", "ois", "tis_clipfrac"]
    assert list(metrics) == expected_keys


def test_filter_is_not_silently_ignored():
    """With the filter on, rows of non-kept tokens get no policy gradient and the realised kept ratio is ~rho;
    the paper's code once shipped a knob that never reached the loss."""
    samples = make_samples(3, 8, VOCAB, duplicate_rows=False)
    # on-policy (ratio 1): no token loses its gradient to PPO clipping, only to the filter
    on_policy = reference_step(samples, LossConfig.from_args(make_args(BASE, global_batch_size=8)), [])
    for sample, log_probs in zip(samples, on_policy["log_probs"], strict=False):
        sample.old_log_probs = log_probs.float()
    _, off, off_metrics, _ = run("", samples)
    _, on, on_metrics, args = run("--high-entropy-token-filter --entropy-percentile 0.2", samples)
    assert not torch.equal(off.logits.grad, on.logits.grad)
    ref = reference_step(samples, LossConfig.from_args(args), [list(range(8))])
    kept_rows, dropped_rows = 0, 0
    for r, (s, pos) in enumerate(on.row_map):
        if s < 0 or not samples[s].prompt_len - 1 <= pos <= samples[s].total_len - 2:
            continue
        t = pos + 1 - samples[s].prompt_len
        if ref["kept"][s][t]:
            kept_rows += 1
            assert on.logits.grad[0, r].abs().sum() > 0
        else:
            dropped_rows += 1
            assert torch.count_nonzero(on.logits.grad[0, r]) == 0
    num_valid = sum(int(s.loss_mask.sum()) for s in samples)
    assert kept_rows == -(-num_valid // 5) and dropped_rows > 3 * kept_rows
    assert on_metrics["entropy_token_ratio"] == pytest.approx(kept_rows / num_valid, rel=1e-6)
    assert "entropy_token_ratio" not in off_metrics


@pytest.mark.parametrize(
    "cli",
    [
        "",
        "--advantage-estimator gspo",
        "--calculate-per-token-loss",
        "--policy-loss-mode gmpo",
        "--use-kl-loss --kl-loss-coef 0.1 --entropy-coef 0.02",
    ],
)
def test_rho_one_reproduces_the_unfiltered_loss_bit_for_bit(cli):
    samples = make_samples(5, 5, VOCAB)
    loss_off, off, _, _ = run(cli, samples)
    loss_on, on, _, _ = run(f"{cli} --high-entropy-token-filter --entropy-percentile 1.0", samples)
    assert torch.equal(loss_off, loss_on)
    assert torch.equal(off.logits.grad, on.logits.grad)


def test_custom_loss_hook_path_equals_the_builtin_path():
    samples = make_samples(7, 4, VOCAB)
    cli = "--high-entropy-token-filter --entropy-percentile 0.3 --use-kl-loss --kl-loss-coef 0.1"
    loss_a, a, metrics_a, _ = run(cli, samples)
    hook = f"{cli} --loss-type custom_loss --custom-loss-function-path slime_entropy.loss.policy_loss_function"
    loss_b, b, metrics_b, _ = run(hook, samples)
    assert torch.equal(loss_a, loss_b) and torch.equal(a.logits.grad, b.logits.grad)
    assert metrics_a == metrics_b


def test_per_token_kept_through_the_hook_is_refused_with_alternatives():
    samples = make_samples(7, 3, VOCAB)
    args = make_args(f"{BASE} --high-entropy-token-filter --calculate-per-token-loss", global_batch_size=3)
    rank_input = build_rank_input(samples, [0, 1, 2], 0, 1, 0, 1)
    batch = rank_input.batch
    layout = ResponseSpans.build(batch["unconcat_tokens"], batch["total_lengths"], batch["response_lengths"])
    with pytest.raises(ValueError, match="--entropy-filter-denominator all"):
        policy_loss_function(args, batch, rank_input.logits, slime_reducer(layout, batch, True))


def test_missing_batch_keys_are_named():
    samples = make_samples(7, 3, VOCAB)
    args = make_args(f"{BASE} --use-tis", global_batch_size=3)
    rank_input = build_rank_input(samples, [0, 1, 2], 0, 1, 0, 1)
    del rank_input.batch["rollout_log_probs"]
    with pytest.raises(KeyError, match="'rollout_log_probs' \\(needed by --use-tis\\)"):
        loss_function(args, rank_input.batch, 1, rank_input.logits)


def test_wrongly_sized_per_token_fields_are_explained():
    samples = make_samples(7, 3, VOCAB)
    args = make_args(BASE, global_batch_size=3)
    rank_input = build_rank_input(samples, [0, 1, 2], 0, 1, 0, 1)
    rank_input.batch["advantages"][0] = rank_input.batch["advantages"][0][:-1]
    with pytest.raises(ValueError, match="batch\\['advantages'\\]"):
        loss_function(args, rank_input.batch, 1, rank_input.logits)


def test_nan_logits_raise_a_clear_error_naming_the_micro_batch():
    samples = make_samples(7, 3, VOCAB)
    args = make_args(f"{BASE} --high-entropy-token-filter", global_batch_size=3)
    rank_input = build_rank_input(samples, [0, 1, 2], 0, 1, 0, 1)
    with torch.no_grad():
        rank_input.logits[0, samples[0].prompt_len - 1, 3] = float("nan")
    with pytest.raises(
        ValueError, match=r"(?s)non-finite.*total_lengths=\[.*samples with non-finite entropy here: \[0\]"
    ):
        loss_function(args, rank_input.batch, 1, rank_input.logits)


def test_get_log_probs_and_entropy_matches_the_reference():
    samples = make_samples(9, 4, VOCAB)
    args = make_args(BASE, global_batch_size=4)
    rank_input = build_rank_input(samples, list(range(4)), 0, 1, 0, 1)
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
    ref = reference_step(samples, LossConfig.from_args(args), [[0, 1, 2, 3]])
    for i in range(4):
        torch.testing.assert_close(out["log_probs"][i].double(), ref["log_probs"][i], rtol=0, atol=2e-6)
        torch.testing.assert_close(out["entropy"][i].double(), ref["entropy"][i], rtol=0, atol=2e-6)
    # logits are not modified in place (slime v0.1.0 divides them by the temperature in place)
    assert torch.equal(rank_input.logits, build_rank_input(samples, list(range(4)), 0, 1, 0, 1).logits)


def test_step_scope_uses_the_trainers_threshold():
    """With one micro-batch per step, the step threshold (computed by the trainer over the global batch) gives
    exactly the dp-scope result; without it the loss explains what is missing."""
    samples = make_samples(13, 6, VOCAB)
    loss_dp, dp, metrics_dp, args = run("--high-entropy-token-filter --entropy-percentile 0.3", samples)
    ref = reference_step(samples, LossConfig.from_args(args), [list(range(6))])
    tau = torch.tensor(ref["figures"][0]["tau"], dtype=torch.float32)
    step_cli = f"{BASE} --high-entropy-token-filter --entropy-percentile 0.3 --entropy-threshold-scope step"
    step_args = make_args(step_cli, global_batch_size=6)
    rank_input = build_rank_input(samples, list(range(6)), 0, 1, 0, 1)
    with pytest.raises(ValueError, match="batch\\['entropy_threshold'\\]"):
        loss_function(step_args, rank_input.batch, 1, rank_input.logits)
    # the kernel's fp32 entropies: take tau from the dp run's reported threshold to match bit for bit
    rank_input.batch["entropy_threshold"] = torch.tensor(metrics_dp["entropy_threshold"])
    loss_step, _, record = loss_function(step_args, rank_input.batch, 1, rank_input.logits)
    loss_step.backward()
    metrics_step = dict(zip(record["keys"], (record["values"][1:] / record["values"][0]).tolist(), strict=True))
    assert torch.equal(loss_step.detach(), loss_dp.detach())
    assert torch.equal(rank_input.logits.grad, dp.logits.grad)
    assert metrics_step == pytest.approx(metrics_dp)
    assert float(tau) == pytest.approx(metrics_dp["entropy_threshold"], rel=1e-5)


def _on_policy(samples):
    ref = reference_step(samples, LossConfig.from_args(make_args(BASE, global_batch_size=len(samples))), [])
    for sample, log_probs in zip(samples, ref["log_probs"], strict=True):
        sample.old_log_probs = log_probs.float()


def _rows_by_token(samples, rank_input, kept):
    """(kept rows, dropped rows) of valid response tokens in the packed logits."""
    kept_rows, dropped_rows = [], []
    for r, (s, pos) in enumerate(rank_input.row_map):
        if s < 0 or not samples[s].prompt_len - 1 <= pos <= samples[s].total_len - 2:
            continue
        t = pos + 1 - samples[s].prompt_len
        if samples[s].loss_mask[t]:
            (kept_rows if kept[s][t] else dropped_rows).append(r)
    return kept_rows, dropped_rows


def test_clip_cov_with_the_filter_detaches_a_share_of_the_kept_tokens_only():
    samples = make_samples(17, 8, VOCAB, duplicate_rows=False, per_token_advantages=True)
    _on_policy(samples)  # nothing is PPO-clipped, so every kept token is eligible with these bounds
    cli = ("--high-entropy-token-filter --entropy-percentile 0.5 --policy-loss-mode clip_cov --clip-cov-ratio 0.1 "
           "--clip-cov-lb -1000 --clip-cov-ub 1000")  # fmt: skip
    _, rank_input, _, args = run(cli, samples)
    kept = reference_step(
        samples, LossConfig.from_args(make_args(f"{BASE} --high-entropy-token-filter --entropy-percentile 0.5",
                                                global_batch_size=8)), [list(range(8))]
    )["kept"]  # fmt: skip
    kept_rows, dropped_rows = _rows_by_token(samples, rank_input, kept)
    grad = rank_input.logits.grad[0]
    assert all(torch.count_nonzero(grad[r]) == 0 for r in dropped_rows)
    detached = [r for r in kept_rows if torch.count_nonzero(grad[r]) == 0]
    assert len(detached) == max(1, int(0.1 * len(kept_rows)))


def test_kl_cov_with_the_filter_penalises_the_top_covariance_kept_tokens():
    samples = make_samples(19, 6, VOCAB, duplicate_rows=False, per_token_advantages=True)
    cli = "--high-entropy-token-filter --entropy-percentile 0.5 --policy-loss-mode kl_cov --kl-cov-ratio 0.2"
    loss, rank_input, metrics, args = run(cli, samples)
    config = LossConfig.from_args(args)
    ref = reference_step(
        samples, LossConfig.from_args(make_args(f"{BASE} --high-entropy-token-filter --entropy-percentile 0.5",
                                                global_batch_size=6)), [list(range(6))]
    )  # fmt: skip
    # independent float64 computation: covariance over the kept tokens, top floor(0.2 * K) get |logp - old|
    logp = torch.cat(ref["log_probs"])
    kept = torch.cat(ref["kept"])
    adv = torch.cat([s.advantages.double() for s in samples])
    old = torch.cat([s.old_log_probs.double() for s in samples])
    w = kept.double()
    cov = (adv - (adv * w).sum() / w.sum()) * (logp - (logp * w).sum() / w.sum())
    cov[~kept] = -float("inf")
    chosen = torch.topk(cov, max(1, int(0.2 * int(kept.sum())))).indices
    token_loss = -adv * torch.exp(logp - old)
    token_loss[chosen] += config.policy.kl_cov_coef * (logp - old).abs()[chosen]
    parts = (token_loss * w).split([s.response_len for s in samples])
    per_sample = [part.sum() / max(int(k.sum()), 1) for part, k in zip(parts, ref["kept"], strict=True)]
    assert float(loss.detach()) == pytest.approx(float(sum(per_sample)) / 6, rel=1e-5)
