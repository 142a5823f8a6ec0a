"""Ray placement: which node (and GPU) each training rank and the rollout engines get, in a stable order.

GPU clusters (slime's scheme)::

    one placement group, PACK, of {"GPU": 1, "CPU": 1} bundles
        colocated:      max(training GPUs, rollout GPUs) bundles, shared by training ranks and engines
        disaggregated:  training GPUs + rollout GPUs bundles
    probe every bundle (a throw-away actor reports node IP, node id and the GPU id Ray assigned)
    sort the bundles by (node IP, node id, GPU id)
    training rank r <- sorted bundle r; engines <- the next rollout GPUs (colocated: the training bundles again)

The sort makes ranks follow the physical order of nodes and GPUs, whatever order Ray reserved the bundles in:
consecutive ranks (one tensor-parallel group) sit on one node, and the engines get consecutive GPU ids, which
SGLang needs (a base id and a TP size). The rollout manager is a CPU actor pinned to the engines' node, because it
launches the engines there as processes; with external engines it stays on the driver's node.

CPU machines: one placement group of *fractional* CPU bundles, one per training rank (PACK on one node; SPREAD when
``--actor-num-nodes`` > 1, so the ranks really land on different nodes); the rollout manager takes a bundle of the
same size outside it. The bundle size is the largest fraction of a CPU such that every node can hold its share (a
2-core machine runs 2 training ranks and the rollout manager in bundles of 0.66 CPU): on CPU the bundles are
bookkeeping (threads are set per process), but they make Ray place and count the processes as on GPUs.

Waiting for a placement group that the cluster cannot satisfy would hang forever, so resources are checked first
and ``ready()`` has a time limit; either failure is a ``TrainerFailure`` saying what was asked and what exists.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from slime_entropy.trainer.config import ClusterLayout, check_cluster_resources
from slime_entropy.trainer.session import TrainerFailure

__all__ = ["Slot", "Placement", "create_placement", "slot_order", "cpu_bundle_size"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """One bundle of a placement group and where Ray put it."""

    placement_group: Any
    bundle_index: int
    node_id: str
    node_ip: str
    gpu_id: int | None = None

    def strategy(self) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(
            placement_group=self.placement_group, placement_group_bundle_index=self.bundle_index
        )


@dataclass
class Placement:
    train: list[Slot]
    """Training rank r runs in ``train[r]``."""
    rollout_gpus: list[Slot]
    """The engines' GPUs, in order (empty without launched SGLang engines)."""
    rollout_manager_node: str
    """Node id the rollout manager is pinned to (strictly when it launches GPU engines there)."""
    rollout_manager_strict: bool
    cpus_per_actor: float
    gpus_per_train_actor: float
    groups: list[Any] = field(default_factory=list)

    def rollout_manager_strategy(self) -> NodeAffinitySchedulingStrategy:
        return NodeAffinitySchedulingStrategy(node_id=self.rollout_manager_node, soft=not self.rollout_manager_strict)

    def ranks_on_node(self, node_id: str) -> int:
        return sum(s.node_id == node_id for s in self.train)

    def describe(self) -> str:
        by_node: dict[str, list[str]] = {}
        for rank, s in enumerate(self.train):
            by_node.setdefault(f"{s.node_ip} ({s.node_id[:8]})", []).append(
                f"rank {rank}" + (f"/GPU {s.gpu_id}" if s.gpu_id is not None else "")
            )
        parts = [f"{node}: {', '.join(ranks)}" for node, ranks in by_node.items()]
        if self.rollout_gpus:
            parts.append(f"engines: GPUs {[s.gpu_id for s in self.rollout_gpus]} on {self.rollout_gpus[0].node_ip}")
        return "; ".join(parts)

    def remove(self) -> None:
        for pg in self.groups:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - best effort at teardown (the cluster may be gone)
                logger.debug("could not remove a placement group", exc_info=True)
        self.groups.clear()


def slot_order(node_ip: str, node_id: str, gpu_id: int | None) -> tuple:
    """Sort key: node IP numerically (IPv4 before IPv6), then node id (several nodes may share an IP, e.g. a test
    cluster on one machine), then the GPU id."""
    try:
        ip = ipaddress.ip_address(node_ip)
        ip_key = (ip.version, int(ip))
    except ValueError:
        ip_key = (99, 0)
    return (ip_key, node_ip, node_id, -1 if gpu_id is None else gpu_id)


