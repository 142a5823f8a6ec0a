"""megatron-core ``GPTModel`` for an :class:`~slime_entropy.megatron.architecture.HFArchitecture`.

Layer specs: transformer-engine's when TE imports and CUDA is there (``--transformer-impl auto``), megatron-core's
pure-torch local spec otherwise. Samples are packed in THD layout (one ``[1, T]`` stream, ``cu_seqlens`` marking the
samples) on both: TE attends within each sample natively; on the local spec, whose ``DotProductAttention`` rejects
packed input, :class:`PackedSequenceAttention` runs causal scaled-dot-product attention sample by sample. RoPE
restarts at every sample boundary in both cases (megatron-core's THD rope path).

Only one model chunk per pipeline stage (no virtual pipeline). Context parallelism is not supported (CP = 1).
"""

from __future__ import annotations

import copy
import importlib.util
import logging

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention

from slime_entropy.megatron import cpu_shim
from slime_entropy.megatron.architecture import HFArchitecture, padded_vocab_size
from slime_entropy.megatron.config import ModelBuildConfig

__all__ = [
    "ModelBuildConfig",
    "PackedSequenceAttention",
    "transformer_engine_usable",
    "build_transformer_config",
    "build_gpt_model",
    "packed_seq_params_from_lengths",
]

logger = logging.getLogger(__name__)


