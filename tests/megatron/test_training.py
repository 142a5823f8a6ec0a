"""One training step of the Megatron actor (filter on) gives the same loss and weights at TP1, TP2, PP2, DP2 and
TP2xDP2 (and for Qwen3-MoE at EP2); dynamic batching gives the gradients of one big batch; the step-scope threshold
is layout-independent and equals the current-policy threshold on the first on-policy step.

The filter's default threshold scope is per micro-batch over the data-parallel group, so the layouts are fed
micro-batches with the same populations: with DP=1 and --micro-batch-size 2 micro-batch i holds samples (i, i+4);
with DP=2 and --micro-batch-size 1 rank r's micro-batch i holds sample 4r+i.
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_world
from tests.megatron.helpers import make_samples, save_tiny_model

pytestmark = pytest.mark.multiprocess

NUM_SAMPLES = 8
BASE = [
    "--global-batch-size", str(NUM_SAMPLES), "--lr", "1e-3", "--make-vocab-size-divisible-by", "1",
    "--logprob-entropy-backend", "eager", "--high-entropy-token-filter", "--entropy-percentile", "0.5",
    "--seed", "7",
]  # fmt: skip
DP1_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def _samples_for(dp_rank: int, dp_size: int):
    samples = make_samples(NUM_SAMPLES, seed=11)
    if dp_size == 1:
        return [samples[i] for i in DP1_ORDER]
    per_rank = NUM_SAMPLES // dp_size
    return samples[dp_rank * per_rank : (dp_rank + 1) * per_rank]


def _one_step(hf_dir: str, extra: list[str]):
    from megatron.core import parallel_state

    from slime_entropy.megatron.hf_bridge import iter_hf_weights
    from slime_entropy.megatron.train_step import compute_step_threshold
    from tests.megatron.helpers import build_actor, make_args

    args = make_args(["--hf-checkpoint", hf_dir] + BASE + extra)
    actor = build_actor(args, num_total_steps=2)
    samples = _samples_for(actor.groups.dp_cp_rank, actor.groups.dp_cp_size)
    actor.compute_log_probs(samples)
    step_tau = None
    if actor.groups.is_last_stage:
        step_tau = compute_step_threshold(samples, 0.5, actor.groups).threshold.item()
    metrics = actor.train(0, samples)[0]
    weights = dict(iter_hf_weights(actor.model, actor.megatron.arch))
    parallel_state.destroy_model_parallel()
    return {"metrics": metrics, "weights": weights, "step_tau": step_tau, "last": actor.groups.is_last_stage}


def _grads(actor, samples, micro_batch_size, max_tokens):
    """main_grad of every parameter after one forward_backward with the given batching (no optimizer step)."""
    from functools import partial

    from slime_entropy.megatron.batching import build_micro_batch, plan_micro_batches
    from slime_entropy.megatron.hf_bridge import unwrap_model
    from slime_entropy.megatron.train_step import _run_schedule

    plan = plan_micro_batches(
        [s.total_length for s in samples], micro_batch_size=micro_batch_size, max_tokens=max_tokens, dp_group=None
    )
    batches = [build_micro_batch([samples[i] for i in idx], 128, torch.device("cpu")) for idx in plan]
    actor.model.zero_grad_buffer()
    _run_schedule(actor.model, batches, lambda b, n: partial(actor.loss.training_loss, b, n), False)
    return len(batches), {n: p.main_grad.clone() for n, p in unwrap_model(actor.model).named_parameters()}


def _single_rank_worker(rank, world_size, hf_dir, moe_dir):
    from megatron.core import parallel_state

    from slime_entropy.megatron.train_step import compute_step_threshold
    from tests.megatron.helpers import build_actor, make_args

    out = {
        "tp1": _one_step(hf_dir, ["--micro-batch-size", "2"]),
        "moe": _one_step(moe_dir, ["--micro-batch-size", "2"]),
        # one micro-batch holding the whole global batch: the per-micro-batch threshold is the step's
        "whole_batch": _one_step(hf_dir, ["--micro-batch-size", str(NUM_SAMPLES)]),
        "step_mb2": _one_step(hf_dir, ["--micro-batch-size", "2", "--entropy-threshold-scope", "step"]),
    }

    # Dynamic batching vs one big micro-batch (filter off: a per-micro-batch threshold would differ by design).
    args = make_args(["--hf-checkpoint", hf_dir, "--global-batch-size", str(NUM_SAMPLES),
                      "--make-vocab-size-divisible-by", "1", "--logprob-entropy-backend", "eager"])  # fmt: skip
    actor = build_actor(args, num_total_steps=1)
    samples = make_samples(NUM_SAMPLES, seed=11)
    actor.compute_log_probs(samples)
    num_big, big = _grads(actor, samples, NUM_SAMPLES, None)
    num_dynamic, dynamic = _grads(actor, samples, None, 40)
    out["dynamic"] = {"num_big": num_big, "num_dynamic": num_dynamic, "big": big, "dynamic": dynamic}
    parallel_state.destroy_model_parallel()

    # First on-policy step: the step-scope tau from the old-policy pass equals the loss's own tau over the whole
    # global batch (one micro-batch holding every sample, threshold over the current policy's entropies).
    args = make_args(["--hf-checkpoint", hf_dir] + BASE + ["--micro-batch-size", str(NUM_SAMPLES)])
    actor = build_actor(args, num_total_steps=1)
    samples = make_samples(NUM_SAMPLES, seed=11)
    actor.compute_log_probs(samples)
    tau_step = compute_step_threshold(samples, 0.5, actor.groups)
    reference = torch.cat([s.fields["entropy"][s.loss_mask.bool()] for s in samples])
    k = -(-reference.numel() // 2)
    metrics = actor.train(0, samples)[0]
    out["on_policy"] = {
        "tau_step": tau_step.threshold.item(),
        "tau_reference": torch.topk(reference, k).values[-1].item(),
        "tau_loss": metrics["entropy_threshold"],
        "ppo_kl": metrics["ppo_kl"],
    }
    parallel_state.destroy_model_parallel()
    return out


def _two_rank_worker(rank, world_size, hf_dir, moe_dir):
    return {
        "tp2": _one_step(hf_dir, ["--micro-batch-size", "2", "--tensor-model-parallel-size", "2"]),
        "pp2": _one_step(hf_dir, ["--micro-batch-size", "2", "--pipeline-model-parallel-size", "2"]),
        "dp2": _one_step(hf_dir, ["--micro-batch-size", "1"]),
        "step_dp2": _one_step(hf_dir, ["--micro-batch-size", "1", "--entropy-threshold-scope", "step"]),
        "moe_ep2": _one_step(moe_dir, ["--micro-batch-size", "1", "--expert-model-parallel-size", "2"]),
        # token budget 31: rank 0's samples need more micro-batches than rank 1's on their own
        "dynamic_dp2": _one_step(hf_dir, ["--use-dynamic-batch-size", "--max-tokens-per-gpu", "31"]),
    }


def _four_rank_worker(rank, world_size, hf_dir):
    return {"tp2dp2": _one_step(hf_dir, ["--micro-batch-size", "1", "--tensor-model-parallel-size", "2"])}


def _assert_same_step(reference, result, label):
    ref_m, m = reference["metrics"], result["metrics"]
    for key in ("loss", "pg_loss", "entropy_loss", "entropy_threshold", "entropy_token_ratio"):
        assert abs(m[key] - ref_m[key]) <= 1e-6 * max(1.0, abs(ref_m[key])), (label, key, m[key], ref_m[key])
    assert abs(m["grad_norm"] - ref_m["grad_norm"]) <= 1e-5 * ref_m["grad_norm"], (label, m["grad_norm"])
    assert set(result["weights"]) == set(reference["weights"]), label
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(
            result["weights"][name], tensor, rtol=0, atol=1e-5, msg=lambda s, name=name: f"{label} {name}: {s}"
        )


@pytest.mark.slow
def test_one_step_is_layout_independent_with_the_filter_on(tmp_path):
    hf_dir = str(save_tiny_model("qwen3", tmp_path / "qwen3", seed=1))
    moe_dir = str(save_tiny_model("qwen3_moe", tmp_path / "qwen3_moe", seed=2))
    single = run_world(_single_rank_worker, 1, args=(hf_dir, moe_dir), timeout=300)[0]
    two = run_world(_two_rank_worker, 2, args=(hf_dir, moe_dir), timeout=400)
    four = run_world(_four_rank_worker, 4, args=(hf_dir,), timeout=400)

    reference = single["tp1"]
    m = reference["metrics"]
    assert m["update_successful"] == 1.0 and m["num_micro_batches"] == 4
    assert 0.4 < m["entropy_token_ratio"] < 0.7  # the filter really dropped about half the tokens
    assert abs(m["ppo_kl"]) < 1e-7  # old log-probs come from the same weights

    for label, results in (("tp2", two), ("dp2", two), ("tp2dp2", four)):
        for rank_result in results:
            _assert_same_step(reference, rank_result[label], label)
    # Dynamic batching over DP=2: the ranks' own first-fit counts differ, the agreed count is their maximum.
    from slime_entropy.megatron.batching import first_fit_count

    local_counts = [first_fit_count([s.total_length for s in _samples_for(r, 2)], 31) for r in range(2)]
    assert local_counts[0] != local_counts[1], local_counts
    for r in two:
        assert r["dynamic_dp2"]["metrics"]["num_micro_batches"] == max(local_counts)
    assert two[0]["dynamic_dp2"]["metrics"]["loss"] == two[1]["dynamic_dp2"]["metrics"]["loss"]
    # Qwen3-MoE: experts split over 2 expert-parallel ranks (and the dense part over DP=2) vs one rank.
    moe_experts = {name: t for r in two for name, t in r["moe_ep2"]["weights"].items()}
    _assert_same_step(single["moe"], {"metrics": two[0]["moe_ep2"]["metrics"], "weights": moe_experts}, "moe_ep2")
    # PP2: the loss exists on the last stage; the weights are split over the stages.
    first, last = two[0]["pp2"], two[1]["pp2"]
    assert not first["last"] and last["last"] and first["metrics"].get("loss") is None
    merged = {"metrics": last["metrics"], "weights": {**first["weights"], **last["weights"]}}
    _assert_same_step(reference, merged, "pp2")

    # Step-scope threshold: identical for every layout and equal to the global top-k reference.
    taus = [reference["step_tau"]] + [r[label]["step_tau"] for label, rs in (("tp2", two), ("dp2", two)) for r in rs]
    taus += [r["tp2dp2"]["step_tau"] for r in four]
    assert max(taus) - min(taus) <= 1e-6, taus
    on_policy = single["on_policy"]
    assert on_policy["tau_step"] == on_policy["tau_reference"]
    assert abs(on_policy["tau_loss"] - on_policy["tau_step"]) <= 1e-6, on_policy

    # --entropy-threshold-scope step trains on one threshold per step: any micro-batching and DP layout gives the
    # step of the single whole-batch micro-batch (on this first, on-policy step old and current entropies agree).
    whole = single["whole_batch"]
    for label, result in (
        ("step_mb2", single["step_mb2"]),
        ("step_dp2", two[0]["step_dp2"]),
        ("step_dp2", two[1]["step_dp2"]),
    ):
        for key in ("loss", "pg_loss", "entropy_loss", "entropy_threshold"):
            got, want = result["metrics"][key], whole["metrics"][key]
            assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), (label, key, got, want)
        assert (
            abs(result["metrics"]["grad_norm"] - whole["metrics"]["grad_norm"]) <= 1e-5 * whole["metrics"]["grad_norm"]
        )
        for name, tensor in whole["weights"].items():
            torch.testing.assert_close(result["weights"][name], tensor, rtol=0, atol=1e-5)
    assert single["tp1"]["metrics"]["loss"] != whole["metrics"]["loss"]  # per-micro-batch thresholds do differ

    dynamic = single["dynamic"]
    assert dynamic["num_big"] == 1 and dynamic["num_dynamic"] >= 3
    for name, grad in dynamic["big"].items():
        torch.testing.assert_close(
            dynamic["dynamic"][name], grad, rtol=1e-5, atol=1e-7, msg=lambda s, name=name: f"{name}: {s}"
        )
