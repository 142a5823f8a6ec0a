"""The interim main job (README's first command) runs end to end and prints its table."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.multiprocess


def test_demo_runs_and_reports_the_filter():
    done = subprocess.run(
        [sys.executable, "-m", "slime_entropy.demo", "--steps", "2", "--rho", "0.2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("all tokens", "top 20%"))]
    assert len(lines) == 2
    ratio = float(lines[1].split()[2])
    assert 0.2 <= ratio < 0.25
