"""Stop the driver's own Ray instance when the driver dies without stopping it (SIGKILL, the OOM killer).

    reaper = RayReaper.start()       # right after ray.init started a local instance
    ...
    reaper.release()                 # after ray.shutdown(): the driver stopped Ray itself

A local Ray instance is the driver's child processes (GCS, raylet, monitors) and theirs (the dashboard and runtime-env
agents, the workers, and the engines our actors start). Killed by a signal it cannot catch, the driver runs no
teardown; Ray's processes notice the lost driver only after their own timeouts, the agents a minute or two later.

The reaper is a small process in a session of its own (a terminal's Ctrl-C to the driver's process group does not
reach it) that holds the read end of a pipe whose only writer is the driver. End of file without the word "release"
means the driver died: it then kills, with SIGKILL, each Ray process the driver had started (recorded with its start
time, so a reused process id is never hit) together with every process below it, and exits. Joining an existing
cluster (``RAY_ADDRESS``) starts no reaper: that cluster is not the driver's to stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["RayReaper"]

_RELEASE = b"release\n"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class RayReaper:
    def __init__(self, process: subprocess.Popen, pipe: int):
        self.process, self._pipe = process, pipe

    @classmethod
    def start(cls) -> RayReaper | None:
        """Record the driver's child processes (the Ray instance ``ray.init`` just started) and start the reaper."""
        import psutil

        children = []
        for child in psutil.Process().children():
            try:
                children.append(f"{child.pid}:{child.create_time()!r}")
            except psutil.Error:
                continue
        if not children:
            return None
        read_end, write_end = os.pipe()  # both not inheritable: Ray's processes never hold the write end
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "slime_entropy.trainer.ray_reaper", *children],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)},
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


def _kill_trees(recorded: list[tuple[int, float]]) -> int:
    import psutil

    victims: dict[int, psutil.Process] = {}
    for pid, created in recorded:
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


def main(argv: list[str]) -> int:
    recorded = [(int(pid), float(created)) for pid, created in (item.split(":", 1) for item in argv)]
    received = b""
    while True:
        try:
            chunk = os.read(0, 64)
        except InterruptedError:
            continue
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
    sys.exit(main(sys.argv[1:]))
