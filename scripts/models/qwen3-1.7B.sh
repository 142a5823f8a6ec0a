# shellcheck shell=bash
# Qwen/Qwen3-1.7B and Qwen/Qwen3-1.7B-Base: Megatron architecture flags only (no parallelism, no training settings).
# Usage: source scripts/models/qwen3-1.7B.sh; train.py "${MODEL_ARGS[@]}" ...  train.py and the converters check every
# value against the checkpoint's config.json. MODEL_ARGS_ROTARY_BASE overrides rope_theta for variants that
# differ only there (Qwen3-4B-Instruct-2507: 5000000).
# shellcheck disable=SC2034  # MODEL_ARGS is read by the script that sources this file
MODEL_ARGS=(
    --num-layers 28
    --hidden-size 2048
    --ffn-hidden-size 6144
    --num-attention-heads 16
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --qk-layernorm
    --swiglu
    --disable-bias-linear
    --normalization RMSNorm
    --norm-epsilon 1e-6
    --use-rotary-position-embeddings
    --rotary-base "${MODEL_ARGS_ROTARY_BASE:-1000000}"
    --vocab-size 151936
)
