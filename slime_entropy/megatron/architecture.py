"""The model architecture of a Hugging Face checkpoint, and the check of Megatron's MODEL_ARGS flags against it.

Megatron builds its model from command-line flags (slime's ``scripts/models/<model>.sh`` ``MODEL_ARGS``); the weights
come from an HF checkpoint whose ``config.json`` says what the model really is. :class:`HFArchitecture` reads that
``config.json`` (no transformers import: plain JSON, both the transformers 4 and 5 spellings) for the families this
project supports:

==============  ==========================================================================
model_type      what differs
==============  ==========================================================================
``qwen3``       q/k RMSNorm per head (``--qk-layernorm``), no biases
``qwen2``       bias on q/k/v (``--add-qkv-bias``), no q/k norm (Qwen2 and Qwen2.5)
``llama``       no biases, no q/k norm; Llama-3.1+ "llama3" rope scaling (``--use-rope-scaling``)
``qwen3_moe``   Qwen3 attention + top-k softmax-routed experts, no shared expert
==============  ==========================================================================

:func:`check_model_args` compares the architecture flags a user passed with the checkpoint and raises one
``ValueError`` listing every mismatch with the flag, both values and the fix. The model itself is always built from
``config.json``; the flags are a consistency check, as slime's ``hf_validate_args`` is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HFArchitecture", "SUPPORTED_MODEL_TYPES", "check_model_args", "padded_vocab_size"]

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "qwen3_moe")


@dataclass(frozen=True, kw_only=True)
class HFArchitecture:
    """Architecture of a decoder-only HF checkpoint, in Megatron's vocabulary.

    Attributes mirror the Megatron flag of the same name (``num_layers`` ↔ ``--num-layers``). ``moe_layer_pattern``
    has one entry per layer: 1 for a routed-expert MLP, 0 for a dense MLP (Megatron's ``--moe-layer-freq`` list).
    """

    model_type: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    qk_layernorm: bool
    add_qkv_bias: bool
    norm_epsilon: float
    rotary_base: float
    rope_scaling_factor: float | None
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    torch_dtype: str
    num_experts: int | None = None
    moe_ffn_hidden_size: int | None = None
    moe_router_topk: int | None = None
    moe_norm_topk_prob: bool | None = None
    moe_layer_pattern: tuple[int, ...] = field(default=())

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @classmethod
    def from_hf_checkpoint(cls, hf_dir: str | Path) -> HFArchitecture:
        path = Path(hf_dir) / "config.json"
        if not path.is_file():
            raise ValueError(
                f"--hf-checkpoint {hf_dir}: no config.json there. Point --hf-checkpoint at a Hugging Face model "
                "directory (config.json, *.safetensors, tokenizer files)."
            )
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--hf-checkpoint {hf_dir}: config.json is not valid JSON ({err})") from None
        return cls.from_config_dict(config, source=str(path))

    @classmethod
    def from_config_dict(cls, config: dict[str, Any], source: str = "config.json") -> HFArchitecture:
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        problems = []
        hidden_act = config.get("hidden_act", "silu")
        if hidden_act != "silu":
            problems.append(f"hidden_act={hidden_act!r} (only SwiGLU with silu is supported)")
        if config.get("use_sliding_window"):
            problems.append("use_sliding_window=true (sliding-window attention is not supported)")
        if config.get("mlp_bias"):
            problems.append("mlp_bias=true (MLP biases are not supported)")
        if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
            problems.append("partial_rotary_factor != 1 (partial rotary embeddings are not supported)")
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        rope_theta = rope.get("rope_theta", config.get("rope_theta"))
        if rope_theta is None:
            problems.append("no rope_theta (neither rope_parameters.rope_theta nor rope_theta)")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope_scaling_factor = None
        if rope_type == "llama3":
            expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
            off = {k: rope.get(k) for k, v in expected.items() if float(rope.get(k, -1)) != v}
            if off:
                problems.append(
                    f"llama3 rope scaling with {off}; megatron-core supports only low_freq_factor=1, "
                    "high_freq_factor=4, original_max_position_embeddings=8192"
                )
            rope_scaling_factor = float(rope["factor"])
        elif rope_type != "default":
            problems.append(f"rope_type {rope_type!r} is not supported (default and llama3 are)")

        num_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        num_layers = int(config["num_hidden_layers"])
        attention_bias = bool(config.get("attention_bias", model_type == "qwen2"))
        if model_type != "qwen2" and attention_bias:
            problems.append("attention_bias=true (only Qwen2's q/k/v biases are supported)")
        moe: dict[str, Any] = {}
        if model_type == "qwen3_moe":
            num_experts = config.get("num_experts", config.get("num_local_experts"))
            step = int(config.get("decoder_sparse_step", 1))
            dense_layers = set(config.get("mlp_only_layers") or [])
            pattern = tuple(0 if (i in dense_layers or (i + 1) % step != 0) else 1 for i in range(num_layers))
            if config.get("shared_expert_intermediate_size"):
                problems.append("shared experts are not supported for qwen3_moe")
            moe = dict(
                num_experts=int(num_experts),
                moe_ffn_hidden_size=int(config["moe_intermediate_size"]),
                moe_router_topk=int(config["num_experts_per_tok"]),
                moe_norm_topk_prob=bool(config.get("norm_topk_prob", False)),
                moe_layer_pattern=pattern,
            )
        if problems:
            raise ValueError(f"{source}: unsupported architecture: " + "; ".join(problems))
        return cls(
            model_type=model_type,
            num_layers=num_layers,
            hidden_size=hidden,
            ffn_hidden_size=int(config["intermediate_size"]),
            num_attention_heads=num_heads,
            num_query_groups=int(config.get("num_key_value_heads") or num_heads),
            kv_channels=int(config.get("head_dim") or hidden // num_heads),
            qk_layernorm=model_type in ("qwen3", "qwen3_moe"),
            add_qkv_bias=model_type == "qwen2" and attention_bias,
            norm_epsilon=float(config["rms_norm_eps"]),
            rotary_base=float(rope_theta),
            rope_scaling_factor=rope_scaling_factor,
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
            **moe,
        )


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int, tensor_parallel_size: int) -> int:
    """Megatron's vocabulary padding: round up to a multiple of ``divisible_by × TP``."""
    multiple = make_vocab_size_divisible_by * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple


# (flag, attribute on the argparse Namespace, expected value from the architecture, fix when it differs)
def _expected_flags(arch: HFArchitecture) -> list[tuple[str, str, Any]]:
    gqa = arch.num_query_groups != arch.num_attention_heads
    rows: list[tuple[str, str, Any]] = [
        ("--num-layers", "num_layers", arch.num_layers),
        ("--hidden-size", "hidden_size", arch.hidden_size),
        ("--ffn-hidden-size", "ffn_hidden_size", arch.ffn_hidden_size),
        ("--num-attention-heads", "num_attention_heads", arch.num_attention_heads),
        ("--kv-channels", "kv_channels", arch.kv_channels),
        ("--norm-epsilon", "norm_epsilon", arch.norm_epsilon),
        ("--rotary-base", "rotary_base", arch.rotary_base),
        ("--vocab-size", "vocab_size", arch.vocab_size),
        ("--normalization", "normalization", "RMSNorm"),
        ("--rotary-percent", "rotary_percent", 1.0),
    ]
    if gqa:
        rows.append(("--num-query-groups", "num_query_groups", arch.num_query_groups))
    if arch.is_moe:
        rows += [
            ("--num-experts", "num_experts", arch.num_experts),
            ("--moe-ffn-hidden-size", "moe_ffn_hidden_size", arch.moe_ffn_hidden_size),
            ("--moe-router-topk", "moe_router_topk", arch.moe_router_topk),
            ("--moe-router-score-function", "moe_router_score_function", "softmax"),
        ]
    else:
        rows.append(("--num-experts", "num_experts", None))
    return rows


def _expected_switches(arch: HFArchitecture) -> list[tuple[str, str, bool]]:
    gqa = arch.num_query_groups != arch.num_attention_heads
    rows = [
        ("--group-query-attention", "group_query_attention", gqa),
        ("--qk-layernorm", "qk_layernorm", arch.qk_layernorm),
        ("--swiglu", "swiglu", True),
        ("--untie-embeddings-and-output-weights", "untie_embeddings_and_output_weights", not arch.tie_word_embeddings),
        ("--disable-bias-linear", "disable_bias_linear", True),
        ("--add-qkv-bias", "add_qkv_bias", arch.add_qkv_bias),
        ("--use-rope-scaling", "use_rope_scaling", arch.rope_scaling_factor is not None),
    ]
    if arch.is_moe:
        rows.append(("--moe-router-pre-softmax", "moe_router_pre_softmax", not arch.moe_norm_topk_prob))
    return rows


def _fmt(value: Any) -> str:
    return "(not set)" if value is None else repr(value)


def _same(given: Any, expected: Any) -> bool:
    if isinstance(expected, float) or isinstance(given, float):
        return (
            given is not None
            and expected is not None
            and abs(float(given) - float(expected)) <= 1e-12 * max(1.0, abs(float(expected)))
        )
    return given == expected


def check_model_args(args: Any, arch: HFArchitecture, source: str = "config.json") -> None:
    """Raise one ``ValueError`` listing every Megatron architecture flag that contradicts the HF ``config.json``.

    A value flag left at ``None`` is not checked. Switches (``--qk-layernorm``, ``--swiglu`` …) cannot tell "absent"
    from "off", so they are checked only when the command line states an architecture (``--num-layers`` or
    ``--hidden-size`` given, as every MODEL_ARGS array does): then an absent switch means off, as in Megatron.
    """
    mismatches = []
    for flag, attr, expected in _expected_flags(arch):
        given = getattr(args, attr, None)
        if given is None:
            continue
        if not _same(given, expected):
            fix = f"pass {flag} {expected}" if expected is not None else f"drop {flag}"
            mismatches.append(f"{flag} {_fmt(given)} but {source} has {_fmt(expected)}: {fix}")
    if arch.is_moe and getattr(args, "moe_layer_freq", None) is not None:
        given_pattern = _moe_layer_pattern(args.moe_layer_freq, arch.num_layers)
        if tuple(given_pattern) != arch.moe_layer_pattern:
            mismatches.append(
                f"--moe-layer-freq {args.moe_layer_freq} gives {list(given_pattern)} but {source} has "
                f"{list(arch.moe_layer_pattern)} (decoder_sparse_step/mlp_only_layers): pass --moe-layer-freq "
                f"'{list(arch.moe_layer_pattern)}'"
            )
    states_architecture = (
        getattr(args, "num_layers", None) is not None or getattr(args, "hidden_size", None) is not None
    )
    if states_architecture:
        for flag, attr, expected in _expected_switches(arch):
            given = bool(getattr(args, attr, False))
            if given != expected:
                fix = f"add {flag}" if expected else f"remove {flag}"
                mismatches.append(
                    f"{flag} is {'set' if given else 'absent'} but {source} implies "
                    f"{'on' if expected else 'off'}: {fix}"
                )
    if mismatches:
        raise ValueError(
            f"the Megatron architecture flags (MODEL_ARGS) do not match the --hf-checkpoint ({source}):\n  - "
            + "\n  - ".join(mismatches)
        )


def _moe_layer_pattern(value: Any, num_layers: int) -> list[int]:
    """Megatron's ``--moe-layer-freq``: an int N (every N-th layer, starting at 0) or a Python-style list."""
    if isinstance(value, int):
        return [1 if i % value == 0 else 0 for i in range(num_layers)]
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return _parse_layer_pattern(str(value), num_layers)


def _parse_layer_pattern(text: str, num_layers: int) -> list[int]:
    """Parse ``"[1]*48"``, ``"[0]*3+[1]*45"``, ``"[1,0,1]"`` or ``"2"`` without eval."""
    text = text.strip()
    if text.isdigit():
        return _moe_layer_pattern(int(text), num_layers)
    pattern: list[int] = []
    for term in text.replace(" ", "").split("+"):
        repeat = 1
        if "]*" in term:
            term, times = term.rsplit("*", 1)
            repeat = int(times)
        if not (term.startswith("[") and term.endswith("]")):
            raise ValueError(f"--moe-layer-freq {text!r}: expected an integer or terms like [1]*48 joined by +")
        items = [int(v) for v in term[1:-1].split(",") if v != ""]
        pattern += items * repeat
    if len(pattern) != num_layers:
        raise ValueError(f"--moe-layer-freq {text!r} describes {len(pattern)} layers, the model has {num_layers}")
    return pattern
