# shellcheck shell=bash
# Qwen/Qwen2.5-32B (the base model of the DAPO recipe): Megatron architecture flags only (q/k/v biases).
# Usage: source scripts/models/qwen2.5-32B.sh; train.py "${MODEL_ARGS[@]}" ...  Every value is checked against the
# checkpoint's config.json. The base model has rms_norm_eps 1e-5 and Qwen2.5-32B-Instruct 1e-6: set
# MODEL_ARGS_NORM_EPSILON=1e-6 for the Instruct checkpoint.
# shellcheck disable=SC2034  # MODEL_ARGS is read by the script that sources this file
MODEL_ARGS=(
    --num-layers 64
    --hidden-size 5120
    --ffn-hidden-size 27648
    --num-attention-heads 40
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --add-qkv-bias
    --swiglu
    --disable-bias-linear
    --normalization RMSNorm
    --norm-epsilon "${MODEL_ARGS_NORM_EPSILON:-1e-5}"
    --use-rotary-position-embeddings
    --rotary-base 1000000
    --vocab-size 152064
    --untie-embeddings-and-output-weights
)
