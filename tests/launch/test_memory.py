"""The memory model: parameter counts against real models, and the per-GPU terms against their definitions.

* whole-model counts == transformers' models built on the meta device from the fixture configs (all ten families);
* per-rank counts == real megatron-core GPTModels built in a 4-rank gloo world at TP/PP/EP/ETP layouts (tied and
  untied embeddings, Qwen2 biases, MoE with a dense first layer), split into dense and expert parameters;
* the training terms follow the documented byte counts, and the layout knobs move them the documented way.
"""

from __future__ import annotations

import json

import pytest

from slime_entropy.launch.memory import (
    GiB,
    ParallelSizes,
    estimate_rollout_memory,
    estimate_training_memory,
    layer_activation_bytes,
    rank_parameters,
    stage_parameters,
    total_parameters,
)
from slime_entropy.megatron.architecture import HFArchitecture
from tests.distributed import run_world
from tests.launch.helpers import HF_FIXTURES

FIXTURES = sorted(p.name for p in HF_FIXTURES.iterdir())


def _arch(name: str) -> HFArchitecture:
    return HFArchitecture.from_hf_checkpoint(HF_FIXTURES / name)


def test_whole_model_counts_match_transformers():
    import torch
    import transformers

    for name in FIXTURES:
        config = transformers.AutoConfig.from_pretrained(HF_FIXTURES / name)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        expected = sum(p.numel() for p in model.parameters())
        assert total_parameters(_arch(name)) == expected, name


# Tiny architectures with the features that change the layout; vocab 300 pads to 384 (TP1/2/4 x 128 -> 384/512/512).
TINY = {
    "qwen3_untied": {
        "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "vocab_size": 300, "tie_word_embeddings": False,
    },
    "qwen2_tied": {
        "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "vocab_size": 300, "tie_word_embeddings": True,
    },
    "llama_untied": {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": 300, "tie_word_embeddings": False,
    },
    "moe_dense_first": {
        "model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [0], "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 300,
        "tie_word_embeddings": False,
    },
}  # fmt: skip
# (architecture, TP, PP, EP, ETP) on 4 ranks
LAYOUTS = [
    ("qwen3_untied", 2, 2, 1, None),
    ("qwen2_tied", 2, 2, 1, None),
    ("qwen2_tied", 4, 1, 1, None),
    ("llama_untied", 1, 2, 1, None),
    ("moe_dense_first", 2, 2, 1, None),  # experts split by ETP = TP = 2
    ("moe_dense_first", 1, 2, 2, 1),  # whole experts over EP = 2
]


def _count_worker(rank, world_size, layouts):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from slime_entropy.megatron import cpu_shim
    from slime_entropy.megatron.model import ModelBuildConfig, build_gpt_model

    cpu_shim.apply()
    counts = []
    for name, tp, pp, ep, etp in layouts:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp,
        )
        model_parallel_cuda_manual_seed(0)
        arch = HFArchitecture.from_config_dict(TINY[name])
        build = ModelBuildConfig(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp,
            moe_token_dispatcher_type="alltoall",
        )
        model = build_gpt_model(arch, build)
        dense = sum(p.numel() for p in model.parameters() if getattr(p, "allreduce", True))
        expert = sum(p.numel() for p in model.parameters() if not getattr(p, "allreduce", True))
        counts.append((parallel_state.get_pipeline_model_parallel_rank(), dense, expert))
        parallel_state.destroy_model_parallel()
    return counts


@pytest.mark.multiprocess
def test_per_rank_counts_match_megatron_core_models():
    results = run_world(_count_worker, 4, args=(LAYOUTS,), timeout=300)
    for i, (name, tp, pp, ep, etp) in enumerate(LAYOUTS):
        arch = HFArchitecture.from_config_dict(TINY[name])
        layout = ParallelSizes(
            world_size=4,
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            expert_parallel_size=ep,
            expert_tensor_parallel_size=etp,
        )
        for rank in range(4):
            pp_rank, dense, expert = results[rank][i]
            counted = stage_parameters(arch, layout, pp_rank)
            if ep > 1:
                assert (counted.dense, counted.expert) == (dense, expert), (name, tp, pp, ep, etp, rank)
            else:  # megatron-core marks expert parameters as such only under expert parallelism (EDP == DP here)
                assert layout.expert_data_parallel_size == layout.data_parallel_size
                assert counted.total == dense + expert and expert == 0, (name, tp, pp, ep, etp, rank)
        largest = max(results[r][i][1] + results[r][i][2] for r in range(4))
        assert rank_parameters(arch, layout).total == largest


