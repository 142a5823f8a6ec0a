"""slime_entropy.loss.loss_function on gloo worlds with Megatron's parallel_state (TP, DP, CP and mixes) against
the float64 single-process reference of the same global batch: loss, gradients on every rank, and the metrics
after slime's reduction."""

from __future__ import annotations

import pytest
import torch

from slime_entropy.loss.config import LossConfig
from tests.distributed import run_world

from .harness import make_args, make_samples, megatron_layout, run_rank
from .reference import reference_step

pytestmark = pytest.mark.multiprocess

VOCAB = 64
COMMON = "--rollout-temperature 0.8 --eps-clip 0.2 --eps-clip-high 0.28 --logprob-entropy-backend eager"

CASES = [
    dict(name="ppo+filter", cli="--high-entropy-token-filter --entropy-percentile 0.2"),
    dict(
        name="filter off, kl+entropy+tis",
        cli="--use-kl-loss --kl-loss-coef 0.1 --kl-loss-type low_var_kl "
        "--entropy-coef 0.01 --use-tis --tis-clip 1.5 --tis-clip-low 0.5",
    ),
    dict(name="gspo+filter", cli="--high-entropy-token-filter --entropy-percentile 0.3 --advantage-estimator gspo"),
    dict(
        name="denominator all, masked entropy+kl",
        cli="--high-entropy-token-filter --entropy-percentile 0.25 "
        "--entropy-filter-denominator all --entropy-coef 0.02 --entropy-filter-mask-entropy-loss --use-kl-loss "
        "--kl-loss-coef 0.05 --kl-loss-type k3 --entropy-filter-mask-kl-loss",
    ),
    dict(
        name="per-token kept",
        cli="--high-entropy-token-filter --entropy-percentile 0.2 --calculate-per-token-loss "
        "--entropy-coef 0.01 --use-kl-loss --kl-loss-coef 0.1 --kl-loss-type k2",
    ),
    dict(
        name="local scope + gmpo",
        cli="--high-entropy-token-filter --entropy-percentile 0.4 "
        "--entropy-threshold-scope local --policy-loss-mode gmpo",
    ),
    dict(
        name="cispo + shaping",
        cli="--high-entropy-token-filter --entropy-percentile 0.2 --policy-loss-mode cispo "
        "--entropy-advantage-alpha 0.4 --entropy-advantage-kappa 2",
        per_token_advantages=True,
    ),
    dict(
        name="dual clip + allgather + padded vocab",
        cli="--high-entropy-token-filter --entropy-percentile 0.5 "
        "--dual-clip-c 3 --entropy-selection-method allgather",
        padded_columns=4,
    ),
    dict(name="gpg + entropy grad", cli="--high-entropy-token-filter --policy-loss-mode gpg --entropy-coef 0.05"),
    dict(
        name="step scope",
        cli="--high-entropy-token-filter --entropy-percentile 0.25 " "--entropy-threshold-scope step",
    ),
]


def _case_inputs(case, num_dp, mbs_per_rank, samples_per_mb, seed):
    num_samples = num_dp * mbs_per_rank * samples_per_mb
    samples = make_samples(
        seed,
        num_samples,
        VOCAB,
        per_token_advantages=case.get("per_token_advantages", False),
        padded_columns=case.get("padded_columns", 0),
    )
    ids = list(range(num_samples))
    schedule = [
        [
            ids[(d * mbs_per_rank + m) * samples_per_mb : (d * mbs_per_rank + m + 1) * samples_per_mb]
            for m in range(mbs_per_rank)
        ]
        for d in range(num_dp)
    ]
    vocab_size = VOCAB - case["padded_columns"] if case.get("padded_columns") else None
    args = make_args(f"{COMMON} {case['cli']}", global_batch_size=num_samples, vocab_size=vocab_size)
    return samples, schedule, args


def _worker(rank, world, layouts):
    """Every layout of ``layouts`` ((tp, cp, mbs_per_rank, samples_per_mb), tp * cp dividing the world size) in turn
    on this one world: the spawn and the torch + Megatron import are paid once, not once per layout."""
    from megatron.core import parallel_state as mpu

    results = {}
    for tp, cp, mbs_per_rank, samples_per_mb in layouts:
        mpu.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
        layout = megatron_layout(tp, cp)
        outputs = []
        for i, case in enumerate(CASES):
            samples, schedule, args = _case_inputs(case, layout["dp_size"], mbs_per_rank, samples_per_mb, seed=i)
            outputs.append(run_rank(args, samples, schedule, layout))
        mpu.destroy_model_parallel()
        layout.pop("dp_cp_group")
        results[(tp, cp, mbs_per_rank, samples_per_mb)] = (layout, outputs)
    return results


def _populations(schedule, scope):
    num_mb = len(schedule[0])
    if scope == "step":
        return [[i for rank in schedule for mb in rank for i in mb]]
    if scope == "local":
        return [mb for rank in schedule for mb in rank]
    return [[i for rank in schedule for i in rank[m]] for m in range(num_mb)]


