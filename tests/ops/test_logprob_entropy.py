"""Tests of slime_entropy.ops.logprob_entropy against plain float64 references.

Reference (single process, full vocabulary, float64): ``z = logits[rows, :vocab_size] * inv_temperature``,
``log_prob = log_softmax(z)[target]``, ``entropy = -(p * log p).sum()``, gradients by float64 autograd.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from slime_entropy import collectives
from slime_entropy.ops import logprob_entropy as le
from slime_entropy.ops.logprob_entropy import vocab_parallel_logprob_entropy
from tests.distributed import run_world

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
ATOL = 1e-5  # fp32-path accuracy target against float64, forward and backward


# ----------------------------------------------------------------------------------------------------------------
# Plain float64 reference and helpers
# ----------------------------------------------------------------------------------------------------------------


def reference(full_logits, targets, rows, vocab_size, inv_temperature, w_lp, w_h):
    """float64 (log_prob, entropy, d(sum w_lp*lp + w_h*H)/d full_logits) over the real vocabulary."""
    x = full_logits.detach().double().requires_grad_(True)
    sel = x if rows is None else x[rows]
    z = sel[:, :vocab_size] * inv_temperature
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    log_prob = logp.gather(1, targets[:, None]).squeeze(1)
    loss = (log_prob * w_lp.double()).sum() + (entropy * w_h.double()).sum()
    if loss.requires_grad:
        loss.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return log_prob.detach(), entropy.detach(), grad


def make_logits(T, V, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, V, generator=g, dtype=torch.float64) * scale
    x[:, :3] += 2 * scale  # a few dominant tokens, like a trained LM
    return x.to(dtype)


def grad_tol(ref_grad, dtype):
    """fp32: the 1e-5 target. bf16/fp16 gradients are rounded to the logits' dtype: allow 1 ulp of it."""
    if dtype == torch.float32:
        return ATOL
    eps = torch.finfo(dtype).eps
    return ref_grad.abs() * eps + 1e-6


def assert_grad_close(grad, ref_grad, dtype):
    err = (grad.double() - ref_grad).abs()
    tol = grad_tol(ref_grad, dtype)
    assert bool((err <= tol).all()), f"grad error {err.max().item():.3e} exceeds tolerance"


def run_case(
    logits, targets, rows, *, vocab_size=None, inv_temperature=1.0, entropy_grad=True, seed=0, device="cpu", **kw
):
    """Our forward + backward on ``logits`` (whole vocabulary, tp_group=None) vs the float64 reference."""
    n = targets.numel()
    g = torch.Generator().manual_seed(seed + 1)
    w_lp, w_h = torch.randn(n, generator=g), torch.randn(n, generator=g)
    x = logits.detach().clone().to(device).requires_grad_(True)
    lp, h = vocab_parallel_logprob_entropy(
        x,
        targets.to(device),
        None if rows is None else rows.to(device),
        vocab_size=vocab_size,
        inv_temperature=inv_temperature,
        entropy_grad=entropy_grad,
        **kw,
    )
    assert lp.dtype == torch.float32 and h.dtype == torch.float32 and lp.shape == (n,) and h.shape == (n,)
    assert h.requires_grad == entropy_grad
    loss = (lp * w_lp.to(device)).sum() + ((h * w_h.to(device)).sum() if entropy_grad else 0.0)
    loss.backward()
    vs = vocab_size if vocab_size is not None else logits.shape[1]
    ref_lp, ref_h, ref_g = reference(
        logits, targets, rows, vs, inv_temperature, w_lp, w_h if entropy_grad else 0 * w_h
    )
    lp, h, grad = lp.detach().cpu(), h.detach().cpu(), x.grad.cpu()
    assert (lp.double() - ref_lp).abs().max().item() <= ATOL if n else True
    assert (h.double() - ref_h).abs().max().item() <= ATOL if n else True
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert_grad_close(grad, ref_g, logits.dtype)
    return lp, h, grad


