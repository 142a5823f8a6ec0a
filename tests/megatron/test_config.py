"""Architecture from config.json, the MODEL_ARGS check, flag validation and micro-batch planning (no processes)."""

from __future__ import annotations

import json

import pytest

from slime_entropy.megatron.architecture import HFArchitecture, check_model_args, padded_vocab_size
from tests.megatron.helpers import make_args, save_tiny_model

# slime's scripts/models/qwen3-4B.sh (HEAD) and a config.json with Qwen3-4B's published values.
QWEN3_4B_MODEL_ARGS = [
    "--swiglu", "--num-layers", "36", "--hidden-size", "2560", "--ffn-hidden-size", "9728",
    "--num-attention-heads", "32", "--group-query-attention", "--num-query-groups", "8",
    "--use-rotary-position-embeddings", "--disable-bias-linear", "--normalization", "RMSNorm",
    "--norm-epsilon", "1e-6", "--rotary-base", "1000000", "--vocab-size", "151936", "--kv-channels", "128",
    "--qk-layernorm",
]  # fmt: skip
QWEN3_4B_CONFIG = {
    "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000, "vocab_size": 151936, "tie_word_embeddings": True, "hidden_act": "silu",
    "max_position_embeddings": 40960, "torch_dtype": "bfloat16",
}  # fmt: skip
QWEN3_30B_A3B_CONFIG = {
    "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "vocab_size": 151936, "tie_word_embeddings": False, "hidden_act": "silu",
    "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": True,
    "decoder_sparse_step": 1, "mlp_only_layers": [],
}  # fmt: skip
QWEN3_30B_A3B_MODEL_ARGS = [
    "--num-layers", "48", "--hidden-size", "2048", "--ffn-hidden-size", "6144", "--num-attention-heads", "32",
    "--group-query-attention", "--num-query-groups", "4", "--kv-channels", "128", "--qk-layernorm",
    "--disable-bias-linear", "--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--position-embedding-type",
    "rope", "--rotary-percent", "1.0", "--rotary-base", "1000000", "--swiglu", "--untie-embeddings-and-output-weights",
    "--vocab-size", "151936", "--moe-ffn-hidden-size", "768", "--num-experts", "128", "--moe-router-topk", "8",
    "--moe-router-score-function", "softmax", "--moe-token-dispatcher-type", "alltoall", "--moe-layer-freq",
    "[1]*48", "--moe-grouped-gemm", "--moe-token-drop-policy", "probs", "--moe-router-dtype", "fp32",
    "--moe-permute-fusion", "--moe-aux-loss-coeff", "0",
]  # fmt: skip


def test_slime_model_args_pass_against_their_configs():
    check_model_args(make_args(QWEN3_4B_MODEL_ARGS), HFArchitecture.from_config_dict(QWEN3_4B_CONFIG))
    moe = HFArchitecture.from_config_dict(QWEN3_30B_A3B_CONFIG)
    assert moe.is_moe and moe.moe_layer_pattern == (1,) * 48 and moe.num_query_groups == 4
    check_model_args(make_args(QWEN3_30B_A3B_MODEL_ARGS), moe)


def test_model_args_mismatches_name_flag_values_and_fix():
    arch = HFArchitecture.from_config_dict(QWEN3_4B_CONFIG)
    argv = [a if a != "9728" else "9729" for a in QWEN3_4B_MODEL_ARGS]
    argv = [a for a in argv if a != "--qk-layernorm"] + ["--untie-embeddings-and-output-weights"]
    with pytest.raises(ValueError) as err:
        check_model_args(make_args(argv), arch, source="Qwen3-4B/config.json")
    message = str(err.value)
    assert "--ffn-hidden-size 9729 but Qwen3-4B/config.json has 9728: pass --ffn-hidden-size 9728" in message
    assert "--qk-layernorm is absent but Qwen3-4B/config.json implies on: add --qk-layernorm" in message
    assert "--untie-embeddings-and-output-weights is set" in message and "remove --untie-embeddings" in message
    # no architecture stated: nothing to contradict
    check_model_args(make_args([]), arch)
    moe = HFArchitecture.from_config_dict({**QWEN3_30B_A3B_CONFIG, "mlp_only_layers": [0]})
    with pytest.raises(ValueError, match=r"--moe-layer-freq \[1\]\*48 gives .* pass --moe-layer-freq"):
        check_model_args(make_args(QWEN3_30B_A3B_MODEL_ARGS), moe)


def test_architecture_reads_every_family(tmp_path):
    expected = {
        "qwen3": dict(qk_layernorm=True, add_qkv_bias=False, tie_word_embeddings=False),
        "llama": dict(qk_layernorm=False, add_qkv_bias=False, tie_word_embeddings=True, rope_scaling_factor=8.0),
        "qwen2": dict(qk_layernorm=False, add_qkv_bias=True, tie_word_embeddings=True),
        "qwen3_moe": dict(qk_layernorm=True, num_experts=4, moe_router_topk=2, moe_norm_topk_prob=True),
    }
    for kind, fields in expected.items():
        arch = HFArchitecture.from_hf_checkpoint(save_tiny_model(kind, tmp_path / kind))
        for name, value in fields.items():
            assert getattr(arch, name) == value, (kind, name)
    bad = dict(QWEN3_4B_CONFIG, hidden_act="gelu", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="hidden_act='gelu'.*rope_type 'yarn'"):
        HFArchitecture.from_config_dict(bad)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        HFArchitecture.from_config_dict({"model_type": "gpt2"})
    assert padded_vocab_size(151936, 128, 8) == 152576 and padded_vocab_size(151936, 1, 8) == 151936


