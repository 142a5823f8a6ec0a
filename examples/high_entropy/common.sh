# shellcheck shell=bash
# Sourced by the run scripts of examples/high_entropy: paths, the filter switch, the HF -> torch_dist conversion
# step and the launch of train.py. Settings come from the environment:
#
#   MODELS_DIR    HF checkpoints, one directory per model, e.g. $MODELS_DIR/Qwen3-8B   (default /root/models)
#   DATA_DIR      files written by scripts/data/prepare_math_data.py                   (default /root/data)
#   CKPT_DIR      torch_dist checkpoints: converted references and each run's own      (default /root/checkpoints)
#   NUM_NODES     nodes of 8 GPUs for the scripts that scale (the Slurm job sets it)
#   GPUS_PER_NODE GPUs per node (default 8)
#   BASELINE=1    the all-token baseline (the *-baseline.sh scripts set it)
#   RUN_NAME      checkpoint directory name under CKPT_DIR (default <model>_top20 or <model>_all-tokens)
#   SKIP_CONVERT=1  never run the conversion step (the reference checkpoint must exist)
#   USE_WANDB=1   log to Weights & Biases (online with WANDB_API_KEY, offline otherwise)
#   PYTHON, TRAIN_PY  interpreter and trainer (default python3 and <repo>/train.py)
#
# Arguments given to a run script are appended to train.py's command line, so they override the script's values
# (argparse keeps the last one): e.g. `--dry-run`, or `--num-rollout 2`.

SE_REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODELS_DIR=${MODELS_DIR:-/root/models}
DATA_DIR=${DATA_DIR:-/root/data}
CKPT_DIR=${CKPT_DIR:-/root/checkpoints}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PYTHON=${PYTHON:-python3}
TRAIN_PY=${TRAIN_PY:-$SE_REPO_DIR/train.py}

# FILTER_ARGS: the only arguments in which a run and its all-token baseline differ (besides the run name).
# shellcheck disable=SC2034  # FILTER_ARGS is used by the run scripts that source this file
if [ "${BASELINE:-0}" = 1 ]; then
    FILTER_ARGS=()
    SE_VARIANT=all-tokens
else
    FILTER_ARGS=(--high-entropy-token-filter --entropy-percentile 0.2)
    SE_VARIANT=top20
fi

# se_run_name MODEL: the run's checkpoint directory name (RUN_NAME wins).
se_run_name() {
    echo "${RUN_NAME:-${1}_${SE_VARIANT}}"
}

# se_wandb_args GROUP: Weights & Biases flags when USE_WANDB=1, nothing otherwise.
se_wandb_args() {
    if [ "${USE_WANDB:-0}" = 1 ]; then
        printf '%s\n' --use-wandb --wandb-project "${WANDB_PROJECT:-slime-entropy}" --wandb-group "$1"
    fi
}

# se_has_arg FLAG ARGS...: whether FLAG is among ARGS.
se_has_arg() {
    local flag=$1 arg
    shift
    for arg in "$@"; do
        if [ "$arg" = "$flag" ]; then
            return 0
        fi
    done
    return 1
}

# se_arg_value FLAG ARGS...: the value after the last FLAG in ARGS (empty if absent).
se_arg_value() {
    local flag=$1 value="" previous=""
    shift
    for arg in "$@"; do
        if [ "$previous" = "$flag" ]; then
            value=$arg
        fi
        previous=$arg
    done
    echo "$value"
}

# se_local_gpus: GPUs visible on this node (0 without nvidia-smi).
se_local_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

# se_convert_checkpoint HF_DIR OUT_DIR: the HF -> torch_dist step (what --ref-load expects), unless OUT_DIR already
# holds a converted checkpoint. Runs the converter over the node's GPUs as pipeline stages (the largest GPU count
# that divides the layer count), or in one process without GPUs. A lock file keeps a run and its baseline, started
# together, from converting the same model twice.
se_convert_checkpoint() {
    local hf_dir=$1 out_dir=$2 layers gpus nproc
    if [ -f "$out_dir/latest_checkpointed_iteration.txt" ]; then
        return 0
    fi
    if [ ! -f "$hf_dir/config.json" ]; then
        echo "error: $hf_dir/config.json not found: download the model into \$MODELS_DIR first (docs/launch.md)" >&2
        return 1
    fi
    mkdir -p "$(dirname "$out_dir")"
    layers=$(se_arg_value --num-layers "${MODEL_ARGS[@]}")
    gpus=$(se_local_gpus)
    nproc=0
    for ((n = gpus; n >= 1; n--)); do
        if ((layers % n == 0)); then
            nproc=$n
            break
        fi
    done
    (
        flock 9
        if [ -f "$out_dir/latest_checkpointed_iteration.txt" ]; then
            exit 0
        fi
        echo "converting $hf_dir -> $out_dir (torch_dist) on $nproc GPU(s)" >&2
        if ((nproc >= 1)); then
            "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$nproc" \
                "$SE_REPO_DIR/tools/convert_hf_to_torch_dist.py" "${MODEL_ARGS[@]}" \
                --hf-checkpoint "$hf_dir" --save "$out_dir"
        else
            "$PYTHON" "$SE_REPO_DIR/tools/convert_hf_to_torch_dist.py" "${MODEL_ARGS[@]}" \
                --hf-checkpoint "$hf_dir" --save "$out_dir"
        fi
    ) 9>"$out_dir.convert.lock"
}

# se_launch ARGS...: convert the reference checkpoint if needed, then run train.py with ARGS (replaces this shell).
# With --dry-run nothing is converted or started: train.py prints the plan and exits.
se_launch() {
    if ! se_has_arg --dry-run "$@" && [ "${SKIP_CONVERT:-0}" != 1 ]; then
        local ref_load
        ref_load=$(se_arg_value --ref-load "$@")
        if [ -n "$ref_load" ]; then
            se_convert_checkpoint "$(se_arg_value --hf-checkpoint "$@")" "$ref_load"
        fi
    fi
    # Megatron's tensor/sequence-parallel overlap needs in-order kernel launches on one connection.
    export CUDA_DEVICE_MAX_CONNECTIONS=1
    if [ -z "${NCCL_NVLS_ENABLE:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
        if nvidia-smi topo -m 2>/dev/null | grep -q 'NV[0-9]'; then
            export NCCL_NVLS_ENABLE=1
        else
            export NCCL_NVLS_ENABLE=0
        fi
    fi
    cd "$SE_REPO_DIR" || return 1
    exec "$PYTHON" "$TRAIN_PY" "$@"
}