# ----------------------------------------------------------------------------------------------------------------
# Single process (TP = 1)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tp1_matches_float64(backend, dtype):
    T, V = 37, 1000
    logits = make_logits(T, V, dtype, seed=1)
    # all rows, full vocabulary
    run_case(logits, torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(2)), None, backend=backend)
    # row subset, Megatron padding (vocab 960 of 1000 columns), temperature, several chunks
    rows = torch.randperm(T, generator=torch.Generator().manual_seed(3))[:23]
    targets = torch.randint(0, 960, (23,), generator=torch.Generator().manual_seed(4))
    run_case(logits, targets, rows, vocab_size=960, inv_temperature=1 / 0.7, chunk_rows=8, backend=backend)
    # log-prob gradient only
    run_case(logits, targets, rows, vocab_size=960, entropy_grad=False, chunk_rows=5, backend=backend)


def test_fp16_eager():
    logits = make_logits(19, 300, torch.float16, seed=5, scale=2.0)
    run_case(logits, torch.randint(0, 300, (19,)), None, backend="eager")


@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_large_vocab_accuracy(backend):
    """V = 151,936 (Qwen3): fp32 accumulation over 1e5 columns must stay within 1e-5 of float64."""
    T, V = 24, 151_936
    logits = make_logits(T, V, torch.float32, seed=6)
    targets = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(7))
    run_case(logits, targets, None, backend=backend)


def test_long_sequence_many_chunks():
    T, V = 8192, 96
    logits = make_logits(T, V, torch.float32, seed=8)
    rows = torch.randperm(T, generator=torch.Generator().manual_seed(9))[:6000]
    targets = torch.randint(0, 90, (6000,), generator=torch.Generator().manual_seed(10))
    run_case(logits, targets, rows, vocab_size=90, inv_temperature=1.25, chunk_rows=1000, backend="auto")


def test_compiled_equals_eager_and_chunking_invariance():
    T, V = 50, 777
    logits = make_logits(T, V, torch.float32, seed=11)
    targets = torch.randint(0, 700, (T,), generator=torch.Generator().manual_seed(12))
    kw = dict(vocab_size=700, inv_temperature=0.9)
    outs = [
        vocab_parallel_logprob_entropy(logits, targets, backend=b, chunk_rows=c, **kw)
        for b, c in (("eager", None), ("eager", 7), ("compiled", None), ("compiled", 13))
    ]
    for lp, h in outs[1:]:
        torch.testing.assert_close(lp, outs[0][0], rtol=0, atol=2e-6)
        torch.testing.assert_close(h, outs[0][1], rtol=0, atol=2e-6)


def test_empty_rows_tp1():
    for backend in ("eager", "auto"):
        x = make_logits(6, 50, torch.float32, seed=13).requires_grad_(True)
        empty = torch.empty(0, dtype=torch.int64)
        lp, h = vocab_parallel_logprob_entropy(x, empty, empty, entropy_grad=True, backend=backend)
        assert lp.shape == (0,) and h.shape == (0,)
        (lp.sum() + h.sum()).backward()
        assert x.grad is not None and torch.count_nonzero(x.grad) == 0


def test_entropy_grad_switch():
    T, V = 9, 64
    logits = make_logits(T, V, torch.float32, seed=14)
    targets = torch.randint(0, V, (T,))
    x = logits.clone().requires_grad_(True)
    lp, h = vocab_parallel_logprob_entropy(x, targets, entropy_grad=False, backend="eager")
    assert lp.requires_grad and not h.requires_grad
    # entropy alone carries gradient when entropy_grad=True (and only the entropy term)
    x = logits.clone().requires_grad_(True)
    lp, h = vocab_parallel_logprob_entropy(x, targets, entropy_grad=True, backend="eager")
    w_h = torch.randn(T)
    (h * w_h).sum().backward()
    _, _, ref_g = reference(logits, targets, None, V, 1.0, torch.zeros(T), w_h)
    assert_grad_close(x.grad, ref_g, torch.float32)


def test_backward_skips_entropy_work(monkeypatch):
    """entropy_grad=False: backward runs the log-prob-only chunk kernel, never the entropy one."""
    calls = {"lp": 0, "lp_entropy": 0}
    orig_lp, orig_both = le._chunk_grad_lp, le._chunk_grad_lp_entropy

    def lp_only(*a):
        calls["lp"] += 1
        return orig_lp(*a)

    def both(*a):
        calls["lp_entropy"] += 1
        return orig_both(*a)

    monkeypatch.setattr(le, "_chunk_grad_lp", lp_only)
    monkeypatch.setattr(le, "_chunk_grad_lp_entropy", both)
    x = make_logits(10, 40, torch.float32, seed=15).requires_grad_(True)
    lp, h = vocab_parallel_logprob_entropy(x, torch.randint(0, 40, (10,)), entropy_grad=False, backend="eager")
    (lp.sum() + h.detach().sum()).backward()
    assert calls == {"lp": 1, "lp_entropy": 0}


