"""Megatron actor training-step throughput and peak memory, high-entropy filter off vs on, side by side in one run.

    python benchmarks/bench_train_step.py                 # CPU (or one GPU), default small Qwen3
    python benchmarks/bench_train_step.py --steps 12 --layers 4 --hidden 256 --vocab 16384

Model: a random Qwen3 (``--layers``/``--hidden``/``--vocab``; 4 heads, 2 KV groups, head_dim 64, FFN 3 x hidden)
saved with ``save_pretrained`` and loaded through the actor (TP=1, DP=1, fp32 on CPU, distributed optimizer). A step
is ``MegatronActor.train`` on one global batch of ``--samples`` samples (prompt 64 tokens, responses of varied
lengths averaging ``--response-len``), packed into micro-batches of ``--micro-batch-size`` samples; the old-policy
log-prob pass is not timed (it is identical with the filter on or off). The learning rate is 0, so the weights,
and with them the work per step, do not drift between the timed steps.

Time: after ``--warmup`` steps of each, steps alternate off, on, off, on ... on the same actor (its loss rebound to
the filter-off or filter-on ``LossConfig`` before each step) and the medians are reported;
``overhead = median(on) / median(off) - 1``. Tokens/s counts all prompt + response tokens of the global batch.

Peak memory: each mode runs once more in a fresh subprocess with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (large
allocations are unmapped when freed, so resident memory tracks live tensors); after one warm-up step the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs``) and the extra peak of one step is ``VmHWM - VmRSS`` before it.
On CUDA, ``torch.cuda.max_memory_allocated`` is used instead.

Results: a table on stdout and JSON in ``benchmarks/results/train_step_<device>.json``.
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
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _init_world() -> None:
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def _save_model(out: Path, opts) -> Path:
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=opts.vocab, hidden_size=opts.hidden, intermediate_size=3 * opts.hidden,
        num_hidden_layers=opts.layers, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        tie_word_embeddings=False, initializer_range=0.05,
    )  # fmt: skip
    transformers.Qwen3ForCausalLM(config).save_pretrained(str(out))
    return out


def _samples(opts):
    from slime_entropy.megatron.batching import TrainSample

    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(opts.samples):
        response = int(torch.randint(opts.response_len // 2, opts.response_len * 3 // 2 + 1, (1,), generator=g))
        tokens = torch.randint(0, opts.vocab, (64 + response,), generator=g)
        out.append(TrainSample(tokens, response, torch.ones(response, dtype=torch.int64),
                          {"advantages": torch.randn(response, generator=g)}))  # fmt: skip
    return out


def _actor(hf_dir: Path, opts):
    """The actor (filter off) and its loss bound with the filter off and on: ``{False: ..., True: ...}``."""
    import torch.distributed as dist

    from slime_entropy.loss.config import LossConfig
    from slime_entropy.megatron.actor import MegatronActor
    from slime_entropy.megatron.arguments import add_actor_arguments
    from slime_entropy.megatron.config import MegatronConfig

    parser = add_actor_arguments(argparse.ArgumentParser())
    argv = [
        "--hf-checkpoint", str(hf_dir), "--global-batch-size", str(opts.samples), "--micro-batch-size",
        str(opts.micro_batch_size), "--lr", "0", "--make-vocab-size-divisible-by", "1", "--seed", "1",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    megatron = MegatronConfig.from_args(args, world_size=dist.get_world_size(), on_gpu=torch.cuda.is_available())
    actor = MegatronActor(megatron, LossConfig.from_args(args), num_total_steps=10_000)
    filtered = LossConfig.from_args(parser.parse_args(argv + ["--high-entropy-token-filter"]))
    return actor, {False: actor.loss, True: actor.bind_loss(filtered)}


def _step(actor, losses, samples, filter_on: bool) -> float:
    actor.loss = losses[filter_on]
    start = time.perf_counter()
    actor.train(0, samples)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_probe(hf_dir: Path, opts, filter_on: bool) -> int:
    """Extra peak bytes of one training step (fresh process, see module docstring)."""
    _init_world()
    actor, losses = _actor(hf_dir, opts)
    samples = _samples(opts)
    actor.compute_log_probs(samples)
    _step(actor, losses, samples, filter_on)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(actor, losses, samples, filter_on)
        return torch.cuda.max_memory_allocated() - base
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    _step(actor, losses, samples, filter_on)
    return (_status_kib("VmHWM") - base) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--response-len", type=int, default=384)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory-probe", choices=("off", "on"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if opts.memory_probe is not None:
        print(json.dumps({"peak_extra_bytes": _memory_probe(Path(opts.model_dir), opts, opts.memory_probe == "on")}))
        return

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = _save_model(Path(tmp) / "model", opts)
        _init_world()
        actor, losses = _actor(hf_dir, opts)
        samples = _samples(opts)
        num_tokens = sum(s.total_length for s in samples)
        actor.compute_log_probs(samples)
        for _ in range(opts.warmup):
            _step(actor, losses, samples, False)
            _step(actor, losses, samples, True)
        times = {False: [], True: []}
        for _ in range(opts.steps):
            for mode in (False, True):
                times[mode].append(_step(actor, losses, samples, mode))

        memory = {}
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        for mode in ("off", "on"):
            cmd = [sys.executable, __file__, "--memory-probe", mode, "--model-dir", str(hf_dir)] + sys.argv[1:]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            memory[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{os.cpu_count()}c"
    rows = []
    for mode, key in ((False, "off"), (True, "on")):
        median = statistics.median(times[mode])
        rows.append({"filter": key, "median_step_s": median, "tokens_per_s": num_tokens / median,
                     "peak_extra_mib": memory[key] / 2**20, "step_times_s": times[mode]})  # fmt: skip
    overhead = rows[1]["median_step_s"] / rows[0]["median_step_s"] - 1
    print(f"train step, {opts.layers} layers, hidden {opts.hidden}, vocab {opts.vocab}, {opts.samples} samples "
          f"({num_tokens} tokens), micro-batch {opts.micro_batch_size}, {device}, "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"{'filter':<8}{'median step (s)':>17}{'tokens/s':>12}{'peak extra (MiB)':>18}")
    for row in rows:
        print(
            f"{row['filter']:<8}{row['median_step_s']:>17.4f}{row['tokens_per_s']:>12.0f}{row['peak_extra_mib']:>18.1f}"
        )
    print(f"filter overhead: {overhead * 100:+.2f}% of step time (budget: <= 2%)")
    results = {
        "device": device, "platform": platform.platform(), "torch": torch.__version__, "options": vars(opts),
        "num_tokens": num_tokens, "rows": rows, "overhead": overhead,
    }  # fmt: skip
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "gpu" if torch.cuda.is_available() else "cpu"
    (out_dir / f"train_step_{name}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