def test_training_terms_follow_their_byte_counts():
    arch = _arch("Qwen3-8B")
    layout = ParallelSizes(world_size=8, tensor_parallel_size=2, sequence_parallel=True)
    base = dict(tokens_per_micro_batch=8192, reserve_gib=4.0)
    m = estimate_training_memory(arch, layout, grads_in_fp32=True, **base)
    p = m.parameters.total
    vocab = 152064  # 151936 padded to a multiple of 128 x TP 2
    assert m.parameters.expert == 0 and m.parameters.stage == "only stage"
    assert (
        p
        == (total_parameters(arch) - 2 * 151936 * 4096 - 36 * (2 * 4096 + 2 * 128) - 4096) // 2
        + (2 * vocab * 4096 // 2)
        + 36 * (2 * 4096 + 2 * 128)
        + 4096
    )  # matrices split over TP 2, norms replicated, padded vocabulary
    assert m.weights == 2 * p and m.gradients == 4 * p
    assert m.optimizer == int(12 * p / 4)  # fp32 main weights + two Adam moments, sharded over DP 4
    assert m.logits == 4 * 8192 * vocab // 2
    assert m.reserve == 4 * GiB
    assert m.total == m.weights + m.gradients + m.optimizer + m.activations + m.logits + m.reserve
    stored = 36 * 2 * 8192 * 4096 // 2
    assert m.activations == stored + 2 * layer_activation_bytes(arch, layout, 8192, routed=False)

    assert estimate_training_memory(arch, layout, **base).gradients == 2 * p  # bf16 grad buffer
    assert estimate_training_memory(arch, layout, distributed_optimizer=False, **base).optimizer == 12 * p
    offload = estimate_training_memory(arch, layout, optimizer_cpu_offload=True, **base)
    assert offload.optimizer == 0 and offload.host_optimizer_per_gpu == int(12 * p / 4) + int(4 * p / 4)
    no_recompute = estimate_training_memory(arch, layout, full_recompute=False, **base)
    assert no_recompute.activations == 36 * layer_activation_bytes(arch, layout, 8192, routed=False)
    assert no_recompute.activations > 5 * m.activations
    no_sp = ParallelSizes(world_size=8, tensor_parallel_size=2, sequence_parallel=False)
    assert estimate_training_memory(arch, no_sp, **base).activations > m.activations
    assert estimate_training_memory(arch, layout, **{**base, "tokens_per_micro_batch": 16384}).activations > (
        m.activations
    )
    pp = ParallelSizes(world_size=8, tensor_parallel_size=2, pipeline_parallel_size=2, sequence_parallel=True)
    staged = estimate_training_memory(arch, pp, num_micro_batches=8, **base)
    assert staged.parameters.total < p and staged.parameters.stage in ("first stage", "last stage")


def test_one_layer_activations_by_hand():
    arch = _arch("Qwen3-8B")  # h 4096, q 32x128, kv 8x128, ffn 12288, q/k norms
    tp2_sp = ParallelSizes(world_size=8, tensor_parallel_size=2, sequence_parallel=True)
    per_token = 4 * 4096 / 2 + (2 * 4096 + 2 * 1024) / 2 + (4096 + 1024) / 2 + 3 * 12288 / 2
    assert layer_activation_bytes(arch, tp2_sp, 1000, routed=False) == 2 * 1000 * per_token
    moe = _arch("Qwen3-30B-A3B")  # h 2048, q 32x128, kv 4x128, 128 experts of 768, top-8
    tp4_ep8 = ParallelSizes(
        world_size=8, tensor_parallel_size=4, expert_parallel_size=8, expert_tensor_parallel_size=1,
        sequence_parallel=True,
    )  # fmt: skip
    per_token = 4 * 2048 / 4 + (2 * 4096 + 2 * 512) / 4 + (4096 + 512) / 4 + 8 * (2048 + 3 * 768) / 4 + 2 * 128 / 4
    assert layer_activation_bytes(moe, tp4_ep8, 1000, routed=True) == 2 * 1000 * per_token


def test_moe_optimizer_state_is_sharded_over_the_expert_data_parallel_group():
    arch = _arch("Qwen3-30B-A3B")
    layout = ParallelSizes(
        world_size=16, tensor_parallel_size=4, expert_parallel_size=8, expert_tensor_parallel_size=1,
        sequence_parallel=True,
    )  # fmt: skip
    assert layout.data_parallel_size == 4 and layout.expert_data_parallel_size == 2
    m = estimate_training_memory(arch, layout, tokens_per_micro_batch=4096)
    params = m.parameters
    assert params.expert == 48 * (128 // 8) * 3 * 2048 * 768
    assert m.optimizer == int(12 * params.dense / 4 + 12 * params.expert / 2)


def test_sglang_kv_cache_by_hand():
    arch = _arch("Qwen3-32B")  # 64 layers, 8 KV heads of 128
    r = estimate_rollout_memory(
        arch, engine_tp=4, gpu_bytes=80 * GiB, mem_fraction_static=0.7, kv_cache_dtype=None, sequence_tokens=9216,
        concurrent_sequences=16,
    )  # fmt: skip
    assert r.kv_bytes_per_token == 2 * 64 * 2 * 128 * 2  # K and V, 2 heads per GPU, bf16
    assert r.weights == 2 * total_parameters(arch) // 4
    assert r.kv_tokens == (int(0.7 * 80 * GiB) - r.weights) // r.kv_bytes_per_token
    assert r.full_length_sequences == r.kv_tokens // 9216
    wide = estimate_rollout_memory(
        arch, engine_tp=16, gpu_bytes=80 * GiB, mem_fraction_static=None, kv_cache_dtype="fp8_e5m2",
        sequence_tokens=None, concurrent_sequences=1,
    )  # fmt: skip
    assert wide.mem_fraction_static == 0.9 and wide.full_length_sequences is None
    assert wide.kv_bytes_per_token == 2 * 64 * 1 * 128 * 1  # KV heads replicated beyond TP 8; fp8 cache


def test_fixture_configs_are_the_published_parameter_counts():
    published_billions = {  # model cards
        "Qwen3-0.6B": 0.6, "Qwen3-1.7B": 1.7, "Qwen3-4B": 4.0, "Qwen3-8B": 8.2, "Qwen3-14B": 14.8,
        "Qwen3-14B-Base": 14.8, "Qwen3-32B": 32.8, "Qwen3-30B-A3B": 30.5, "Qwen2.5-7B": 7.61, "Qwen2.5-Math-7B": 7.62,
        "Qwen2.5-32B": 32.5,
        "Llama-3.1-8B": 8.03,
    }  # fmt: skip
    for name in FIXTURES:
        billions = total_parameters(_arch(name)) / 1e9
        assert abs(billions - published_billions[name]) / published_billions[name] < 0.02, (name, billions)
        json.loads((HF_FIXTURES / name / "config.json").read_text())  # valid JSON