@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("with_rows", [False, True])
def test_saved_state_is_o_of_n(entropy_grad, with_rows):
    """Bytes saved for backward <= 16 per row, plus the logits saved by reference (not copied)."""
    T, V = 64, 4096
    x = make_logits(T, V, torch.bfloat16, seed=16).requires_grad_(True)
    rows = torch.arange(0, T, 2) if with_rows else None
    n = T // 2 if with_rows else T
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, h = vocab_parallel_logprob_entropy(
            x, torch.randint(0, V, (n,)), rows, entropy_grad=entropy_grad, chunk_rows=4, backend="eager"
        )
    logits_saved = [t for t in saved if t.data_ptr() == x.data_ptr()]
    others = [t for t in saved if t.data_ptr() != x.data_ptr()]
    assert len(logits_saved) == 1 and logits_saved[0].shape == x.shape  # by reference: same storage
    other_bytes = sum(t.numel() * t.element_size() for t in others)
    assert other_bytes <= 16 * n, (other_bytes, [(t.shape, t.dtype) for t in others])
    (lp.sum() + (h.sum() if entropy_grad else 0)).backward()


def test_nan_and_inf_logits():
    T, V = 6, 50
    logits = make_logits(T, V, torch.float32, seed=17)
    logits[1, 7] = float("nan")
    logits[3, 10:] = float("-inf")  # a legitimate, partially masked row stays finite
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    for backend in ("eager", "compiled"):
        lp, h = vocab_parallel_logprob_entropy(logits, targets, backend=backend)
        assert torch.isnan(lp[1]) and torch.isnan(h[1])
        ok = torch.tensor([0, 2, 3, 4, 5])
        ref_lp, ref_h, _ = reference(logits[ok], targets[ok], None, V, 1.0, torch.zeros(5), torch.zeros(5))
        assert (lp[ok].double() - ref_lp).abs().max() <= ATOL
        assert (h[ok].double() - ref_h).abs().max() <= ATOL


def test_target_in_padding_gives_nan():
    x = make_logits(3, 20, torch.float32, seed=18)
    lp, h = vocab_parallel_logprob_entropy(x, torch.tensor([1, 18, 19]), vocab_size=18, backend="eager")
    assert torch.isfinite(lp[0]) and torch.isnan(lp[1:]).all() and torch.isfinite(h).all()


def test_argument_validation():
    x = torch.zeros(4, 8)
    t = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="backend"):
        vocab_parallel_logprob_entropy(x, t, backend="cuda")
    with pytest.raises(ValueError, match="rows=None"):
        vocab_parallel_logprob_entropy(x, t[:3])
    with pytest.raises(ValueError, match="rows"):
        vocab_parallel_logprob_entropy(x, t, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="inv_temperature"):
        vocab_parallel_logprob_entropy(x, t, inv_temperature=0.0)
    with pytest.raises(ValueError, match="int64"):
        vocab_parallel_logprob_entropy(x, t.int())
    with pytest.raises(ValueError, match="chunk_rows"):
        vocab_parallel_logprob_entropy(x, t, chunk_rows=0)
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        vocab_parallel_logprob_entropy(x.double(), t)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="triton"):
            vocab_parallel_logprob_entropy(x, t, backend="triton")


