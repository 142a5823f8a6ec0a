"""Fused vocab-parallel log-prob + entropy vs the naive torch path, side by side in one run.

    python benchmarks/bench_logprob_entropy.py                     # CPU or GPU, default sizes
    python benchmarks/bench_logprob_entropy.py --reps 7 --quick    # fewer configs

Variants (same inputs, same temperature):

* ``naive``: ``z = logits.float() * inv_temp``; ``softmax``, ``log_softmax``, multiply, sum, ``gather`` (what an
  unfused trainer does; its backward is plain autograd).
* ``fused``: ``vocab_parallel_logprob_entropy(..., backend="auto")`` (compiled on CPU, Triton on CUDA).

Modes: ``fwd`` (logits do not require grad, e.g. reference log-probs) and ``fwd+bwd`` (logits require grad,
``entropy_grad=True``, loss = sum(w_lp * log_prob + w_h * entropy), one ``backward``).

Time: every (config, mode) times all variants interleaved (naive, fused, naive, fused, ...) after warm-up and
reports the median of ``--reps`` (>= 5) runs; compare ratios within one run (the shared CPU box varies up to ~2x
between runs).

Peak extra memory, in bytes per logits element (``(peak - baseline) / (T * V)``; for ``fwd+bwd`` this includes
the logits gradient itself, 4 B/elt fp32 or 2 B/elt bf16):

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the allocated bytes
  before the call (inputs already allocated, kernels warmed up).
* CPU: each (variant, config, mode) runs in a *fresh subprocess* with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``,
  so every allocation of 64 KiB or more is its own ``mmap`` and is unmapped when freed: resident memory then
  tracks live tensors instead of allocator caches. The probe allocates the inputs, warms up (compiles), resets the
  kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), reads ``VmRSS`` as the baseline, runs once and
  reads ``VmHWM`` (peak RSS). The difference is the peak of live extra memory during the call, at page
  granularity. (Timing is *not* taken in these probes, since per-allocation ``mmap`` adds page-fault cost.)

On CUDA the script also reports the achieved HBM bandwidth fraction of the fused bf16 op at T=65536,
V_local=18992 (TP=8 share of Qwen3's 151,936): forward against the 2 B/elt floor (one read of the logits),
forward+backward against the 6 B/elt floor (read; read + write the gradient), with the peak bandwidth taken from
the device name (H100 3.35 TB/s, H200 4.8 TB/s). Two timings: ``steady`` (5 back-to-back calls per sample, host
launch overhead overlapped as in training) and ``single_call`` (one call from an idle GPU, host latency included).
Kernel-only times per Triton configuration: ``benchmarks/gpu/sweep_triton_configs.py``.

Results: a table on stdout and JSON in ``benchmarks/results/logprob_entropy_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slime_entropy.ops.logprob_entropy import vocab_parallel_logprob_entropy  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s, by device-name substring


# ----------------------------------------------------------------------------------------------------------------
# The two variants
# ----------------------------------------------------------------------------------------------------------------


def naive(logits, targets, inv_temp):
    z = logits.float() * inv_temp
    p = torch.softmax(z, dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    entropy = -(p * logp).sum(dim=-1)
    log_prob = logp.gather(1, targets[:, None]).squeeze(1)
    return log_prob, entropy


def fused(logits, targets, inv_temp, entropy_grad):
    return vocab_parallel_logprob_entropy(
        logits, targets, inv_temperature=inv_temp, entropy_grad=entropy_grad, backend="auto"
    )


def make_inputs(T, V, dtype, device, requires_grad, seed=0):
    """Logits ~ N(0, 3^2) in ``dtype``, generated on ``device`` (no multi-GB host staging on GPUs)."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(T, V, generator=g, device=device, dtype=dtype if device.type == "cuda" else torch.float32)
    logits = logits.mul_(3.0).to(dtype)
    targets = torch.randint(0, V, (T,), generator=g, device=device)
    w_lp = torch.randn(T, generator=g, device=device)
    w_h = torch.randn(T, generator=g, device=device)
    logits.requires_grad_(requires_grad)
    return logits, targets, w_lp, w_h


def run_once(variant, mode, logits, targets, w_lp, w_h, inv_temp):
    if mode == "fwd":
        with torch.no_grad():
            out = naive(logits, targets, inv_temp) if variant == "naive" else fused(logits, targets, inv_temp, False)
        return out
    logits.grad = None
    lp, h = naive(logits, targets, inv_temp) if variant == "naive" else fused(logits, targets, inv_temp, True)
    (lp * w_lp + h * w_h).sum().backward()
    return lp, h


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------------------
# Memory probes
# ----------------------------------------------------------------------------------------------------------------


