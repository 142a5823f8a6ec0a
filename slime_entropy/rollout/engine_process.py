"""Engine server processes: launch, health wait, stop and restart (blocking calls; the pool runs them in threads).

    proc = EngineProcess(0, command_for_port=lambda port: [...argv...], host="127.0.0.1", log_dir=run_dir)
    proc.start(); proc.wait_healthy(timeout=600)      # raises EngineStartError with the log tail on failure
    proc.restart(timeout=600)                          # same port when it is free again, else a new one
    proc.stop()

Each engine runs in its own session (process group) so that stopping it also stops the processes it spawned
(SGLang's scheduler and detokenizer); only that group is signalled. Output goes to ``<log_dir>/engine-<i>.log``.
Built-in engines also get ``--parent-pid`` and exit on their own if this process dies without cleaning up.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["EngineProcess", "EngineStartError", "find_free_port", "builtin_engine_command", "child_env"]

logger = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """An engine exited or did not become healthy in time; the message carries the end of its log."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for our subprocesses: this process's ``sys.path`` on ``PYTHONPATH``, so whatever the parent can
    import (slime_entropy itself when not installed, user hooks given by dotted path) the child can import too."""
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **(extra or {})}


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host != "0.0.0.0" else "", 0))
        return s.getsockname()[1]


def builtin_engine_command(
    *,
    model_path: str,
    host: str,
    port: int,
    max_batch_size: int,
    num_threads: int,
    seed: int,
    weight_version: str = "default",
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "slime_entropy.rollout.engine_builtin",
        "--model-path",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--num-threads",
        str(num_threads),
        "--random-seed",
        str(seed),
        "--weight-version",
        weight_version,
        "--parent-pid",
        str(os.getpid()),
    ]


class EngineProcess:
    """One engine server we launched. Not thread-safe: one caller (the pool's restart logic) drives it."""

    def __init__(
        self,
        index: int,
        command_for_port: Callable[[int], list[str]],
        *,
        host: str = "127.0.0.1",
        log_dir: str | Path,
        env: dict[str, str] | None = None,
    ):
        self.index = index
        self.command_for_port = command_for_port
        self.host = host
        self.log_path = Path(log_dir) / f"engine-{index}.log"
        self.env = env
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.num_starts = 0

    @property
    def url(self) -> str:
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{connect_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, new_port: bool = False) -> None:
        assert not self.is_alive(), "engine already running"
        if self.port is None or new_port:
            self.port = find_free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command_for_port(self.port)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.num_starts} port {self.port}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=child_env(self.env),
            )
        self.num_starts += 1
        logger.info("engine %d: started pid %d on %s", self.index, self.proc.pid, self.url)

    def log_tail(self, num_lines: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-num_lines:])

    def probe(self, timeout: float) -> bool:
        """One ``GET /health``; True on HTTP 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float, probe_timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_alive():
                code = self.proc.returncode if self.proc is not None else None
                raise EngineStartError(
                    f"engine {self.index} exited with code {code} before becoming healthy; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.probe(min(probe_timeout, max(0.1, deadline - time.monotonic()))):
                return
            time.sleep(0.2)
        self.stop()
        raise EngineStartError(
            f"engine {self.index} not healthy after {timeout:.0f} s; log {self.log_path}:\n" f"{self.log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the engine's process group, then SIGKILL it after ``grace`` seconds."""
        if self.proc is None:
            return
        was_running = self.proc.poll() is None
        if was_running:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._signal_group(signal.SIGKILL)  # children that outlived their parent
        if was_running:
            logger.info("engine %d: stopped (exit code %s)", self.index, self.proc.returncode)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the group id is the pid: start_new_session=True
        except (ProcessLookupError, PermissionError):
            pass

    def restart(self, timeout: float, probe_timeout: float = 5.0) -> None:
        self.stop(grace=5.0)
        self.start()
        try:
            self.wait_healthy(timeout, probe_timeout)
        except EngineStartError:
            # The old port may still be held (TIME_WAIT, a lingering child); one more try on a fresh port.
            logger.warning("engine %d: restart on port %s failed; retrying on a new port", self.index, self.port)
            self.stop(grace=1.0)
            self.start(new_port=True)
            self.wait_healthy(timeout, probe_timeout)
