#!/usr/bin/env bash
# Qwen2.5-Math-7B with FR3E's entropy-anchored partial rollouts (arXiv 2507.07017; docs/fr3e.md), in the setting of
# the authors' released run script: 32 prompts x 16 samples per rollout, 4 anchors, clip 0.2 / 0.3, lr 2e-6,
# responses up to 3072 tokens (the model's context is 4096), dynamic sampling, no KL, mean-only normalisation
# (their adv_no_use_std), sharpened modulation (p = 1.5), one correct and one wrong base trajectory explored per
# prompt, 16 continuations from every state. Per prompt that is 16 + 2 x 4 x 16 = 144 samples (9x GRPO's
# generation), all in one optimizer step per rollout, as theirs.
#
# Where the released code differs (see docs/fr3e.md): it takes anchors at the lowest sampled-token probabilities
# (here the full-distribution entropy; --fr3e-anchor-score surprisal is theirs) and normalises over all of a prompt's
# samples (--fr3e-normalization-scope prompt is theirs; here per state, as the paper describes).
#
# Layout: one node of 8 x 80 GB GPUs, actor and SGLang colocated: Megatron TP 2, DP 4; one SGLang engine per GPU.
# Check it without GPUs:
#   bash examples/fr3e/run-qwen2.5-math-7B.sh --dry-run
# Paths and switches: see examples/high_entropy/common.sh (BASELINE=1 is not used here; add
# --high-entropy-token-filter --entropy-percentile 0.2 to combine FR3E with the filter). Arguments are passed on to
# train.py and override the ones below.
set -euo pipefail
# shellcheck source=examples/high_entropy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../high_entropy/common.sh"
# shellcheck source=scripts/models/qwen2.5-math-7B.sh
source "$SE_REPO_DIR/scripts/models/qwen2.5-math-7B.sh"

MODEL=${HF_MODEL:-Qwen2.5-Math-7B}
NUM_NODES=1
RUN_NAME=${RUN_NAME:-${MODEL}_fr3e}

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
    --num-rollout 500
    --rollout-batch-size 32
    --n-samples-per-prompt 16
    --over-sampling-batch-size 64
    --dynamic-sampling-filter-path slime_entropy.rollout.filters.check_reward_nonzero_std
    --num-steps-per-rollout 1
    --rollout-max-response-len 3072
    --rollout-max-prompt-len 1024
    --rollout-temperature 1.0
    --disable-grpo-std-normalization
    --balance-data
)

FR3E_ARGS=(
    --fr3e
    --fr3e-num-anchors 4
    --fr3e-rollouts-per-anchor 16
    --fr3e-base-per-prompt 2
    --fr3e-anchor-score entropy
    --fr3e-sharpen-power 1.5
)

EVAL_ARGS=(
    --eval-interval 50
    --eval-prompt-data aime "$DATA_DIR/aime-2024.jsonl"
    --n-samples-per-eval-prompt 16
    --eval-max-response-len 3072
    --eval-temperature 1.0
)

GRPO_ARGS=(
    --advantage-estimator grpo
    --entropy-coef 0.00
    --eps-clip 0.2
    --eps-clip-high 0.3
)

OPTIMIZER_ARGS=(
    --optimizer adam
    --lr 2e-6
    --lr-decay-style constant
    --weight-decay 0.01
    --adam-beta1 0.9
    --adam-beta2 0.999
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
    --max-tokens-per-gpu 8192
)

CLUSTER_ARGS=(
    --actor-num-nodes "$NUM_NODES"
    --actor-num-gpus-per-node "$GPUS_PER_NODE"
    --num-gpus-per-node "$GPUS_PER_NODE"
    --colocate
)

SGLANG_ARGS=(
    --rollout-num-gpus-per-engine 1
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

se_launch "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${FR3E_ARGS[@]}" "${EVAL_ARGS[@]}" \
    "${GRPO_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${PERF_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${SGLANG_ARGS[@]}" \
    "${MISC_ARGS[@]}" "${WANDB_ARGS[@]}" "$@"
