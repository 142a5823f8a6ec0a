"""End-to-end rollouts through RolloutManager: data -> engines -> rewards -> dynamic sampling -> DP batches,
and an engine killed mid-rollout."""

import argparse
import os

import httpx
import pytest
import torch

from slime_entropy.rollout.arguments import add_rollout_arguments
from slime_entropy.rollout.batching import PER_SAMPLE_KEYS
from slime_entropy.rollout.manager import RolloutManager
from slime_entropy.rollout.sample import SampleStatus


def _args(model_dir, prompts, *extra):
    parser = add_rollout_arguments(argparse.ArgumentParser())
    return parser.parse_args(
        [
            "--hf-checkpoint",
            str(model_dir),
            "--prompt-data",
            str(prompts),
            "--input-key",
            "prompt",
            "--label-key",
            "label",
            "--apply-chat-template",
            "--rollout-max-response-len",
            "8",
            *extra,
        ]
    )


def _check_samples(result, tokenizer, n_samples):
    for group in result.groups:
        assert len(group) == n_samples and len({s.group_index for s in group}) == 1
        assert len({s.prompt_text for s in group}) == 1
        for s in group:
            prompt_ids = tokenizer(s.prompt_text, add_special_tokens=False)["input_ids"]
            assert s.tokens[: len(prompt_ids)] == prompt_ids and s.prompt_length == len(prompt_ids)
            assert 1 <= s.response_length == len(s.rollout_log_probs) and s.reward is not None
            assert s.status in (SampleStatus.COMPLETED, SampleStatus.TRUNCATED)
            assert all(lp <= 0 for lp in s.rollout_log_probs)


def test_rollout_through_external_engines(builtin_engines, math_prompts, tokenizer):
    args = _args(
        builtin_engines.model_dir,
        math_prompts,
        "--rm-type",
        "math",
        "--rollout-batch-size",
        "4",
        "--n-samples-per-prompt",
        "2",
        "--rollout-external-engine-addrs",
        *builtin_engines.addrs,
        "--balance-data",
    )
    with RolloutManager.from_args(args, progress=False) as rollout:
        first = rollout.generate(0)
        assert [g[0].group_index for g in first.groups] == [0, 1, 2, 3]
        assert [s.index for s in first.samples] == list(range(8))
        assert [g[0].label for g in first.groups] == ["0", "2", "4", "6"]
        _check_samples(first, tokenizer, 2)
        assert first.metrics["rollout/num_groups_finished"] == 4 and first.metrics["rollout/num_sampling_rounds"] == 1
        assert first.metrics["rollout/num_engine_restarts"] == 0
        per_rank = rollout.train_data(first, dp_size=2)
        assert [len(d["tokens"]) for d in per_rank] == [4, 4]
        for d in per_rank:
            assert set(d) == set(PER_SAMPLE_KEYS) | {"partition"}
            assert len(set(d["group_indices"])) == 2  # whole groups per rank (--balance-data)
            for i, pos in enumerate(d["partition"]):
                s = first.samples[pos]
                assert d["tokens"][i] == s.tokens and d["rollout_log_probs"][i] == s.rollout_log_probs
        second = rollout.generate(1)
        assert [g[0].group_index for g in second.groups] == [4, 5, 6, 7]
        assert [g[0].label for g in second.groups] == ["8", "10", "12", "14"]
        state = rollout.state_dict()
    assert state["data_source"]["offset"] == 8 and state["data_source"]["next_sample_index"] == 16


def test_dynamic_sampling_keeps_groups_with_signal(builtin_engines, math_prompts):
    args = _args(
        builtin_engines.model_dir,
        math_prompts,
        "--custom-rm-path",
        "tests.rollout.hooks.reward_by_group",
        "--rollout-batch-size",
        "3",
        "--over-sampling-batch-size",
        "2",
        "--n-samples-per-prompt",
        "2",
        "--dynamic-sampling-filter-path",
        "slime_entropy.rollout.filters.check_reward_nonzero_std",
        "--rollout-external-engine-addrs",
        *builtin_engines.addrs,
    )
    with RolloutManager.from_args(args, progress=False) as rollout:
        result = rollout.generate(0)
        kept = [g[0].group_index for g in result.groups]
        m = result.metrics
        assert len(kept) == 3 and all(g % 3 for g in kept), kept  # groups 0, 3, 6, ... have uniform rewards
        assert kept == sorted(kept)
        source = rollout.data_source.state_dict()
        issued = source["next_group_index"]
        handed_back = source["pushed_back"]
        # Every issued group is kept, dropped, or handed back to be served again: none is lost.
        assert m["rollout/num_groups_dropped"] + len(kept) + len(handed_back) == issued
        assert m["rollout/num_groups_dropped"] >= 1 and m["rollout/num_sampling_rounds"] == issued / 2
        assert all(s.reward in (0.0, 1.0) for s in result.samples)
        # Handed-back prompts (dataset positions; here equal to metadata["id"]) are served first next time.
        served = rollout.data_source.next_prompts(len(handed_back) + 1)
        assert [item.record.metadata["id"] for item in served[: len(handed_back)]] == handed_back
        assert served[-1].record.metadata["id"] == source["offset"] % 8


def test_dynamic_sampling_gives_up_after_max_rounds(builtin_engines, math_prompts):
    args = _args(
        builtin_engines.model_dir,
        math_prompts,
        "--custom-rm-path",
        "tests.rollout.hooks.group_reward",
        "--group-rm",
        "--rollout-batch-size",
        "2",
        "--n-samples-per-prompt",
        "1",
        "--disable-rewards-normalization",
        "--dynamic-sampling-max-rounds",
        "2",
        "--dynamic-sampling-filter-path",
        "slime_entropy.rollout.filters.check_reward_nonzero_std",
        "--rollout-external-engine-addrs",
        *builtin_engines.addrs,
    )
    with RolloutManager.from_args(args, progress=False) as rollout:
        with pytest.raises(RuntimeError, match="only 0 of 2 groups passed .* after 2 sampling rounds of 2 prompts"):
            rollout.generate(0)
        assert rollout.data_source.next_group_index == 4


