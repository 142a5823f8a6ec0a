"""The launch checks the trainer's own validation does not make, as pure functions of numbers.

The trainer (:mod:`slime_entropy.trainer.config`) owns the batch arithmetic (``check_batch_arithmetic``) and the
cluster layout (``resolve_layout``: ranks vs TP x PP x CP, GPUs per node, colocated or separate engine GPUs, the
expert layout). The dry-run planner runs those, and these, which need the model's architecture or the token
budget and which the Megatron actor would otherwise only find when it builds the model on the GPUs:

    problems = check_parallel_layout(arch, layout, num_gpus_per_node=8, rollout_num_gpus_per_engine=2)
    micro, problems = plan_micro_batches(TokenBudget(...), samples_per_rank_per_step=32)

Each message names the flags and the fix. Nothing here imports torch, megatron or ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slime_entropy.launch.memory import ParallelSizes
from slime_entropy.megatron.architecture import HFArchitecture
from slime_entropy.megatron.config import parallel_size_problems

__all__ = ["TokenBudget", "MicroBatchPlan", "check_parallel_layout", "plan_micro_batches"]


def check_parallel_layout(
    arch: HFArchitecture, layout: ParallelSizes, *, num_gpus_per_node: int, rollout_num_gpus_per_engine: int
) -> list[str]:
    """Every reason the model cannot be split as asked (training and engines). Empty when it can.

    The training rules are :func:`~slime_entropy.megatron.config.parallel_size_problems` (the actor's own); the
    rank count is the trainer's ``resolve_layout``'s to check. Added here: TP within a node, and the engines' TP
    against the heads."""
    engine_tp = rollout_num_gpus_per_engine
    problems = parallel_size_problems(
        arch,
        tensor=layout.tensor_parallel_size,
        pipeline=layout.pipeline_parallel_size,
        context=layout.context_parallel_size,
        expert=layout.expert_parallel_size,
        expert_tensor=layout.expert_tensor_parallel_size,
        sequence_parallel=layout.sequence_parallel,
        world_size=None,
    )
    if engine_tp < 1:
        return problems + [f"--rollout-num-gpus-per-engine must be >= 1, got {engine_tp}"]
    tp = layout.tensor_parallel_size
    if tp > num_gpus_per_node:
        problems.append(
            f"--tensor-model-parallel-size {tp} spans nodes ({num_gpus_per_node} GPUs per node); keep TP within a node"
        )
    if arch.num_attention_heads % engine_tp:
        problems.append(
            f"--rollout-num-gpus-per-engine {engine_tp} must divide the {arch.num_attention_heads} attention heads "
            "(SGLang shards heads over its TP ranks)"
        )
    if arch.num_query_groups % engine_tp and engine_tp % arch.num_query_groups:
        problems.append(
            f"--rollout-num-gpus-per-engine {engine_tp} and the {arch.num_query_groups} KV heads: one must divide the "
            "other (SGLang splits or replicates KV heads)"
        )
    return problems


@dataclass(frozen=True, kw_only=True)
class TokenBudget:
    """The flags that size micro-batches (``None`` = not given)."""

    micro_batch_size: int
    use_dynamic_batch_size: bool
    max_tokens_per_gpu: int | None
    log_probs_max_tokens_per_gpu: int | None
    max_response_len: int | None
    max_prompt_len: int | None
    max_context_len: int | None


@dataclass(frozen=True, kw_only=True)
class MicroBatchPlan:
    max_sample_tokens: int | None
    """Longest prompt + response the flags allow (None: the prompt length is unbounded)."""
    tokens_per_micro_batch: int | None
    """Training micro-batch size in tokens: the dynamic budget, or micro_batch_size x longest sample."""
    log_prob_tokens_per_micro_batch: int | None
    micro_batches_per_step: tuple[int, int] | None
    """(fewest, most) micro-batches per step and DP rank for samples of any length up to the longest, or None."""


def plan_micro_batches(budget: TokenBudget, *, samples_per_rank_per_step: int) -> tuple[MicroBatchPlan, list[str]]:
    """Micro-batches of one step on one DP rank, and every sample within one micro-batch's token budget (the actor
    refuses a longer sample in the middle of a run)."""
    problems: list[str] = []
    response = budget.max_response_len
    longest: int | None = None
    source = ""
    if budget.max_context_len is not None:
        longest, source = budget.max_context_len, f"--rollout-max-context-len {budget.max_context_len}"
    elif budget.max_prompt_len is not None and response is not None:
        longest = budget.max_prompt_len + response
        source = f"--rollout-max-prompt-len {budget.max_prompt_len} + --rollout-max-response-len {response}"

    tokens = log_prob_tokens = None
    micro_batches = None
    per_rank = samples_per_rank_per_step
    if budget.use_dynamic_batch_size:
        if budget.max_tokens_per_gpu is not None:  # None: BatchingConfig reports the missing budget
            tokens = budget.max_tokens_per_gpu
            log_prob_tokens = budget.log_probs_max_tokens_per_gpu or tokens
            for flag, value in (("--max-tokens-per-gpu", tokens), ("--log-probs-max-tokens-per-gpu", log_prob_tokens)):
                if longest is not None and value < longest:
                    problems.append(
                        f"{flag} {value} is smaller than the longest sample the flags allow ({longest} tokens = "
                        f"{source}); a sample must fit one micro-batch: raise it to >= {longest} or lower "
                        "--rollout-max-prompt-len / --rollout-max-response-len"
                    )
            if longest is not None:
                # first-fit never leaves two micro-batches that could merge: at most ceil(2 x tokens / budget)
                micro_batches = (1, max(1, min(per_rank, math.ceil(2 * per_rank * longest / tokens))))
    else:
        if longest is not None:
            tokens = log_prob_tokens = budget.micro_batch_size * longest
        count = math.ceil(per_rank / budget.micro_batch_size)
        micro_batches = (count, count)
    plan = MicroBatchPlan(
        max_sample_tokens=longest,
        tokens_per_micro_batch=tokens,
        log_prob_tokens_per_micro_batch=log_prob_tokens,
        micro_batches_per_step=micro_batches,
    )
    return plan, problems