def test_settings_report_every_problem_at_once(tmp_path):
    from slime_entropy.megatron.config import MegatronConfig

    hf = save_tiny_model("qwen3", tmp_path / "hf")
    with pytest.raises(ValueError, match="--hf-checkpoint is required"):
        MegatronConfig.from_args(make_args([]), world_size=None, on_gpu=False)
    argv = ["--hf-checkpoint", str(hf), "--sequence-parallel", "--tensor-model-parallel-size", "3",
            "--use-dynamic-batch-size", "--save-interval", "2", "--use-kl-loss", "--lr", "1e-5", "--min-lr", "1e-4",
            "--context-parallel-size", "2", "--optimizer-cpu-offload", "--no-use-distributed-optimizer"]  # fmt: skip
    with pytest.raises(ValueError) as err:
        MegatronConfig.from_args(make_args(argv), world_size=4, on_gpu=False)
    message = str(err.value)
    for fragment in (
        "--sequence-parallel is not available on CPU",
        "--tensor-model-parallel-size 3 must divide the 4 attention heads",
        "--use-dynamic-batch-size needs --max-tokens-per-gpu",
        "--save-interval needs --save DIR",
        "pass --ref-load",
        "--min-lr (0.0001) must lie in [0, --lr (1e-05)]",
        "--context-parallel-size 2: slime_entropy's actor does not support context parallelism",
        "4 training ranks are not a multiple of TP x PP x CP",
        "--optimizer-cpu-offload needs the distributed optimizer",
    ):
        assert fragment in message, (fragment, message)
    settings = MegatronConfig.from_args(
        make_args(["--hf-checkpoint", str(hf), "--tensor-model-parallel-size", "2"]), world_size=None, on_gpu=False
    )
    assert (
        settings.batching.pad_multiple == 256
        and not settings.build.bf16
        and settings.optimizer.use_distributed_optimizer
    )
    config = json.loads((hf / "config.json").read_text())
    assert settings.arch.vocab_size == config["vocab_size"]


def test_parallel_size_rules_live_in_one_function():
    from slime_entropy.launch.checks import check_parallel_layout
    from slime_entropy.launch.memory import ParallelSizes
    from slime_entropy.megatron.config import parallel_size_problems

    moe = HFArchitecture.from_config_dict(QWEN3_30B_A3B_CONFIG)
    sizes = dict(tensor=2, pipeline=2, context=1, expert=4, expert_tensor=None, sequence_parallel=True)
    assert parallel_size_problems(moe, **sizes, world_size=16) == []
    # 8 ranks, PP 2: 4 ranks per stage cannot hold EP 4 x expert TP 2; 6 ranks are no whole TP x PP replicas
    assert parallel_size_problems(None, **sizes, world_size=8) == [
        "--expert-model-parallel-size 4 x expert TP 2 must divide the 4 ranks of a pipeline stage"
    ]
    assert (
        "6 training ranks are not a multiple of TP x PP x CP = 2 x 2 x 1"
        in parallel_size_problems(None, **sizes, world_size=6)[0]
    )
    assert parallel_size_problems(None, **{**sizes, "tensor": 0}, world_size=8) == [
        "--tensor-model-parallel-size must be >= 1, got 0"
    ]
    # the dry run's layout check reports the actor's rules, word for word
    bad = dict(sizes, tensor=3, pipeline=5, expert=3)
    actor_rules = parallel_size_problems(moe, **bad, world_size=None)
    assert len(actor_rules) == 3
    layout = ParallelSizes(world_size=16, tensor_parallel_size=3, pipeline_parallel_size=5, expert_parallel_size=3,
                           sequence_parallel=True)  # fmt: skip
    launch = check_parallel_layout(moe, layout, num_gpus_per_node=8, rollout_num_gpus_per_engine=1)
    assert launch[: len(actor_rules)] == actor_rules


def test_micro_batch_plans():
    from slime_entropy.megatron.batching import _partition_by_tokens, first_fit_count, plan_micro_batches

    lengths = [30, 10, 25, 5, 40, 12, 8, 20]
    plan = plan_micro_batches(lengths, micro_batch_size=None, max_tokens=50, dp_group=None)
    assert len(plan) == first_fit_count(lengths, 50) == 3
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 50 for b in plan)
    assert plan_micro_batches(lengths, micro_batch_size=3, max_tokens=None, dp_group=None) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7],
    ]
    # more micro-batches than samples (another DP rank needs them): the extra ones are empty
    assert _partition_by_tokens([10, 10], 4, 50) == [[0], [1], [], []]
    with pytest.raises(ValueError, match="exceeds --max-tokens-per-gpu 20"):
        plan_micro_batches([10, 30], micro_batch_size=None, max_tokens=20, dp_group=None)
