"""The per-token policy-loss math against direct float64 formulas."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slime_entropy.loss import surrogates


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(n, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    old = logp.detach() + torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return logp, old, adv


def test_clipped_surrogate_matches_formula_and_clipfrac():
    logp, old, adv = _data()
    loss, clipfrac = surrogates.clipped_surrogate(old - logp, adv, 0.2, 0.28)
    for i in range(len(adv)):
        r = math.exp(float(logp[i].detach() - old[i]))
        a = float(adv[i])
        unclipped, clipped = -r * a, -min(max(r, 0.8), 1.28) * a
        assert float(loss[i]) == pytest.approx(max(unclipped, clipped), rel=1e-12)
        assert float(clipfrac[i]) == float(clipped > unclipped)
    assert 0 < clipfrac.sum() < len(adv)


def test_dual_clip_bounds_negative_advantages_only():
    logp, old, adv = _data(seed=1)
    old = logp.detach() - 2.0  # large ratios, so -r*A is large for A < 0
    loss, _ = surrogates.clipped_surrogate(old - logp, adv, 0.2, 0.2, dual_clip_c=3.0)
    plain, _ = surrogates.clipped_surrogate(old - logp, adv, 0.2, 0.2)
    neg = adv < 0
    assert torch.allclose(loss[neg], torch.minimum(plain[neg], -3.0 * adv[neg]))
    assert torch.equal(loss[~neg], plain[~neg])
    assert (loss[neg] < plain[neg]).any()


@pytest.mark.parametrize(
    "kind,fn",
    [
        ("kl", lambda lr: lr),
        ("k1", lambda lr: lr),
        ("k2", lambda lr: lr**2 / 2),
        ("k3", lambda lr: math.exp(-lr) - 1 + lr),
        ("low_var_kl", lambda lr: min(max(math.exp(-lr) - 1 + lr, -10), 10)),
    ],
)
def test_approx_kl(kind, fn):
    logp = torch.tensor([-1.0, -0.5, -3.0, -20.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -0.5, -0.1, -0.2], dtype=torch.float64)
    out = surrogates.approx_kl(logp, ref, kind)
    for i in range(4):
        assert float(out[i]) == pytest.approx(fn(float(logp[i] - ref[i])), rel=1e-6)
    with pytest.raises(ValueError, match="kl-loss-type"):
        surrogates.approx_kl(logp, ref, "k4")


def test_cispo_weight_carries_no_gradient():
    logp, old, adv = _data(seed=2)
    loss, clipfrac = surrogates.cispo_surrogate(logp, old, adv, 0.2, 0.28)
    loss.sum().backward()
    weight = torch.exp(logp.detach() - old).clamp(0.8, 1.28)
    assert torch.allclose(logp.grad, -weight * adv)
    assert torch.equal(clipfrac, (weight != torch.exp(logp.detach() - old)).double())


def test_gpg():
    logp, _, adv = _data(seed=3)
    loss, clipfrac = surrogates.gpg_surrogate(logp, adv)
    assert torch.allclose(loss, -adv * logp) and not clipfrac.any()


def test_gmpo_clipping_is_pessimistic_for_the_sign_of_a():
    logp = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    old = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)  # log ratios +1, -1, +1, -1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    clipped, clipfrac = surrogates.gmpo_clipped_log_ratio(logp, old, adv, 0.4, 0.4)
    # A > 0: the smaller of x and clamp(x); A < 0: the larger
    assert clipped.tolist() == [0.4, -1.0, 1.0, -0.4]
    assert clipfrac.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_tis_weights():
    old = torch.tensor([-1.0, -1.0, -1.0])
    rollout = torch.tensor([-1.0, -3.0, 1.0])
    weights, ratio, clipfrac = surrogates.tis_weights(old, rollout, 0.5, 2.0)
    assert torch.allclose(ratio, torch.exp(old - rollout))
    assert weights.tolist() == pytest.approx([1.0, 2.0, 0.5])
    assert clipfrac.tolist() == [0.0, 1.0, 1.0]


@settings(max_examples=200, deadline=None)
@given(
    adv=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=16),
    ent=st.lists(st.floats(0, 12, allow_nan=False), min_size=16, max_size=16),
    alpha=st.floats(0, 5),
    kappa=st.floats(1, 10),
)
def test_advantage_shaping_never_flips_sign(adv, ent, alpha, kappa):
    a = torch.tensor(adv, dtype=torch.float64)
    h = torch.tensor(ent[: len(adv)], dtype=torch.float64)
    shaped, bonus = surrogates.shape_advantages(a, h, alpha, kappa)
    assert (bonus >= 0).all()
    assert (bonus <= a.abs() / kappa + 1e-12).all()
    assert (torch.sign(shaped) * torch.sign(a) >= 0).all()
    assert torch.equal(shaped[a == 0], a[a == 0])
    assert torch.allclose(shaped, a + torch.minimum(alpha * h, a.abs() / kappa))


def test_clip_cov_detaches_the_prescribed_number_of_eligible_tokens():
    n = 4000
    g = torch.Generator().manual_seed(5)
    logp = (-torch.rand(n, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    old = logp.detach().clone()  # ratio 1: nothing PPO-clipped
    adv = torch.randn(n, generator=g, dtype=torch.float64) * 3
    population = torch.rand(n, generator=g) > 0.3
    loss, clipfrac = surrogates.clip_cov_surrogate(
        logp,
        old,
        adv,
        population,
        eps_clip=0.2,
        eps_clip_high=0.2,
        ratio=2e-3,
        lower_bound=1.0,
        upper_bound=5.0,
        generator=torch.Generator().manual_seed(0),
    )
    num_population = int(population.sum())
    expected = max(1, int(2e-3 * num_population))
    assert int(clipfrac.sum()) == expected
    w = population.double()
    cov = (adv - (adv * w).sum() / w.sum()) * (logp.detach() - (logp.detach() * w).sum() / w.sum())
    chosen = clipfrac.bool()
    assert population[chosen].all() and ((cov[chosen] > 1.0) & (cov[chosen] < 5.0)).all()
    assert torch.equal(loss[chosen], torch.zeros_like(loss[chosen]))
    assert torch.allclose(loss[~chosen], -adv[~chosen])  # ratio 1
    # same generator seed, same choice (tensor-parallel ranks and recomputation agree)
    _, again = surrogates.clip_cov_surrogate(
        logp,
        old,
        adv,
        population,
        eps_clip=0.2,
        eps_clip_high=0.2,
        ratio=2e-3,
        lower_bound=1.0,
        upper_bound=5.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(again, clipfrac)


def test_kl_cov_penalises_the_top_covariance_tokens():
    logp, old, adv = _data(n=1000, seed=6)
    population = torch.ones(1000, dtype=torch.bool)
    population[:100] = False
    loss, clipfrac = surrogates.kl_cov_surrogate(logp, old, adv, population, ratio=0.01, coef=1.0)
    base = -adv * torch.exp(logp - old)
    penalised = (loss - base).abs() > 1e-15
    assert int(penalised.sum()) == 9  # floor(0.01 * 900)
    w = population.double()
    cov = (adv - (adv * w).sum() / w.sum()) * (logp.detach() - (logp.detach() * w).sum() / w.sum())
    cov[~population] = -float("inf")
    assert set(penalised.nonzero().view(-1).tolist()) == set(torch.topk(cov, 9).indices.tolist())
    assert torch.allclose((loss - base)[penalised], (logp - old).abs()[penalised])
    assert not clipfrac.any()