def test_auto_falls_back_to_eager_once(monkeypatch, caplog):
    def broken_compile(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(le, "_compiled_cache", {})
    monkeypatch.setattr(le, "_compile_failed", False)
    monkeypatch.setattr(le.torch, "compile", broken_compile)
    logits = make_logits(8, 30, torch.float32, seed=19)
    targets = torch.randint(0, 30, (8,))
    with caplog.at_level(logging.WARNING, logger=le.__name__):
        for _ in range(3):
            run_case(logits, targets, None, backend="auto")
    assert sum("eager backend" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        vocab_parallel_logprob_entropy(logits, targets, backend="compiled")


# ----------------------------------------------------------------------------------------------------------------
# Tensor parallel (gloo worlds): TP = 2 and 4, forward + backward, collective counts
# ----------------------------------------------------------------------------------------------------------------

_TP_CASES = [
    # (name, T, V_local, padding columns, rows, dtype, inv_temperature, entropy_grad, backend)
    ("fp32-all", 11, 40, 0, False, torch.float32, 1.0, True, "eager"),
    ("fp32-pad-rows-temp", 13, 40, "pad", True, torch.float32, 1 / 0.6, True, "eager"),
    ("bf16-pad-rows", 13, 40, "pad", True, torch.bfloat16, 1.0, True, "eager"),
    ("fp32-lp-only", 9, 40, 3, True, torch.float32, 1.0, False, "eager"),
    ("fp32-empty", 5, 40, 3, "empty", torch.float32, 1.0, True, "eager"),
]
# The compiled backend shares every TP-specific step (local target, gather, merge, backward plan) with eager and
# is checked against it in-process; compiling again inside each spawned rank would cost ~20 s here.


def _tp_case_inputs(case, world):
    name, T, v_local, pad, rows_mode, dtype, _, _, _ = case
    # Megatron pads the vocabulary up to a multiple of TP * k: the last shard(s) hold padding columns. With "pad",
    # TP=4's last shard is *all* padding (a shard with no real column must still join and contribute nothing).
    if pad == "pad":
        pad = 12 if world == 2 else v_local + 5
    vocab_size = world * v_local - pad
    seed = sum(map(ord, name))  # deterministic across processes (unlike hash())
    full = make_logits(T, world * v_local, dtype, seed=seed)
    full[:, vocab_size:] = 50.0  # padding columns carry large garbage: they must not count anywhere
    gen = torch.Generator().manual_seed(seed + 1)
    if rows_mode == "empty":
        rows = torch.empty(0, dtype=torch.int64)
    elif rows_mode:
        rows = torch.randperm(T, generator=gen)[: T - 4]
    else:
        rows = None
    n = T if rows is None else rows.numel()
    targets = torch.randint(0, vocab_size, (n,), generator=gen)
    w_lp, w_h = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return full, vocab_size, rows, targets, w_lp, w_h


_COLLECTIVE_NAMES = ("all_gather_stacked", "all_reduce_max_", "all_reduce_sum_", "all_gather_variable")
_RAW_NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor", "send")


def _tp_worker(rank, world, cases):
    # Count every collective: calls into slime_entropy.collectives (what the op must use) and raw
    # torch.distributed calls (which it must not bypass). The op looks functions up at call time, so patching works.
    counts = {}

    def counting(key, fn):
        def wrapped(*a, **k):
            counts[key] = counts.get(key, 0) + 1
            return fn(*a, **k)

        return wrapped

    phase = {"now": "fwd"}
    for name in _COLLECTIVE_NAMES:
        fn = getattr(collectives, name)
        setattr(collectives, name, lambda *a, _fn=fn, **k: counting(("module", phase["now"]), _fn)(*a, **k))
    for name in _RAW_NAMES:
        fn = getattr(dist, name)
        setattr(dist, name, lambda *a, _fn=fn, **k: counting(("raw", phase["now"]), _fn)(*a, **k))

    group = dist.group.WORLD
    out = []
    for case in cases:
        name, T, v_local, _, _, dtype, inv_t, entropy_grad, backend = case
        full, vocab_size, rows, targets, w_lp, w_h = _tp_case_inputs(case, world)
        shard = full[:, rank * v_local : (rank + 1) * v_local].clone().requires_grad_(True)
        counts.clear()
        phase["now"] = "fwd"
        lp, h = vocab_parallel_logprob_entropy(
            shard,
            targets,
            rows,
            tp_group=group,
            vocab_start=rank * v_local,
            vocab_size=vocab_size,
            inv_temperature=inv_t,
            entropy_grad=entropy_grad,
            backend=backend,
            chunk_rows=4,
        )
        phase["now"] = "bwd"
        loss = (lp * w_lp).sum() + ((h * w_h).sum() if entropy_grad else 0.0)
        loss.backward()
        out.append(
            dict(
                name=name,
                lp=lp.detach(),
                h=h.detach(),
                h_requires_grad=h.requires_grad,
                grad=shard.grad,
                counts=dict(counts),
            )
        )
    return out


def _check_tp_results(results, world, cases):
    for i, case in enumerate(cases):
        name, _, v_local, _, _, dtype, inv_t, entropy_grad, _ = case
        full, vocab_size, rows, targets, w_lp, w_h = _tp_case_inputs(case, world)
        ref_lp, ref_h, ref_g = reference(
            full, targets, rows, vocab_size, inv_t, w_lp, w_h if entropy_grad else 0 * w_h
        )
        for rank in range(world):
            r = results[rank][i]
            assert r["name"] == name
            c = r["counts"]
            assert 1 <= c.get(("module", "fwd"), 0) <= 2, (name, c)  # N = 0 still joins the collective
            assert c.get(("raw", "fwd"), 0) <= c.get(("module", "fwd"), 0), (name, c)  # nothing bypasses the module
            assert c.get(("module", "bwd"), 0) == 0 and c.get(("raw", "bwd"), 0) == 0, (name, c)
            assert r["h_requires_grad"] == entropy_grad
            if targets.numel():
                assert (r["lp"].double() - ref_lp).abs().max() <= ATOL, (name, rank)
                assert (r["h"].double() - ref_h).abs().max() <= ATOL, (name, rank)
            # every TP rank returns bit-identical results
            assert torch.equal(r["lp"], results[0][i]["lp"]) and torch.equal(r["h"], results[0][i]["h"])
            assert_grad_close(r["grad"], ref_g[:, rank * v_local : (rank + 1) * v_local], dtype)


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 4])
def test_tensor_parallel_matches_float64(world):
    results = run_world(_tp_worker, world, args=(_TP_CASES,))
    _check_tp_results(results, world, _TP_CASES)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels on CPU through the interpreter (skipped without triton)
