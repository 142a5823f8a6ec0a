# shellcheck shell=bash
# Qwen/Qwen2.5-Math-7B: Megatron architecture flags only (the Qwen2.5-7B shape with q/k/v biases, but rope theta
# 10000 and a 4096-token context). Usage: source scripts/models/qwen2.5-math-7B.sh; train.py "${MODEL_ARGS[@]}" ...
# Every value is checked against the checkpoint's config.json.
# shellcheck disable=SC2034  # MODEL_ARGS is read by the script that sources this file
MODEL_ARGS=(
    --num-layers 28
    --hidden-size 3584
    --ffn-hidden-size 18944
    --num-attention-heads 28
    --group-query-attention
    --num-query-groups 4
    --kv-channels 128
    --add-qkv-bias
    --swiglu
    --disable-bias-linear
    --normalization RMSNorm
    --norm-epsilon 1e-6
    --use-rotary-position-embeddings
    --rotary-base 10000
    --vocab-size 152064
    --untie-embeddings-and-output-weights
)
