"""A small pool of grading processes with a hard per-task time limit.

Why processes: math-verify's timeouts use ``SIGALRM`` and only work in a process's main thread, and a pathological
expression (``10^{10^{10^{10}}}``) can hold the GIL for minutes. Each task runs in a worker's main thread; if a task
outlives its limit the worker is killed and replaced, and the call raises :class:`GradingTimeout`. Other workers and
their tasks are unaffected.

    pool = GradingPool(num_workers=2)
    result = pool.run("slime_entropy.rollout.rewards.grading.rule_based_reward", ("math", text, "3"), {}, timeout=10)
    pool.close()

``run`` is blocking and thread-safe (call it from ``asyncio.to_thread``); at most ``num_workers`` tasks run at once.
Workers are started lazily as fresh interpreters (``python -m slime_entropy.rollout.rewards.worker``: safe in a
threaded parent, and the caller's ``__main__`` is never re-imported) and exit by themselves when the parent's end
of their pipe closes, so they do not outlive a parent that dies.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from slime_entropy.rollout.engine_process import child_env

__all__ = ["GradingPool", "GradingTimeout", "GradingError", "load_function"]

logger = logging.getLogger(__name__)


class GradingTimeout(TimeoutError):
    """A task exceeded its time limit; its worker was killed."""


class GradingError(RuntimeError):
    """A task raised in the worker; the message carries the worker's traceback."""


def load_function(path: str):
    """Import ``pkg.module.fn`` (split at the last dot), like slime's ``load_function``."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted path of the form package.module.function")
    return getattr(importlib.import_module(module_name), attr)


class _Worker:
    """A grading process started as ``python -m slime_entropy.rollout.rewards.worker`` (never re-imports the
    caller's ``__main__``, unlike multiprocessing's spawn), talking over two inherited pipes."""

    def __init__(self):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slime_entropy.rollout.rewards.worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)

    def send(self, message) -> None:
        self._send.send(message)

    def poll(self, timeout: float) -> bool:
        return self._recv.poll(timeout)

    def recv(self):
        return self._recv.recv()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self._send.close()
        self._recv.close()

    def shutdown(self, timeout: float = 2.0) -> None:
        try:
            self._send.send(None)
        except OSError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class GradingPool:
    def __init__(self, num_workers: int = 2, *, kill_grace_seconds: float = 2.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.kill_grace_seconds = kill_grace_seconds
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        self._lock = threading.Lock()
        self._num_started = 0
        self._closed = False
        self.num_killed = 0

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("GradingPool is closed")
            if self._idle.empty() and self._num_started < self.num_workers:
                self._num_started += 1
                return _Worker()
        worker = self._idle.get()
        if worker is None:
            raise RuntimeError("GradingPool is closed")
        return worker

    def run(self, fn_path: str, args: tuple = (), kwargs: dict[str, Any] | None = None, *, timeout: float) -> Any:
        """Run ``fn_path(*args, **kwargs)`` in a worker; raise ``GradingTimeout``/``GradingError`` on failure."""
        worker = self._checkout()
        try:
            worker.send((fn_path, args, kwargs or {}))
            deadline = time.monotonic() + timeout + self.kill_grace_seconds
            answer = None
            died = False
            while time.monotonic() < deadline:
                if worker.poll(max(0.0, min(1.0, deadline - time.monotonic()))):
                    try:
                        answer = worker.recv()
                    except (EOFError, OSError):  # the worker died (its end of the pipe closed)
                        died = True
                    break
                if not worker.is_alive():
                    died = True
                    break
            if answer is not None:
                self._idle.put(worker)
                worker = None
                status, payload = answer
                if status == "error":
                    raise GradingError(payload)
                return payload
            timed_out = not died and worker.is_alive()
            self._replace(worker)
            worker = None
            if timed_out:
                raise GradingTimeout(f"{fn_path} exceeded {timeout:.1f} s (+{self.kill_grace_seconds:.1f} s grace)")
            raise GradingError(f"grading worker died while running {fn_path}")
        except BaseException:
            if worker is not None:  # the pipe broke or we were interrupted mid-task: do not reuse this worker
                self._replace(worker)
            raise

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.num_killed += 1
        with self._lock:
            if self._closed:
                self._num_started -= 1
                return
        self._idle.put(_Worker())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        drained = []
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            if worker is not None:
                drained.append(worker)
        for worker in drained:
            worker.shutdown()
        for _ in range(self.num_workers):
            self._idle.put(None)  # wake any thread still waiting in _checkout

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