def _read_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_memory_probe(variant, mode, T, V, dtype_name, inv_temp):
    """Runs inside a fresh subprocess (see the module docstring); returns extra peak bytes."""
    logits, targets, w_lp, w_h = make_inputs(T, V, DTYPES[dtype_name], torch.device("cpu"), mode != "fwd")
    for _ in range(2):
        run_once(variant, mode, logits, targets, w_lp, w_h, inv_temp)
    logits.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _read_status_kib("VmRSS")
    out = run_once(variant, mode, logits, targets, w_lp, w_h, inv_temp)
    peak = _read_status_kib("VmHWM")
    del out
    return (peak - base) * 1024


def cpu_memory(variant, mode, T, V, dtype_name, inv_temp, threads):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [
        sys.executable,
        __file__,
        "--_probe",
        json.dumps([variant, mode, T, V, dtype_name, inv_temp]),
        "--threads",
        str(threads),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{res.stdout}\n{res.stderr}")
    return int(res.stdout.strip().splitlines()[-1])


def cuda_memory(variant, mode, logits, targets, w_lp, w_h, inv_temp):
    logits.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run_once(variant, mode, logits, targets, w_lp, w_h, inv_temp)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    logits.grad = None
    return peak - base


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def time_interleaved(variants, mode, inputs, inv_temp, reps, device, batch=1):
    """Median seconds per call and variant, runs interleaved so drifts hit all variants alike.

    ``batch > 1`` (CUDA): each timed sample is ``batch`` back-to-back calls between two events, divided by
    ``batch``; the host-side launch overhead of one call then overlaps the GPU work of the previous one, as in a
    training step where the host runs ahead. ``batch = 1`` includes the host latency of a call from an idle GPU.
    """
    logits, targets, w_lp, w_h = inputs
    for v in variants:  # warm-up (compiles, autotunes)
        for _ in range(2):
            run_once(v, mode, logits, targets, w_lp, w_h, inv_temp)
    sync(device)
    times = {v: [] for v in variants}
    for _ in range(reps):
        for v in variants:
            logits.grad = None
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(batch):
                    out = run_once(v, mode, logits, targets, w_lp, w_h, inv_temp)
                end.record()
                torch.cuda.synchronize()
                times[v].append(start.elapsed_time(end) / 1e3 / batch)
            else:
                t0 = time.perf_counter()
                out = run_once(v, mode, logits, targets, w_lp, w_h, inv_temp)
                times[v].append(time.perf_counter() - t0)
            del out
    logits.grad = None
    return {v: statistics.median(ts) for v, ts in times.items()}


def accuracy(T, V, dtype, device, inv_temp, rows=256):
    """Max |fused - fp64| over ``rows`` rows (fwd), from the same rounded inputs."""
    logits, targets, _, _ = make_inputs(T, V, dtype, device, False)
    logits, targets = logits[:rows], targets[:rows]
    with torch.no_grad():
        lp, h = fused(logits, targets, inv_temp, False)
        z = logits.double() * inv_temp
        logp = torch.log_softmax(z, -1)
        h_ref = -(logp.exp() * logp).sum(-1)
        lp_ref = logp.gather(1, targets[:, None]).squeeze(1)
    return (lp.double() - lp_ref).abs().max().item(), (h.double() - h_ref).abs().max().item()


# ----------------------------------------------------------------------------------------------------------------


def device_tag(device):
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for key in HBM_PEAK:
        if key in name:
            return f"cuda-{key.lower()}"
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def hbm_peak(device):
    name = torch.cuda.get_device_name(device)
    for key, bw in HBM_PEAK.items():
        if key in name:
            return name, bw
    return name, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--V", type=int, nargs="+", default=[32768, 18992])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--inv-temp", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    ap.add_argument("--no-bandwidth", action="store_true", help="CUDA: skip the T=65536 bandwidth runs")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/logprob_entropy_<dev>.json)")
    ap.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reps < 5:
        ap.error("--reps must be >= 5 (medians of fewer runs are too noisy)")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args._probe is not None:
        variant, mode, T, V, dtype_name, inv_temp = json.loads(args._probe)
        print(cpu_memory_probe(variant, mode, T, V, dtype_name, inv_temp))
        return 0

    device = torch.device(args.device)
    tag = device_tag(device)
    variants = ("naive", "fused")
    results = []
    print(f"device={tag} torch={torch.__version__} threads={torch.get_num_threads()} T={args.T} reps={args.reps}")
    header = (
        f"{'V':>6} {'dtype':>5} {'mode':>7} | {'naive ms':>9} {'fused ms':>9} {'ratio':>6} | "
        f"{'naive B/elt':>11} {'fused B/elt':>11}"
    )
    print(header)
    print("-" * len(header))
    for V in args.V:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            for mode in ("fwd", "fwd+bwd"):
                inputs = make_inputs(args.T, V, dtype, device, mode != "fwd")
                t = time_interleaved(variants, mode, inputs, args.inv_temp, args.reps, device)
                mem = {}
                if not args.no_memory:
                    for v in variants:
                        if device.type == "cuda":
                            mem[v] = cuda_memory(v, mode, *inputs, args.inv_temp)
                        else:
                            mem[v] = cpu_memory(v, mode, args.T, V, dtype_name, args.inv_temp, args.threads)
                del inputs
                elems = args.T * V
                row = {
                    "T": args.T,
                    "V": V,
                    "dtype": dtype_name,
                    "mode": mode,
                    "naive_ms": t["naive"] * 1e3,
                    "fused_ms": t["fused"] * 1e3,
                    "time_ratio": t["fused"] / t["naive"],
                    "naive_extra_bytes_per_elt": mem["naive"] / elems if mem else None,
                    "fused_extra_bytes_per_elt": mem["fused"] / elems if mem else None,
                }
                results.append(row)
                mem_s = (
                    f"{row['naive_extra_bytes_per_elt']:11.2f} {row['fused_extra_bytes_per_elt']:11.2f}"
                    if mem
                    else f"{'-':>11} {'-':>11}"
                )
                print(
                    f"{V:>6} {dtype_name:>5} {mode:>7} | {row['naive_ms']:9.2f} {row['fused_ms']:9.2f} "
                    f"{row['time_ratio']:6.2f} | {mem_s}",
                    flush=True,
                )

    acc = {}
    for dtype_name in args.dtypes:
        err_lp, err_h = accuracy(args.T, args.V[0], DTYPES[dtype_name], device, args.inv_temp)
        acc[dtype_name] = {"max_abs_err_log_prob": err_lp, "max_abs_err_entropy": err_h}
        print(f"accuracy vs fp64 ({dtype_name} inputs, V={args.V[0]}): log_prob {err_lp:.2e}, entropy {err_h:.2e}")

    bandwidth = None
    if device.type == "cuda" and not args.no_bandwidth:
        bandwidth = cuda_bandwidth(device, args.reps, args.inv_temp)
    tuned = triton_tuned_configs() if device.type == "cuda" else None

    payload = {
        "device": tag,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "inv_temperature": args.inv_temp,
        "results": results,
        "accuracy": acc,
        "bandwidth": bandwidth,
        "triton_tuned_configs": tuned,
        "memory_method": "cuda.max_memory_allocated" if device.type == "cuda" else "fresh-subprocess peak RSS delta",
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"logprob_entropy_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def triton_tuned_configs():
    """The autotuner's choices per key (kernel -> {key: config}), for the record."""
    try:
        from slime_entropy.ops import _logprob_entropy_triton as tk
    except Exception:
        return None
    if not tk.AVAILABLE:
        return None
    out = {}
    for name in ("_stats_tuned", "_grad_tuned"):
        cache = getattr(getattr(tk, name, None), "cache", {}) or {}
        out[name] = {str(k): str(v) for k, v in cache.items()}
        for k, v in cache.items():
            print(f"triton {name} {k}: {v}")
    return out


def cuda_bandwidth(device, reps, inv_temp, T=65536, V=18992):
    name, peak = hbm_peak(device)
    elems = T * V
    res = {"T": T, "V_local": V, "dtype": "bf16", "device_name": name, "peak_bytes_per_s": peak}
    for mode, floor_b in (("fwd", 2), ("fwd+bwd", 6)):
        inputs = make_inputs(T, V, torch.bfloat16, device, mode != "fwd")
        single = time_interleaved(("naive", "fused"), mode, inputs, inv_temp, reps, device, batch=1)
        steady = time_interleaved(("naive", "fused"), mode, inputs, inv_temp, reps, device, batch=5)
        mem = {v: cuda_memory(v, mode, *inputs, inv_temp) for v in ("naive", "fused")}
        del inputs
        floor_s = floor_b * elems / peak if peak else None
        entry = {
            "floor_bytes_per_elt": floor_b,
            "floor_ms": floor_s * 1e3 if floor_s else None,
            "naive_extra_bytes_per_elt": mem["naive"] / elems,
            "fused_extra_bytes_per_elt": mem["fused"] / elems,
        }
        for label, t in (("steady", steady), ("single_call", single)):
            entry[label] = {
                "naive_ms": t["naive"] * 1e3,
                "fused_ms": t["fused"] * 1e3,
                "fraction_of_peak": floor_s / t["fused"] if floor_s else None,
                "achieved_tb_per_s_at_floor_bytes": floor_b * elems / t["fused"] / 1e12,
            }
            e = entry[label]
            frac = f"{e['fraction_of_peak'] * 100:.1f}%" if e["fraction_of_peak"] else "n/a"
            print(
                f"bandwidth bf16 T={T} V={V} {mode} [{label}]: fused {e['fused_ms']:.3f} ms "
                f"(naive {e['naive_ms']:.2f} ms), {e['achieved_tb_per_s_at_floor_bytes']:.2f} TB/s at {floor_b} B/elt "
                f"= {frac} of {name} peak",
                flush=True,
            )
        print(
            f"memory bf16 T={T} V={V} {mode}: extra B/elt naive {entry['naive_extra_bytes_per_elt']:.2f} "
            f"fused {entry['fused_extra_bytes_per_elt']:.2f}",
            flush=True,
        )
        res[mode] = entry
    return res


if __name__ == "__main__":
    sys.exit(main())