def test_engine_killed_mid_rollout_is_restarted_and_no_sample_is_lost(
    tiny_model_dir, tiny_model_dir_b, math_prompts, tokenizer, tmp_path
):
    args = _args(
        tiny_model_dir,
        math_prompts,
        "--custom-rm-path",
        "tests.rollout.hooks.kill_engine_once",
        "--rollout-batch-size",
        "8",
        "--n-samples-per-prompt",
        "4",
        "--rollout-max-response-len",
        "24",
        "--rollout-num-engines",
        "2",
        "--builtin-engine-max-batch-size",
        "4",
        "--rollout-engine-startup-timeout",
        "180",
        "--rollout-health-check-timeout",
        "10",
    )
    with RolloutManager.from_args(args, run_dir=tmp_path, progress=False) as rollout:
        rollout.update_weights_from_disk(tiny_model_dir_b, weight_version="v-b")
        victim = rollout.pool.slots[0]
        old_pid = victim.process.pid
        args.pid_to_kill, args.killed = old_pid, False
        result = rollout.generate(0)
        assert args.killed
        indices = [s.index for s in result.samples]
        assert sorted(indices) == list(range(32)) and len(set(indices)) == 32  # none lost, none duplicated
        _check_samples(result, tokenizer, 4)
        assert {s.weight_version for s in result.samples} == {"v-b"}
        assert result.metrics["rollout/num_request_retries"] >= 1
        rollout.run(rollout.pool.wait_recovered(), timeout=240)
        assert victim.num_restarts == 1 and victim.routable and victim.process.pid != old_pid
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
        # The restarted engine serves the latest weights (model B, version v-b), not the initial checkpoint.
        info = httpx.get(f"{victim.url}/get_model_info", timeout=10).json()
        assert info["weight_version"] == "v-b" and info["model_path"] == str(tiny_model_dir_b)
        sample = result.samples[5]
        out = httpx.post(
            f"{victim.url}/generate",
            timeout=60,
            json={
                "input_ids": sample.tokens[: sample.prompt_length],
                "return_logprob": True,
                "sampling_params": {"max_new_tokens": 6, "temperature": 0.0},
            },
        ).json()
        from transformers import AutoModelForCausalLM

        model_b = AutoModelForCausalLM.from_pretrained(tiny_model_dir_b, dtype=torch.float32).eval()
        ids = sample.tokens[: sample.prompt_length] + out["output_ids"]
        with torch.no_grad():
            ref = torch.log_softmax(model_b(torch.tensor([ids])).logits[0].double(), -1)
        n = sample.prompt_length
        got = [t[0] for t in out["meta_info"]["output_token_logprobs"]]
        assert got == pytest.approx([ref[n - 1 + i, t].item() for i, t in enumerate(out["output_ids"])], abs=1e-4)
        again = rollout.generate(1)  # both engines serve again
        assert len(again.samples) == 32 and again.metrics["rollout/num_engine_restarts"] == 0
        pids = [s.process.pid for s in rollout.pool.slots]
    for pid in pids:  # the manager stopped its engines
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_context_budget_caps_responses_and_drops_prompts_without_room(builtin_engines, tmp_path, tokenizer):
    from tests.rollout.conftest import write_jsonl

    rows = [{"prompt": "x " * n, "label": str(n)} for n in (1, 3, 6, 40, 2, 50)]
    prompts = write_jsonl(tmp_path / "lengths.jsonl", rows)

    def chat_length(num_words):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x " * num_words}], tokenize=False, add_generation_prompt=True
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    context = chat_length(6) + 3  # prompts of 1, 2, 3, 6 words fit with room to spare; 40 and 50 words do not
    args = _args(
        builtin_engines.model_dir,
        prompts,
        "--rm-type",
        "math",
        "--rollout-batch-size",
        "4",
        "--rollout-max-response-len",
        "8",
        "--rollout-max-context-len",
        str(context),
        "--rollout-external-engine-addrs",
        *builtin_engines.addrs,
    )
    with RolloutManager.from_args(args, progress=False) as rollout:
        assert len(rollout.data_source.dataset) == 4
        result = rollout.generate(0)
    assert sorted(g[0].label for g in result.groups) == ["1", "2", "3", "6"]
    for s in result.samples:
        budget = min(8, context - s.prompt_length)
        assert len(s.tokens) <= context and 1 <= s.response_length <= budget
        assert s.status != SampleStatus.TRUNCATED or s.response_length == budget


def test_a_restored_data_position_regenerates_the_same_samples(builtin_engines, math_prompts):
    """Resume contract: with the built-in engine every sample carries its own ``sampling_seed``, so a manager that
    restores another's data position generates exactly the samples the first one generates next."""
    args = _args(
        builtin_engines.model_dir,
        math_prompts,
        "--rm-type",
        "math",
        "--rollout-batch-size",
        "2",
        "--n-samples-per-prompt",
        "3",
        "--rollout-shuffle",
        "--rollout-external-engine-addrs",
        *builtin_engines.addrs,
    )
    with RolloutManager.from_args(args, progress=False) as first:
        assert first.config.engine.seeded_sampling
        first.generate(0)
        state = first.state_dict()
        expected = [(s.index, s.tokens) for s in first.generate(1).samples]
    with RolloutManager.from_args(args, progress=False) as resumed:
        resumed.load_state_dict(state)
        assert [(s.index, s.tokens) for s in resumed.generate(1).samples] == expected
