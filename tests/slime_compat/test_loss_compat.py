"""slime_entropy's loss inside each supported slime release, driven by that release's OWN ``loss_function`` on
gloo worlds with Megatron's parallel_state (TP2 x DP2 and TP1 x CP2 x DP2, two micro-batches of three samples
per rank, a sample without valid tokens, slime >= 0.3 rollouts split into several samples):

- filter off, through slime's custom-loss hook and through ``slime_entropy.loss.loss_function`` (wholesale):
  slime's own loss, metrics and gradients, exactly;
- filter on at rho = 1: slime's loss, metrics and gradients to fp32 rounding (the filter's metrics added);
- filter on at rho < 1: the float64 reference of README "What the filter computes";
- options the filtered loss does not reproduce: refused at the first call, naming the flag.

One world per release (each spawn pays the torch + Megatron + slime import); every case runs in it.
"""

from __future__ import annotations

import pytest
import torch

from slime_entropy.loss.config import LossConfig
from tests.distributed import run_world
from tests.loss.harness import make_samples, megatron_layout
from tests.loss.reference import reference_step
from tests.slime_trees import SLIME_RELEASES, slime_tree

from .slime_world import OUR_LOSS, rollout_mask_sums, run_slime_rank, slime_args

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

VOCAB = 64
MBS, PER_MB = 2, 3
FILTER = "--high-entropy-token-filter --entropy-percentile"
FAMILY = {"v0.1.0": "v0.1", "v0.3.1": "v0.3", "head-624b824a8": "v0.3"}
BASE = "--rollout-temperature 0.8 --eps-clip 0.2 --eps-clip-high 0.28 --logprob-entropy-backend eager"
KL = {"v0.1": "kl", "v0.3": "k1"}

# name, slime flags, families, options. 'rho1': denominator flags for the rho = 1 run ('' = kept).
CASES = [
    dict(name="ppo+kl+entropy", cli="--use-kl-loss --kl-loss-coef 0.1 --kl-loss-type low_var_kl --entropy-coef 0.01"),
    dict(name="gspo+tis", cli="--advantage-estimator gspo --use-tis --tis-clip 1.5 --tis-clip-low 0.5"),
    dict(
        name="per-token",
        cli="--calculate-per-token-loss --entropy-coef 0.02",
        rho1="--entropy-filter-denominator all",
        wholesale_v01=False,
    ),
    dict(name="cispo", cli="--advantage-estimator cispo", families=("v0.3",)),
    dict(
        name="rollout logprobs+unbiased kl",
        families=("v0.3",),
        drop_log_probs=True,
        cli="--use-rollout-logprobs --use-kl-loss --kl-loss-coef 0.2 --kl-loss-type k3 --use-unbiased-kl",
    ),
    dict(
        name="mismatch metrics+icepop",
        families=("v0.3",),
        cli="--get-mismatch-metrics --custom-tis-function-path slime.backends.megatron_utils.loss.icepop_function "
        "--tis-clip 1.3 --tis-clip-low 0.8",
    ),
    dict(
        name="split rollouts",
        families=("v0.3",),
        split=True,
        rho1="--entropy-filter-denominator all",
        cli="--use-kl-loss --kl-loss-coef 0.1 --kl-loss-type low_var_kl",
    ),
    dict(name="recompute loss", families=("v0.3",), cli="--recompute-loss-function --advantage-estimator gspo"),
    # own: slime_entropy's --dual-clip-c, filter off: our loss (not slime's), equal to slime's --eps-clip-c
    dict(name="dual clip", releases=("head-624b824a8",), cli="--eps-clip-c 1.5", own="--dual-clip-c 1.5"),
]
FILTERED = [
    dict(name="ppo filter 0.2", cli=f"--use-kl-loss --kl-loss-coef 0.1 --entropy-coef 0.01 {FILTER} 0.2"),
    dict(name="gspo filter 0.3", cli=f"--advantage-estimator gspo {FILTER} 0.3"),
    dict(name="tis filter 0.25 all", cli=f"--use-tis {FILTER} 0.25 --entropy-filter-denominator all"),
    # split rollouts: slime divides the metrics by the step's rollouts; the figures must still be the true ones
    dict(
        name="split filter 0.3 all",
        cli=f"{FILTER} 0.3 --entropy-filter-denominator all",
        families=("v0.3",),
        split=True,
    ),
]
REFUSED = [
    ("v0.3", "--rollout-top-p 0.9", "--rollout-top-p"),
    ("v0.3", "--allgather-cp", "--allgather-cp"),
    ("v0.3", "--use-opsm", "--use-opsm"),
    (
        "v0.3",
        "--custom-pg-loss-reducer-function-path slime.backends.megatron_utils.cp_utils.get_sum_of_sample_mean",
        "--custom-pg-loss-reducer-function-path",
    ),
    ("v0.3", "split", "--entropy-filter-denominator"),
    ("v0.3.1", "--eps-clip-c 3", "--eps-clip-c"),
    ("v0.1", "--calculate-per-token-loss wholesale-off", "--calculate-per-token-loss"),
]


