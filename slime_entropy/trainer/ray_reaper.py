"""Stop the driver's own Ray instance when the driver dies without stopping it (SIGKILL, the OOM killer).

    reaper = RayReaper.start()       # right after ray.init started a local instance
    ...
    reaper.release()                 # after ray.shutdown(): the driver stopped Ray itself

A local Ray instance is the driver's child processes (GCS, raylet, monitors) and theirs (the dashboard and runtime-env
agents, the workers, and the engines and graders our actors start). Killed by a signal it cannot catch, the driver
runs no teardown; GCS and raylet follow it at once, but the agents they leave behind notice only after their own
timeouts (a minute or two), and by then they are orphans no process tree leads to.

So the reaper, a small process in a session of its own (a terminal's Ctrl-C to the driver's process group does not
reach it), keeps a list of every process below the driver, refreshed every :data:`SNAPSHOT_INTERVAL_S` seconds,
each with its start time (a reused process id is never hit). It holds the read end of a pipe whose only writer is
the driver: end of file without the word "release" means the driver died, and it kills (SIGKILL) every listed
process still running and every process below those, then exits. Joining an existing cluster (``RAY_ADDRESS``)
starts no reaper: that cluster is not the driver's to stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["RayReaper"]

_RELEASE = b"release\n"
SNAPSHOT_INTERVAL_S = 1.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class RayReaper:
    def __init__(self, process: subprocess.Popen, pipe: int):
        self.process, self._pipe = process, pipe

    @classmethod
    def start(cls) -> RayReaper:
        """Start the reaper of this (the driver's) process tree."""
        read_end, write_end = os.pipe()  # neither end inheritable: Ray's processes never hold the write end
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "slime_entropy.trainer.ray_reaper", str(os.getpid())],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": _pythonpath()},
            )
        finally:
            os.close(read_end)
        return cls(process, write_end)

    def release(self) -> None:
        """The driver stopped Ray itself: the reaper exits without killing anything."""
        try:
            os.write(self._pipe, _RELEASE)
        except OSError:
            pass
        os.close(self._pipe)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))


def _snapshot(driver) -> dict[int, float]:
    """Every process below the driver (but the reaper) with its start time."""
    import psutil

    found = {}
    for process in driver.children(recursive=True):
        if process.pid == os.getpid():
            continue
        try:
            found[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return found


def _kill_trees(recorded: dict[int, float]) -> int:
    import psutil

    victims: dict[int, psutil.Process] = {}
    for pid, created in recorded.items():
        try:
            root = psutil.Process(pid)
            if abs(root.create_time() - created) > 1e-3:
                continue  # the id now belongs to another process
            for process in [root, *root.children(recursive=True)]:
                victims[process.pid] = process
        except psutil.Error:
            continue
    for process in victims.values():
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(victims.values()), timeout=10)
    return len(victims)


def main(driver_pid: int) -> int:
    import select

    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return 0
    recorded: dict[int, float] = {}
    received = b""
    while True:
        ready, _, _ = select.select([0], [], [], SNAPSHOT_INTERVAL_S)
        if not ready:
            try:
                recorded.update(_snapshot(driver))  # keep the dead too: their children may outlive them
            except psutil.Error:
                pass
            continue
        chunk = os.read(0, 64)
        if not chunk:
            break
        received += chunk
    if received == _RELEASE:
        return 0
    _kill_trees(recorded)
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's end of the pipe decides
    sys.exit(main(int(sys.argv[1])))
