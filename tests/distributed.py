"""Run a function on a small gloo world of CPU processes and collect what each rank returns.

    results = run_world(worker, world_size=4, args=(...,))

``worker(rank, world_size, *args)`` must be a module-level function (it is pickled into spawned processes). The
default process group is initialised before it runs and destroyed afterwards. Whatever it returns (tensors,
numbers, dicts of those) comes back in rank order. An exception on any rank fails the call with that rank's
traceback; a world that does not finish within ``timeout`` seconds is killed and reported as a hang.
"""

from __future__ import annotations

import io
import os
import queue
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, results, threads):
    torch.set_num_threads(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        out = fn(rank, world_size, *args)
        # serialise by value: torch's multiprocessing reductions would share tensor storage with a process that
        # is about to exit
        buffer = io.BytesIO()
        torch.save(out, buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # noqa: B036 - report everything, including SystemExit, to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_world(fn, world_size: int, args: tuple = (), timeout: float = 180.0) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // world_size)
    procs = [
        # not daemonic: workers may start processes of their own (megatron's checkpoint writer does)
        ctx.Process(target=_entry, args=(rank, world_size, port, fn, args, results, threads))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    collected: dict[int, object] = {}
    errors: list[str] = []
    try:
        while len(collected) + len(errors) < world_size:
            try:
                rank, status, payload = results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"gloo world of {world_size} did not finish within {timeout:.0f}s (a rank skipped a "
                    f"collective?); finished ranks: {sorted(collected)}"
                ) from None
            if status == "ok":
                collected[rank] = torch.load(io.BytesIO(payload), weights_only=True)
            else:
                errors.append(f"--- rank {rank} ---\n{payload}")
                break  # the other ranks may now wait forever on a collective
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.1)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("a rank failed:\n" + "\n".join(errors))
    return [collected[r] for r in range(world_size)]
