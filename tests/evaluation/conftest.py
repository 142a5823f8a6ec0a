"""Tiny checkpoints and eval files for the evaluation tests (built locally, nothing downloaded)."""

from __future__ import annotations

import json

import pytest

from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("eval-tiny-seed0"), TinyModelSpec(seed=0))


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    sets = {
        "add": [{"prompt": f"What is {i} + {i}?", "label": str(2 * i)} for i in range(3)],
        "mul": [{"prompt": f"Compute {i} * 3.", "label": str(3 * i)} for i in range(2)],
    }
    paths = {}
    for name, rows in sets.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
