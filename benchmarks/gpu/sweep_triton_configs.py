"""Kernel-only timing of every Triton configuration of the log-prob/entropy kernels (CUDA).

    python benchmarks/gpu/sweep_triton_configs.py [--T 65536] [--V 18992]

Times ``_stats_kernel`` (forward; floor: one read of the logits) and ``_grad_kernel`` (backward; floor: one read
plus one write) for each configuration in ``STATS_CONFIGS`` / ``GRAD_CONFIGS`` with ``triton.testing.do_bench``
on bf16 logits, and prints the achieved bandwidth against the device's HBM peak (H100 3.35 TB/s, H200 4.8 TB/s).
Informational: the autotuner picks among the same configurations at run time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from slime_entropy.ops import _logprob_entropy_triton as tk  # noqa: E402

PEAK = {"H100": 3.35e12, "H200": 4.8e12}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--V", type=int, default=18992)
    args = ap.parse_args()
    if not (torch.cuda.is_available() and tk.AVAILABLE):
        print("needs CUDA and triton")
        return 1
    import triton

    name = torch.cuda.get_device_name(0)
    peak = next((bw for key, bw in PEAK.items() if key in name), None)
    T, V = args.T, args.V
    x = (torch.randn(T, V, device="cuda", dtype=torch.bfloat16) * 3).contiguous()
    targets = torch.randint(0, V, (T,), device="cuda")
    stats = torch.empty((T, 4), device="cuda")
    local = torch.empty((T,), device="cuda", dtype=torch.int32)
    grad = torch.empty_like(x)
    lse = torch.full((T,), 12.0, device="cuda")
    mz = torch.zeros(T, device="cuda")
    g = torch.randn(T, device="cuda")
    elems = T * V

    def report(kind, cfg, ms, floor_bytes):
        bw = floor_bytes * elems / (ms * 1e-3)
        frac = f"{bw / peak * 100:5.1f}%" if peak else "  n/a"
        print(f"{kind:5s} {str(cfg):60s} {ms * 1e3:8.1f} us  {bw / 1e12:5.2f} TB/s  {frac}", flush=True)

    print(f"{name}: bf16 T={T} V={V}")
    for cfg in tk.STATS_CONFIGS:
        kw = dict(cfg.kwargs, num_warps=cfg.num_warps)
        grid = (triton.cdiv(T, kw["ROWS"]),)

        def run(kw=kw, grid=grid):
            tk._stats_kernel[grid](
                x, x.stride(0), targets, targets, local, stats, T, 0, V, 1.0, T, HAS_ROWS=False, **kw
            )

        report("stats", cfg, triton.testing.do_bench(run, warmup=25, rep=100), 2)
    for cfg in tk.GRAD_CONFIGS:
        kw = dict(cfg.kwargs, num_warps=cfg.num_warps)

        def run(kw=kw):
            tk._grad_kernel[(T,)](
                x, x.stride(0), grad, grad.stride(0), local, local, lse, mz, g, g, V, V, 1.0, T,
                HAS_ROWS=False, HAS_H=True, **kw,
            )  # fmt: skip

        report("grad", cfg, triton.testing.do_bench(run, warmup=25, rep=100), 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
