"""Top-fraction threshold: radix select vs torch.quantile / kthvalue / topk / sort, and radix vs all-gather on gloo.

    python benchmarks/bench_selection.py            # a few minutes on a 2-core CPU
    python benchmarks/bench_selection.py --quick    # smaller sizes, fewer repetitions (smoke run)

Local part: x = 6 * U^4 (entropy-like, many values near 0), rho = 0.2 (quantile q = 0.8); each method is timed
in interleaved rounds (one call of every method per round), median of the rounds. "exact" compares the
returned threshold bit for bit with torch.topk(x, k).values[-1], k = ceil(rho * N). quantile uses
interpolation="lower" at q = 1 - rho and raises above 2^24 elements ("fails").

Distributed part: one gloo world per W (2 and 4 processes on this machine), N values per rank. The collectives are
counted by wrapping slime_entropy.collectives: "rounds" = collective calls per selection, "bytes/rank" = the bytes of
each call's result buffer on one rank (for all-gathers: everything received, own share included). Time = median
over interleaved repetitions of the slowest rank's wall time, ranks aligned by a barrier before every call.

Prints tables and writes benchmarks/results/selection_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slime_entropy import collectives  # noqa: E402
from slime_entropy.ops.selection import num_kept_for, radix_select, select_top_fraction  # noqa: E402
from tests.distributed import run_world  # noqa: E402

RHO = 0.2
RESULTS = Path(__file__).resolve().parent / "results" / "selection_cpu.json"


def entropy_like(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 6 * torch.rand(n, generator=gen) ** 4


def bits_of(t: torch.Tensor) -> int:
    t = torch.where(t == 0, torch.zeros_like(t), t)
    return int(t.reshape(()).view(torch.int32))


# ---------------------------------------------------------------------------------------------------------------
# Local selection
# ---------------------------------------------------------------------------------------------------------------


def local_methods(x: torch.Tensor, k: int) -> dict:
    n = x.numel()
    # On CPU "radix" drops non-candidates between rounds; "radix no-compact" is the accelerator path (trash bins,
    # full passes). On CUDA "radix" is that path already, and "radix no-sync" skips the final NaN/Inf check.
    other_radix = (
        ("radix no-compact", lambda: radix_select([x], RHO, compact=False)[0])
        if x.device.type == "cpu"
        else ("radix no-sync", lambda: radix_select([x], RHO)[0])
    )
    return {
        "radix": lambda: select_top_fraction(x, RHO, None).threshold,
        other_radix[0]: other_radix[1],
        "quantile": lambda: torch.quantile(x, 1 - RHO, interpolation="lower"),
        "kthvalue": lambda: torch.kthvalue(x, n - k + 1).values,
        "topk sorted": lambda: torch.topk(x, k).values[-1],
        "topk unsorted": lambda: torch.topk(x, k, sorted=False).values.min(),
        "sort": lambda: torch.sort(x, descending=True).values[k - 1],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_local(sizes: list[int], reps: int, device: torch.device) -> list[dict]:
    rows = []
    for n in sizes:
        x = entropy_like(n, seed=n).to(device)
        k = num_kept_for(n, RHO)
        reference = bits_of(torch.topk(x, k, sorted=False).values.min())
        methods = local_methods(x, k)
        times: dict[str, list[float]] = {name: [] for name in methods}
        exact: dict[str, bool | None] = {}
        for name, fn in methods.items():  # warm-up, exactness, and find which ones fail
            try:
                exact[name] = bits_of(fn()) == reference
            except RuntimeError as error:
                exact[name] = None
                times[name] = []
                print(f"  n={n}: {name} fails: {error}", flush=True)
        for _ in range(reps):
            for name, fn in methods.items():
                if exact[name] is None:
                    continue
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
        row = {"n": n, "k": k, "methods": {}}
        for name in methods:
            ms = statistics.median(times[name]) * 1e3 if times[name] else None
            row["methods"][name] = {"median_ms": ms, "exact": exact[name], "runs_ms": [t * 1e3 for t in times[name]]}
        rows.append(row)
        print_local([row])
    return rows


def print_local(rows: list[dict]) -> None:
    names = list(rows[0]["methods"])
    print("| n | " + " | ".join(names) + " | radix / quantile |")
    print("|---" * (len(names) + 2) + "|")
    for row in rows:
        cells = []
        for name in names:
            m = row["methods"][name]
            if m["median_ms"] is None:
                cells.append("fails")
            else:
                cells.append(f"{m['median_ms']:.1f} ms{'' if m['exact'] else ' (inexact)'}")
        q = row["methods"]["quantile"]["median_ms"]
        ratio = f"{row['methods']['radix']['median_ms'] / q:.3f}x" if q else "quantile fails"
        print(f"| {row['n']:,} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Distributed selection on gloo
# ---------------------------------------------------------------------------------------------------------------


class _Counter:
    """Wraps the collectives of slime_entropy.collectives (every torch.distributed call goes through them),
    counting calls and the bytes of each call's result on this rank."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0
        self.active = False
        for name in ("all_reduce_sum_", "all_reduce_max_", "all_gather_stacked"):
            setattr(collectives, name, self._wrap(getattr(collectives, name)))

    def _wrap(self, original):
        def wrapped(tensor, group):
            result = original(tensor, group)
            if self.active and collectives.group_size(group) > 1:
                self.calls += 1
                self.bytes += result.numel() * result.element_size()
            return result

        return wrapped

    def measure(self, fn):
        self.calls = self.bytes = 0
        self.active = True
        try:
            out = fn()
        finally:
            self.active = False
        return out, self.calls, self.bytes