# ----------------------------------------------------------------------------------------------------------------


def triton_checks(device="cpu"):
    """The Triton backend against float64: on CPU in a subprocess with TRITON_INTERPRET=1 (set before triton is
    imported; small shapes only, the interpreter is slow), and on CUDA as a gpu test."""
    from slime_entropy.ops import _logprob_entropy_triton as tk

    assert tk.AVAILABLE
    T, V = 21, 150
    for dtype in (torch.float32, torch.bfloat16):
        logits = make_logits(T, V, dtype, seed=30)
        rows = torch.randperm(T, generator=torch.Generator().manual_seed(31))[:13]
        targets = torch.randint(0, 140, (13,), generator=torch.Generator().manual_seed(32))
        kw = dict(backend="triton", device=device)
        run_case(logits, targets, rows, vocab_size=140, inv_temperature=1 / 0.8, **kw)
        run_case(logits, targets, rows, vocab_size=140, entropy_grad=False, **kw)
        run_case(logits, torch.randint(0, V, (T,)), None, **kw)
    # simulated TP=3 from the raw kernels + both merges (padded last shard, one shard all padding)
    full = make_logits(T, 3 * 60, torch.float32, seed=33).to(device)
    vocab_size = 110  # shard 2 (ids 120..179) is all padding
    targets = torch.randint(0, vocab_size, (T,), generator=torch.Generator().manual_seed(34)).to(device)
    stats = []
    for r in range(3):
        n_valid = max(0, min(60, vocab_size - 60 * r))
        shard = full[:, 60 * r : 60 * (r + 1)]
        st, local_t = tk.forward_stats(shard, None, targets, 60 * r, n_valid, 1.0)
        assert torch.equal(local_t.long(), (targets - 60 * r).clamp(-1, n_valid))
        stats.append(st)
    gathered = torch.stack(stats)
    lse, mean_z, h, z_y = (t.cpu() for t in le._merge_stats(gathered))
    lp_k, h_k, lse_k, mean_z_k = (t.cpu() for t in tk.merge_stats(gathered, targets, vocab_size))
    full, targets = full.cpu(), targets.cpu()
    ref_lp, ref_h, _ = reference(full, targets, None, vocab_size, 1.0, torch.zeros(T), torch.zeros(T))
    assert (z_y - lse - ref_lp).abs().max() <= ATOL and (h - ref_h).abs().max() <= ATOL
    assert (lp_k - ref_lp).abs().max() <= ATOL and (h_k - ref_h).abs().max() <= ATOL
    torch.testing.assert_close(lse_k, lse, rtol=0, atol=1e-6)
    torch.testing.assert_close(mean_z_k, mean_z, rtol=0, atol=1e-6)
    # NaN propagates, N = 0 works
    bad = make_logits(4, 64, torch.float32, seed=35).to(device)
    bad[2, 5] = float("nan")
    lp, h = vocab_parallel_logprob_entropy(bad, torch.tensor([0, 1, 2, 3], device=device), backend="triton")
    assert torch.isnan(lp[2]) and torch.isnan(h[2]) and torch.isfinite(lp[[0, 1, 3]]).all()
    x = bad.clone().requires_grad_(True)
    empty = torch.empty(0, dtype=torch.int64, device=device)
    lp, h = vocab_parallel_logprob_entropy(x, empty, empty, entropy_grad=True, backend="triton")
    (lp.sum() + h.sum()).backward()
    assert lp.shape == (0,) and torch.count_nonzero(x.grad) == 0
    return "ok"


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_in_interpreter():
    code = "from tests.ops.test_logprob_entropy import triton_checks as f; print(f())"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr


