"""The multi-node sbatch script on a real (one-node, CPU) Slurm: success, failure and scancel, each torn down.

Needs Debian's slurm-wlm and munge and root (scripts/ci/slurm_stage.sh installs them and runs this file); skipped
with the reason otherwise, unless SLIME_ENTROPY_REQUIRE_SLURM=1 (the CI stage), where a missing Slurm fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.launch.helpers import REPO
from tests.launch.slurm_cluster import SlurmCluster, slurm_available

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SBATCH = "scripts/slurm/slime_entropy.sbatch"
JOB_TIMEOUT = 240
TRAIN_TIMEOUT = 480

# Runs on the cluster as the training command: a Ray task on a cluster node reports its environment.
PROBE = r"""
import json, os, ray
ray.init()
@ray.remote
def probe():
    import socket
    keys = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "MASTER_ADDR")
    return {"host": socket.gethostname(), **{k: os.environ.get(k) for k in keys}}
nodes = [n for n in ray.nodes() if n["Alive"]]
report = {
    "driver": {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MASTER_ADDR", "NUM_NODES", "GPUS_PER_NODE")},
    "task": ray.get(probe.remote()),
    "nodes": len(nodes),
}
print("PROBE " + json.dumps(report), flush=True)
ray.shutdown()
"""

SLEEPER = r"""
import signal, sys, time
def stop(*_):
    print("driver got SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("sleeping", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    usable, reason = slurm_available()
    if usable and shutil.which("ray") is None:
        usable, reason = False, "the ray command is not installed (pip install -e '.[test]')"
    if not usable:
        if os.environ.get("SLIME_ENTROPY_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLIME_ENTROPY_REQUIRE_SLURM=1 but the Slurm tests cannot run: {reason}")
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _submit(slurm: SlurmCluster, tmp_path: Path, command: list[str]) -> tuple[str, Path, Path]:
    log_dir = tmp_path / "logs"
    out = tmp_path / "sbatch.out"
    # A home with a Ray auth token, as any earlier local ray.init() leaves one: `ray start` then turns token auth on
    # (Ray >= 2.5x), which the job must handle.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(os.urandom(16).hex())
    env = {
        "HOME": str(home),
        "SE_LOG_DIR": str(log_dir),
        "PYTHON": sys.executable,
        "RAY": shutil.which("ray"),
        "SE_STOP_TIMEOUT": "30",
    }
    job = slurm.submit([SBATCH, *command], options=["--nodes=1", "--gpus-per-node=0", f"--output={out}"], cwd=REPO,
                       env=env)  # fmt: skip
    return job, log_dir, out


def _assert_torn_down(job: str, log_dir: Path, out: Path, node: str) -> None:
    text = out.read_text()
    assert "teardown complete" in text, text
    head_log = (log_dir / f"ray-head-{node}.log").read_text()
    assert "ray_node.sh" in head_log and "stopped" in head_log, head_log
    assert (log_dir / "ray" / node / "raylet.out").is_file() or (log_dir / "ray" / node / "raylet.err").is_file()
    assert not Path(f"/tmp/ray_se_{job}").exists(), "the Ray temp dir was not removed"
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"ray_se_{job}" in cmdline:
                leftovers.append(f"{proc.name}: {cmdline[:200]}")
    assert not leftovers, "processes of the job's Ray cluster survived:\n" + "\n".join(leftovers)


def test_sbatch_runs_a_driver_against_its_ray_cluster(slurm, tmp_path):
    job, log_dir, out = _submit(slurm, tmp_path, [sys.executable, "-c", PROBE])
    state, exit_code = slurm.wait(job, timeout=JOB_TIMEOUT)
    assert (state, exit_code) == ("COMPLETED", "0:0"), out.read_text() + slurm.logs()
    train_log = (log_dir / "train.log").read_text()
    report = json.loads(next(line for line in train_log.splitlines() if line.startswith("PROBE "))[6:])
    head_ip = report["driver"]["MASTER_ADDR"]
    assert report["driver"]["RAY_ADDRESS"].startswith(head_ip + ":")
    assert report["driver"]["NUM_NODES"] == "1" and report["driver"]["GPUS_PER_NODE"] == "0"
    assert report["nodes"] == 1
    task = report["task"]
    assert task["MASTER_ADDR"] == head_ip
    assert task["GLOO_SOCKET_IFNAME"] and task["GLOO_SOCKET_IFNAME"] == task["NCCL_SOCKET_IFNAME"]
    assert "the command finished successfully" in out.read_text()
    _assert_torn_down(job, log_dir, out, slurm.node)


def test_a_failing_command_fails_the_job_and_tears_down(slurm, tmp_path):
    job, log_dir, out = _submit(slurm, tmp_path, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    state, exit_code = slurm.wait(job, timeout=JOB_TIMEOUT)
    assert (state, exit_code) == ("FAILED", "3:0"), out.read_text()
    text = out.read_text()
    assert "the command failed with status 3" in text and "boom" in text
    _assert_torn_down(job, log_dir, out, slurm.node)


def test_scancel_stops_the_command_and_the_cluster(slurm, tmp_path):
    job, log_dir, out = _submit(slurm, tmp_path, [sys.executable, "-c", SLEEPER])
    train_log = log_dir / "train.log"
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (train_log.is_file() and "sleeping" in train_log.read_text()):
        state = slurm.job_field(job, "JobState")
        assert state in ("PENDING", "RUNNING"), f"job {state} before the command started:\n{out.read_text()}"
        assert time.monotonic() < deadline, f"the command did not start within {JOB_TIMEOUT} s"
        time.sleep(1)
    slurm.run("scancel", job)
    state, _ = slurm.wait(job, timeout=JOB_TIMEOUT)
    assert state == "CANCELLED"
    text = out.read_text()
    assert "received a termination signal" in text, text
    assert "driver got SIGTERM" in train_log.read_text()
    _assert_torn_down(job, log_dir, out, slurm.node)


@pytest.mark.skipif(not (REPO / "train.py").is_file(), reason="train.py is not in the repository")
def test_sbatch_runs_train_py_embedded_default_on_cpu(slurm, tmp_path):
    """train.py's built-in default task, shortened to 2 rollouts (and a 20-step warm-up of its tiny model)."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "train.py", "--num-rollout", "2", "--embedded-sft-steps", "20", "--run-dir", str(run_dir),
        "--embedded-cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    job, log_dir, out = _submit(slurm, tmp_path, command)
    state, exit_code = slurm.wait(job, timeout=TRAIN_TIMEOUT)
    train_log = (log_dir / "train.log").read_text() if (log_dir / "train.log").is_file() else "(no train.log)"
    assert (state, exit_code) == ("COMPLETED", "0:0"), out.read_text() + train_log[-5000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in records if r["rollout_id"] >= 0]  # rollout -1: the evaluation before training
    assert [r["rollout_id"] for r in trained] == [0, 1], records
    assert all("rollout/raw_reward" in r and "train/entropy_token_ratio" in r for r in trained), trained
    # it ran on the job's cluster, not a private one: the cluster's logs show a second driver (the first is the
    # readiness wait) and worker processes of that job
    ray_logs = log_dir / "ray" / slurm.node
    assert len(list(ray_logs.glob("python-core-driver-*"))) >= 2
    assert list(ray_logs.glob("worker-*-02000000-*.out")), sorted(p.name for p in ray_logs.iterdir())
    _assert_torn_down(job, log_dir, out, slurm.node)