def cpu_bundle_size(node_cpus: list[float], num_bundles: int) -> float:
    """Largest CPU fraction (at most 1, a multiple of 0.01) such that the nodes together hold ``num_bundles``."""
    candidates = sorted({min(1.0, c / k) for c in node_cpus if c > 0 for k in range(1, num_bundles + 1)}, reverse=True)
    for size in candidates:
        size = math.floor(size * 100) / 100
        if size > 0 and sum(math.floor(c / size + 1e-9) for c in node_cpus) >= num_bundles:
            return size
    raise TrainerFailure(f"the Ray cluster's CPUs ({node_cpus}) cannot hold {num_bundles} actors of at least 0.01 CPU")


@ray.remote(num_cpus=0)
class _BundleProbe:
    def where(self) -> tuple[str, str, list]:
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), [int(g) for g in ray.get_gpu_ids()]


def _wait_ready(pg, what: str, timeout_s: float) -> None:
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise TrainerFailure(
            f"Ray could not reserve {what} within {timeout_s:.0f} s (cluster resources: {ray.cluster_resources()}, "
            f"available: {ray.available_resources()}); free them or shrink the job"
        ) from None


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def create_placement(layout: ClusterLayout, *, timeout_s: float = 120.0) -> Placement:
    """Reserve and order the bundles for ``layout`` (see module doc); the caller removes them (``.remove()``)."""
    try:
        check_cluster_resources(layout, ray.cluster_resources())
    except ValueError as e:
        raise TrainerFailure(str(e)) from None
    if layout.on_gpu:
        return _gpu_placement(layout, timeout_s)
    return _cpu_placement(layout, timeout_s)


def _gpu_placement(layout: ClusterLayout, timeout_s: float) -> Placement:
    num_train, num_rollout = layout.num_train_ranks, layout.rollout_num_gpus
    num_bundles = layout.num_gpus
    pg = placement_group([{"GPU": 1, "CPU": 1}] * num_bundles, strategy="PACK", name="slime_entropy")
    _wait_ready(pg, f"{num_bundles} GPU bundles", timeout_s)
    probes = [
        _BundleProbe.options(
            num_gpus=0.01,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i),
        ).remote()
        for i in range(num_bundles)
    ]
    try:
        where = ray.get([p.where.remote() for p in probes], timeout=timeout_s)
    finally:
        for p in probes:
            ray.kill(p)
    slots = sorted(
        (Slot(pg, i, node_id, ip, gpus[0] if gpus else None) for i, (node_id, ip, gpus) in enumerate(where)),
        key=lambda s: slot_order(s.node_ip, s.node_id, s.gpu_id),
    )
    train = slots[:num_train]
    rollout = slots[:num_rollout] if layout.colocate else slots[num_train : num_train + num_rollout]
    if rollout and len({s.node_id for s in rollout}) > 1:
        remove_placement_group(pg)
        raise TrainerFailure(
            f"the engines' {num_rollout} GPUs landed on several nodes ({sorted({s.node_ip for s in rollout})}); "
            "slime_entropy launches engines on one node: use fewer --rollout-num-gpus, or start engines yourself "
            "(--rollout-external-engine-addrs)"
        )
    manager_node = rollout[0].node_id if rollout else ray.get_runtime_context().get_node_id()
    return Placement(
        train, rollout, manager_node, bool(rollout), cpus_per_actor=1.0, gpus_per_train_actor=1.0, groups=[pg]
    )


def _cpu_placement(layout: ClusterLayout, timeout_s: float) -> Placement:
    nodes = _alive_nodes()
    node_cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes]
    size = cpu_bundle_size(node_cpus, layout.num_train_ranks + 1)
    strategy = "SPREAD" if layout.actor_num_nodes > 1 else "PACK"
    pg = placement_group([{"CPU": size}] * layout.num_train_ranks, strategy=strategy, name="slime_entropy_train")
    _wait_ready(pg, f"{layout.num_train_ranks} CPU bundles of {size} CPU", timeout_s)
    node_of_bundle = placement_group_table(pg)["bundles_to_node_id"]
    ip_of_node = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes}
    slots = sorted(
        (Slot(pg, i, node_of_bundle[i], ip_of_node.get(node_of_bundle[i], "")) for i in range(layout.num_train_ranks)),
        key=lambda s: slot_order(s.node_ip, s.node_id, s.gpu_id),
    )
    driver_node = ray.get_runtime_context().get_node_id()
    return Placement(slots, [], driver_node, False, cpus_per_actor=size, gpus_per_train_actor=0.0, groups=[pg])
