"""The two kinds of Ray actors: one ``TrainRank`` per training rank and one ``RolloutWorker``.

``TrainRank`` holds a :class:`~slime_entropy.megatron.actor.MegatronActor`. The ranks join one torch.distributed
world (gloo on CPUs, NCCL on GPUs; rank 0's node address and a free port are the rendezvous) and Megatron's parallel
state splits it into TP/PP/DP groups. Per rollout a rank receives its data-parallel share of the rollout (slime's
rollout dict), turns it into samples with per-token advantages (the sample's GRPO-normalised reward on every
response token), runs the no-grad old-policy pass once (log-probs and entropies, which the filter's step scope and the
rollout dumps read), then one optimizer step per call of :meth:`TrainRank.train_step`.

``RolloutWorker`` holds a :class:`~slime_entropy.rollout.manager.RolloutManager`, built from the driver's resolved
``RolloutConfig`` (the worker resolves no flags): the prompt data, the engines
(launched as processes on its node: SGLang on the rollout GPUs, or the built-in engine), the grading workers and the
dynamic-sampling loop. It also evaluates, relays weight updates to the engines over HTTP, and releases/resumes the
engines' memory for colocated runs.

Both are plain classes made remote by the driver (``ray.remote(TrainRank).options(...)``), so they can be unit-tested
in-process too.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace
from datetime import timedelta
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from slime_entropy.loss.config import LossConfig
    from slime_entropy.megatron.config import MegatronConfig
    from slime_entropy.rollout.config import RolloutConfig

__all__ = [
    "TrainRank",
    "RolloutWorker",
    "samples_from_train_data",
    "configure_actor_logging",
    "quiet_known_warnings",
    "SLIME_METRIC_NAMES",
]

logger = logging.getLogger(__name__)

# RolloutManager's metric names -> slime's (rollout/... for data, perf/... for speed).
SLIME_METRIC_NAMES = {
    "rollout/raw_reward_mean": "rollout/raw_reward",
    "rollout/response_length_mean": "rollout/response_lengths",
    "rollout/response_length_max": "rollout/response_lengths_max",
    "rollout/truncated_ratio": "rollout/truncated",
    "rollout/time_s": "perf/rollout_time",
    "rollout/response_tokens_per_s": "perf/rollout_tokens_per_s",
}


def quiet_known_warnings() -> None:
    """Known, harmless warnings that would otherwise repeat on every rank: megatron-core without transformer-engine
    or apex (expected on CPU), its deprecated CUDA-graph scope default, and torch.distributed's renamed collectives
    that megatron-core still calls."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*(Transformer Engine and Apex|Apex) (are|is) not installed")
    warnings.filterwarnings("ignore", message=r"full scope is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.distributed\.\w+` is deprecated")
    warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf Tensor")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.core\.dist_checkpointing")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"Please use DTensor instead")
    if not torch_has_cuda():  # on GPUs the driver sets CUDA_DEVICE_MAX_CONNECTIONS=1, as slime does
        warnings.filterwarnings("ignore", message=r"When using async grad allreduce it is recommended")


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def configure_actor_logging(level: str) -> None:
    """Actors log warnings and errors only (Ray forwards them to the driver), everything at ``debug``."""
    quiet_known_warnings()
    logging.basicConfig(
        level=logging.DEBUG if level == "debug" else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def samples_from_train_data(data: dict[str, list]) -> list:
    """slime's per-rank rollout dict -> Megatron samples: tokens, loss mask, the sample's advantage on every response
    token (GRPO: one normalised reward per sample) and the engine's log-probs (for TIS and mismatch metrics)."""
    import torch

    from slime_entropy.megatron.batching import TrainSample

    samples = []
    for tokens, length, mask, reward, rollout_log_probs in zip(
        data["tokens"], data["response_lengths"], data["loss_masks"], data["rewards"], data["rollout_log_probs"],
        strict=True,
    ):  # fmt: skip
        samples.append(
            TrainSample(
                torch.tensor(tokens, dtype=torch.int64),
                int(length),
                torch.tensor(mask, dtype=torch.int64),
                {
                    "advantages": torch.full((int(length),), float(reward), dtype=torch.float32),
                    "rollout_log_probs": torch.tensor(rollout_log_probs, dtype=torch.float32),
                },
            )
        )
    return samples


class TrainRank:
    """One training rank (see module doc). Methods are collective: the driver calls each on every rank."""

    def __init__(self, rank: int, world_size: int, log_level: str = "info"):
        configure_actor_logging(log_level)
        self.rank, self.world_size = rank, world_size
        self.actor = None
        self.samples: list = []
        self.info: dict[str, Any] = {}
        self.weight_group = None
        self.memory_saver = None
        self._store = None

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> bool:
        return True

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0: this node's address and a free port for the torch.distributed rendezvous."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def host_world_store(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0: host the training world's rendezvous store on a port the OS assigns while binding it, so no other
        process can take the port between choosing and binding it (a free port found first and bound later can be
        lost to a busy machine). Returns the address the other ranks connect to."""
        import ray
        from torch.distributed import TCPStore

        self._store = TCPStore(
            ray.util.get_node_ip_address(), 0, world_size=self.world_size, is_master=True,
            timeout=timedelta(seconds=timeout_s), wait_for_workers=False,
        )  # fmt: skip
        return ray.util.get_node_ip_address(), self._store.port

    def setup(
        self,
        megatron: MegatronConfig,
        loss: LossConfig,
        *,
        hook_args: argparse.Namespace | None = None,
        master_addr: str,
        master_port: int,
        num_total_steps: int,
        backend: str,
        timeout_s: float,
        num_threads: int,
        offload_train: bool,
    ) -> dict[str, Any]:
        """Join the world, build model and optimizer (``--load``/``--ref-load``/HF weights), report the layout.

        ``megatron``/``loss``: the driver's resolved configs. ``hook_args``: the run's namespace, only for a user's
        ``--custom-loss-function-path`` function (slime's hook signature); None otherwise."""
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state as mpu

        from slime_entropy.megatron.actor import MegatronActor

        if torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray exposes exactly this rank's GPU
        else:
            torch.set_num_threads(num_threads)
        if offload_train and torch.cuda.is_available():
            # torch_memory_saver intercepts every CUDA allocation of this process (LD_PRELOAD + TMS_INIT_ENABLE, set
            # by the driver) and can release and restore them with their contents (TMS_INIT_ENABLE_CPU_BACKUP).
            from torch_memory_saver import torch_memory_saver

            self.memory_saver = torch_memory_saver
        timeout = timedelta(seconds=timeout_s)
        if self.rank == 0:
            store = self._store  # host_world_store
        else:
            from torch.distributed import TCPStore

            store = TCPStore(master_addr, master_port, world_size=self.world_size, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size, timeout=timeout)
        self.actor = MegatronActor(megatron, loss, num_total_steps=num_total_steps, hook_args=hook_args)
        groups = self.actor.groups
        self.info = {
            "rank": self.rank,
            "pid": os.getpid(),
            "start_rollout_id": self.actor.start_rollout_id,
            "dp_rank": groups.dp_cp_rank,
            "dp_size": groups.dp_cp_size,
            "tp_rank": mpu.get_tensor_model_parallel_rank(),
            "is_last_stage": groups.is_last_stage,
        }
        return self.info

    @property
    def _reports(self) -> bool:
        """This rank speaks for its data-parallel replica (last pipeline stage, tensor-parallel rank 0)."""
        return self.info["is_last_stage"] and self.info["tp_rank"] == 0

    def prepare_rollout(self, rollout_id: int, data: dict[str, list], with_fields: bool) -> dict[str, Any]:
        """Take this replica's share of rollout ``rollout_id`` and run the old-policy pass over it."""
        import torch

        started = time.monotonic()
        self.samples = samples_from_train_data(data)
        self.actor.compute_log_probs(self.samples)
        out: dict[str, Any] = {"log_probs_time": time.monotonic() - started}
        if not self._reports:
            return out
        num_tokens, entropy_sum, log_prob_sum = 0, 0.0, 0.0
        for s in self.samples:
            valid = s.loss_mask.bool()
            num_tokens += int(valid.sum())
            entropy_sum += float(s.fields["entropy"][valid].double().sum())
            log_prob_sum += float(s.fields["log_probs"][valid].double().sum())
        out.update(num_tokens=num_tokens, entropy_sum=entropy_sum, log_prob_sum=log_prob_sum)
        if with_fields:
            out["fields"] = {
                "partition": list(data["partition"]),
                "entropy": [s.fields["entropy"].to(torch.float32).tolist() for s in self.samples],
                "log_probs": [s.fields["log_probs"].to(torch.float32).tolist() for s in self.samples],
            }
        return out

    def train_step(self, rollout_id: int, step: int, samples_per_step: int) -> dict[str, float]:
        """Optimizer step ``step`` of the rollout: this rank's samples ``[step * n, (step + 1) * n)``."""
        chunk = self.samples[step * samples_per_step : (step + 1) * samples_per_step]
        (metrics,) = self.actor.train(rollout_id, chunk)
        return metrics

    def save(self, rollout_id: int) -> str:
        return str(self.actor.save(rollout_id))

    def save_hf(self, path: str) -> str:
        return str(self.actor.save_hf(path))

    # ----- colocation -----
    def offload(self) -> bool:
        if self.memory_saver is None:
            return False
        import torch

        torch.cuda.synchronize()
        self.memory_saver.pause()
        return True

    def onload(self) -> bool:
        if self.memory_saver is None:
            return False
        self.memory_saver.resume()
        return True

    # ----- weights by broadcast -----
    def join_weight_group(self, master_addr: str, master_port: int, world_size: int, group_name: str, backend: str):
        """Rank 0: become rank 0 of the trainer-to-engines group (the engines join through their HTTP API)."""
        from slime_entropy.rollout.weight_sync import init_custom_process_group

        self.weight_group = init_custom_process_group(
            backend=backend,
            master_address=master_addr,
            master_port=master_port,
            world_size=world_size,
            rank=0,
            group_name=group_name,
        )
        return True

    def broadcast_weights(self, rollout_worker, weight_version: str, bucket_bytes: int) -> int:
        """Every rank takes part in gathering the full (HF-named) tensors over TP; rank 0 sends them in buckets:
        for each bucket it asks the rollout worker to post the bucket's names/dtypes/shapes to the engines and
        broadcasts the tensors while they receive. Returns the number of tensors sent (0 on other ranks)."""
        from slime_entropy.megatron.groups import comm_device
        from slime_entropy.megatron.hf_bridge import iter_hf_weights

        sender = self.rank == 0
        bucket: list[tuple[str, Any]] = []
        size = num_sent = 0
        for name, tensor in iter_hf_weights(self.actor.model, self.actor.megatron.arch):
            if not sender:
                continue
            bucket.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                num_sent += self._send_bucket(rollout_worker, bucket, weight_version, comm_device())
                bucket, size = [], 0
        if sender and bucket:
            num_sent += self._send_bucket(rollout_worker, bucket, weight_version, comm_device())
        return num_sent

    def _send_bucket(self, rollout_worker, bucket, weight_version: str, device) -> int:
        import ray
        import torch.distributed as dist

        names = [n for n, _ in bucket]
        dtypes = [str(t.dtype).removeprefix("torch.") for _, t in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        posted = rollout_worker.receive_weights.remote(names, dtypes, shapes, weight_version)
        for _, tensor in bucket:
            dist.broadcast(tensor.to(device).contiguous(), src=0, group=self.weight_group)
        ray.get(posted)
        return len(bucket)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class RolloutWorker:
    """The rollout side in one actor (see module doc)."""

    def __init__(
        self,
        config: RolloutConfig,
        hook_args: Namespace | None,
        run_dir: str,
        gpu_ids: list[int],
        log_level: str = "info",
        memory_saver: bool = False,
    ):
        """``config``: the driver's resolved rollout config. ``hook_args``: slime's ``args``, handed to user hooks
        only (custom reward / filter functions receive it: slime's contract; None without them); never read by our
        code. ``gpu_ids``:
        the engines' physical GPUs on this node; ``memory_saver``: launch SGLang with ``--enable-memory-saver``
        (needed to release its memory when colocated, as slime does). Nothing starts before :meth:`start`."""
        configure_actor_logging(log_level)
        self._config, self._hook_args, self._run_dir = config, hook_args, run_dir
        self._gpu_ids, self._memory_saver = gpu_ids, memory_saver
        self.manager = None
        self._evaluator = None  # built on the first evaluation
        self._base_result = None  # the last base rollout, kept for FR3E's exploration
        self._broadcast_restarts: list[int] | None = None

    def start(self) -> int:
        """Load the data, start the engines and the graders; returns this process's id."""
        from slime_entropy.rollout.engine_sglang import engines_on_gpus
        from slime_entropy.rollout.manager import RolloutManager

        engine = engines_on_gpus(self._config.engine, self._gpu_ids, memory_saver=self._memory_saver)
        config = replace(self._config, engine=engine)
        self.manager = RolloutManager(config, hook_args=self._hook_args, run_dir=Path(self._run_dir), progress=False)
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> bool:
        return True

    def engine_pids(self) -> list[int]:
        return [s.process.pid for s in self.manager.pool.slots if s.process is not None and s.process.pid is not None]

    def num_rollout(self) -> int:
        return self.manager.num_rollout

    # ----- data position -----
    def state_dict(self) -> dict[str, Any]:
        return self.manager.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.manager.load_state_dict(state)

    def skip_prompts(self, num_prompts: int) -> None:
        self.manager.data_source.next_prompts(num_prompts)

    # ----- one rollout -----
    def generate(self, rollout_id: int, dp_size: int, weight_version: str | None, with_records: bool) -> tuple:
        """Returns ``(metrics, records, data_0, ..., data_{dp_size - 1})``: slime-named metrics, the dump records
        (None unless asked) and one rollout dict per data-parallel rank. Checks that every sample was generated by
        the expected weights (a stale engine would silently train off-policy)."""
        result = self.manager.generate(rollout_id)
        self._base_result = result if self.manager.config.fr3e else None  # FR3E explores it next (explore)
        return self._package(rollout_id, result.samples, result.metrics, self.manager.train_data(result, dp_size),
                             weight_version, with_records)  # fmt: skip

    def explore(
        self, rollout_id: int, dp_size: int, weight_version: str | None, with_records: bool, entropies: dict | None
    ) -> tuple:
        """FR3E: partial rollouts from the anchors of the last base rollout; returns what :meth:`generate` does, for
        the base samples and the partial rollouts together (``slime_entropy.rollout.fr3e_rollout``)."""
        from slime_entropy.rollout.fr3e_rollout import explore

        result, self._base_result = self._base_result, None
        if result is None or result.rollout_id != rollout_id:
            raise RuntimeError(f"rollout {rollout_id}: FR3E exploration needs that rollout's base samples first")
        explored = explore(self.manager, result, entropies)
        metrics = {**result.metrics, **explored.metrics}
        per_rank = explored.train_data(self.manager.config, dp_size)
        return self._package(rollout_id, explored.samples, metrics, per_rank, weight_version, with_records)

    def _package(self, rollout_id, samples, manager_metrics, per_rank, weight_version, with_records) -> tuple:
        from slime_entropy.rollout.rewards.compute import scalar_reward

        if weight_version is not None:
            stale = [(s.index, s.weight_version) for s in samples if s.weight_version not in (None, weight_version)]
            if stale:
                raise RuntimeError(
                    f"rollout {rollout_id}: {len(stale)} samples came from engine weights "
                    f"{sorted({v for _, v in stale})}, expected version {weight_version}: an engine missed a weight "
                    "update"
                )
        advantages = [0.0] * len(samples)
        for data in per_rank:
            for i, position in enumerate(data["partition"]):
                advantages[position] = float(data["rewards"][i])
        metrics = {SLIME_METRIC_NAMES.get(k, k): v for k, v in manager_metrics.items()}
        metrics["rollout/rewards"] = sum(advantages) / max(len(advantages), 1)
        records = None
        if with_records:
            key = self.manager.config.reward.reward_key
            records = [
                {
                    "index": s.index,
                    "group_index": s.group_index,
                    "prompt": s.prompt,
                    "prompt_text": s.prompt_text,
                    "response": s.response,
                    "label": s.label,
                    "metadata": s.metadata,
                    "reward": scalar_reward(s, key),
                    "reward_detail": s.reward if isinstance(s.reward, dict) else None,
                    "advantage": adv,
                    "status": s.status.value,
                    "weight_version": s.weight_version,
                    "prompt_tokens": s.tokens[: s.prompt_length],
                    "response_tokens": s.response_tokens,
                    "loss_mask": s.effective_loss_mask(),
                    "rollout_log_probs": list(s.rollout_log_probs),
                }
                for s, adv in zip(samples, advantages, strict=True)
            ]
        return (metrics, records, *per_rank)

    # ----- engine memory (colocation) -----
    def release_memory(self) -> None:
        self.manager.run(self.manager.pool.post_all("/release_memory_occupation", {}), timeout=600)

    def resume_memory(self, tags: list[str]) -> None:
        self.manager.run(self.manager.pool.post_all("/resume_memory_occupation", {"tags": tags}), timeout=600)

    # ----- weights -----
    def update_weights_from_disk(self, path: str, weight_version: str) -> None:
        self.manager.update_weights_from_disk(path, weight_version=weight_version)

    def _broadcaster(self, master_addr: str = "", master_port: int = 0, group_name: str = "", backend: str = ""):
        from slime_entropy.rollout.weight_sync import WeightBroadcaster

        engine = self.manager.config.engine
        ranks = engine.num_gpus_per_engine if engine.backend == "sglang" else 1
        return WeightBroadcaster(
            self.manager.pool,
            master_address=master_addr,
            master_port=master_port,
            backend=backend or "gloo",
            group_name=group_name or "slime_entropy_weights",
            ranks_per_engine=ranks,
        )

    def weight_group_size(self) -> int:
        return self._broadcaster().world_size

    def init_weight_group(self, master_addr: str, master_port: int, group_name: str, backend: str) -> None:
        """The engines join the trainer's broadcast group (concurrently with rank 0's ``join_weight_group``)."""
        self._group = self._broadcaster(master_addr, master_port, group_name, backend)
        pool = self.manager.pool
        self.manager.run(pool.post_each("/init_weights_update_group", self._group.init_group_bodies()), timeout=600)
        self._broadcast_restarts = [s.num_restarts for s in pool.live_slots()]

    def can_broadcast(self) -> bool:
        """False once any engine restarted (or died) since the group was built: it is not a member any more."""
        pool = self.manager.pool
        return self._broadcast_restarts == [s.num_restarts for s in pool.live_slots()]

    def receive_weights(self, names: list[str], dtypes: list[str], shapes: list[list[int]], weight_version: str):
        """Post one bucket's ``/update_weights_from_distributed`` to every engine (rank 0 broadcasts meanwhile)."""
        pool = self.manager.pool
        body = self._group.update_body(names, dtypes, shapes, weight_version=weight_version, flush_cache=True)
        self.manager.run(pool.post_each("/update_weights_from_distributed", [body] * len(pool.live_slots())), 600)
        pool.mark_distributed_update()

    # ----- evaluation -----
    def evaluate(self, rollout_id: int, eval_config) -> dict[str, float]:
        """avg@n, pass@k and reward statistics per evaluation set, on the engines' current weights; never trained
        on (``slime_entropy.evaluation.Evaluator``: per-sample seeds, so checkpoints compare on the same draws)."""
        if self._evaluator is None:
            from slime_entropy.evaluation import Evaluator

            self._evaluator = Evaluator(eval_config, self.manager.tokenizer)
        return self._evaluator.evaluate(self.manager, rollout_id)

    def num_rollout_per_epoch(self) -> int:
        return self.manager.num_rollout_per_epoch

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()
