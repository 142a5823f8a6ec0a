"""Wait until a Ray cluster has all its nodes and GPUs (used by the Slurm job before it starts train.py).

    python -m slime_entropy.launch.ray_cluster wait --address 10.0.0.1:20100 --nodes 4 --gpus-per-node 8 --timeout 600

Exits 0 once the cluster reports ``--nodes`` alive nodes and at least ``nodes x gpus-per-node`` GPUs, 1 when the
timeout passes first (printing what the cluster has), 2 on bad arguments. It first waits for the GCS port to accept
TCP connections (cheap), then connects once as a driver and polls ``ray.nodes()``; it disconnects before it exits,
so it leaves nothing behind in the cluster.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from slime_entropy.launch.arguments import add_ray_wait_arguments
from slime_entropy.launch.config import ClusterWaitConfig

__all__ = ["wait_for_port", "wait_for_cluster", "build_parser", "main"]


def wait_for_port(host: str, port: int, deadline: float, poll: float = 0.5) -> bool:
    """Whether ``host:port`` accepted a TCP connection before ``deadline`` (a ``time.monotonic()`` value)."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


def _summary(nodes: list[dict]) -> tuple[int, float, list[str]]:
    alive = [n for n in nodes if n.get("Alive")]
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0.0)) for n in alive)
    names = sorted(f"{n.get('NodeManagerAddress')} ({int(n.get('Resources', {}).get('GPU', 0))} GPUs)" for n in alive)
    return len(alive), gpus, names


def wait_for_cluster(address: str, num_nodes: int, gpus_per_node: int, timeout: float, poll: float = 2.0) -> bool:
    """Block until ``address`` has ``num_nodes`` alive nodes and ``num_nodes * gpus_per_node`` GPUs (True), or until
    ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    host, _, port = address.rpartition(":")
    if not wait_for_port(host, int(port), deadline):
        print(f"ray_cluster: the GCS at {address} did not accept connections within {timeout:.0f} s", flush=True)
        return False
    import ray

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        wanted_gpus = num_nodes * gpus_per_node
        last = None
        while True:
            alive, gpus, names = _summary(ray.nodes())
            if (alive, gpus) != last:
                print(
                    f"ray_cluster: {alive}/{num_nodes} nodes, {gpus:g}/{wanted_gpus} GPUs: {', '.join(names)}",
                    flush=True,
                )
                last = (alive, gpus)
            if alive >= num_nodes and gpus >= wanted_gpus:
                return True
            if time.monotonic() >= deadline:
                print(f"ray_cluster: timed out after {timeout:.0f} s", flush=True)
                return False
            time.sleep(poll)
    finally:
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slime_entropy.launch.ray_cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    add_ray_wait_arguments(commands.add_parser("wait", help="wait until the cluster has all its nodes and GPUs"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        config = ClusterWaitConfig.from_args(parser.parse_args(argv))
    except ValueError as e:
        parser.error(str(e))
    return 0 if wait_for_cluster(config.address, config.nodes, config.gpus_per_node, config.timeout_s) else 1


if __name__ == "__main__":
    sys.exit(main())
