"""The evaluator end to end on CPU: built-in engines, a tiny model, a deterministic reward, <= 8 new tokens.

1. The trainer's path: ``Evaluator.evaluate(rollout_manager, rollout_id)``; every logged number is recomputed from
   the saved per-sample records (rewards from the response itself, pass@k by enumeration).
2. The standalone command on a torch_dist checkpoint: greedy responses equal those of the HF checkpoint it was made
   from, and differ from the model named as its origin (so the torch_dist weights are the ones evaluated).
"""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from slime_entropy.evaluation.arguments import add_eval_arguments
from slime_entropy.evaluation.evaluator import Evaluator
from slime_entropy.rollout.arguments import add_rollout_arguments
from slime_entropy.rollout.manager import RolloutManager
from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3
from tests.evaluation.test_metrics import brute_force_pass_at_k

N_SAMPLES = 4
MAX_NEW = 8


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_through_rollout_manager(tiny_model_dir, eval_files, tmp_path):
    out = tmp_path / "eval-out"
    parser = add_eval_arguments(add_rollout_arguments(argparse.ArgumentParser()))
    args = parser.parse_args(
        ["--hf-checkpoint", str(tiny_model_dir), "--prompt-data", str(eval_files["add"]), "--input-key", "prompt"]
        + ["--label-key", "label", "--apply-chat-template", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2"]
        + ["--rollout-max-response-len", "4", "--custom-rm-path", "tests.evaluation.hooks.first_token_parity"]
        + ["--eval-prompt-data", "add", str(eval_files["add"]), "mul", str(eval_files["mul"])]
        + ["--eval-interval", "1", "--n-samples-per-eval-prompt", str(N_SAMPLES)]
        + ["--eval-max-response-len", str(MAX_NEW), "--eval-pass-k", "1", "2", "4", "--eval-output-dir", str(out)]
    )  # fmt: skip
    with RolloutManager.from_args(args, progress=False) as rollout:
        evaluator = Evaluator.from_args(args, rollout.tokenizer)
        metrics = evaluator.evaluate(rollout, rollout_id=3)
        after = rollout.generate(0)  # the evaluation leaves the training data untouched
        assert [s.index for s in after.samples] == [0, 1, 2, 3]
        tokenizer = rollout.tokenizer
        if getattr(rollout.config.engine, "seeded_sampling", False):
            # Per-sample seeds: a second evaluation of the same weights draws the same responses (temperature 1).
            again = evaluator.evaluate(rollout, rollout_id=4)
            assert again["eval/add"] == metrics["eval/add"] and again["eval/mul"] == metrics["eval/mul"]
            for name in ("add", "mul"):
                first = [r["tokens"] for r in _records(out / f"eval_{name}_rollout3.jsonl")]
                assert first == [r["tokens"] for r in _records(out / f"eval_{name}_rollout4.jsonl")]

    for name, num_prompts in (("add", 3), ("mul", 2)):
        records = _records(out / f"eval_{name}_rollout3.jsonl")
        assert len(records) == num_prompts * N_SAMPLES
        rows = [json.loads(line) for line in eval_files[name].read_text().splitlines()]
        counts = []
        for p in range(num_prompts):
            group = [r for r in records if r["group_index"] == p]
            assert len(group) == N_SAMPLES and all(r["label"] == rows[p]["label"] for r in group)
            prompt_text = tokenizer.apply_chat_template(
                [{"role": "user", "content": rows[p]["prompt"]}], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            correct = 0
            for r in group:
                assert r["prompt_text"] == prompt_text and r["tokens"][: len(prompt_ids)] == prompt_ids
                assert 1 <= r["response_length"] == len(r["tokens"]) - len(prompt_ids) <= MAX_NEW
                assert len(r["rollout_log_probs"]) == r["response_length"]
                expected = 1.0 if r["tokens"][len(prompt_ids)] % 2 == 0 else 0.0
                assert r["reward"] == r["scalar_reward"] == expected and r["correct"] == (expected >= 1.0)
                correct += r["correct"]
            counts.append((N_SAMPLES, correct))
        prefix = f"eval/{name}"
        assert metrics[prefix] == metrics[f"{prefix}/avg@{N_SAMPLES}"]
        assert metrics[prefix] == pytest.approx(sum(c / n for n, c in counts) / num_prompts, abs=1e-12)
        for k in (1, 2, 4):
            expected = sum(float(brute_force_pass_at_k(n, c, k)) for n, c in counts) / num_prompts
            assert metrics[f"{prefix}/pass@{k}"] == pytest.approx(expected, abs=1e-12)
        assert metrics[f"{prefix}/reward_mean"] == pytest.approx(
            sum(r["scalar_reward"] for r in records) / len(records)
        )
        truncated = sum(r["status"] == "truncated" for r in records) / len(records)
        assert metrics[f"{prefix}/truncated_ratio"] == pytest.approx(truncated)
        assert metrics[f"{prefix}/response_length_mean"] == pytest.approx(
            sum(r["response_length"] for r in records) / len(records)
        )
        assert metrics[f"{prefix}/num_samples"] == len(records) and metrics[f"{prefix}/num_reward_failures"] == 0
    summary = json.loads((out / "eval_rollout3.json").read_text())
    assert summary["metrics"] == pytest.approx(metrics)
    # Not a degenerate check: the parity reward mixes outcomes across the 20 samples.
    all_rewards = [r["scalar_reward"] for n in ("add", "mul") for r in _records(out / f"eval_{n}_rollout3.jsonl")]
    assert 0 < sum(all_rewards) < len(all_rewards)


def _run_cli(argv, tmp_path, name):
    from slime_entropy.evaluation.cli import main

    metrics_path = tmp_path / f"{name}.json"
    assert main(argv + ["--eval-output-dir", str(tmp_path / name), "--metrics-json", str(metrics_path)]) == 0
    return json.loads(metrics_path.read_text()), _records(tmp_path / name / "eval_add_rollout7.jsonl")


def test_standalone_command_on_torch_dist_checkpoint(tiny_model_dir, eval_files, tmp_path):
    other_hf = save_tiny_qwen3(tmp_path / "other-hf", TinyModelSpec(seed=1))
    dist_dir = tmp_path / "other-dist"
    vocab = ["--make-vocab-size-divisible-by", "1"]
    subprocess.run(
        [sys.executable, "-m", "slime_entropy.megatron.convert", "hf-to-torch-dist", "--hf-checkpoint", str(other_hf),
         "--save", str(dist_dir), *vocab],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    common = ["--eval-prompt-data", "add", str(eval_files["add"]), "--input-key", "prompt", "--label-key", "label"]
    common += ["--apply-chat-template", "--custom-rm-path", "tests.evaluation.hooks.first_token_parity"]
    common += ["--n-samples-per-eval-prompt", "2", "--eval-max-response-len", str(MAX_NEW), "--eval-temperature", "0"]
    common += ["--rollout-id", "7"]
    direct_metrics, direct = _run_cli(common + ["--hf-checkpoint", str(other_hf)], tmp_path, "direct")
    converted_metrics, converted = _run_cli(
        common
        + ["--hf-checkpoint", str(tiny_model_dir), "--torch-dist-checkpoint", str(dist_dir)]
        + ["--convert-args", " ".join(vocab)],
        tmp_path,
        "converted",
    )
    assert [r["tokens"] for r in converted] == [r["tokens"] for r in direct]  # greedy: same weights, same tokens
    for key in ("eval/add", "eval/add/pass@1", "eval/add/pass@2", "eval/add/reward_mean"):
        assert converted_metrics[key] == direct_metrics[key]

    # The origin model (seed 0) would answer differently, so the equality above means the torch_dist weights were
    # evaluated: the first greedy token of each response is the argmax of the seed-1 model, not of the seed-0 one.
    from transformers import AutoModelForCausalLM

    firsts = {}
    for label, path in (("origin", tiny_model_dir), ("other", other_hf)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        firsts[label] = []
        for r in direct:
            prompt = r["tokens"][: len(r["tokens"]) - r["response_length"]]
            with torch.no_grad():
                firsts[label].append(int(model(torch.tensor(prompt)[None]).logits[0, -1].argmax()))
    answered = [r["tokens"][len(r["tokens"]) - r["response_length"]] for r in direct]
    assert firsts["other"] == answered and firsts["origin"] != answered


def test_checkpoint_detection_and_errors(tiny_model_dir, tmp_path):
    from slime_entropy.evaluation.checkpoints import (
        convert_torch_dist_to_hf,
        is_hf_checkpoint,
        is_torch_dist_checkpoint,
    )

    assert is_hf_checkpoint(tiny_model_dir) and not is_torch_dist_checkpoint(tiny_model_dir)
    root = tmp_path / "ckpt"
    (root / "iter_0000004").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("4")
    (root / "iter_0000004" / ".metadata").write_bytes(b"x")
    (root / "iter_0000004" / "__0_0.distcp").write_bytes(b"x")
    assert is_torch_dist_checkpoint(root) and is_torch_dist_checkpoint(root / "iter_0000004")
    with pytest.raises(ValueError, match="not a torch_dist checkpoint"):
        convert_torch_dist_to_hf(tiny_model_dir, origin_hf_dir=tiny_model_dir, output_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="must be the HF model"):
        convert_torch_dist_to_hf(root, origin_hf_dir=tmp_path, output_dir=tmp_path / "x")
    with pytest.raises(RuntimeError, match="failed"):  # shards that are not a checkpoint: the converter's error
        convert_torch_dist_to_hf(root, origin_hf_dir=tiny_model_dir, output_dir=tmp_path / "x", timeout=120)
