"""slime_entropy's loss with the filter on vs each slime release's own policy loss, side by side in one run.

    python benchmarks/bench_slime_loss.py                       # trees from SLIME_ENTROPY_THIRD_PARTY or ../shared
    python benchmarks/bench_slime_loss.py --reps 5 --tokens 4096 --vocab 32768

What is timed: one micro-batch's forward + backward on the CPU with one thread, from fp32 packed logits
``[1, T, V]`` (TP = 1, CP = 1) to the logits gradient:

* ``slime``: the release's own ``policy_loss_function`` (from its source tree, compiled as slime compiles it:
  ``torch.compile`` on; v0.1.0: Megatron's fused cross entropy + slime's vocab-parallel entropy; v0.3.1 / main:
  slime's fused log-prob + entropy) with slime's reducer, the filter off (slime has none);
* ``ours``: ``slime_entropy.loss.policy_loss_function`` called the same way, with ``--high-entropy-token-filter
  --entropy-percentile 0.2`` (selection, kept-token reducer, metrics, one fused log-prob + entropy pass; nothing
  is computed twice).

Flags: ``--eps-clip 0.2 --eps-clip-high 0.28 --rollout-temperature 0.8``, GRPO advantages, 8 samples of 512
tokens (64-token prompts), 20% of response tokens masked.

Time: each release runs in its own process (the trees all define the package ``slime``), variants interleaved
(slime, ours, slime, ours, ...) after two warm-up calls each; medians of ``--reps``, and the median of the
per-rep ratios (robust to the shared machine's load drifting between reps). Peak extra memory: each
(release, variant) in a fresh process with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (every allocation >= 64 KiB
is its own mmap, returned when freed, so resident memory tracks live tensors), ``VmHWM - VmRSS`` around one call
after warm-up; it includes the logits gradient (4 B per logits element).

Results: a table on stdout and JSON in ``benchmarks/results/slime_loss_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RELEASES = ("v0.1.0", "v0.3.1", "head-624b824a8")
FAMILY = {"v0.1.0": "v0.1", "v0.3.1": "v0.3", "head-624b824a8": "v0.3"}
COMMON = ["--eps-clip", "0.2", "--eps-clip-high", "0.28", "--rollout-temperature", "0.8"]
OURS = ["--high-entropy-token-filter", "--entropy-percentile", "0.2"]
SAMPLES, PROMPT = 8, 64


def _third_party() -> Path:
    configured = os.environ.get("SLIME_ENTROPY_THIRD_PARTY")
    return Path(configured) if configured else REPO.parent / "shared" / "third_party"


def _setup(release: str, tokens: int, vocab: int):
    """In a fresh process: gloo world of one, Megatron's parallel_state, slime's loss module, inputs, callers."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu

    from slime_entropy.testing.slime_source import CP_UTILS, load_slime_loss, slime_loss_args

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    mpu.initialize_model_parallel(1, 1)
    module = load_slime_loss(_third_party() / "slime" / release, eager=False)
    cp_utils = sys.modules[CP_UTILS]
    family = FAMILY[release]

    from slime_entropy.loss import policy_loss_function as ours

    g = torch.Generator().manual_seed(0)
    length = tokens // SAMPLES
    response = length - PROMPT
    logits = (torch.randn(1, tokens, vocab, generator=g) * 3).requires_grad_(True)
    unconcat = [torch.randint(0, vocab, (length,), generator=g) for _ in range(SAMPLES)]
    masks = [(torch.rand(response, generator=g) > 0.2).int() for _ in range(SAMPLES)]
    batch = {
        "unconcat_tokens": unconcat,
        "total_lengths": [length] * SAMPLES,
        "response_lengths": [response] * SAMPLES,
        "loss_masks": masks,
        "advantages": [torch.full((response,), float(torch.randn(1, generator=g))) for _ in range(SAMPLES)],
        "log_probs": [-torch.rand(response, generator=g) * 4 - 8 for _ in range(SAMPLES)],
    }
    if family == "v0.3":
        batch["rollout_mask_sums"] = [m.sum() for m in masks]
    reducer_kwargs = dict(
        total_lengths=batch["total_lengths"],
        response_lengths=batch["response_lengths"],
        loss_masks=masks,
        calculate_per_token_loss=False,
    )
    if family == "v0.3":
        reducer_kwargs["sample_denoms"] = batch["rollout_mask_sums"]
    slime_args = slime_loss_args(family, COMMON, global_batch_size=SAMPLES)
    our_args = slime_loss_args(family, COMMON + OURS, global_batch_size=SAMPLES)

    def call(variant):
        logits.grad = None
        reducer = cp_utils.get_sum_of_sample_mean(**reducer_kwargs)
        if variant == "slime":
            loss, _ = module.policy_loss_function(slime_args, batch, logits, reducer)
        else:
            loss, _ = ours(our_args, batch, logits, reducer)
        loss.backward()

    return logits, call


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def probe_memory(release, variant, tokens, vocab) -> int:
    logits, call = _setup(release, tokens, vocab)
    for _ in range(2):
        call(variant)
    logits.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    call(variant)
    return (_status_kib("VmHWM") - base) * 1024