def _applies(case, family, release):
    return family in case.get("families", ("v0.1", "v0.3")) and release in case.get("releases", (release,))


def _inputs(seed, num_dp, split=False):
    samples = make_samples(seed, num_dp * MBS * PER_MB, VOCAB)
    ids = list(range(len(samples)))
    schedule = [[ids[(d * MBS + m) * PER_MB : (d * MBS + m + 1) * PER_MB] for m in range(MBS)] for d in range(num_dp)]
    # split: pairs of samples form one rollout, one pair across two micro-batches of different DP ranks
    rollout_ids = None
    if split:
        rollout_ids = [i // 2 for i in ids]
        rollout_ids[2], rollout_ids[len(ids) - 1] = rollout_ids[len(ids) - 1], rollout_ids[2]
    return samples, schedule, rollout_ids


def _with_kl_type(cli, family):
    return cli.replace("--kl-loss-type kl ", f"--kl-loss-type {KL[family]} ")


class _Wholesale:
    """slime_entropy.loss.loss_function standing where slime's loss module's is."""

    from slime_entropy.loss import loss_function as _ours

    loss_function = staticmethod(_ours)


def _worker(rank, world, release, layouts):
    from megatron.core import parallel_state as mpu

    from slime_entropy.testing.slime_source import load_slime_loss

    module = load_slime_loss(slime_tree(release))
    family = FAMILY[release]
    results = {}
    for tp, cp in layouts:
        if mpu.model_parallel_is_initialized():
            mpu.destroy_model_parallel()
        mpu.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
        layout = megatron_layout(tp, cp)
        results[("layout", tp, cp)] = {"tp_rank": layout["tp_rank"], "cp_rank": layout["cp_rank"]}

        def run(cli, *, seed, split=False, hook=False, wholesale=False, drop_log_probs=False, layout=layout):
            samples, schedule, rollout_ids = _inputs(seed, layout["dp_size"], split)
            if hook:
                cli = f"{cli} --loss-type custom_loss --custom-loss-function-path {OUR_LOSS}"
            args = slime_args(family, f"{BASE} {cli}", global_batch_size=len(samples))
            return run_slime_rank(
                _Wholesale if wholesale else module,
                family,
                args,
                samples,
                schedule,
                layout,
                rollout_ids=rollout_ids,
                drop_log_probs=drop_log_probs,
            )

        for i, case in enumerate(CASES):
            if not _applies(case, family, release):
                continue
            cli = _with_kl_type(case["cli"] + " ", family)
            opts = dict(seed=i, split=case.get("split", False), drop_log_probs=case.get("drop_log_probs", False))
            out = {"slime": run(cli, **opts), "hook": run(cli, hook=True, **opts)}
            if family == "v0.3" or case.get("wholesale_v01", True):
                out["wholesale"] = run(cli, wholesale=True, **opts)
            out["rho1"] = run(f"{cli} {FILTER} 1 {case.get('rho1', '')}", hook=True, **opts)
            if "own" in case:
                out["own"] = run(case["own"], hook=True, **opts)
            results[(tp, cp, case["name"])] = out
        for i, case in enumerate(FILTERED):
            if not _applies(case, family, release):
                continue
            cli = _with_kl_type(case["cli"] + " ", family)
            split = case.get("split", False)
            results[(tp, cp, case["name"])] = {"filtered": run(cli, seed=100 + i, hook=True, split=split)}
        for flags_family, flags, flag in REFUSED:
            if flags_family not in (family, release):
                continue
            try:
                if flags == "split":
                    run(f"{FILTER} 0.5", seed=0, split=True, hook=True)
                elif flags.endswith("wholesale-off"):
                    run(flags.split()[0], seed=0, wholesale=True)
                else:
                    run(f"{flags} {FILTER} 0.5", seed=0, hook=True)
                message = None
            except (ValueError, TypeError, KeyError) as err:
                message = str(err)
            results[(tp, cp, "refused " + flag)] = {"message": message, "flag": flag}
    mpu.destroy_model_parallel()
    return results


# slime v0.1.0 takes its log-prob gradient from Megatron's fused cross entropy, whose backward rounds to bf16:
# its gradients carry bf16 rounding (2^-8 relative), ours are fp32. From v0.3 slime's kernel is fp32 like ours.
GRAD_TOLERANCE = {"v0.1": 2.0**-8, "v0.3": 1e-5}


def _check_same(label, got, expected, *, exact, grad_tolerance=1e-5):
    rel = 0 if exact else 2e-5
    assert got["loss"] == pytest.approx(expected["loss"], rel=rel, abs=0 if exact else 1e-7), f"{label}: loss"
    assert got["keys"][: len(expected["keys"])] == expected["keys"], f"{label}: metric keys {got['keys']}"
    for key, value in expected["reported"].items():
        assert got["reported"][key] == pytest.approx(value, rel=rel, abs=0 if exact else 1e-6), f"{label}: {key}"
    assert got["grads"].keys() == expected["grads"].keys()
    largest = max(float(g.abs().max()) for g in expected["grads"].values())
    for key, grad in expected["grads"].items():
        if exact:
            assert torch.equal(got["grads"][key], grad), f"{label}: gradient of row {key}"
        else:
            diff = float((got["grads"][key] - grad).abs().max())
            assert (
                diff <= grad_tolerance * largest
            ), f"{label}: gradient of row {key} off by {diff} (largest {largest})"


def _check_reference(label, results, name, case_index, tp, cp, dp, release):
    family = FAMILY[release]
    case = FILTERED[case_index]
    samples, schedule, rollout_ids = _inputs(100 + case_index, dp, case.get("split", False))
    args = slime_args(family, f"{BASE} {_with_kl_type(case['cli'] + ' ', family)}", global_batch_size=len(samples))
    config = LossConfig.from_args(args)
    populations = [[i for rank in schedule for i in rank[m]] for m in range(MBS)]
    ref = reference_step(samples, config, populations, global_batch_size=len(samples))
    outs = [r[(tp, cp, name)]["filtered"] for r in results]
    layouts = _layouts_of(results, tp, cp)
    # slime's reduction weighs each population by its samples' share of the step's rollouts (a whole sample: 1)
    shares = [1.0] * len(samples)
    if rollout_ids is not None:
        sums = rollout_mask_sums(samples, rollout_ids)
        shares = [
            float(s.loss_mask.sum()) / float(d) if int(d) != int(s.loss_mask.sum()) else 1.0
            for s, d in zip(samples, sums, strict=True)
        ]
    weights = [sum(shares[i] for i in pop) for pop in populations]

    def mean(key):
        return sum(f[key] * w for f, w in zip(ref["figures"], weights, strict=True)) / sum(weights)

    reported = outs[0]["reported"]
    assert reported["entropy_token_ratio"] == pytest.approx(mean("ratio"), rel=1e-5), label
    assert reported["entropy_threshold"] == pytest.approx(mean("tau"), rel=1e-5), label
    if case.get("split"):
        return  # the reference has per-sample denominators; the loss at rho = 1 is checked against slime
    total = sum(out["loss"] for out, lay in zip(outs, layouts, strict=True) if lay["tp_rank"] == 0)
    assert total == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7), label
    shard = VOCAB // tp
    for out, lay in zip(outs, layouts, strict=True):
        cols = slice(lay["tp_rank"] * shard, (lay["tp_rank"] + 1) * shard)
        for (s, pos), grad in out["grads"].items():
            torch.testing.assert_close(grad, ref["grads"][s][pos, cols].float(), rtol=1e-4, atol=2e-7)
    for key in ("pg_loss", "entropy_loss", "pg_clipfrac", "ppo_kl"):
        assert reported[key] == pytest.approx(ref["reported"][key], rel=1e-4, abs=1e-6), f"{label} {key}"


