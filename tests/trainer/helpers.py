"""Running ``train.py`` as a user does (a subprocess), watching its run directory, and never leaving processes behind.

``TrainRun`` starts the driver in its own session (process group), so a test can signal it like a terminal's Ctrl-C
(``interrupt``) and always kill everything it started (``kill``), Ray's local instance included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def token_fraction_reward(args, sample) -> float:
    """A deterministic, non-trivial reward for random tiny models: the fraction of response tokens with id < 160.

    Groups almost never agree on it, so GRPO advantages (and gradients) are non-zero on every step."""
    tokens = sample.response_tokens
    return sum(t < 160 for t in tokens) / max(len(tokens), 1)


GATE_ENV = "SLIME_ENTROPY_TEST_GATE"


def gated_reward(args, sample) -> float:
    """``token_fraction_reward``, held back while the file named by ``$SLIME_ENTROPY_TEST_GATE`` exists and holds a
    rollout id <= this sample's rollout (16 samples per rollout in these tests). The test uses it to stop a run at
    a known point (the driver then waits on the rollout worker) and hit it there, whatever the machine's speed."""
    gate = os.environ.get(GATE_ENV)
    if gate and sample.index >= 0:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                held_from = int(Path(gate).read_text())
            except (FileNotFoundError, ValueError):
                break
            if sample.index // 16 < held_from:
                break
            time.sleep(0.1)
    return token_fraction_reward(args, sample)


def write_prompts(path: Path, num: int, offset: int = 0) -> Path:
    rows = [
        {"prompt": f"Add {i} and {i + 1}, then say why.", "label": str(2 * i + 1), "metadata": {"id": i}}
        for i in range(offset, offset + num)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rollout_ids(run_dir: Path) -> list[int]:
    return [r["rollout_id"] for r in read_metrics(run_dir) if "rollout/raw_reward" in r]


class TrainRun:
    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()/kill()
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # local Ray unless env says so
        full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *argv],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"train.py did not finish within {timeout:.0f} s; output:\n{self.output[-4000:]}"
            ) from None
        self._log.close()
        return code

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"train.py exited ({self.proc.returncode}) before {what}:\n{self.output[-4000:]}")
            time.sleep(0.5)
        self.kill()
        raise AssertionError(f"timed out waiting for {what}; output:\n{self.output[-4000:]}")

    def interrupt(self) -> None:
        """Ctrl-C in a terminal: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        if not self._log.closed:
            self._log.close()


def processes(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "processes.json").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.5)
    return [p for p in pids if alive(p)]