def _expected_filter_metrics(ref, samples, populations, config):
    """The figures slime's reduction should report: per-population values averaged with slime's weights."""
    weights = []
    for pop, fig in zip(populations, ref["figures"], strict=False):
        if config.policy.per_token_loss and config.entropy_filter.denominator == "kept":
            weights.append(fig["k"])
        elif config.policy.per_token_loss:
            weights.append(sum(max(int(samples[i].loss_mask.sum()), 1) for i in pop))
        else:
            weights.append(len(pop))
    total = sum(weights)
    avg = lambda key: sum(f[key] * w for f, w in zip(ref["figures"], weights, strict=False)) / total  # noqa: E731
    return {
        "entropy_token_ratio": avg("ratio"),
        "entropy_threshold": avg("tau"),
        "entropy_mean": avg("mean"),
        "entropy_kept_mean": avg("kept_mean"),
    }


# name -> (tp, cp, dp, micro-batches per rank), three samples per micro-batch. One gloo world per world size runs
# all of that size's layouts; each test checks its own layout's outcome.
LAYOUTS = {
    "tp2": (2, 1, 1, 2),
    "dp2": (1, 1, 2, 2),
    "tp2_dp2": (2, 1, 2, 2),
    "cp2": (1, 2, 1, 2),
    "cp2_dp2": (1, 2, 2, 1),
    "tp2_cp2": (2, 2, 1, 1),
}


@pytest.fixture(scope="module")
def world_outcome():
    """(tp, cp, dp, mbs_per_rank) -> every rank's (layout, outputs), from the world of that size (run on first use)."""
    outcomes = {}

    def outcome(tp, cp, dp, mbs_per_rank):
        if (tp, cp, dp, mbs_per_rank) not in outcomes:
            size = tp * cp * dp
            keys = [key for key in LAYOUTS.values() if key[0] * key[1] * key[2] == size]
            layouts = [(t, c, m, 3) for t, c, _, m in keys]
            ranks = run_world(_worker, size, args=(layouts,), timeout=300 * len(layouts))
            for key, layout in zip(keys, layouts, strict=True):
                outcomes[key] = [rank[layout] for rank in ranks]
        return outcomes[(tp, cp, dp, mbs_per_rank)]

    return outcome


def _check_world(world_outcome, name):
    tp, cp, dp, mbs_per_rank = LAYOUTS[name]
    samples_per_mb = 3
    results = world_outcome(tp, cp, dp, mbs_per_rank)
    for i, case in enumerate(CASES):
        samples, schedule, args = _case_inputs(case, dp, mbs_per_rank, samples_per_mb, seed=i)
        config = LossConfig.from_args(args)
        populations = _populations(schedule, config.entropy_filter.threshold_scope)
        ref = reference_step(samples, config, populations, global_batch_size=len(samples))
        label = f"[{case['name']}] TP{tp} CP{cp} DP{dp}"

        # loss: the sum over data/context ranks (one tensor rank each) of the Megatron-scaled losses
        total = sum(out[i]["loss"] for layout, out in results if layout["tp_rank"] == 0)
        assert total == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7), label

        # gradients: every rank's rows and vocab shard equal the reference's
        shard = VOCAB // tp
        checked = 0
        for layout, out in results:
            cols = slice(layout["tp_rank"] * shard, (layout["tp_rank"] + 1) * shard)
            for (s, pos), grad in out[i]["grads"].items():
                expected = ref["grads"][s][pos, cols].float()
                where = f"{label} sample {s} pos {pos}"
                torch.testing.assert_close(
                    grad, expected, rtol=1e-4, atol=2e-7, msg=lambda m, where=where: f"{where}: {m}"
                )
                checked += 1
        assert checked == sum(s.total_len for s in samples) * tp, label

        # metrics after slime's reduction, identical on every rank
        reported = results[0][1][i]["reported"]
        for _, out in results:
            assert out[i]["reported"] == pytest.approx(reported, rel=1e-6, abs=1e-7), label
        for key in ("pg_loss", "entropy_loss", "pg_clipfrac", "ppo_kl"):
            assert reported[key] == pytest.approx(ref["reported"][key], rel=1e-4, abs=1e-6), f"{label} {key}"
        if config.entropy_filter.threshold_scope == "step":
            # one threshold for the step; the metrics describe each micro-batch's share of it
            assert reported["entropy_threshold"] == pytest.approx(ref["figures"][0]["tau"], rel=1e-5), label
        elif config.entropy_filter.enabled:
            expected = _expected_filter_metrics(ref, samples, populations, config)
            for key, value in expected.items():
                assert reported[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{label} {key}"


def test_tp2(world_outcome):
    _check_world(world_outcome, "tp2")


def test_dp2(world_outcome):
    _check_world(world_outcome, "dp2")


def test_tp2_dp2(world_outcome):
    _check_world(world_outcome, "tp2_dp2")


def test_cp2(world_outcome):
    _check_world(world_outcome, "cp2")


def test_cp2_dp2(world_outcome):
    _check_world(world_outcome, "cp2_dp2")


def test_tp2_cp2(world_outcome):
    _check_world(world_outcome, "tp2_cp2")
