"""Driver-side handles of the Ray actors: the training ranks (one torch.distributed world), the rollout worker, and
waiting on them.

Every call the driver makes fans out to actors and waits with :func:`wait_all`, which never hangs: it returns as soon
as all answers are in, raises ``TrainerFailure`` naming the actor the moment one dies or raises (its peers may then be
stuck in a collective; the session kills them all on the way out), and gives up after a deadline
(``--distributed-timeout-minutes``) with the names of the actors that did not answer.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import ray
from tqdm import tqdm

from slime_entropy.trainer.config import TrainerConfig
from slime_entropy.trainer.placement import Placement
from slime_entropy.trainer.ray_actors import RolloutWorker, TrainRank
from slime_entropy.trainer.session import RaySession, TrainerFailure

__all__ = ["wait_all", "TrainRankHandles", "RolloutWorkerHandle", "RolloutBatch"]

logger = logging.getLogger(__name__)

# CPU processes share the cores with the other phase's processes (engines idle while ranks train, and back): OpenMP
# threads that spin while waiting make every other process on the machine crawl (measured 10x slower steps on a
# loaded 2-core machine), passive waiting costs nothing measurable.
CPU_ENV = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def wait_all(
    refs: list, names: list[str], *, what: str, timeout_s: float, watch: list[tuple[str, Any]] | None = None
) -> list:
    """``ray.get(refs)`` that fails fast and never waits past ``timeout_s`` (see module doc).

    ``watch``: other actors of the run, ``(name, handle)``, pinged every few seconds meanwhile, so that a training rank
    dying while the engines generate (or the rollout worker dying while the ranks train) ends the run at once rather
    than at the next call to it."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    deadline = time.monotonic() + timeout_s
    next_ping = time.monotonic() + WATCH_INTERVAL_S
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            late = ", ".join(names[index[r]] for r in pending)
            raise TrainerFailure(
                f"{what}: no answer from {late} within {timeout_s:.0f} s (a hung collective or a stuck process; see "
                "its log above)",
                rerun_helps=True,
            )
        ready, pending = ray.wait(pending, num_returns=1, timeout=min(remaining, 2.0))
        for ref in ready:
            results[index[ref]] = _get(ref, names[index[ref]], what)
        if watch and pending and time.monotonic() >= next_ping:
            _check_alive(watch, what)
            next_ping = time.monotonic() + WATCH_INTERVAL_S
    return results


WATCH_INTERVAL_S = 5.0


def _get(ref, name: str, what: str):
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as e:
        if e.actor_init_failed:  # an exception in the constructor: its message, never "died"; a rerun would repeat it
            raise TrainerFailure(f"{what}: {name} failed to start: {_creation_error(str(e))}") from e
        raise TrainerFailure(f"{what}: {name} died ({_actor_error_reason(e)})", rerun_helps=True) from e
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        # a ValueError is a user's mistake whose message says what to fix; anything else is a bug, and its remote
        # traceback is what a report needs
        logger.log(logging.DEBUG if isinstance(cause, ValueError) else logging.ERROR, "%s: %s raised:\n%s", what,
                   name, e)  # fmt: skip
        raise TrainerFailure(f"{what}: {name} failed: {type(cause).__name__}: {cause}") from e
    except ray.exceptions.RayError as e:  # e.g. the node died, an object was lost
        raise TrainerFailure(f"{what}: {name}: {type(e).__name__}: {str(e)[:500]}", rerun_helps=True) from e


def _check_alive(watch: list[tuple[str, Any]], what: str) -> None:
    """Ping the watched actors; an answer that is an actor death fails the run. Busy actors simply do not answer
    within the second (their pings complete later and are ignored)."""
    pings = {actor.ping.remote(): name for name, actor in watch}
    ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=1.0)
    for ref in ready:
        _get(ref, pings[ref], f"while waiting for {what}")


