"""scripts/models/*.sh: each MODEL_ARGS equals the real model's config.json facts (fixtures/hf/<model>/config.json).

Two independent checks per model: the project's own MODEL_ARGS check (check_model_args, as train.py runs it), and a
plain reading of the config facts written out here, flag by flag. A perturbed value must be caught.
"""

from __future__ import annotations

import argparse
import json

import pytest

from slime_entropy.megatron.architecture import HFArchitecture, check_model_args
from tests.launch.helpers import HF_FIXTURES, REPO, source_model_args

MODELS = {
    "qwen3-0.6B.sh": "Qwen3-0.6B",
    "qwen3-1.7B.sh": "Qwen3-1.7B",
    "qwen3-4B.sh": "Qwen3-4B",
    "qwen3-8B.sh": "Qwen3-8B",
    "qwen3-14B.sh": "Qwen3-14B",
    "qwen3-32B.sh": "Qwen3-32B",
    "qwen3-30B-A3B.sh": "Qwen3-30B-A3B",
    "qwen2.5-7B.sh": "Qwen2.5-7B",
    "qwen2.5-math-7B.sh": "Qwen2.5-Math-7B",
    "qwen2.5-32B.sh": "Qwen2.5-32B",
    "llama3.1-8B.sh": "Llama-3.1-8B",
}

# Flags that describe the architecture; anything else (parallelism, precision, MoE kernels) belongs to run scripts.
ARCHITECTURE_FLAGS = {
    "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--group-query-attention",
    "--num-query-groups", "--kv-channels", "--qk-layernorm", "--swiglu", "--disable-bias-linear", "--add-qkv-bias",
    "--normalization", "--norm-epsilon", "--use-rotary-position-embeddings", "--position-embedding-type",
    "--rotary-percent", "--rotary-base", "--use-rope-scaling", "--rope-scaling-factor", "--vocab-size",
    "--untie-embeddings-and-output-weights", "--num-experts", "--moe-ffn-hidden-size", "--moe-router-topk",
    "--moe-router-score-function", "--moe-layer-freq",
}  # fmt: skip


def _parse(argv: list[str]) -> argparse.Namespace:
    from slime_entropy.megatron.arguments import add_megatron_arguments

    return add_megatron_arguments(argparse.ArgumentParser()).parse_args(argv)


def _config(model: str) -> dict:
    return json.loads((HF_FIXTURES / model / "config.json").read_text())


def _expected(config: dict) -> dict:
    """What each Megatron flag must say, read plainly from the HF config facts."""
    heads = config["num_attention_heads"]
    rope = config.get("rope_scaling") or {}
    expected = {
        "num_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "ffn_hidden_size": config["intermediate_size"],
        "num_attention_heads": heads,
        "num_query_groups": config["num_key_value_heads"],
        "group_query_attention": config["num_key_value_heads"] != heads,
        "kv_channels": config.get("head_dim", config["hidden_size"] // heads),
        "norm_epsilon": config["rms_norm_eps"],
        "normalization": "RMSNorm",
        "rotary_base": float(config["rope_theta"]),
        "vocab_size": config["vocab_size"],
        "untie_embeddings_and_output_weights": not config["tie_word_embeddings"],
        "qk_layernorm": config["model_type"] in ("qwen3", "qwen3_moe"),
        "add_qkv_bias": config["model_type"] == "qwen2",
        "swiglu": config["hidden_act"] == "silu",
        "disable_bias_linear": True,
        "use_rope_scaling": rope.get("rope_type") == "llama3",
    }
    if rope.get("rope_type") == "llama3":
        expected["rope_scaling_factor"] = rope["factor"]
    if config["model_type"] == "qwen3_moe":
        expected.update(
            num_experts=config["num_experts"],
            moe_ffn_hidden_size=config["moe_intermediate_size"],
            moe_router_topk=config["num_experts_per_tok"],
            moe_router_score_function="softmax",
        )
    else:
        expected["num_experts"] = None
    return expected


def test_every_model_script_has_a_fixture_and_vice_versa():
    scripts = {p.name for p in (REPO / "scripts" / "models").glob("*.sh")}
    assert scripts == set(MODELS), "add the new model script (and its config fixture) to MODELS"
    assert set(MODELS.values()) <= {p.name for p in HF_FIXTURES.iterdir()}


@pytest.mark.parametrize("script, model", sorted(MODELS.items()))
def test_model_args_equal_the_hf_config(script, model):
    argv = source_model_args(REPO / "scripts" / "models" / script)
    flags = {a for a in argv if a.startswith("--")}
    assert flags <= ARCHITECTURE_FLAGS, f"non-architecture flags in {script}: {sorted(flags - ARCHITECTURE_FLAGS)}"
    assert len(flags) == sum(a.startswith("--") for a in argv), f"a flag appears twice in {script}"
    args = _parse(argv)
    for dest, value in _expected(_config(model)).items():
        assert getattr(args, dest) == value, f"{script}: {dest} = {getattr(args, dest)!r}, config.json says {value!r}"
    arch = HFArchitecture.from_hf_checkpoint(HF_FIXTURES / model)
    check_model_args(args, arch, source=f"{model}/config.json")
    if arch.is_moe:
        assert args.moe_layer_freq == f"[1]*{arch.num_layers}" and arch.moe_layer_pattern == (1,) * arch.num_layers


@pytest.mark.parametrize("script, model", sorted(MODELS.items()))
def test_a_wrong_value_in_model_args_is_caught(script, model):
    argv = source_model_args(REPO / "scripts" / "models" / script)
    arch = HFArchitecture.from_hf_checkpoint(HF_FIXTURES / model)
    for flag in ("--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--vocab-size"):
        i = argv.index(flag)
        wrong = argv[: i + 1] + [str(int(argv[i + 1]) + 64)] + argv[i + 2 :]
        with pytest.raises(ValueError, match=flag):
            check_model_args(_parse(wrong), arch)
    without_untie = [a for a in argv if a != "--untie-embeddings-and-output-weights"]
    if without_untie != argv:
        with pytest.raises(ValueError, match="--untie-embeddings-and-output-weights"):
            check_model_args(_parse(without_untie), arch)


def test_variant_overrides(tmp_path):
    """Qwen3-4B-Instruct-2507 differs from Qwen3-4B only in rope_theta; Qwen2.5-32B-Instruct only in rms_norm_eps."""
    variant = dict(_config("Qwen3-4B"), rope_theta=5000000)
    (tmp_path / "q4").mkdir()
    (tmp_path / "q4" / "config.json").write_text(json.dumps(variant))
    script = REPO / "scripts" / "models" / "qwen3-4B.sh"
    arch = HFArchitecture.from_hf_checkpoint(tmp_path / "q4")
    with pytest.raises(ValueError, match="--rotary-base"):
        check_model_args(_parse(source_model_args(script)), arch)
    check_model_args(_parse(source_model_args(script, env={"MODEL_ARGS_ROTARY_BASE": "5000000"})), arch)

    instruct = dict(_config("Qwen2.5-32B"), rms_norm_eps=1e-6)
    (tmp_path / "q32").mkdir()
    (tmp_path / "q32" / "config.json").write_text(json.dumps(instruct))
    script = REPO / "scripts" / "models" / "qwen2.5-32B.sh"
    arch = HFArchitecture.from_hf_checkpoint(tmp_path / "q32")
    with pytest.raises(ValueError, match="--norm-epsilon"):
        check_model_args(_parse(source_model_args(script)), arch)
    check_model_args(_parse(source_model_args(script, env={"MODEL_ARGS_NORM_EPSILON": "1e-6"})), arch)