def _dist_worker(rank: int, world_size: int, sizes: list[int], reps: int) -> list[dict]:
    counter = _Counter()
    group = dist.new_group(list(range(world_size)))
    rows = []
    for n in sizes:
        values = entropy_like(n, seed=1000 * n + rank)
        out = {}
        for method in ("radix", "allgather"):
            result, calls, num_bytes = counter.measure(
                lambda m=method, v=values: select_top_fraction(v, RHO, group, method=m)
            )
            out[method] = {"threshold_bits": bits_of(result.threshold), "num_kept": int(result.num_kept),
                           "rounds": calls, "bytes_per_rank": num_bytes, "times": []}  # fmt: skip
        for _ in range(reps):
            for method in ("radix", "allgather"):
                dist.barrier(group)
                start = time.perf_counter()
                select_top_fraction(values, RHO, group, method=method)
                out[method]["times"].append(time.perf_counter() - start)
        rows.append({"n_per_rank": n, **out})
    return rows


def bench_distributed(worlds: list[int], sizes: list[int], reps: int) -> list[dict]:
    rows = []
    for world_size in worlds:
        per_rank = run_world(_dist_worker, world_size, args=(sizes, reps), timeout=600)
        for i, n in enumerate(sizes):
            row = {"world_size": world_size, "n_per_rank": n}
            for method in ("radix", "allgather"):
                mine = [r[i][method] for r in per_rank]
                slowest = [max(ts) for ts in zip(*(m["times"] for m in mine), strict=True)]
                row[method] = {
                    "rounds": mine[0]["rounds"],
                    "bytes_per_rank": mine[0]["bytes_per_rank"],
                    "median_ms": statistics.median(slowest) * 1e3,
                    "threshold_bits": mine[0]["threshold_bits"],
                    "num_kept": mine[0]["num_kept"],
                    "identical_on_all_ranks": all(m["threshold_bits"] == mine[0]["threshold_bits"] for m in mine),
                }
            row["methods_agree"] = (
                row["radix"]["threshold_bits"] == row["allgather"]["threshold_bits"]
                and row["radix"]["num_kept"] == row["allgather"]["num_kept"]
            )
            rows.append(row)
    print_distributed(rows)
    return rows


def _kib(num_bytes: int) -> str:
    return f"{num_bytes / 1024:,.1f} KiB"


def print_distributed(rows: list[dict]) -> None:
    print("| W | N/rank | radix rounds | radix bytes/rank | radix ms | all-gather rounds | all-gather bytes/rank "
          "| all-gather ms | agree |")  # fmt: skip
    print("|---" * 9 + "|")
    for row in rows:
        r, a = row["radix"], row["allgather"]
        print(
            f"| {row['world_size']} | {row['n_per_rank']:,} | {r['rounds']} | {_kib(r['bytes_per_rank'])} | "
            f"{r['median_ms']:.2f} | {a['rounds']} | {_kib(a['bytes_per_rank'])} | {a['median_ms']:.2f} | "
            f"{'yes' if row['methods_agree'] and r['identical_on_all_ranks'] else 'NO'} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 repetitions (smoke run)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5, quick 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default; also runs the gloo part) or cuda (local only)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/selection_<device>.json)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = args.reps or (3 if args.quick else 5)
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        local_sizes = [2**16, 2**20] if args.quick else [2**20, 2**24, 2**24 + 1]
    else:
        local_sizes = [2**20, 2**24] if args.quick else [2**18, 2**20, 2**24, 2**24 + 1, 2**26]
    dist_sizes = [2**14, 2**16] if args.quick else [2**16, 2**18, 2**20]
    dist_reps = 5 if args.quick else 15

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {name}, load average {os.getloadavg()}")
    print(f"\nLocal selection on {device.type}, rho = {RHO}, median of {reps} interleaved runs")
    local = bench_local(local_sizes, reps, device)
    distributed = []
    if device.type == "cpu":
        print(f"\nDistributed selection on gloo loopback, median of {dist_reps} interleaved runs (slowest rank)")
        distributed = bench_distributed([2, 4], dist_sizes, dist_reps)

    out = args.out or RESULTS.with_name(f"selection_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "device": name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "rho": RHO,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out.write_text(json.dumps({"meta": meta, "local": local, "distributed": distributed}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