def transformer_engine_usable() -> bool:
    """TE layer specs need both CUDA and an importable transformer_engine."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "use the local spec"
        logger.warning("transformer_engine is installed but does not import (%s); using the local spec", err)
        return False
    return True


def _use_transformer_engine(build: ModelBuildConfig) -> bool:
    if build.transformer_impl == "local":
        return False
    usable = transformer_engine_usable()
    if build.transformer_impl == "transformer_engine" and not usable:
        raise ValueError(
            "--transformer-impl transformer_engine needs CUDA and an importable transformer_engine; "
            "use --transformer-impl local (or auto) on this machine"
        )
    return usable


def build_transformer_config(arch: HFArchitecture, build: ModelBuildConfig) -> TransformerConfig:
    """The megatron-core ``TransformerConfig`` for ``arch`` with the given parallel layout and precision."""
    on_gpu = torch.cuda.is_available()
    params_dtype = torch.bfloat16 if build.bf16 else torch.float32
    kwargs = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.kv_channels,
        layernorm_epsilon=arch.norm_epsilon,
        normalization="RMSNorm",
        qk_layernorm=arch.qk_layernorm,
        add_bias_linear=False,
        add_qkv_bias=arch.add_qkv_bias,
        gated_linear_unit=True,
        activation_func=F.silu,
        attention_dropout=build.attention_dropout,
        hidden_dropout=build.hidden_dropout,
        tensor_model_parallel_size=build.tensor_model_parallel_size,
        pipeline_model_parallel_size=build.pipeline_model_parallel_size,
        expert_model_parallel_size=build.expert_model_parallel_size,
        expert_tensor_parallel_size=build.expert_tensor_parallel_size,
        context_parallel_size=1,
        sequence_parallel=build.sequence_parallel,
        variable_seq_lengths=True,
        bf16=build.bf16,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        attention_softmax_in_fp32=build.attention_softmax_in_fp32,
        calculate_per_token_loss=build.calculate_per_token_loss,
        use_cpu_initialization=not on_gpu,
        # The fusions need apex/TE/CUDA kernels; megatron-core falls back to torch for each when off.
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        recompute_granularity=build.recompute_granularity,
        recompute_method=build.recompute_method,
        recompute_num_layers=build.recompute_num_layers,
        # megatron-core validates the dispatcher even for dense models; only alltoall allows variable lengths.
        moe_token_dispatcher_type=build.moe_token_dispatcher_type,
    )
    if arch.is_moe:
        kwargs.update(
            num_moe_experts=arch.num_experts,
            moe_ffn_hidden_size=arch.moe_ffn_hidden_size,
            moe_router_topk=arch.moe_router_topk,
            moe_router_score_function="softmax",
            # HF renormalises the top-k probabilities (norm_topk_prob) <=> Megatron's top-k then softmax.
            moe_router_pre_softmax=not arch.moe_norm_topk_prob,
            moe_router_load_balancing_type="aux_loss" if build.moe_aux_loss_coeff > 0 else "none",
            moe_aux_loss_coeff=build.moe_aux_loss_coeff,
            moe_grouped_gemm=build.moe_grouped_gemm,
            moe_router_dtype=build.moe_router_dtype,
            moe_layer_freq=list(arch.moe_layer_pattern),
            moe_permute_fusion=False,
        )
    return TransformerConfig(**kwargs)


class PackedSequenceAttention(DotProductAttention):
    """Local-spec core attention that also accepts THD-packed input (``packed_seq_params``).

    Packed: ``query [T, heads/TP, d]``, ``key``/``value [T, groups/TP, d]``, samples delimited by
    ``packed_seq_params.cu_seqlens_q``; causal attention within each sample only; returns ``[T, heads/TP, d]``.
    Unpacked input goes to megatron-core's ``DotProductAttention`` unchanged.
    """

    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params: PackedSeqParams | None = None,
    ):
        if packed_seq_params is None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        assert attention_bias is None, "attention bias is not supported with packed sequences"
        cu_seqlens = packed_seq_params.cu_seqlens_q
        if packed_seq_params.cu_seqlens_q_padded is not None:
            cu_seqlens = packed_seq_params.cu_seqlens_q_padded
        bounds = cu_seqlens.tolist()
        dropout_p = self.attention_dropout.p if self.training else 0.0
        out = torch.empty_like(query)
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            if end <= start:
                continue
            # [L, h, d] -> [h, L, d]; GQA: every key/value group serves heads/groups query heads.
            q = query[start:end].transpose(0, 1)
            k = key[start:end].transpose(0, 1)
            v = value[start:end].transpose(0, 1)
            with torch.autocast(device_type=query.device.type, enabled=False):
                if self.config.attention_softmax_in_fp32 and q.dtype != torch.float32:
                    o = F.scaled_dot_product_attention(
                        q.float(),
                        k.float(),
                        v.float(),
                        is_causal=True,
                        dropout_p=dropout_p,
                        scale=self.softmax_scale,
                        enable_gqa=True,
                    ).to(q.dtype)
                else:
                    o = F.scaled_dot_product_attention(
                        q, k, v, is_causal=True, dropout_p=dropout_p, scale=self.softmax_scale, enable_gqa=True
                    )
            out[start:end] = o.transpose(0, 1)
        return out


def _layer_spec(config: TransformerConfig, use_te: bool):
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization="RMSNorm")
    if use_te:
        return spec
    # Layer specs may share submodule objects; copy before swapping the core attention.
    spec.layer_specs = [copy.deepcopy(layer_spec) for layer_spec in spec.layer_specs]
    for layer_spec in spec.layer_specs:
        attention = layer_spec.submodules.self_attention
        if attention.submodules.core_attention is not DotProductAttention:
            raise RuntimeError(
                f"megatron-core's local layer spec now uses {attention.submodules.core_attention} for core attention; "
                "PackedSequenceAttention expects DotProductAttention (update slime_entropy/megatron/model.py)"
            )
        attention.submodules.core_attention = PackedSequenceAttention
    return spec


def build_gpt_model(
    arch: HFArchitecture, build: ModelBuildConfig, config: TransformerConfig | None = None
) -> GPTModel:
    """This pipeline stage's ``GPTModel`` (parallel state must be initialised). Weights are random until loaded."""
    config = config or build_transformer_config(arch, build)
    use_te = _use_transformer_engine(build)
    if not use_te:
        cpu_shim.define_missing_te_symbols()
    pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(config, use_te),
        vocab_size=padded_vocab_size(
            arch.vocab_size, build.make_vocab_size_divisible_by, build.tensor_model_parallel_size
        ),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(arch.rotary_base) if float(arch.rotary_base).is_integer() else arch.rotary_base,
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,
        parallel_output=True,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    logger.info(
        "built GPTModel (%s spec) for %s: %d layers on this stage, %d parameters on this rank",
        "transformer-engine" if use_te else "local",
        arch.model_type,
        len(model.decoder.layers),
        sum(p.numel() for p in model.parameters()),
    )
    return model


def packed_seq_params_from_lengths(lengths: list[int], device: torch.device | str) -> PackedSeqParams:
    """THD ``PackedSeqParams`` for samples of ``lengths`` packed back to back (padding counted as a sample)."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + int(n))
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device)
    max_len = max(lengths) if lengths else 0
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
    )
