#!/usr/bin/env bash
# Qwen3-4B, GRPO on DAPO-Math-17k with the policy gradient on the top 20% highest-entropy tokens ("Beyond the 80/20
# Rule"); run-qwen3-4B-baseline.sh is the same run on all tokens. The arguments are the seed example's.
#
# Layout: one node of 8 x 80 GB GPUs, actor and SGLang colocated (time-shared): Megatron TP 2 with sequence
# parallelism, DP 4; SGLang engines of 2 GPUs. Check it without GPUs:
#   bash examples/high_entropy/run-qwen3-4B.sh --dry-run
# Paths and switches: see common.sh. Arguments are passed on to train.py and override the ones below.
set -euo pipefail
# shellcheck source=examples/high_entropy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/models/qwen3-4B.sh
source "$SE_REPO_DIR/scripts/models/qwen3-4B.sh"

MODEL=${HF_MODEL:-Qwen3-4B}
NUM_NODES=1
RUN_NAME=$(se_run_name "$MODEL")

CKPT_ARGS=(
    --hf-checkpoint "$MODELS_DIR/$MODEL"
    --ref-load "$CKPT_DIR/${MODEL}_torch_dist"
    --load "$CKPT_DIR/$RUN_NAME"
    --save "$CKPT_DIR/$RUN_NAME"
    --save-interval 20
)

ROLLOUT_ARGS=(
    --prompt-data "$DATA_DIR/dapo-math-17k.jsonl"
    --input-key prompt
    --label-key label
    --apply-chat-template
    --rollout-shuffle
    --rm-type deepscaler
    --num-rollout 3000
    --rollout-batch-size 16
    --n-samples-per-prompt 8
    --num-steps-per-rollout 1
    --global-batch-size 128
    --rollout-max-response-len 8192
    --rollout-max-prompt-len 1024
    --rollout-temperature 0.8
    --balance-data
)

EVAL_ARGS=(
    --eval-interval 20
    --eval-prompt-data aime "$DATA_DIR/aime-2024.jsonl"
    --n-samples-per-eval-prompt 16
    --eval-max-response-len 16384
    --eval-top-p 0.7
)

GRPO_ARGS=(
    --advantage-estimator grpo
    --use-kl-loss
    --kl-loss-coef 0.00
    --kl-loss-type low_var_kl
    --entropy-coef 0.00
    --eps-clip 0.2
    --eps-clip-high 0.28
)

OPTIMIZER_ARGS=(
    --optimizer adam
    --lr 1e-6
    --lr-decay-style constant
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.98
)

PERF_ARGS=(
    --tensor-model-parallel-size 2
    --sequence-parallel
    --pipeline-model-parallel-size 1
    --context-parallel-size 1
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
    --use-dynamic-batch-size
    --max-tokens-per-gpu 9216
)

CLUSTER_ARGS=(
    --actor-num-nodes "$NUM_NODES"
    --actor-num-gpus-per-node "$GPUS_PER_NODE"
    --num-gpus-per-node "$GPUS_PER_NODE"
    --colocate
)

SGLANG_ARGS=(
    --rollout-num-gpus-per-engine 2
    --sglang-mem-fraction-static 0.7
)

MISC_ARGS=(
    --attention-dropout 0.0
    --hidden-dropout 0.0
    --accumulate-allreduce-grads-in-fp32
    --attention-softmax-in-fp32
    --attention-backend flash
)

mapfile -t WANDB_ARGS < <(se_wandb_args "$RUN_NAME")

se_launch "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${EVAL_ARGS[@]}" "${GRPO_ARGS[@]}" \
    "${FILTER_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${PERF_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${SGLANG_ARGS[@]}" \
    "${MISC_ARGS[@]}" "${WANDB_ARGS[@]}" "$@"
