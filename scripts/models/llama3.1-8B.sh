# shellcheck shell=bash
# meta-llama/Llama-3.1-8B and Llama-3.1-8B-Instruct: Megatron architecture flags only ("llama3" rope scaling with
# factor 8, low/high frequency factors 1/4 and 8192 original positions, which megatron-core fixes).
# Usage: source scripts/models/llama3.1-8B.sh; train.py "${MODEL_ARGS[@]}" ...  Every value is checked against the
# checkpoint's config.json.
# shellcheck disable=SC2034  # MODEL_ARGS is read by the script that sources this file
MODEL_ARGS=(
    --num-layers 32
    --hidden-size 4096
    --ffn-hidden-size 14336
    --num-attention-heads 32
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --swiglu
    --disable-bias-linear
    --normalization RMSNorm
    --norm-epsilon 1e-5
    --use-rotary-position-embeddings
    --rotary-base 500000
    --use-rope-scaling
    --rope-scaling-factor 8.0
    --vocab-size 128256
    --untie-embeddings-and-output-weights
)
