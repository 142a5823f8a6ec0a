"""Every shell script of the launch layer parses (bash -n) and passes shellcheck; run scripts are executable."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.launch.helpers import REPO

SCRIPTS = sorted(
    p for pattern in ("scripts/**/*.sh", "scripts/**/*.sbatch", "examples/**/*.sh") for p in REPO.glob(pattern)
)
RUNNABLE = [p for p in SCRIPTS if p.read_text().startswith("#!")]


def test_the_launch_scripts_are_all_found():
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    for expected in (
        "scripts/models/qwen3-8B.sh",
        "scripts/slurm/slime_entropy.sbatch",
        "scripts/slurm/ray_node.sh",
        "scripts/ci/slurm_stage.sh",
        "examples/high_entropy/common.sh",
        "examples/high_entropy/run-qwen3-32B.sh",
    ):
        assert expected in names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_bash_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", RUNNABLE, ids=lambda p: p.relative_to(REPO).as_posix())
def test_runnable_scripts_are_executable(script):
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(REPO)}"


def test_shellcheck_passes():
    if shutil.which("shellcheck") is None:
        if os.environ.get("SLIME_ENTROPY_REQUIRE_SHELLCHECK") == "1":
            pytest.fail("SLIME_ENTROPY_REQUIRE_SHELLCHECK=1 but shellcheck is not installed")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; scripts/ci/slurm_stage.sh does)")
    result = subprocess.run(
        ["shellcheck", "--external-sources", "--severity=style", *(str(p.relative_to(REPO)) for p in SCRIPTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
