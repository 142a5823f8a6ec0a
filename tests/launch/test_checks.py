"""The launch checks the trainer's validation does not make: the model split and the token budget."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slime_entropy.launch.checks import TokenBudget, check_parallel_layout, plan_micro_batches
from slime_entropy.launch.memory import ParallelSizes
from slime_entropy.megatron.architecture import HFArchitecture
from tests.launch.helpers import HF_FIXTURES

DENSE = HFArchitecture.from_hf_checkpoint(HF_FIXTURES / "Qwen3-8B")  # 32 heads, 8 KV heads, 36 layers
MOE = HFArchitecture.from_hf_checkpoint(HF_FIXTURES / "Qwen3-30B-A3B")  # 128 experts of 768, 4 KV heads, 48 layers
SEED = TokenBudget(
    micro_batch_size=1, use_dynamic_batch_size=True, max_tokens_per_gpu=9216, log_probs_max_tokens_per_gpu=None,
    max_response_len=8192, max_prompt_len=1024, max_context_len=None,
)  # fmt: skip


def test_the_seed_budget():
    plan, problems = plan_micro_batches(SEED, samples_per_rank_per_step=32)
    assert problems == []
    assert plan.max_sample_tokens == 9216 and plan.tokens_per_micro_batch == 9216
    assert plan.log_prob_tokens_per_micro_batch == 9216 and plan.micro_batches_per_step == (1, 32)
    long_budget, _ = plan_micro_batches(replace(SEED, max_tokens_per_gpu=4 * 9216), samples_per_rank_per_step=32)
    assert long_budget.micro_batches_per_step == (1, 16)  # first fit: at most ceil(2 x tokens / budget)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            dict(max_tokens_per_gpu=8192),
            "--max-tokens-per-gpu 8192 is smaller than the longest sample the flags allow (9216 tokens",
        ),
        (dict(log_probs_max_tokens_per_gpu=9000), "--log-probs-max-tokens-per-gpu 9000 is smaller"),
        (dict(max_context_len=12000), "(12000 tokens = --rollout-max-context-len 12000)"),
    ],
)
def test_budget_rules(change, expected):
    _, problems = plan_micro_batches(replace(SEED, **change), samples_per_rank_per_step=32)
    assert any(expected in p for p in problems), problems


def test_a_missing_dynamic_budget_is_the_batching_configs_to_report():
    """One rule, one place: BatchingConfig refuses --use-dynamic-batch-size without --max-tokens-per-gpu; the
    planner then has no budget to plan with and adds nothing."""
    from slime_entropy.megatron.config import BatchingConfig

    plan, problems = plan_micro_batches(replace(SEED, max_tokens_per_gpu=None), samples_per_rank_per_step=32)
    assert problems == [] and plan.tokens_per_micro_batch is None
    reported = BatchingConfig(use_dynamic_batch_size=True, max_tokens_per_gpu=None).problems().messages
    assert any("--use-dynamic-batch-size needs --max-tokens-per-gpu" in m for m in reported), reported


def test_unbounded_prompts_and_fixed_micro_batches():
    plan, problems = plan_micro_batches(replace(SEED, max_prompt_len=None), samples_per_rank_per_step=32)
    assert problems == [] and plan.max_sample_tokens is None and plan.micro_batches_per_step is None
    fixed = replace(SEED, use_dynamic_batch_size=False, max_tokens_per_gpu=None, micro_batch_size=4)
    plan, problems = plan_micro_batches(fixed, samples_per_rank_per_step=32)
    assert problems == [] and plan.micro_batches_per_step == (8, 8) and plan.tokens_per_micro_batch == 4 * 9216


def test_valid_layouts_have_no_problems():
    tp2 = ParallelSizes(world_size=8, tensor_parallel_size=2, sequence_parallel=True)
    assert check_parallel_layout(DENSE, tp2, num_gpus_per_node=8, rollout_num_gpus_per_engine=2) == []
    moe = ParallelSizes(
        world_size=8, tensor_parallel_size=4, expert_parallel_size=8, expert_tensor_parallel_size=1,
        sequence_parallel=True,
    )  # fmt: skip
    assert check_parallel_layout(MOE, moe, num_gpus_per_node=8, rollout_num_gpus_per_engine=8) == []  # KV replicated


@pytest.mark.parametrize(
    "arch, layout, engine_tp, expected",
    [
        (DENSE, dict(tensor_parallel_size=3), 1, "--tensor-model-parallel-size 3 must divide the 32 attention heads"),
        (DENSE, dict(tensor_parallel_size=16), 1, "spans nodes"),
        (DENSE, dict(pipeline_parallel_size=8), 1, "--pipeline-model-parallel-size 8 must divide the 36 layers"),
        (DENSE, dict(context_parallel_size=2), 1, "does not support context parallelism"),
        (DENSE, dict(expert_parallel_size=2), 1, "needs an MoE model"),
        (DENSE, dict(expert_tensor_parallel_size=1, tensor_parallel_size=2), 1, "only applies to MoE models"),
        (MOE, dict(tensor_parallel_size=2, expert_parallel_size=4, expert_tensor_parallel_size=1), 1,
         "needs --sequence-parallel"),
        (MOE, dict(expert_parallel_size=3), 1, "--expert-model-parallel-size 3 must divide the 128 experts"),
        (MOE, dict(expert_tensor_parallel_size=5), 1, "must divide the expert FFN size 768"),
        (DENSE, {}, 3, "must divide the 32 attention heads (SGLang"),
        (MOE, {}, 6, "and the 4 KV heads: one must divide the other"),
        (DENSE, dict(tensor_parallel_size=0), 1, "must be >= 1"),
    ],
)  # fmt: skip
def test_layout_rules(arch, layout, engine_tp, expected):
    layout = ParallelSizes(**{"world_size": 16, **layout})
    problems = check_parallel_layout(arch, layout, num_gpus_per_node=8, rollout_num_gpus_per_engine=engine_tp)
    assert any(expected in p for p in problems), problems
