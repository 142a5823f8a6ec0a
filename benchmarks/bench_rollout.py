"""Built-in engine throughput on CPU, and the client's overhead against raw in-process generation, side by side.

    python benchmarks/bench_rollout.py [--new-tokens 64] [--repeats 5] [--threads 1]

For each batch size B in (1, 8, 32) the same work is timed two ways, interleaved repeat by repeat:

- raw:    ``BatchGenerator.generate`` on B requests in this process (no HTTP, no bookkeeping);
- client: the rollout's path: ``EnginePool.generate`` to one built-in engine process (max batch B, same threads),
          either one request per sample (as slime sends them) or one batched request per group of up to
          ``--group-size`` samples (as ``RolloutManager`` sends them), each answer applied to a ``Sample``.

Every response has exactly ``--new-tokens`` tokens (EOS ignored), so all paths do identical model work. The engine
reports its own generation time (``/get_server_info``), so each client call splits into generation and everything
the client path adds (HTTP, waiting for the burst of requests, JSON, routing, bookkeeping); the overhead is that
addition relative to the generation time, median over repeats paired call by call (robust to the load drift of a
shared machine). Target: <= 5 % at batch 32. Results go to ``benchmarks/results/rollout_cpu.json``. The model is
the tiny random Qwen3 of the tests (``--hidden-size`` etc. make it larger), built locally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slime_entropy.rollout.client import EnginePool, LoopThread  # noqa: E402
from slime_entropy.rollout.config import EngineConfig  # noqa: E402
from slime_entropy.rollout.generation import BatchGenerator, GenerationRequest  # noqa: E402
from slime_entropy.rollout.manager import apply_generate_output  # noqa: E402
from slime_entropy.rollout.sample import Sample  # noqa: E402
from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3  # noqa: E402

BATCH_SIZES = (1, 8, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--new-tokens",
        type=int,
        nargs="+",
        default=[64, 256],
        help="response lengths to measure; the target is checked on the longest",
    )
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both the engine and the raw run")
    parser.add_argument("--group-size", type=int, default=8, help="samples per request in the per-group mode")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "rollout_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        spec = TinyModelSpec(
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            intermediate_size=2 * args.hidden_size,
            head_dim=args.hidden_size // 4,
        )
        model_dir = save_tiny_qwen3(Path(tmp) / "model", spec)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        prompt = [(7 * i) % (len(tokenizer) - 10) + 3 for i in range(args.prompt_tokens)]
        raw_generator = BatchGenerator(model, tokenizer, seed=0)

        config = EngineConfig(
            backend="builtin",
            hf_checkpoint=str(model_dir),
            num_engines=1,
            builtin_max_batch_size=max(BATCH_SIZES),
            builtin_num_threads=args.threads,
            startup_timeout=300,
        )
        loop = LoopThread()
        pool = EnginePool.from_config(config, Path(tmp) / "logs")
        loop.run(pool.start(), timeout=600)
        try:
            rows = [
                _measure(batch, new_tokens, args, prompt, raw_generator, pool, loop)
                for new_tokens in args.new_tokens
                for batch in BATCH_SIZES
            ]
        finally:
            loop.run(pool.close(), timeout=60)
            loop.close()

    _print_table(rows, args)
    record = {
        "benchmark": "bench_rollout",
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1m": os.getloadavg()[0],
        },
        "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers, "vocab": len(tokenizer)},
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
        "rows": rows,
        "target": f"client overhead <= 5% of generation time at batch 32 ({max(args.new_tokens)} new tokens)",
        "target_met": rows[-1]["per_group_overhead_pct"] <= 5.0,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {args.output}")


def _server_stats(pool) -> dict:
    with urllib.request.urlopen(f"{pool.slots[0].url}/get_server_info", timeout=30) as response:
        return json.loads(response.read())


def _measure(batch, new_tokens, args, prompt, raw_generator, pool, loop) -> dict:
    def raw_once() -> float:
        requests = [GenerationRequest(input_ids=list(prompt), max_new_tokens=new_tokens) for _ in range(batch)]
        start = time.perf_counter()
        results = raw_generator.generate(requests)
        elapsed = time.perf_counter() - start
        assert all(len(r.output_ids) == new_tokens for r in results)
        return elapsed

    async def client_once(group_size: int) -> float:
        """The rollout's path: one batched /generate per group of ``group_size`` samples, answers applied to
        Samples (``group_size`` 1 = one request per sample, as slime sends them)."""
        samples = [Sample(index=i, group_index=i // group_size, prompt="", tokens=list(prompt)) for i in range(batch)]
        groups = [samples[i : i + group_size] for i in range(0, batch, group_size)]
        params = {"max_new_tokens": new_tokens, "temperature": 1.0, "ignore_eos": True, "no_stop_trim": True}

        async def one(group):
            outputs = await pool.generate(
                {"input_ids": [s.tokens for s in group], "sampling_params": params, "return_logprob": True}
            )
            for sample, output in zip(group, outputs, strict=True):
                apply_generate_output(sample, output)

        start = time.perf_counter()
        await asyncio.gather(*(one(g) for g in groups))
        elapsed = time.perf_counter() - start
        assert all(s.response_length == new_tokens for s in samples)
        return elapsed

    modes = {"per_sample": 1, "per_group": min(batch, args.group_size)}
    raw_once()  # warm-up every path
    for size in modes.values():
        loop.run(client_once(size), timeout=600)
    times: dict[str, list[float]] = {"raw": [], **{m: [] for m in modes}, **{f"{m}_engine": [] for m in modes}}
    for _ in range(args.repeats):  # interleaved, so machine-load drift hits all paths alike
        times["raw"].append(raw_once())
        for mode, size in modes.items():
            before = _server_stats(pool)
            times[mode].append(loop.run(client_once(size), timeout=600))
            times[f"{mode}_engine"].append(_server_stats(pool)["generate_seconds"] - before["generate_seconds"])
    tokens = batch * new_tokens
    best_raw = min(times["raw"])
    row = {
        "batch": batch,
        "new_tokens": new_tokens,
        "group_size": modes["per_group"],
        "raw_s": best_raw,
        "raw_tokens_per_s": tokens / best_raw,
        "times_s": times,
    }
    for mode in modes:
        # Paired per repeat: the client call's wall time minus the engine's own generation time inside that call
        # is everything the client path adds (HTTP, waiting for the burst, JSON, routing, bookkeeping). Pairing
        # cancels the load drift of a shared machine; the median of the pairs is reported.
        added = sorted(c - e for c, e in zip(times[mode], times[f"{mode}_engine"], strict=True))
        added_s = added[len(added) // 2]
        engine_s = sorted(times[f"{mode}_engine"])[len(added) // 2]
        row[f"{mode}_s"] = min(times[mode])
        row[f"{mode}_engine_generate_s"] = engine_s
        row[f"{mode}_tokens_per_s"] = tokens / min(times[mode])
        row[f"{mode}_overhead_s"] = added_s
        row[f"{mode}_overhead_pct"] = 100.0 * added_s / engine_s
        row[f"{mode}_overhead_ms_per_sample"] = 1000.0 * added_s / batch
    return row


def _print_table(rows, args) -> None:
    print(
        f"\nbuilt-in engine on CPU: prompt {args.prompt_tokens} tokens, {args.threads} torch thread(s), "
        f"{args.repeats} interleaved repeats"
    )
    print(
        "raw = BatchGenerator in this process (best repeat); client = the rollout path: HTTP to one engine process, "
        f"one request per sample or per group of up to {args.group_size}; overhead = client wall time minus the "
        "engine's own generation time in that call (median of paired repeats), relative to the latter"
    )
    header = (
        f"{'new tok':>7} | {'batch':>5} | {'raw tok/s':>9} | {'per-sample tok/s':>16} | {'overhead':>8} | "
        f"{'ms/sample':>9} | {'per-group tok/s':>15} | {'overhead':>8} | {'ms/sample':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['new_tokens']:>7} | {r['batch']:>5} | {r['raw_tokens_per_s']:>9.0f} | "
            f"{r['per_sample_tokens_per_s']:>16.0f} | {r['per_sample_overhead_pct']:>7.1f}% | "
            f"{r['per_sample_overhead_ms_per_sample']:>9.2f} | {r['per_group_tokens_per_s']:>15.0f} | "
            f"{r['per_group_overhead_pct']:>7.1f}% | {r['per_group_overhead_ms_per_sample']:>9.2f}"
        )


if __name__ == "__main__":
    main()
