"""A small saved rollout with known entropies, and tiny checkpoints (HF and torch_dist) for the analysis tests."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3

NUM_RESPONSES = 12


def make_rollout_rows(seed: int = 0) -> list[dict]:
    """Responses with float32 entropies: about half below 0.01 (some exactly 0), a tie plateau at 1.0 that straddles
    the top-20% threshold, masked-out tokens (with high entropies that must never count), rewards 0/1."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(NUM_RESPONSES):
        prompt_len, response_len = int(rng.integers(3, 8)), int(rng.integers(5, 40))
        low = rng.uniform(0, 0.01, size=response_len)
        high = rng.lognormal(mean=-0.5, sigma=1.0, size=response_len)
        entropy = np.where(rng.random(response_len) < 0.5, low, high)
        entropy[rng.random(response_len) < 0.05] = 0.0
        entropy[rng.random(response_len) < 0.12] = 1.0
        mask = (rng.random(response_len) > 0.1).astype(int)
        mask[0] = 1
        entropy[mask == 0] = 50.0  # would dominate every statistic if masked tokens leaked in
        tokens = rng.integers(0, 300, size=prompt_len + response_len)
        rows.append(
            {
                "id": f"r{i}",
                "tokens": tokens.tolist(),
                "response_length": response_len,
                "loss_mask": mask.tolist(),
                "entropy": entropy.astype(np.float32).tolist(),
                "log_probs": (-rng.exponential(size=response_len)).astype(np.float32).tolist(),
                "reward": float(i % 2),
                "prompt_text": f"prompt {i}",
            }
        )
    return rows


@pytest.fixture
def rollout_file(tmp_path):
    path = tmp_path / "rollout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_rollout_rows()))
    return path


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("analysis-tiny"), TinyModelSpec(seed=0))


@pytest.fixture(scope="session")
def tiny_torch_dist(tiny_hf, tmp_path_factory):
    """The same weights as ``tiny_hf`` as a torch_dist checkpoint (made by the converter, in a child process)."""
    out = tmp_path_factory.mktemp("analysis-tiny-dist") / "ckpt"
    subprocess.run(
        [sys.executable, "-m", "slime_entropy.megatron.convert", "hf-to-torch-dist", "--hf-checkpoint", str(tiny_hf),
         "--save", str(out), "--make-vocab-size-divisible-by", "1"],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    return out
