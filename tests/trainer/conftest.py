from __future__ import annotations

import pytest

from tests.trainer.helpers import write_prompts


@pytest.fixture(scope="session")
def trainer_model(tmp_path_factory):
    """A tiny random Qwen3 (2 layers, hidden 64, 4 heads / 2 KV heads: TP2 works) with tokenizer and chat template."""
    from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3

    return save_tiny_qwen3(tmp_path_factory.mktemp("trainer-model"), TinyModelSpec(seed=0))


@pytest.fixture(scope="session")
def trainer_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer-data")
    return write_prompts(root / "train.jsonl", 24), write_prompts(root / "eval.jsonl", 4, offset=100)


def loop_argv(model, data, run_dir, *extra) -> list[str]:
    """A small but complete run: 4 prompts x 4 samples per rollout, two optimizer steps per rollout, the filter on,
    a checkpoint every rollout, evaluation every 2 rollouts, rollout dumps."""
    train, evaluation = data
    return [
        "--hf-checkpoint", str(model), "--prompt-data", str(train), "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--rollout-shuffle",
        "--custom-rm-path", "tests.trainer.helpers.token_fraction_reward",
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--global-batch-size", "8",
        "--rollout-max-response-len", "10", "--num-rollout", "4", "--builtin-engine-num-threads", "1",
        "--lr", "1e-3", "--micro-batch-size", "4", "--logprob-entropy-backend", "eager",
        "--high-entropy-token-filter", "--entropy-percentile", "0.5",
        "--run-dir", str(run_dir), "--save", str(run_dir / "ckpt"), "--load", str(run_dir / "ckpt"),
        "--save-interval", "1", "--save-rollouts", "--plot-interval", "2",
        "--eval-interval", "2", "--eval-prompt-data", "small", str(evaluation),
        "--distributed-timeout-minutes", "3", "--seed", "3", "--rollout-seed", "5", *extra,
    ]  # fmt: skip