def _creation_error(text: str) -> str:
    """The exception a constructor raised, from Ray's text of it (a header, the remote traceback, then the
    exception's own lines, which may be several)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.strip().splitlines()]
    last_frame = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=None)
    if last_frame is None:
        return lines[-1] if lines else text
    tail = [line for line in lines[last_frame + 1 :] if not line.startswith("    ")]
    return "\n".join(tail).strip() or lines[-1]


def _actor_error_reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    detail = next((line.strip() for line in text if "died" in line or "exit" in line.lower()), text[0] if text else "")
    return detail[:300]


class TrainRankHandles:
    """The training ranks: one ``TrainRank`` actor per bundle of ``placement.train``, forming one torch.distributed
    world."""

    def __init__(self, config: TrainerConfig, placement: Placement, session: RaySession):
        self.config = config
        self.timeout_s = config.run.distributed_timeout_s
        # building (loading a large HF or torch_dist checkpoint) and saving can legitimately take much longer than
        # a collective; the deadline there only has to catch a hang
        self.slow_timeout_s = max(self.timeout_s, 3600.0)
        layout = config.layout
        env_vars = {}
        if layout.on_gpu:
            env_vars.update(NCCL_CUMEM_ENABLE="0", CUDA_DEVICE_MAX_CONNECTIONS="1")  # as slime's runtime env
            if layout.offload_train:
                env_vars.update(_torch_memory_saver_env())
        else:
            env_vars.update(CPU_ENV)
        remote = ray.remote(TrainRank)
        self.session = session
        self.names = [f"training rank {r} ({slot.node_ip})" for r, slot in enumerate(placement.train)]
        self.actors = [
            session.track(
                remote.options(
                    num_cpus=placement.cpus_per_actor,
                    num_gpus=placement.gpus_per_train_actor,
                    scheduling_strategy=slot.strategy(),
                    runtime_env={"env_vars": env_vars} if env_vars else None,
                    max_restarts=0,
                    max_concurrency=1,
                ).remote(rank, layout.num_train_ranks, config.run.log_level),
                name=self.names[rank],
            )
            for rank, slot in enumerate(placement.train)
        ]
        self.placement = placement
        self.infos: list[dict[str, Any]] = []

    def _wait(self, refs: list, what: str, timeout_s: float | None = None) -> list:
        return wait_all(
            refs, self.names, what=what, timeout_s=timeout_s or self.timeout_s, watch=self.session.others(self.names)
        )

    def _call(self, method: str, *args, what: str, timeout_s: float | None = None, **kwargs):
        refs = [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]
        return self._wait(refs, what, timeout_s)

    def setup(self, num_total_steps: int) -> int:
        """Form the world and build the models; returns the rollout to start from (``--load``'s iteration + 1)."""
        master_addr, master_port = wait_all(
            [self.actors[0].host_world_store.remote(self.timeout_s)],
            self.names[:1],
            what="rendezvous",
            timeout_s=self.timeout_s,
        )[0]
        threads = [
            max(1, _node_cpus(slot.node_id) // self.placement.ranks_on_node(slot.node_id))
            for slot in self.placement.train
        ]
        refs = [
            actor.setup.remote(
                self.config.megatron,
                self.config.loss,
                hook_args=self.config.slime_args if self.config.loss.custom_loss_function_path else None,
                master_addr=master_addr,
                master_port=master_port,
                num_total_steps=num_total_steps,
                backend=self.config.layout.backend,
                timeout_s=self.timeout_s,
                num_threads=threads[rank],
                offload_train=self.config.layout.offload_train,
            )
            for rank, actor in enumerate(self.actors)
        ]
        self.infos = self._wait(refs, "building the training ranks", self.slow_timeout_s)
        starts = {info["start_rollout_id"] for info in self.infos}
        if len(starts) != 1:
            raise TrainerFailure(f"training ranks loaded different checkpoints (start rollouts {sorted(starts)})")
        dp_sizes = {info["dp_size"] for info in self.infos}
        if dp_sizes != {self.config.layout.dp_size}:
            raise TrainerFailure(
                f"data-parallel size {dp_sizes} differs from the planned {self.config.layout.dp_size}"
            )
        return starts.pop()

    @property
    def pids(self) -> list[int]:
        return [info["pid"] for info in self.infos]

    def train(self, rollout_id: int, batch: RolloutBatch, *, with_fields: bool, progress: bool) -> TrainResult:
        """Old-policy pass over the rollout, then ``num_steps_per_rollout`` optimizer steps."""
        started = time.monotonic()
        refs = [
            actor.prepare_rollout.remote(rollout_id, batch.data_refs[info["dp_rank"]], with_fields)
            for actor, info in zip(self.actors, self.infos, strict=True)
        ]
        prepared = self._wait(refs, f"rollout {rollout_id}: log-prob pass")
        plan = self.config.batch
        steps = []
        bar = tqdm(range(plan.num_steps_per_rollout), desc=f"rollout {rollout_id} train", unit="step",
                   disable=not progress, leave=False)  # fmt: skip
        for step in bar:
            per_rank = self._call(
                "train_step",
                rollout_id,
                step,
                plan.samples_per_rank_per_step,
                what=f"rollout {rollout_id}: step {step}",
            )
            steps.append(next((m for m in per_rank if "pg_loss" in m), per_rank[0]))
        bar.close()
        reporters = [p for p in prepared if "num_tokens" in p]
        num_tokens = sum(p["num_tokens"] for p in reporters)
        metrics = {
            f"train/{key}": sum(s[key] for s in steps) / len(steps)
            for key in steps[0]
            if key not in ("rollout_id", "update_successful", "num_micro_batches")
        }
        metrics["rollout/entropy"] = sum(p["entropy_sum"] for p in reporters) / max(num_tokens, 1)
        metrics["rollout/log_probs"] = sum(p["log_prob_sum"] for p in reporters) / max(num_tokens, 1)
        metrics["perf/log_probs_time"] = max(p["log_probs_time"] for p in prepared)
        metrics["perf/train_time"] = time.monotonic() - started
        metrics["train/num_skipped_steps"] = float(sum(1 - s.get("update_successful", 1.0) for s in steps))
        fields = {}
        if with_fields:
            for p in reporters:
                for i, position in enumerate(p["fields"]["partition"]):
                    fields[position] = (p["fields"]["entropy"][i], p["fields"]["log_probs"][i])
        return TrainResult(metrics=metrics, step_metrics=steps, fields=fields)

    def save(self, rollout_id: int) -> None:
        self._call(
            "save", rollout_id, what=f"rollout {rollout_id}: saving the checkpoint", timeout_s=self.slow_timeout_s
        )

    def save_hf(self, path: str) -> None:
        self._call("save_hf", path, what="writing the HF weights for the engines", timeout_s=self.slow_timeout_s)

    def offload(self) -> None:
        if self.config.layout.offload_train:
            self._call("offload", what="offloading the training ranks")

    def onload(self) -> None:
        if self.config.layout.offload_train:
            self._call("onload", what="onloading the training ranks")

    def broadcast(self, rollout_worker, weight_version: str) -> None:
        self._call(
            "broadcast_weights",
            rollout_worker,
            weight_version,
            self.config.run.update_weight_buffer_size,
            what="broadcasting the weights to the engines",
        )

    def shutdown(self) -> None:
        try:
            self._call("shutdown", what="shutting down the training ranks", timeout_s=30)
        except TrainerFailure as e:
            logger.warning("%s", e)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    step_metrics: list[dict[str, float]]
    fields: dict[int, tuple[list[float], list[float]]]
    """Global sample position -> (entropy, log-probs) per response token (with ``with_fields``)."""


@dataclass
class RolloutBatch:
    rollout_id: int
    metrics: dict[str, float]
    records: list[dict] | None
    data_refs: list
    """One object reference per data-parallel rank (slime's rollout dict); the ranks fetch their own."""


class RolloutWorkerHandle:
    """The rollout worker actor (engines, data, rewards) on the engines' node."""

    def __init__(self, config: TrainerConfig, placement: Placement, session: RaySession):
        self.config = config
        self.timeout_s = config.run.distributed_timeout_s
        engine = config.rollout.engine
        # generation has its own time limits (request timeout, retries, engine restarts); the driver's deadline only
        # backs them up, and engines may take --rollout-engine-startup-timeout to start
        self.generate_timeout_s = engine.request_timeout * (engine.max_request_retries + 1) + engine.startup_timeout
        env_vars = {} if config.layout.on_gpu else dict(CPU_ENV)
        if placement.rollout_gpus:
            # the engines are processes of this actor and address their GPUs by physical id
            env_vars["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
        self.session = session
        self.name = "the rollout worker"
        self.actor = session.track(
            ray.remote(RolloutWorker)
            .options(
                num_cpus=placement.cpus_per_actor if not config.layout.on_gpu else 0,
                scheduling_strategy=placement.rollout_manager_strategy(),
                runtime_env={"env_vars": env_vars} if env_vars else None,
                max_restarts=0,
                max_concurrency=4,  # weight buckets are posted while another call may be waiting
            )
            .remote(
                config.rollout,
                config.slime_args if config.rollout.user_hooks else None,  # for user hooks only
                str(config.run.run_dir / "engines"),
                [s.gpu_id for s in placement.rollout_gpus],
                config.run.log_level,
                config.layout.offload_rollout,
            ),
            name=self.name,
        )
        # the data, the engines and the graders start in a method, not the constructor: an exception there reaches
        # the driver as itself (a failed constructor is an actor death whose cause Ray only has as text)
        self.pid = self._get(self.actor.start.remote(), "starting the rollout engines", engine.startup_timeout + 300)

    def _get(self, ref, what: str, timeout_s: float | None = None):
        watch = self.session.others([self.name])
        return wait_all([ref], [self.name], what=what, timeout_s=timeout_s or self.timeout_s, watch=watch)[0]

    def num_rollout(self) -> int:
        return self._get(self.actor.num_rollout.remote(), "counting rollouts")

    def num_rollout_per_epoch(self) -> int:
        return self._get(self.actor.num_rollout_per_epoch.remote(), "counting rollouts per epoch")

    def state_dict(self) -> dict:
        return self._get(self.actor.state_dict.remote(), "reading the data position")

    def load_state_dict(self, state: dict) -> None:
        self._get(self.actor.load_state_dict.remote(state), "restoring the data position")

    def skip_prompts(self, num_prompts: int) -> None:
        self._get(self.actor.skip_prompts.remote(num_prompts), "skipping prompts")

    def engine_pids(self) -> list[int]:
        return self._get(self.actor.engine_pids.remote(), "listing engines")

    def generate(self, rollout_id: int, *, weight_version: str, with_records: bool) -> RolloutBatch:
        dp_size = self.config.layout.dp_size
        refs = self.actor.generate.options(num_returns=2 + dp_size).remote(
            rollout_id, dp_size, weight_version, with_records
        )
        metrics = self._get(refs[0], f"rollout {rollout_id}: generation", self.generate_timeout_s)
        records = self._get(refs[1], f"rollout {rollout_id}: generation") if with_records else None
        return RolloutBatch(rollout_id, metrics, records, list(refs[2:]))

    def offload(self) -> None:
        if self.config.layout.offload_rollout:
            self._get(self.actor.release_memory.remote(), "releasing the engines' memory")

    def onload(self, tags: list[str]) -> None:
        if self.config.layout.offload_rollout:
            self._get(self.actor.resume_memory.remote(tags), f"resuming the engines' {'/'.join(tags)}")

    def update_weights_from_disk(self, path: str, weight_version: str) -> None:
        self._get(
            self.actor.update_weights_from_disk.remote(path, weight_version), "loading weights into engines",
            self.config.rollout.engine.startup_timeout,
        )  # fmt: skip

    def evaluate(self, rollout_id: int) -> dict[str, float]:
        return self._get(
            self.actor.evaluate.remote(rollout_id, self.config.eval), f"evaluation after {rollout_id}",
            self.generate_timeout_s,
        )  # fmt: skip

    def close(self) -> None:
        try:
            self._get(self.actor.close.remote(), "stopping the engines", timeout_s=150)
        except TrainerFailure as e:
            logger.warning("%s", e)


def _node_cpus(node_id: str) -> int:
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return int(node["Resources"].get("CPU", 1))
    return 1


def _torch_memory_saver_env() -> dict[str, str]:
    """LD_PRELOAD of torch_memory_saver's allocation hook, as slime sets it for colocated training ranks."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch_memory_saver")
    if spec is None or spec.origin is None:
        raise TrainerFailure("--offload-train needs torch_memory_saver (pip install torch_memory_saver)")
    package_dir = Path(spec.origin).parent
    hooks = sorted(package_dir.parent.glob("torch_memory_saver_hook_mode_preload*.so")) or sorted(
        package_dir.glob("*hook_mode_preload*.so")
    )
    if not hooks:
        raise TrainerFailure(
            f"torch_memory_saver is installed ({package_dir}) but its preload hook library was not found next to it; "
            "reinstall torch_memory_saver, or pass --no-offload-train"
        )
    return {"LD_PRELOAD": str(hooks[0]), "TMS_INIT_ENABLE": "1", "TMS_INIT_ENABLE_CPU_BACKUP": "1"}