def test_triton_module_optional():
    """Without triton the kernels module still imports and reports itself unavailable; auto never needs it."""
    from slime_entropy.ops import _logprob_entropy_triton as tk

    assert tk.AVAILABLE == HAS_TRITON
    assert le._resolve_backend("auto", torch.device("cpu")) in ("auto-compiled", "eager")


# ----------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "backend, dtype",
    [
        ("triton", torch.float32),
        ("triton", torch.bfloat16),
        ("triton", torch.float16),
        ("compiled", torch.bfloat16),  # inductor-generated kernels on CUDA (compiles: one dtype is enough)
        ("auto", torch.float32),
        ("eager", torch.bfloat16),
    ],
)
def test_gpu_matches_float64(backend, dtype):
    if backend in ("triton", "compiled") and not HAS_TRITON:
        pytest.skip("triton is not installed")
    gen = torch.Generator().manual_seed(3)
    kw = dict(backend=backend, device="cuda")
    rows = torch.randperm(300, generator=gen)[:200]
    logits = make_logits(300, 18_992, dtype, seed=40)
    run_case(
        logits, torch.randint(0, 18_952, (200,), generator=gen), rows, vocab_size=18_952, inv_temperature=1.4, **kw
    )
    run_case(
        logits[:100],
        torch.randint(0, 18_000, (100,), generator=gen),
        None,
        vocab_size=18_000,
        entropy_grad=False,
        **kw,
    )
    run_case(make_logits(64, 151_936, dtype, seed=41), torch.randint(0, 151_936, (64,), generator=gen), None, **kw)
    empty = torch.empty(0, dtype=torch.int64)
    run_case(logits[:10], empty, empty, **kw)


@pytest.mark.gpu
def test_gpu_triton_checks():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    assert triton_checks("cuda") == "ok"


@pytest.mark.gpu
def test_gpu_auto_is_triton_and_memory_is_small():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    assert le._resolve_backend("auto", torch.device("cuda")) == "triton"
    T, V = 16_384, 18_992
    x = (torch.randn(T, V, device="cuda") * 3).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, V, (T,), device="cuda")
    vocab_parallel_logprob_entropy(x, targets, entropy_grad=True)  # warm-up / autotune
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lp, h = vocab_parallel_logprob_entropy(x, targets, entropy_grad=True)
    torch.cuda.synchronize()
    fwd_extra = torch.cuda.max_memory_allocated() - base
    assert fwd_extra <= 16 * T + (1 << 20), fwd_extra  # O(T) only
    (lp.sum() + h.sum()).backward()
    torch.cuda.synchronize()
    bwd_extra = torch.cuda.max_memory_allocated() - base
    assert bwd_extra <= x.numel() * 2 + 64 * T + (1 << 20), bwd_extra  # the bf16 gradient + O(T)
    assert torch.isfinite(x.grad).all()


@pytest.mark.gpu
def test_gpu_large_t_against_compiled():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    T, V = 65_536, 18_992
    x = (torch.randn(T, V, device="cuda") * 3).to(torch.bfloat16)
    targets = torch.randint(0, V, (T,), device="cuda")
    a = vocab_parallel_logprob_entropy(x, targets, backend="triton")
    b = vocab_parallel_logprob_entropy(x, targets, backend="eager")
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=ATOL)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=ATOL)


def test_json_free_module_constants():
    assert le.default_chunk_rows(18_992) * 18_992 * 4 <= 16 * 2**20
    assert le.default_chunk_rows(10**9) == 2
    json.dumps(le.BACKENDS)
