"""Per-GPU memory estimate of a training run, from the architecture and the parallel layout alone (no GPU, no torch).

Everything here is pure arithmetic on :class:`~slime_entropy.megatron.architecture.HFArchitecture` and a
:class:`ParallelSizes`; :mod:`slime_entropy.launch.plan` feeds it from the command line. Sizes are bytes; ``GiB``
in reports is 2**30 bytes.

Parameters per rank (exact, megatron-core's ``GPTModel`` layout, checked against real models in the tests)
===========================================================================================================

``h`` hidden size, ``q = heads * kv_channels``, ``k = query_groups * kv_channels``, ``f`` FFN size, ``V`` the
vocabulary padded to a multiple of ``make_vocab_size_divisible_by * TP``, ``E`` experts of FFN size ``f_e``.

* attention: ``h*(q+2k)`` (fused QKV, ``+ (q+2k)`` biases for Qwen2) and ``q*h`` (output projection), split over TP;
  input norm ``h`` and q/k norms ``2*kv_channels`` (Qwen3) replicated;
* dense MLP: ``3*h*f`` (SwiGLU fc1 ``2f x h`` + fc2 ``h x f``) split over TP, pre-MLP norm ``h``;
* MoE MLP: router ``E*h`` replicated, experts ``E*3*h*f_e`` split over EP (whole experts) and ETP (each expert's
  matrices), pre-MLP norm ``h``;
* embedding ``V*h/TP`` on the first pipeline stage, output layer ``V*h/TP`` and final norm ``h`` on the last; with tied
  embeddings the last stage of a PP > 1 layout still holds its own copy of the embedding (Megatron syncs the two);
* layers are split evenly over PP. The estimate is for the largest stage.

Training memory per GPU (bf16 training with fp32 main weights, Megatron DDP, Adam)
=================================================================================

``P_d``/``P_e``: dense/expert parameters of the rank; ``DP`` the data-parallel size and ``EDP = world/(ETP*EP*PP)``
the expert data-parallel size.

* weights: ``2 * (P_d + P_e)`` (bf16; 4 bytes without ``--bf16``);
* gradients: Megatron's contiguous grad buffer, ``4 *`` params with ``--accumulate-allreduce-grads-in-fp32``,
  else 2 (the distributed optimizer reduce-scatters in place; the buffer stays full size);
* Adam: fp32 main weights + ``exp_avg`` + ``exp_avg_sq`` = 12 bytes per parameter (8 without bf16, where the weights
  are the main weights), divided by ``DP`` (``EDP`` for expert parameters) with the distributed optimizer; moved to
  host memory with ``--optimizer-cpu-offload`` (plus a 4-byte fp32 gradient copy on the host);
  ``--use-precision-aware-optimizer`` keeps fp32 states at the default dtypes, so the count does not change;
* activations, tokens per micro-batch ``T`` (``--max-tokens-per-gpu`` with dynamic batching, else
  ``micro_batch_size * longest sample``), ``s = TP`` with sequence parallelism, else 1:

  - one layer's saved activations (bf16, flash attention, no dropout; Korthikanti et al. 2022 adapted to SwiGLU,
    GQA and q/k norms): ``A = 2*T*(4h/s + (2q + 2k + 3f)/TP)`` bytes, i.e. both norm inputs and both linear inputs
    (sequence-sharded), Q, K, V, the attention output, the fc1 output (gate and up) and the SwiGLU output
    (TP-sharded), plus ``2*T*(q+k)/TP`` for the q/k norm inputs (Qwen3); an MoE layer replaces the ``3f/TP`` MLP
    term by ``topk*(h + 3*f_e/ETP)/s`` (every token of the rank dispatched to ``topk`` experts: the dispatched input,
    the expert's fc1 and SwiGLU outputs; balanced routing assumed) and adds the fp32 router logits ``4*T*E/s``;
  - with ``--recompute-granularity full`` only each layer's input is kept, ``2*T*h/s`` per layer, and backward
    re-materialises one layer at a time: ``layers * 2*T*h/s + 2*A`` (the layer's activations and their
    gradients); without recompute, ``layers * A``;
  - with PP > 1, 1F1B keeps up to ``PP`` micro-batches in flight on the first stage: the stored part is multiplied
    by ``min(PP, micro-batches per step)``;
* logits (last stage): the bf16 logits ``[T, V/TP]`` and their gradient, ``4*T*V/TP``; the fused log-prob/entropy
  kernel keeps O(T) state of its own. The no-grad log-prob pass (``--log-probs-max-tokens-per-gpu``) holds
  ``2*T_lp*V/TP`` and is counted if it is larger;
* runtime reserve: CUDA context, NCCL communicators, cuBLAS workspaces and allocator fragmentation, a fixed
  allowance (default 4 GiB, :data:`DEFAULT_RESERVE_GIB`) that the estimate does not model in detail.

Rollout memory per GPU (SGLang)
===============================

SGLang takes ``--sglang-mem-fraction-static`` of the GPU (SGLang's default 0.9 is assumed when unset) for the bf16
weights (``2 * P / engine TP``) and the KV cache pool; the rest of the fraction is KV cache:
``2 (K and V) * layers * ceil(query_groups / engine TP) * kv_channels * bytes`` per token and GPU (2 bytes, 1 with
an fp8 ``--sglang-kv-cache-dtype``). Colocated runs time-share the GPU: SGLang releases its weights and KV cache
during training and the actor offloads during generation, so each phase is checked on its own.

Known omissions (why the result is an estimate, typically within ~15% of the measured peak): the temporary buffers
of the optimizer step and of gradient clipping, the all-gather buffers of sequence parallelism, MoE load imbalance,
and transformer-engine workspaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slime_entropy.megatron.architecture import HFArchitecture, padded_vocab_size

__all__ = [
    "GiB",
    "DEFAULT_RESERVE_GIB",
    "DEFAULT_GPU_MEMORY_GIB",
    "DEFAULT_SGLANG_MEM_FRACTION",
    "ParallelSizes",
    "RankParameters",
    "TrainingMemory",
    "RolloutMemory",
    "total_parameters",
    "rank_parameters",
    "stage_parameters",
    "layer_activation_bytes",
    "estimate_training_memory",
    "estimate_rollout_memory",
]

GiB = 1 << 30
DEFAULT_RESERVE_GIB = 4.0
DEFAULT_GPU_MEMORY_GIB = 80.0  # the GPU a plan is checked against unless --plan-gpu-memory-gib says otherwise
DEFAULT_SGLANG_MEM_FRACTION = 0.9  # SGLang's own default for --mem-fraction-static on large GPUs


@dataclass(frozen=True, kw_only=True)
class ParallelSizes:
    """Megatron's training layout. ``expert_tensor_parallel_size`` None means "= TP" (megatron-core's default)."""

    world_size: int
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    context_parallel_size: int = 1
    expert_parallel_size: int = 1
    expert_tensor_parallel_size: int | None = None
    sequence_parallel: bool = False

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.context_parallel_size

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.model_parallel_size

    @property
    def etp(self) -> int:
        return self.expert_tensor_parallel_size or self.tensor_parallel_size

    @property
    def expert_data_parallel_size(self) -> int:
        return self.world_size // (self.etp * self.expert_parallel_size * self.pipeline_parallel_size)


@dataclass(frozen=True)
class RankParameters:
    """Parameters held by one rank of the largest pipeline stage: dense (DP-replicated) and expert (EDP-replicated)."""

    dense: int
    expert: int
    stage: str

    @property
    def total(self) -> int:
        return self.dense + self.expert


def _attention_params(arch: HFArchitecture, tp: int) -> tuple[int, int]:
    """(TP-sharded matrices and biases on one rank, replicated norm weights) of one attention block."""
    q = arch.num_attention_heads * arch.kv_channels
    k = arch.num_query_groups * arch.kv_channels
    sharded = arch.hidden_size * (q + 2 * k) + q * arch.hidden_size
    if arch.add_qkv_bias:
        sharded += q + 2 * k
    replicated = arch.hidden_size + (2 * arch.kv_channels if arch.qk_layernorm else 0)
    return sharded // tp, replicated


def _layer_params(arch: HFArchitecture, layer: int, layout: ParallelSizes) -> tuple[int, int]:
    """(dense, expert) parameters of transformer layer ``layer`` (0-based) on one rank."""
    tp = layout.tensor_parallel_size
    sharded, replicated = _attention_params(arch, tp)
    dense = sharded + replicated + arch.hidden_size  # + pre-MLP norm
    routed = arch.is_moe and arch.moe_layer_pattern[layer] == 1
    if not routed:
        return dense + 3 * arch.hidden_size * arch.ffn_hidden_size // tp, 0
    experts_per_rank = arch.num_experts // layout.expert_parallel_size
    expert = experts_per_rank * 3 * arch.hidden_size * arch.moe_ffn_hidden_size // layout.etp
    return dense + arch.num_experts * arch.hidden_size, expert  # router weight is replicated


def stage_parameters(
    arch: HFArchitecture, layout: ParallelSizes, pp_rank: int, make_vocab_size_divisible_by: int = 128
) -> RankParameters:
    """Parameters on one rank of pipeline stage ``pp_rank`` (every TP/EP rank of a stage holds the same count)."""
    tp, pp = layout.tensor_parallel_size, layout.pipeline_parallel_size
    vocab = padded_vocab_size(arch.vocab_size, make_vocab_size_divisible_by, tp)
    per_stage = arch.num_layers // pp
    dense = expert = 0
    for layer in range(pp_rank * per_stage, (pp_rank + 1) * per_stage):
        d, e = _layer_params(arch, layer, layout)
        dense += d
        expert += e
    first, last = pp_rank == 0, pp_rank == pp - 1
    if first:
        dense += vocab * arch.hidden_size // tp
    if last:
        dense += arch.hidden_size  # final norm
        if not arch.tie_word_embeddings or pp > 1:
            dense += vocab * arch.hidden_size // tp  # output layer (a synced copy of the embedding when tied)
    stage = "only stage" if pp == 1 else ("first stage" if first else "last stage" if last else "middle stage")
    return RankParameters(dense, expert, stage)


def rank_parameters(
    arch: HFArchitecture, layout: ParallelSizes, make_vocab_size_divisible_by: int = 128
) -> RankParameters:
    """The pipeline stage with the most parameters per rank (first or last: they carry the vocabulary)."""
    stages = [
        stage_parameters(arch, layout, r, make_vocab_size_divisible_by)
        for r in sorted({0, layout.pipeline_parallel_size - 1})
    ]
    return max(stages, key=lambda s: s.total)


def total_parameters(arch: HFArchitecture) -> int:
    """Parameters of the whole model without vocabulary padding (what the HF checkpoint holds)."""
    layout = ParallelSizes(world_size=1)
    counts = stage_parameters(arch, layout, 0, make_vocab_size_divisible_by=1)
    return counts.total


def layer_activation_bytes(arch: HFArchitecture, layout: ParallelSizes, tokens: int, routed: bool) -> int:
    """Saved activations of one transformer layer for ``tokens`` tokens, bf16 (see the module docstring)."""
    tp = layout.tensor_parallel_size
    s = tp if layout.sequence_parallel else 1
    h = arch.hidden_size
    q = arch.num_attention_heads * arch.kv_channels
    k = arch.num_query_groups * arch.kv_channels
    per_token = 4 * h / s + (2 * q + 2 * k) / tp
    if arch.qk_layernorm:
        per_token += (q + k) / tp
    if routed:
        # each of the rank's T/s tokens is dispatched to topk experts: the dispatched input (h) and the expert's
        # fc1 output and SwiGLU output (3 f_e, split over ETP) per copy
        per_token += arch.moe_router_topk * (h + 3 * arch.moe_ffn_hidden_size / layout.etp) / s
        per_token += 2 * arch.num_experts / s  # fp32 router logits: 4 bytes = 2 x the bf16 unit below
    else:
        per_token += 3 * arch.ffn_hidden_size / tp
    return int(math.ceil(2 * tokens * per_token))


@dataclass(frozen=True, kw_only=True)
class TrainingMemory:
    """Bytes per GPU of the largest pipeline stage during a training step, and per node on the host."""

    parameters: RankParameters
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    reserve: int
    host_optimizer_per_gpu: int
    tokens_per_micro_batch: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.reserve

    @property
    def model_state(self) -> int:
        """Weights, gradients and GPU-resident optimizer state: what an offloading colocated actor moves out."""
        return self.weights + self.gradients + self.optimizer


def estimate_training_memory(
    arch: HFArchitecture,
    layout: ParallelSizes,
    *,
    tokens_per_micro_batch: int,
    log_prob_tokens_per_micro_batch: int | None = None,
    num_micro_batches: int = 1,
    bf16: bool = True,
    grads_in_fp32: bool = False,
    distributed_optimizer: bool = True,
    optimizer_cpu_offload: bool = False,
    full_recompute: bool = True,
    make_vocab_size_divisible_by: int = 128,
    reserve_gib: float = DEFAULT_RESERVE_GIB,
) -> TrainingMemory:
    """Per-GPU training memory of the largest pipeline stage (formulas and assumptions: module docstring)."""
    tp, pp = layout.tensor_parallel_size, layout.pipeline_parallel_size
    params = rank_parameters(arch, layout, make_vocab_size_divisible_by)
    weight_bytes = 2 if bf16 else 4
    weights = weight_bytes * params.total
    gradients = (4 if grads_in_fp32 or not bf16 else 2) * params.total
    state_bytes = 12 if bf16 else 8
    dense_state = state_bytes * params.dense / (layout.data_parallel_size if distributed_optimizer else 1)
    expert_state = state_bytes * params.expert / (layout.expert_data_parallel_size if distributed_optimizer else 1)
    optimizer_state = int(dense_state + expert_state)
    host_optimizer = 0
    if optimizer_cpu_offload:
        shards = (layout.data_parallel_size, layout.expert_data_parallel_size) if distributed_optimizer else (1, 1)
        host_optimizer = optimizer_state + int(4 * (params.dense / shards[0] + params.expert / shards[1]))
        optimizer_state = 0

    tokens = tokens_per_micro_batch
    s = tp if layout.sequence_parallel else 1
    per_stage = arch.num_layers // pp
    layers = range(per_stage)  # the pattern of the first stage; every MoE model here routes all or most layers
    routed_any = arch.is_moe and any(arch.moe_layer_pattern)
    largest_layer = max(
        layer_activation_bytes(arch, layout, tokens, routed=False),
        layer_activation_bytes(arch, layout, tokens, routed=True) if routed_any else 0,
    )
    in_flight = min(pp, max(1, num_micro_batches)) if pp > 1 else 1
    if full_recompute:
        stored = len(layers) * 2 * tokens * arch.hidden_size // s
        activations = stored * in_flight + 2 * largest_layer
    else:
        stored = sum(
            layer_activation_bytes(arch, layout, tokens, routed=arch.is_moe and arch.moe_layer_pattern[i] == 1)
            for i in layers
        )
        activations = stored * in_flight
    vocab = padded_vocab_size(arch.vocab_size, make_vocab_size_divisible_by, tp)
    logits = 4 * tokens * vocab // tp
    if log_prob_tokens_per_micro_batch is not None:
        logits = max(logits, 2 * log_prob_tokens_per_micro_batch * vocab // tp)
    return TrainingMemory(
        parameters=params,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer_state,
        activations=activations,
        logits=logits,
        reserve=int(reserve_gib * GiB),
        host_optimizer_per_gpu=host_optimizer,
        tokens_per_micro_batch=tokens,
    )


@dataclass(frozen=True, kw_only=True)
class RolloutMemory:
    """One SGLang engine's memory per GPU: the static pool (weights + KV cache) and what the KV cache holds."""

    gpu_bytes: int
    mem_fraction_static: float
    weights: int
    kv_bytes_per_token: int
    sequence_tokens: int | None
    concurrent_sequences: int

    @property
    def static_pool(self) -> int:
        return int(self.mem_fraction_static * self.gpu_bytes)

    @property
    def kv_cache(self) -> int:
        return self.static_pool - self.weights

    @property
    def kv_tokens(self) -> int:
        """KV cache capacity of one engine in tokens (each GPU of the engine holds its heads of every token)."""
        return max(0, self.kv_cache) // self.kv_bytes_per_token

    @property
    def full_length_sequences(self) -> int | None:
        """How many sequences of the longest allowed length fit the KV cache at once (None: length unknown)."""
        if self.sequence_tokens is None:
            return None
        return self.kv_tokens // self.sequence_tokens


def estimate_rollout_memory(
    arch: HFArchitecture,
    *,
    engine_tp: int,
    gpu_bytes: int,
    mem_fraction_static: float | None,
    kv_cache_dtype: str | None,
    sequence_tokens: int | None,
    concurrent_sequences: int,
) -> RolloutMemory:
    """SGLang's static memory per GPU of one engine of ``engine_tp`` GPUs (module docstring)."""
    fraction = DEFAULT_SGLANG_MEM_FRACTION if mem_fraction_static is None else mem_fraction_static
    weights = 2 * total_parameters(arch) // engine_tp
    kv_dtype_bytes = 1 if kv_cache_dtype is not None and kv_cache_dtype.startswith("fp8") else 2
    heads_per_gpu = math.ceil(arch.num_query_groups / engine_tp)
    kv_per_token = 2 * arch.num_layers * heads_per_gpu * arch.kv_channels * kv_dtype_bytes
    return RolloutMemory(
        gpu_bytes=gpu_bytes,
        mem_fraction_static=fraction,
        weights=weights,
        kv_bytes_per_token=kv_per_token,
        sequence_tokens=sequence_tokens,
        concurrent_sequences=concurrent_sequences,
    )
