#!/usr/bin/env bash
# Qwen3-32B, GRPO on DAPO-Math-17k with the policy gradient on the top 20% highest-entropy tokens ("Beyond the 80/20
# Rule"); run-qwen3-32B-baseline.sh is the same run on all tokens. The arguments are the seed example's.
#
# Layout: NUM_NODES (default 3) nodes of 8 x 80 GB GPUs: training on NUM_NODES - 1 nodes (Megatron TP 8 with
# sequence parallelism, DP 1 per node), the SGLang engines on the last node (2 engines of 4 GPUs), weights sent to
# them over NCCL after every step (trainer: engines are launched on one node). Training nodes: 1, 2, 4, 8 or 16;
# with one, the Adam states move to host memory (--optimizer-cpu-offload, as slime's single-node 32B script).
# Multi-node runs go through scripts/slurm/slime_entropy.sbatch (docs/launch.md). Check it without GPUs:
#   NUM_NODES=3 bash examples/high_entropy/run-qwen3-32B.sh --dry-run
# Paths and switches: see common.sh. Arguments are passed on to train.py and override the ones below.
set -euo pipefail
# shellcheck source=examples/high_entropy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/models/qwen3-32B.sh
source "$SE_REPO_DIR/scripts/models/qwen3-32B.sh"

MODEL=${HF_MODEL:-Qwen3-32B}
NUM_NODES=${NUM_NODES:-3}
RUN_NAME=$(se_run_name "$MODEL")
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
    --tensor-model-parallel-size 8
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
    --actor-num-nodes "$ACTOR_NODES"
    --actor-num-gpus-per-node "$GPUS_PER_NODE"
    --num-gpus-per-node "$GPUS_PER_NODE"
    --rollout-num-gpus "$GPUS_PER_NODE"
)

SGLANG_ARGS=(
    --rollout-num-gpus-per-engine 4
    --sglang-mem-fraction-static 0.8
)

MISC_ARGS=(
    --attention-dropout 0.0
    --hidden-dropout 0.0
    --accumulate-allreduce-grads-in-fp32
    --attention-softmax-in-fp32
    --attention-backend flash
)

if ((ACTOR_NODES < 2)); then
    # one training node: DP 1 leaves the full fp32 Adam state (~49 GB per GPU) on each GPU; keep it on the host instead
    PERF_ARGS+=(--optimizer-cpu-offload --overlap-cpu-optimizer-d2h-h2d --use-precision-aware-optimizer)
fi

mapfile -t WANDB_ARGS < <(se_wandb_args "$RUN_NAME")

se_launch "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${EVAL_ARGS[@]}" "${GRPO_ARGS[@]}" \
    "${FILTER_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${PERF_ARGS[@]}" "${CLUSTER_ARGS[@]}" "${SGLANG_ARGS[@]}" \
    "${MISC_ARGS[@]}" "${WANDB_ARGS[@]}" "$@"
