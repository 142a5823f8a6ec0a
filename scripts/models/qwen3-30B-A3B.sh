# shellcheck shell=bash
# Qwen/Qwen3-30B-A3B and Qwen/Qwen3-30B-A3B-Base (MoE: 128 experts, top-8, every layer routed, no shared expert):
# Megatron architecture flags only. Usage: source scripts/models/qwen3-30B-A3B.sh; train.py "${MODEL_ARGS[@]}" ...
# MoE performance switches (grouped GEMM, permute fusion, dispatcher) and --moe-aux-loss-coeff belong to the run
# script, not here. MODEL_ARGS_ROTARY_BASE overrides rope_theta.
# shellcheck disable=SC2034  # MODEL_ARGS is read by the script that sources this file
MODEL_ARGS=(
    --num-layers 48
    --hidden-size 2048
    --ffn-hidden-size 6144
    --num-attention-heads 32
    --group-query-attention
    --num-query-groups 4
    --kv-channels 128
    --qk-layernorm
    --swiglu
    --disable-bias-linear
    --normalization RMSNorm
    --norm-epsilon 1e-6
    --position-embedding-type rope
    --rotary-percent 1.0
    --rotary-base "${MODEL_ARGS_ROTARY_BASE:-1000000}"
    --vocab-size 151936
    --untie-embeddings-and-output-weights
    --num-experts 128
    --moe-ffn-hidden-size 768
    --moe-router-topk 8
    --moe-router-score-function softmax
    --moe-layer-freq "[1]*48"
)
