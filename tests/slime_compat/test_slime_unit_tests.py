"""slime main's own CPU loss tests, run as they are against slime and then against slime_entropy's counterparts.

Each test function is imported from the main tree's ``tests/`` and called twice in a spawned process that holds
slime: once as written (against slime, proving the harness runs them), once with the slime function it imports
replaced by an adapter over slime_entropy's implementation. Which tests, and why:

- ``test_policy_loss.py::test_compute_policy_loss_applies_dual_clip_to_negative_advantages`` -> our
  ``surrogates.clipped_surrogate`` (PPO clip + dual clip). ``test_policy_loss_function_forwards_eps_clip_c`` reads
  slime's loss.py source: it is about slime's wiring, not applicable (ours: the compat suite's dual-clip case).
- ``test_cispo_loss.py`` (both tests, every clip case) -> ``surrogates.cispo_surrogate`` (old = ppo_kl + log_probs).
- ``test_ppo_logprob_entropy.py`` single-rank and empty-input tests -> ``ops.vocab_parallel_logprob_entropy``.
  The top-p keep-mask cases do not apply (slime_entropy refuses --rollout-top-p < 1 with the filter; with it off
  slime's own kernel runs) and are reported as not applicable. slime compares at atol 1e-8 against a reference
  that sums in slime's own partition order; ours sums in its own order, so for ours the module's STRICT
  tolerances are set to fp32 rounding (rtol 2e-6, atol 1e-7). The vocab-parallel test spawns its own workers
  that re-import slime (an adapter cannot reach them); ours is tested over TP in ``tests/ops``.
- ``test_loss_cp_invariance.py`` checks slime's own scaling arithmetic with a stub Megatron and a linear model,
  not a loss function; the compat suite (``test_loss_compat.py``) checks the same invariance on the real loss
  through slime's loss_function, against a float64 reference, on TP2 x DP2 and CP2 x DP2.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.distributed import run_world
from tests.slime_trees import slime_tree

pytestmark = pytest.mark.multiprocess
MAIN = "head-624b824a8"


def _ours_compute_policy_loss(ppo_kl, advantages, eps_clip, eps_clip_high, eps_clip_c=None):
    from slime_entropy.loss import surrogates

    return surrogates.clipped_surrogate(ppo_kl, advantages, eps_clip, eps_clip_high, eps_clip_c)


def _ours_compute_cispo_loss(ppo_kl, log_probs, advantages, eps_clip, eps_clip_high):
    from slime_entropy.loss import surrogates

    return surrogates.cispo_surrogate(log_probs, ppo_kl + log_probs, advantages, eps_clip, eps_clip_high)


def _ours_calculate_log_probs_and_entropy(
    logits, tokens, tp_group, with_entropy=False, chunk_size=-1, log_prob_keep_mask=None, with_entropy_grad=True
):
    from slime_entropy.ops.logprob_entropy import vocab_parallel_logprob_entropy

    if log_prob_keep_mask is not None and log_prob_keep_mask.numel():
        pytest.skip("top-p keep mask: refused by slime_entropy's filtered loss")
    log_probs, entropy = vocab_parallel_logprob_entropy(
        logits,
        tokens,
        tp_group=tp_group,
        entropy_grad=with_entropy and with_entropy_grad,
        chunk_rows=chunk_size if chunk_size > 0 else None,
        backend="eager",
    )
    # slime's shapes: [T, 1] log-probs ([0] when empty), entropy only when asked for
    return (log_probs.unsqueeze(-1) if log_probs.numel() else log_probs), (entropy if with_entropy else None)


TESTS = {
    "test_policy_loss.py": ("compute_policy_loss", _ours_compute_policy_loss),
    "test_cispo_loss.py": ("compute_cispo_loss", _ours_compute_cispo_loss),
    "test_ppo_logprob_entropy.py": ("calculate_log_probs_and_entropy", _ours_calculate_log_probs_and_entropy),
}
SELECTED = {
    "test_policy_loss.py": ["test_compute_policy_loss_applies_dual_clip_to_negative_advantages"],
    "test_cispo_loss.py": [
        "test_compute_cispo_loss_matches_closed_form_surrogate",
        "test_compute_cispo_loss_gradient_flows_only_through_log_probs",
    ],
    "test_ppo_logprob_entropy.py": [
        "test_calculate_log_probs_and_entropy_matches_unfused_reference_single_rank",
        "test_calculate_log_probs_and_entropy_handles_empty_input",
    ],
}


def _param_sets(function):
    """The argument dicts pytest would generate from the function's parametrize marks."""
    combos = [{}]
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else mark.args[0]
        values = [v.values if hasattr(v, "values") else (v if len(names) > 1 else (v,)) for v in mark.args[1]]
        combos = [dict(c, **dict(zip(names, v, strict=True))) for c in combos for v in values]
    return combos


def _worker(rank, world, tree):
    from slime_entropy.testing.slime_source import load_slime_loss

    load_slime_loss(tree)
    sys.path.insert(0, str(tree / "tests"))
    outcome = {}
    for file, (name, ours) in TESTS.items():
        spec = importlib.util.spec_from_file_location(f"slime_test_{file[:-3]}", tree / "tests" / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        original = getattr(module, name)
        for test in SELECTED[file]:
            function = getattr(module, test)
            for params in _param_sets(function):
                for who, implementation in (("slime", original), ("ours", ours)):
                    setattr(module, name, implementation)
                    if hasattr(module, "STRICT_RTOL"):
                        module.STRICT_RTOL, module.STRICT_ATOL = (0.0, 1e-8) if who == "slime" else (2e-6, 1e-7)
                    key = (who, file, test, repr(params))
                    try:
                        function(**params)
                        outcome[key] = "passed"
                    except pytest.skip.Exception as skip:
                        outcome[key] = f"not applicable: {skip}"
                    except Exception as err:  # noqa: BLE001 - reported to the parent
                        outcome[key] = f"failed: {type(err).__name__}: {err}"
    return outcome


def test_slime_cpu_loss_tests_pass_against_ours():
    tree = slime_tree(MAIN)
    (outcome,) = run_world(_worker, 1, args=(tree,), timeout=300)
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    assert not failed, failed
    for (who, file, test, params), result in outcome.items():
        if who == "slime":
            assert result == "passed", (file, test, params, result)
    ours = [v for (who, *_), v in outcome.items() if who == "ours"]
    assert ours.count("passed") >= 14, outcome  # 2 + 4 + 8 single-rank (no mask) + 2 empty