def probe_time(release, tokens, vocab, reps) -> dict:
    _, call = _setup(release, tokens, vocab)
    times = {"slime": [], "ours": []}
    for variant in times:
        for _ in range(2):
            call(variant)
    for _ in range(reps):
        for variant in times:
            start = time.perf_counter()
            call(variant)
            times[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(values) for variant, values in times.items()} | {"all": times}


def _subprocess(args: list[str], env=None) -> dict:
    cmd = [sys.executable, __file__, *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--releases", nargs="+", default=list(RELEASES), choices=RELEASES)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "slime_loss_cpu.json"))
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts._probe:
        kind, release, variant = json.loads(opts._probe)
        if kind == "memory":
            print(json.dumps(probe_memory(release, variant, opts.tokens, opts.vocab)))
        else:
            print(json.dumps(probe_time(release, opts.tokens, opts.vocab, opts.reps)))
        return

    if not (_third_party() / "slime").is_dir():
        sys.exit(f"slime trees not found under {_third_party()}: set SLIME_ENTROPY_THIRD_PARTY")
    size = ["--tokens", str(opts.tokens), "--vocab", str(opts.vocab), "--reps", str(opts.reps)]
    mem_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
    rows = []
    for release in opts.releases:
        timing = _subprocess(["--_probe", json.dumps(["time", release, ""]), *size])
        memory = {
            variant: _subprocess(["--_probe", json.dumps(["memory", release, variant]), *size], env=mem_env)
            for variant in ("slime", "ours")
        }
        rows.append(
            {
                "release": release,
                "time_s": {"slime": timing["slime"], "ours": timing["ours"]},
                "time_runs_s": timing["all"],
                "extra_peak_bytes": memory,
                "time_ratio": timing["ours"] / timing["slime"],
                # each rep times slime then ours back to back: the median of the paired ratios is robust to the
                # shared machine's load drifting between reps
                "time_ratio_paired_median": statistics.median(
                    o / s for o, s in zip(timing["all"]["ours"], timing["all"]["slime"], strict=True)
                ),
                # the fastest run of each: the least disturbed by other work on the machine
                "time_ratio_min": min(timing["all"]["ours"]) / min(timing["all"]["slime"]),
                "memory_ratio": memory["ours"] / memory["slime"],
            }
        )
        print(
            f"{release:>16}  slime {timing['slime']:.3f} s {memory['slime'] / 2**20:8.0f} MiB   "
            f"ours {timing['ours']:.3f} s {memory['ours'] / 2**20:8.0f} MiB   "
            f"time x{rows[-1]['time_ratio']:.2f} (paired x{rows[-1]['time_ratio_paired_median']:.2f}, "
            f"fastest x{rows[-1]['time_ratio_min']:.2f})  "
            f"extra memory x{rows[-1]['memory_ratio']:.2f}",
            flush=True,
        )
    result = {
        "benchmark": "one micro-batch fwd+bwd of the policy loss, CPU, one thread",
        "load_average_after": os.getloadavg(),
        "command": "python benchmarks/bench_slime_loss.py " + " ".join(argv or sys.argv[1:]),
        "tokens": opts.tokens,
        "vocab": opts.vocab,
        "reps": opts.reps,
        "ours_flags": " ".join(COMMON + OURS),
        "slime_flags": " ".join(COMMON),
        "memory_method": "fresh-process VmHWM - VmRSS, MALLOC_MMAP_THRESHOLD_=65536",
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
    }
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
