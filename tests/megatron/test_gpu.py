"""GPU (NCCL) checks of the Megatron actor; skipped without CUDA. See ``_gpu_smoke.py`` for what is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_actor_on_one_gpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tests.megatron._gpu_smoke", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
