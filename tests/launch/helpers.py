"""train.py's parser for the launch tests, and the bash plumbing to read a run script's MODEL_ARGS and argv."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
HF_FIXTURES = FIXTURES / "hf"


def trainer_parser() -> argparse.ArgumentParser:
    """train.py's parser (the dry-run planner's flags included)."""
    from slime_entropy.trainer.arguments import build_parser

    return build_parser()


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """What train.py parses for a run with a model and data (the run scripts' case)."""
    args = trainer_parser().parse_args(argv)
    assert args.hf_checkpoint is not None and args.prompt_data is not None
    args.embedded = False
    return args


def source_model_args(script: Path, env: dict[str, str] | None = None) -> list[str]:
    """``MODEL_ARGS`` after ``source script`` in a clean bash (NUL-separated, so any value survives)."""
    out = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; source "$1"; printf "%s\\0" "${MODEL_ARGS[@]}"', "bash", str(script)],
        check=True,
        capture_output=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
    ).stdout
    return out.decode().split("\0")[:-1]


def write_recorder(path: Path) -> Path:
    """A stand-in for train.py that records its argv as JSON in $RECORD_ARGV and exits 0."""
    path.write_text(
        "import json, os, sys\n" "with open(os.environ['RECORD_ARGV'], 'w') as f:\n" "    json.dump(sys.argv[1:], f)\n"
    )
    return path


def recorded_argv(script: Path, tmp_path: Path, extra_env: dict[str, str] | None = None, args=()) -> list[str]:
    """Run an example run script with train.py replaced by the recorder; return the argv train.py would get."""
    recorder = write_recorder(tmp_path / "record_train.py")
    record = tmp_path / f"argv-{script.stem}.json"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MODELS_DIR": str(HF_FIXTURES),
        "DATA_DIR": str(tmp_path / "data"),
        "CKPT_DIR": str(tmp_path / "ckpt"),
        "TRAIN_PY": str(recorder),
        "PYTHON": sys.executable,
        "RECORD_ARGV": str(record),
        "SKIP_CONVERT": "1",
        **(extra_env or {}),
    }
    subprocess.run(["bash", str(script), *args], check=True, env=env, capture_output=True, timeout=60)
    return json.loads(record.read_text())