def _layouts_of(results, tp, cp):
    return [r[("layout", tp, cp)] for r in results]


LAYOUTS = [(2, 1), (1, 2)]  # TP2 x DP2, TP1 x CP2 x DP2 on 4 ranks


@pytest.mark.parametrize("release", SLIME_RELEASES)
def test_loss_inside_slime(release):
    slime_tree(release)  # skips (or fails in CI) without the tree
    family = FAMILY[release]
    results = run_world(_worker, 4, args=(release, LAYOUTS), timeout=600)
    for tp, cp in LAYOUTS:
        dp = 4 // (tp * cp)
        where = f"slime {release} TP{tp} CP{cp} DP{dp}"
        for case in CASES:
            if not _applies(case, family, release):
                continue
            for rank, res in enumerate(results):
                out = res[(tp, cp, case["name"])]
                label = f"{where} rank {rank} [{case['name']}]"
                _check_same(f"{label} hook, filter off", out["hook"], out["slime"], exact=True)
                if "wholesale" in out:
                    _check_same(f"{label} loss_function, filter off", out["wholesale"], out["slime"], exact=True)
                _check_same(
                    f"{label} rho=1",
                    out["rho1"],
                    out["slime"],
                    exact=False,
                    grad_tolerance=GRAD_TOLERANCE[family],
                )
                if "own" in out:
                    _check_same(f"{label} {case['own']}", out["own"], out["slime"], exact=False)
                # every valid token kept; reported in slime's units (main divides by rollouts, not samples)
                assert out["rho1"]["reported"]["entropy_token_ratio"] == pytest.approx(1.0, rel=1e-6), label
        for i, case in enumerate(FILTERED):
            if not _applies(case, family, release):
                continue
            _check_reference(f"{where} [{case['name']}]", results, case["name"], i, tp, cp, dp, release)
        for flags_family, flags, flag in REFUSED:
            if flags_family not in (family, release):
                continue
            for res in results:
                got = res[(tp, cp, "refused " + flag)]
                assert got["message"] is not None, f"{where}: {flags} was not refused"
                assert flag in got["message"], f"{where}: refusal of {flags} does not name {flag}: {got['message']}"
