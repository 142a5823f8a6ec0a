"""Pushing the trained weights to the rollout engines after every optimizer update (and once at start).

Two transports (``--update-weight-transport``):

disk
    every training rank takes part in writing one HF checkpoint (``MegatronActor.save_hf``: TP shards gathered,
    written to a temporary directory and renamed into place) at ``<run-dir>/engine_weights/current``; the engines
    then load it (``/update_weights_from_disk``) and stamp later responses with the new weight version. A restarted
    engine reloads the same directory before it serves. Needs a filesystem the engines can read; used on CPUs, for
    colocated GPUs, and with PP or EP > 1.
broadcast
    training rank 0 and every engine rank form one extra process group (NCCL on GPUs, gloo on CPUs; SGLang's
    ``/init_weights_update_group``); per bucket of ``--update-weight-buffer-size`` bytes the rollout worker posts the
    names/dtypes/shapes (``/update_weights_from_distributed``) while rank 0 broadcasts the tensors. An engine that
    restarted is no longer in the group: from then on the weights go by disk (with a warning).

With offloading (``--colocate``) the order is slime's: export the weights while they are on the GPU, release the
training memory, give the engines back their weights, load, then their KV cache.
"""

from __future__ import annotations

import logging
import time

from slime_entropy.trainer.config import TrainerConfig
from slime_entropy.trainer.handles import RolloutWorkerHandle, TrainRankHandles, wait_all

__all__ = ["WeightSync"]

logger = logging.getLogger(__name__)


class WeightSync:
    def __init__(self, config: TrainerConfig, actors: TrainRankHandles, rollout: RolloutWorkerHandle):
        self.actors, self.rollout = actors, rollout
        self.transport = config.layout.weight_transport
        self.backend = "nccl" if config.layout.on_gpu else "gloo"
        self.disk_path = str((config.run.run_dir / "engine_weights" / "current").resolve())
        self.group_ready = False

    def push(self, version: int) -> float:
        """Engines serve the current training weights as version ``str(version)``; returns the seconds it took."""
        started = time.monotonic()
        weight_version = str(version)
        if self.transport == "broadcast" and self._group_usable():
            self.rollout.onload(["weights"])
            self.actors.broadcast(self.rollout.actor, weight_version)
            self.rollout.onload(["kv_cache"])
            self.actors.offload()
        else:
            self.actors.save_hf(self.disk_path)
            self.actors.offload()
            self.rollout.onload(["weights"])
            self.rollout.update_weights_from_disk(self.disk_path, weight_version)
            self.rollout.onload(["kv_cache"])
        return time.monotonic() - started

    def _group_usable(self) -> bool:
        if not self.group_ready:
            self._init_group()
            return True
        usable = wait_all(
            [self.rollout.actor.can_broadcast.remote()], [self.rollout.name], what="checking the engines",
            timeout_s=self.rollout.timeout_s,
        )[0]  # fmt: skip
        if not usable:
            logger.warning(
                "an engine restarted since the weight broadcast group was formed; sending weights by disk from now on"
            )
            self.transport = "disk"
        return usable

    def _init_group(self) -> None:
        rank0, worker = self.actors.actors[0], self.rollout.actor
        timeout_s = self.actors.timeout_s
        master_addr, master_port = wait_all(
            [rank0.rendezvous_address.remote()],
            self.actors.names[:1],
            what="weight group address",
            timeout_s=timeout_s,
        )[0]
        world_size = wait_all([worker.weight_group_size.remote()], [self.rollout.name], what="weight group size",
                              timeout_s=timeout_s)[0]  # fmt: skip
        group_name = f"slime_entropy_weights_{master_port}"
        wait_all(
            [
                rank0.join_weight_group.remote(master_addr, master_port, world_size, group_name, self.backend),
                worker.init_weight_group.remote(master_addr, master_port, group_name, self.backend),
            ],
            [self.actors.names[0], self.rollout.name],
            what="forming the weight broadcast group",
            timeout_s=timeout_s,
        )
        self.group_ready = True
        logger.info("weight broadcast group %s formed (%d ranks, %s)", group_name, world_size, self.backend)
