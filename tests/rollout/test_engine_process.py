"""Engine process lifecycle: start failures carry the log, stop takes the whole process group, orphans exit."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from slime_entropy.rollout.engine_process import EngineProcess, EngineStartError


def _gone(pid, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


def test_an_engine_that_exits_reports_its_log(tmp_path):
    proc = EngineProcess(
        0, lambda port: [sys.executable, "-c", f"print('cannot bind {port}'); raise SystemExit(3)"], log_dir=tmp_path
    )
    proc.start()
    with pytest.raises(EngineStartError, match=r"(?s)exited with code 3 before becoming healthy.*\ncannot bind \d+$"):
        proc.wait_healthy(timeout=30)


def test_an_engine_that_never_answers_is_stopped_at_the_timeout(tmp_path):
    proc = EngineProcess(0, lambda port: [sys.executable, "-c", "import time; time.sleep(120)"], log_dir=tmp_path)
    proc.start()
    started = time.monotonic()
    with pytest.raises(EngineStartError, match="not healthy after 1 s"):
        proc.wait_healthy(timeout=1.0, probe_timeout=0.2)
    assert time.monotonic() - started < 20 and not proc.is_alive()


def test_stop_takes_the_children_too(tmp_path):
    script = textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("CHILD-PID", child.pid, flush=True)
        time.sleep(120)
    """)
    proc = EngineProcess(0, lambda port: [sys.executable, "-c", script], log_dir=tmp_path)
    proc.start()
    deadline = time.monotonic() + 30
    lines = []
    while not lines and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = [line for line in proc.log_tail().splitlines() if line.startswith("CHILD-PID ")]
    child_pid = int(lines[0].split()[1])
    proc.stop(grace=2.0)
    assert not proc.is_alive() and _gone(child_pid)


def test_a_builtin_engine_exits_when_its_parent_dies(tiny_model_dir, tmp_path):
    script = textwrap.dedent(f"""
        import time
        from slime_entropy.rollout.engine_process import EngineProcess, builtin_engine_command
        proc = EngineProcess(0, lambda port: builtin_engine_command(model_path={str(tiny_model_dir)!r},
                             host="127.0.0.1", port=port, max_batch_size=4, num_threads=1, seed=0),
                             log_dir={str(tmp_path)!r})
        proc.start()
        proc.wait_healthy(timeout=180)
        print(proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        engine_pid = int(parent.stdout.readline())
        os.kill(engine_pid, 0)  # running
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs in the parent
        parent.wait(timeout=10)
        assert _gone(engine_pid, within=20), "the orphaned engine kept running"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
