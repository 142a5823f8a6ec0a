"""Shared fixtures: tiny Qwen3 checkpoints (two seeds) and a pair of running built-in engines."""

from __future__ import annotations

import json

import pytest

from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-seed0"), TinyModelSpec(seed=0))


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory):
    """Same architecture and tokenizer as ``tiny_model_dir``, different random weights."""
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-seed1"), TinyModelSpec(seed=1))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def math_prompts(tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "label": str(2 * i), "metadata": {"id": i}} for i in range(8)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


class RunningEngines:
    """Built-in engines launched once per test session, driven through the real client (``EnginePool``)."""

    def __init__(self, pool, loop, model_dir):
        self.pool, self.loop, self.model_dir = pool, loop, model_dir

    def run(self, coro, timeout=120):
        return self.loop.run(coro, timeout)

    @property
    def urls(self):
        return [s.url for s in self.pool.slots]

    @property
    def addrs(self):
        return [u.removeprefix("http://") for u in self.urls]


@pytest.fixture(scope="session")
def builtin_engines(tiny_model_dir, tmp_path_factory):
    from slime_entropy.rollout.client import EnginePool, LoopThread
    from slime_entropy.rollout.config import EngineConfig

    config = EngineConfig(
        backend="builtin",
        hf_checkpoint=str(tiny_model_dir),
        num_engines=2,
        builtin_max_batch_size=16,
        startup_timeout=180,
        health_check_timeout=10,
    )
    loop = LoopThread()
    pool = EnginePool.from_config(config, tmp_path_factory.mktemp("engine-logs"))
    try:
        loop.run(pool.start(), timeout=240)
        yield RunningEngines(pool, loop, tiny_model_dir)
    finally:
        loop.run(pool.close(), timeout=60)
        loop.close()
