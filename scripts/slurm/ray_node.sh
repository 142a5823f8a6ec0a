#!/usr/bin/env bash
# One Ray node of a Slurm job, started by slime_entropy.sbatch with srun (one task per node):
#
#   ray_node.sh head   HEAD_IP PORT_BASE NUM_GPUS
#   ray_node.sh worker HEAD_IP PORT_BASE NUM_GPUS
#
# Sets the node's environment, which every process Ray starts there inherits: the interface that carries its route
# to the head (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME unless already set),
# MASTER_ADDR, CUDA_DEVICE_MAX_CONNECTIONS=1 and NCCL_NVLS_ENABLE (from the NVLink topology). Then it runs
# `ray start --block` with a per-job temp dir and per-job ports (PORT_BASE + 0..7, see docs/launch.md) and waits.
# On SIGTERM/SIGINT (teardown, scancel) it stops that Ray node -- only the processes this script started -- copies
# the node's Ray logs to $SE_LOG_DIR/ray/<host>/ and removes the temp dir.
set -euo pipefail

role=${1:?usage: ray_node.sh head|worker HEAD_IP PORT_BASE NUM_GPUS}
head_ip=${2:?head IP}
port_base=${3:?port base}
num_gpus=${4:?GPUs per node}
host=$(hostname -s)
log_dir=${SE_LOG_DIR:-.}
temp_dir=${SE_RAY_TEMP_DIR:-/tmp/ray_se_${SLURM_JOB_ID:-$$}}
stop_timeout=${SE_RAY_STOP_TIMEOUT:-30}
RAY=${RAY:-ray}

# The address and interface this node reaches the head through (the head itself: the head IP).
if [ "$role" = head ]; then
    node_ip=$head_ip
    iface=$(ip -o -4 addr show | awk -v ip="$head_ip" '{split($4, a, "/"); if (a[1] == ip) {print $2; exit}}')
else
    route=$(ip -o -4 route get "$head_ip")
    node_ip=$(awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}' <<<"$route")
    iface=$(awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}' <<<"$route")
fi
if [ -z "$node_ip" ] || [ -z "$iface" ]; then
    echo "ray_node.sh[$host]: cannot find this node's address towards the head $head_ip" >&2
    exit 1
fi
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$iface}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$iface}
export NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME=${NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME:-$iface}
export MASTER_ADDR=$head_ip
# Every process Ray starts on this node inherits these (the training actors and SGLang engines included).
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
if [ -z "${NCCL_NVLS_ENABLE:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    if nvidia-smi topo -m 2>/dev/null | grep -q 'NV[0-9]'; then
        export NCCL_NVLS_ENABLE=1
    else
        export NCCL_NVLS_ENABLE=0
    fi
fi
# Fast teardown: no graceful drain of the node on SIGTERM.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0

ports=(
    --node-manager-port $((port_base + 2))
    --object-manager-port $((port_base + 3))
    --dashboard-agent-listen-port $((port_base + 4))
    --dashboard-agent-grpc-port $((port_base + 5))
    --metrics-export-port $((port_base + 6))
    --runtime-env-agent-port $((port_base + 7))
)
if [ "$role" = head ]; then
    start=(--head --port "$port_base" --include-dashboard false)
    # Ray's client server (default port 10001) only starts where its dependency (grpc) is installed.
    if "${PYTHON:-python3}" -c "import grpc" 2>/dev/null; then
        start+=(--ray-client-server-port $((port_base + 1)))
    fi
else
    start=(--address "$head_ip:$port_base")
fi

echo "ray_node.sh[$host]: $role at $node_ip (interface $iface), $num_gpus GPUs, temp dir $temp_dir"
mkdir -p "$temp_dir"
"$RAY" start "${start[@]}" --node-ip-address "$node_ip" --num-gpus "$num_gpus" --temp-dir "$temp_dir" \
    "${ports[@]}" --disable-usage-stats --block &
ray_pid=$!

stopped=0
stop_ray() {
    if ((stopped)); then
        return
    fi
    stopped=1
    trap '' TERM INT
    if kill -0 "$ray_pid" 2>/dev/null; then
        echo "ray_node.sh[$host]: stopping Ray (pid $ray_pid)"
        kill -TERM "$ray_pid" 2>/dev/null || true
        for ((i = 0; i < stop_timeout * 2; i++)); do
            kill -0 "$ray_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$ray_pid" 2>/dev/null; then
            echo "ray_node.sh[$host]: Ray did not stop within ${stop_timeout}s; killing it" >&2
            kill -KILL "$ray_pid" 2>/dev/null || true
        fi
    fi
    wait "$ray_pid" 2>/dev/null || true
    if [ -d "$temp_dir/session_latest/logs" ]; then
        mkdir -p "$log_dir/ray/$host"
        cp -rL "$temp_dir/session_latest/logs/." "$log_dir/ray/$host/" 2>/dev/null || true
    fi
    rm -rf "$temp_dir"
    echo "ray_node.sh[$host]: stopped"
}
trap 'stop_ray; exit 0' TERM INT
trap stop_ray EXIT

# `wait` returns early when a trapped signal arrives; otherwise Ray exited by itself (a failure).
set +e
wait "$ray_pid"
status=$?
set -e
if ((!stopped)); then
    echo "ray_node.sh[$host]: Ray exited on its own with status $status" >&2
    exit "$((status == 0 ? 1 : status))"
fi
