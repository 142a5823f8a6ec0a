#!/usr/bin/env bash
# The paper's recipe: DAPO on Qwen3-14B-Base with the policy gradient on the top 20% highest-entropy tokens ("Beyond
# the 80/20 Rule", run_only_top20_high_entropy_tokens_dapo_qwen3_14b.sh); run-qwen3-14B-dapo-baseline.sh is the
# paper's full-token DAPO run. Hyperparameters as the paper's scripts (verl's DAPO recipe): clip 0.2 / 0.28 and
# dual clip 10, no KL, no entropy bonus, token-mean loss, lr 1e-6 with 10 warm-up steps, weight decay 0.1, grad clip
# 1.0, temperature 1.0, 512 prompts x 16 responses per rollout in 16 optimizer steps of 32 prompts, dynamic sampling
# (groups with all-equal rewards dropped, rounds of 3 x 512 prompts, at most 10), overlong buffer 4096 with penalty
# 1.0, prompts up to 2048 and responses up to 20480 tokens, the DAPO answer reward, 30 epochs.
#
# Evaluation as the paper's: AIME 2024 avg@32 (32 samples per problem at temperature 1.0, top-p 0.7) every 5
# rollouts, on the DAPO answer template the dapo reward grades.
#
# Layout: NUM_NODES (default 3) nodes of 8 x 80 GB GPUs: training on NUM_NODES - 1 nodes (Megatron TP 4 with
# sequence parallelism, DP 2 per node, 22528 tokens per micro-batch: the paper's ppo_max_token_len_per_gpu), the
# SGLang engines on the last node (4 engines of 2 GPUs). Training nodes: 1, 2, 4, 8 or 16 (DP must divide the
# 512-prompt batch); the paper trained on 16 nodes with rollouts on all of them, here rollouts have one node (the
# trainer launches engines on one node), which makes generation the bottleneck.
# Check it without GPUs:  NUM_NODES=4 bash examples/high_entropy/run-qwen3-14B-dapo.sh --dry-run
# Data: DATA_DIR/dapo-math-17k-answer.jsonl (the DAPO prompt asking for "Answer: ..."), written by
# scripts/data/prepare_math_data.py. Paths and switches: see common.sh. Arguments are passed on to train.py.
set -euo pipefail
# shellcheck source=examples/high_entropy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/models/qwen3-14B.sh
source "$SE_REPO_DIR/scripts/models/qwen3-14B.sh"

MODEL=${HF_MODEL:-Qwen3-14B-Base}
NUM_NODES=${NUM_NODES:-3}
RUN_NAME=$(se_run_name "${MODEL}_dapo")
if ((NUM_NODES < 2)); then
    echo "error: this run needs NUM_NODES >= 2 (training on NUM_NODES - 1 nodes, the SGLang engines on one)" >&2
    exit 2
fi
ACTOR_NODES=$((NUM_NODES - 1))

CKPT_ARGS=(
    --hf-checkpoint "$MODELS_DIR/$MODEL"
    --ref-load "$CKPT_DIR/${MODEL}_torch_dist"
    --load "$CKPT_DIR/$RUN_NAME"
    --save "$CKPT_DIR/$RUN_NAME"
    --save-interval 5
)

ROLLOUT_ARGS=(
    --prompt-data "$DATA_DIR/dapo-math-17k-answer.jsonl"
    --input-key prompt
    --label-key label
    --apply-chat-template
    --rollout-shuffle
    --rm-type dapo
    --reward-key score
    --num-epoch 30
    --rollout-batch-size 512
    --n-samples-per-prompt 16
    --global-batch-size 512
    --rollout-max-prompt-len 2048
    --rollout-max-response-len 20480
    --rollout-temperature 1.0
    --rollout-top-p 1.0
    --rollout-top-k -1
    --over-sampling-batch-size 1536
    --dynamic-sampling-filter-path slime_entropy.rollout.filters.check_reward_nonzero_std
    --dynamic-sampling-max-rounds 10
    --overlong-buffer-len 4096
    --overlong-penalty-factor 1.0
    --balance-data
)

EVAL_ARGS=(
    --eval-interval 5
    --eval-prompt-data aime "$DATA_DIR/aime-2024-answer.jsonl"
    --n-samples-per-eval-prompt 32
    --eval-max-response-len 20480
    --eval-temperature 1.0
    --eval-top-p 0.7
)

DAPO_ARGS=(
    --advantage-estimator grpo
    --entropy-coef 0.0
    --eps-clip 0.2
    --eps-clip-high 0.28
    --dual-clip-c 10
    --calculate-per-token-loss
)

OPTIMIZER_ARGS=(
    --optimizer adam
    --lr 1e-6
    --lr-decay-style constant
    --lr-warmup-iters 10
    --weight-decay 0.1
    --clip-grad 1.0
)

PERF_ARGS=(
    --tensor-model-parallel-size 4
    --sequence-parallel
    --pipeline-model-parallel-size 1
    --context-parallel-size 1
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
    --use-dynamic-batch-size
    --max-tokens-per-gpu 22528
)

CLUSTER_ARGS=(
    --actor-num-nodes "$ACTOR_NODES"
    --actor-num-gpus-per-node "$GPUS_PER_NODE"
    --num-gpus-per-node "$GPUS_PER_NODE"
    --rollout-num-gpus "$GPUS_PER_NODE"
)

SGLANG_ARGS=(
    --rollout-num-gpus-per-engine 2
    --sglang-mem-fraction-static 0.8
)

MISC_ARGS=(
    --attention-dropout 0.0
    --hidden-dropout 0.0
    --accumulate-allreduce-grads-in-fp32
    --attention-softmax-in-fp32
    --attention-backend flash
)

mapfile -t WANDB_ARGS < <(se_wandb_args "$RUN_NAME")

se_launch "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${EVAL_ARGS[@]}" "${DAPO_ARGS[@]}" \
    "${FILTER_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${PERF_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${SGLANG_ARGS[@]}" \
    "${MISC_ARGS[@]}" "${WANDB_ARGS[@]}" "$@"
