"""Frozen, validated trainer configuration, built once from the parsed flags.

    config = TrainerConfig.from_args(args)   # one ValueError listing every problem of every provider

The checks a launch tool can reuse without building anything are plain functions of numbers:

- :func:`check_batch_arithmetic` -> :class:`BatchPlan`: ``rollout_batch_size x n_samples_per_prompt =
  num_steps_per_rollout x global_batch_size``, each global batch divisible by the data-parallel size, whole groups
  per rank under ``--balance-data``;
- :func:`resolve_layout` -> :class:`ClusterLayout`: training ranks vs TP x PP x CP (and EP), GPUs per node, colocated
  vs disaggregated rollout GPUs, the weight-update transport;
- :func:`check_cluster_resources`: the layout against what a Ray cluster offers;
- :func:`loop_problems`: the loop's own flags (evaluation flags belong to ``slime_entropy.evaluation``).

Each raises ``ValueError`` whose lines name the flags and the fix. :meth:`TrainerConfig.from_args` runs them together
with the loss (``LossConfig``), rollout (``RolloutConfig``) and Megatron (``MegatronConfig``) validation and reports
everything at once.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slime_entropy.evaluation.config import EvalConfig
from slime_entropy.rollout.config import samples_per_prompt

__all__ = [
    "BatchPlan",
    "ClusterLayout",
    "WandbConfig",
    "RunConfig",
    "TrainerConfig",
    "check_batch_arithmetic",
    "resolve_layout",
    "check_cluster_resources",
    "loop_problems",
    "SUPPORTED_ADVANTAGE_ESTIMATORS",
]

logger = logging.getLogger(__name__)

SUPPORTED_ADVANTAGE_ESTIMATORS = ("grpo", "gspo", "cispo")


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


# ----- batch arithmetic -----
@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """How one rollout becomes optimizer steps.

    ``samples_per_rollout = rollout_batch_size x n_samples_per_prompt = num_steps_per_rollout x global_batch_size``;
    each data-parallel rank trains ``samples_per_rank_per_step = global_batch_size / dp_size`` samples per step.
    """

    rollout_batch_size: int
    n_samples_per_prompt: int
    global_batch_size: int
    num_steps_per_rollout: int
    dp_size: int

    @property
    def samples_per_rollout(self) -> int:
        return self.rollout_batch_size * self.n_samples_per_prompt

    @property
    def samples_per_rank_per_step(self) -> int:
        return self.global_batch_size // self.dp_size


def check_batch_arithmetic(
    *,
    rollout_batch_size: int | None,
    n_samples_per_prompt: int,
    num_steps_per_rollout: int | None,
    global_batch_size: int | None,
    dp_size: int,
    balance_data: bool = False,
) -> BatchPlan:
    """Resolve and check slime's batch arithmetic (see :class:`BatchPlan`). With neither ``num_steps_per_rollout``
    nor ``global_batch_size`` a rollout is one optimizer step."""
    problems: list[str] = []
    if rollout_batch_size is None or rollout_batch_size < 1:
        problems.append(
            f"--rollout-batch-size is required and must be >= 1 (prompts per rollout), got {rollout_batch_size}"
        )
    if n_samples_per_prompt < 1:
        problems.append(f"--n-samples-per-prompt must be >= 1, got {n_samples_per_prompt}")
    if num_steps_per_rollout is not None and num_steps_per_rollout < 1:
        problems.append(f"--num-steps-per-rollout must be >= 1, got {num_steps_per_rollout}")
    if global_batch_size is not None and global_batch_size < 1:
        problems.append(f"--global-batch-size must be >= 1, got {global_batch_size}")
    if dp_size < 1:
        problems.append(f"the data-parallel size must be >= 1, got {dp_size}")
    _raise_if(problems, "batch sizes")
    total = rollout_batch_size * n_samples_per_prompt
    if num_steps_per_rollout is not None:
        if total % num_steps_per_rollout:
            problems.append(
                f"--rollout-batch-size {rollout_batch_size} x --n-samples-per-prompt {n_samples_per_prompt} = {total} "
                f"samples do not split into --num-steps-per-rollout {num_steps_per_rollout} equal optimizer steps"
            )
        derived = total // num_steps_per_rollout
        if global_batch_size is not None and global_batch_size * num_steps_per_rollout != total:
            problems.append(
                f"--global-batch-size {global_batch_size} contradicts --rollout-batch-size {rollout_batch_size} x "
                f"--n-samples-per-prompt {n_samples_per_prompt} / --num-steps-per-rollout {num_steps_per_rollout} = "
                f"{total / num_steps_per_rollout:g}; drop --num-steps-per-rollout (the global batch then sets the "
                "steps per rollout) or --global-batch-size"
            )
        global_batch_size = derived
    elif global_batch_size is None:
        global_batch_size = total
    elif total % global_batch_size:
        problems.append(
            f"a rollout of --rollout-batch-size {rollout_batch_size} x --n-samples-per-prompt {n_samples_per_prompt}"
            f" = {total} samples is not a whole number of --global-batch-size {global_batch_size} steps"
        )
    if global_batch_size and global_batch_size % dp_size:
        problems.append(
            f"the global batch of {global_batch_size} samples does not divide over the data-parallel size {dp_size} "
            "(training ranks / (TP x PP x CP)); change --global-batch-size / --num-steps-per-rollout or the layout"
        )
    if balance_data and rollout_batch_size % dp_size:
        problems.append(
            f"--balance-data gives each of the {dp_size} data-parallel ranks whole prompt groups, but "
            f"--rollout-batch-size {rollout_batch_size} is not a multiple of {dp_size}"
        )
    _raise_if(problems, "batch arithmetic")
    return BatchPlan(
        rollout_batch_size=rollout_batch_size,
        n_samples_per_prompt=n_samples_per_prompt,
        global_batch_size=global_batch_size,
        num_steps_per_rollout=total // global_batch_size,
        dp_size=dp_size,
    )


# ----- layout -----
@dataclass(frozen=True, kw_only=True)
class ClusterLayout:
    """Where training ranks and engines run. On CPU machines "GPUs" are training processes (CPU bundles)."""

    on_gpu: bool
    actor_num_nodes: int
    actor_num_gpus_per_node: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    context_parallel_size: int
    expert_model_parallel_size: int
    colocate: bool
    offload_train: bool
    offload_rollout: bool
    rollout_num_gpus: int
    """GPUs the launched SGLang engines use (0: built-in engines on CPU, or external engines)."""
    rollout_num_gpus_per_engine: int
    num_gpus_per_node: int
    backend: str
    """torch.distributed backend of the training ranks: nccl or gloo."""
    weight_transport: str
    """disk or broadcast."""

    @property
    def num_train_ranks(self) -> int:
        return self.actor_num_nodes * self.actor_num_gpus_per_node

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    @property
    def dp_size(self) -> int:
        return self.num_train_ranks // self.model_parallel_size

    @property
    def num_gpus(self) -> int:
        """GPUs the whole job needs (0 on CPU)."""
        if not self.on_gpu:
            return 0
        if self.colocate:
            return max(self.num_train_ranks, self.rollout_num_gpus)
        return self.num_train_ranks + self.rollout_num_gpus


def resolve_layout(
    *,
    on_gpu: bool,
    actor_num_nodes: int,
    actor_num_gpus_per_node: int | None,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    expert_tensor_parallel_size: int | None = None,
    colocate: bool = False,
    offload: bool = False,
    offload_train: bool | None = None,
    offload_rollout: bool | None = None,
    rollout_num_gpus: int | None = None,
    rollout_num_gpus_per_engine: int = 1,
    num_gpus_per_node: int = 8,
    rollout_backend: str = "builtin",
    external_engines: bool = False,
    distributed_backend: str | None = None,
    update_weight_transport: str = "auto",
) -> ClusterLayout:
    """Resolve defaults and check the training layout against the parallel sizes and the GPUs (see module doc)."""
    problems: list[str] = []
    tp, pp, cp, ep = (tensor_model_parallel_size, pipeline_model_parallel_size, context_parallel_size,
                      expert_model_parallel_size)  # fmt: skip
    model_parallel = max(tp, 1) * max(pp, 1) * max(cp, 1)
    if actor_num_gpus_per_node is None:
        actor_num_gpus_per_node = 8 if on_gpu else max(1, model_parallel // max(actor_num_nodes, 1))
    if actor_num_nodes < 1:
        problems.append(f"--actor-num-nodes must be >= 1, got {actor_num_nodes}")
    if actor_num_gpus_per_node < 1:
        problems.append(f"--actor-num-gpus-per-node must be >= 1, got {actor_num_gpus_per_node}")
    world = max(actor_num_nodes, 1) * max(actor_num_gpus_per_node, 1)
    if world % model_parallel:
        problems.append(
            f"{world} training ranks (--actor-num-nodes {actor_num_nodes} x --actor-num-gpus-per-node "
            f"{actor_num_gpus_per_node}) are not a multiple of TP x PP x CP = {tp} x {pp} x {cp}: no whole model "
            "replicas; change the rank count or the parallel sizes"
        )
    etp = expert_tensor_parallel_size or tp
    if ep > 1 and (world // max(pp, 1)) % (ep * etp):
        problems.append(
            f"--expert-model-parallel-size {ep} x expert TP {etp} must divide the {world // max(pp, 1)} ranks of a "
            "pipeline stage"
        )
    if distributed_backend is None:
        distributed_backend = "nccl" if on_gpu else "gloo"
    if distributed_backend == "nccl" and not on_gpu:
        problems.append("--distributed-backend nccl needs CUDA GPUs; use gloo (the default on CPU machines)")
    offload_train = bool(offload or colocate) if offload_train is None else offload_train
    offload_rollout = bool(offload or colocate) if offload_rollout is None else offload_rollout
    sglang_launched = on_gpu and rollout_backend == "sglang" and not external_engines
    if on_gpu:
        if actor_num_gpus_per_node > num_gpus_per_node:
            problems.append(
                f"--actor-num-gpus-per-node {actor_num_gpus_per_node} exceeds --num-gpus-per-node {num_gpus_per_node}"
            )
        if tp > actor_num_gpus_per_node:
            logger.warning("TP %d spans nodes (%d training GPUs per node): expect slow training", tp,
                           actor_num_gpus_per_node)  # fmt: skip
        if colocate:
            if rollout_num_gpus is not None and rollout_num_gpus != world:
                problems.append(
                    f"--colocate shares the training GPUs with the engines: --rollout-num-gpus {rollout_num_gpus} "
                    f"must equal the {world} training GPUs (or be left out)"
                )
            rollout_num_gpus = world if sglang_launched else 0
        elif sglang_launched:
            if not rollout_num_gpus:
                problems.append(
                    "disaggregated GPU runs need --rollout-num-gpus (GPUs for the SGLang engines, beside the training "
                    "GPUs); or pass --colocate to share the training GPUs"
                )
            rollout_num_gpus = rollout_num_gpus or 0
        else:
            rollout_num_gpus = 0
        if rollout_num_gpus and rollout_num_gpus % rollout_num_gpus_per_engine:
            problems.append(
                f"--rollout-num-gpus {rollout_num_gpus} is not a multiple of --rollout-num-gpus-per-engine "
                f"{rollout_num_gpus_per_engine}"
            )
        if rollout_num_gpus > num_gpus_per_node:
            problems.append(
                f"the engines' {rollout_num_gpus} GPUs exceed one node (--num-gpus-per-node {num_gpus_per_node}): "
                "slime_entropy launches engines on one node; start the others yourself and pass "
                "--rollout-external-engine-addrs"
            )
    else:
        rollout_num_gpus = 0
    # weight transport
    can_broadcast = pp == 1 and ep == 1 and not (on_gpu and colocate)
    if update_weight_transport == "auto":
        weight_transport = "broadcast" if (on_gpu and can_broadcast and sglang_launched) else "disk"
    else:
        weight_transport = update_weight_transport
    if weight_transport == "broadcast" and not can_broadcast:
        why = (
            "colocated engines share the training GPUs and NCCL cannot put two ranks on one GPU"
            if on_gpu and colocate
            else "with PP or EP > 1 no single rank holds every weight"
        )
        problems.append(f"--update-weight-transport broadcast is not available here: {why}; use disk")
    _raise_if(problems, "cluster layout")
    return ClusterLayout(
        on_gpu=on_gpu,
        actor_num_nodes=actor_num_nodes,
        actor_num_gpus_per_node=actor_num_gpus_per_node,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        expert_model_parallel_size=ep,
        colocate=colocate,
        offload_train=offload_train,
        offload_rollout=offload_rollout,
        rollout_num_gpus=rollout_num_gpus,
        rollout_num_gpus_per_engine=rollout_num_gpus_per_engine,
        num_gpus_per_node=num_gpus_per_node,
        backend=distributed_backend,
        weight_transport=weight_transport,
    )


def check_cluster_resources(layout: ClusterLayout, resources: dict[str, float]) -> None:
    """Raise when a Ray cluster (``ray.cluster_resources()``) cannot hold the layout; waiting would hang forever."""
    problems = []
    if layout.on_gpu and resources.get("GPU", 0) < layout.num_gpus:
        detail = f"{layout.num_train_ranks} training" + (
            f" sharing with {layout.rollout_num_gpus} rollout"
            if layout.colocate
            else f" + {layout.rollout_num_gpus} rollout"
        )
        problems.append(
            f"the job needs {layout.num_gpus} GPUs ({detail}) but the Ray cluster has {resources.get('GPU', 0):g}; "
            "start more nodes (ray start --address ...) or shrink --actor-num-nodes/--actor-num-gpus-per-node/"
            "--rollout-num-gpus"
        )
    if resources.get("CPU", 0) <= 0:
        problems.append("the Ray cluster has no CPUs")
    _raise_if(problems, "Ray cluster")


# ----- run, evaluation, logging -----
@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    enabled: bool = False
    project: str = "slime_entropy"
    group: str | None = None
    key: str | None = None
    mode: str = "auto"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    run_dir: Path
    save_rollouts: bool = False
    plot_interval: int = 10
    num_rollout: int | None = None
    """``--num-rollout``; None: from ``--num-epoch`` and the data (known once the data is loaded)."""
    log_level: str = "info"
    update_weight_buffer_size: int = 512 * 1024**2
    distributed_timeout_s: float = 600.0
    embedded: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Everything the driver needs, validated; ``args`` is kept for the actors and user hooks (slime's contract)."""

    layout: ClusterLayout
    batch: BatchPlan
    run: RunConfig
    eval: EvalConfig | None  # None without --eval-prompt-data
    wandb: WandbConfig
    megatron: Any  # MegatronConfig
    rollout: Any  # RolloutConfig
    loss: Any  # LossConfig
    args: argparse.Namespace = field(repr=False)

    @property
    def save_dir(self) -> str | None:
        return self.megatron.checkpoint.save

    @property
    def load_dir(self) -> str | None:
        return self.megatron.checkpoint.load

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, on_gpu: bool | None = None) -> TrainerConfig:
        """Validate every provider's flags and the trainer's; raise one ``ValueError`` listing all problems."""
        import torch

        from slime_entropy.loss.config import LossConfig
        from slime_entropy.megatron.config import MegatronConfig
        from slime_entropy.rollout.config import RolloutConfig

        on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        problems: list[str] = []
        _demote_config_dumps()

        def attempt(build):
            try:
                return build()
            except ValueError as e:
                problems.append(str(e))
                return None

        loss = attempt(lambda: LossConfig.from_args(args))
        rollout = attempt(lambda: RolloutConfig.from_args(args))
        layout = attempt(
            lambda: resolve_layout(
                on_gpu=on_gpu,
                actor_num_nodes=args.actor_num_nodes,
                actor_num_gpus_per_node=args.actor_num_gpus_per_node,
                tensor_model_parallel_size=args.tensor_model_parallel_size,
                pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                context_parallel_size=args.context_parallel_size,
                expert_model_parallel_size=args.expert_model_parallel_size,
                expert_tensor_parallel_size=args.expert_tensor_parallel_size,
                colocate=args.colocate,
                offload=args.offload,
                offload_train=args.offload_train,
                offload_rollout=args.offload_rollout,
                rollout_num_gpus=args.rollout_num_gpus,
                rollout_num_gpus_per_engine=args.rollout_num_gpus_per_engine,
                num_gpus_per_node=args.num_gpus_per_node,
                rollout_backend=rollout.engine.backend if rollout else "builtin",
                external_engines=bool(rollout and rollout.engine.external_engine_addrs),
                distributed_backend=args.distributed_backend,
                update_weight_transport=args.update_weight_transport,
            )
        )
        megatron = attempt(
            lambda: MegatronConfig.from_args(
                args, world_size=layout.num_train_ranks if layout else None, on_gpu=on_gpu
            )
        )
        batch = None
        if layout is not None and args.rollout_batch_size is not None:  # RolloutConfig reports a missing one
            batch = attempt(
                lambda: check_batch_arithmetic(
                    rollout_batch_size=args.rollout_batch_size,
                    n_samples_per_prompt=samples_per_prompt(args),  # with --fr3e: + its partial rollouts
                    num_steps_per_rollout=args.num_steps_per_rollout,
                    global_batch_size=args.global_batch_size,
                    dp_size=layout.dp_size,
                    balance_data=args.balance_data,
                )
            )
        problems += loop_problems(args)
        if layout is not None and layout.on_gpu and layout.offload_train:
            import importlib.util

            if importlib.util.find_spec("torch_memory_saver") is None:
                problems.append(
                    "--offload-train (implied by --colocate) needs torch_memory_saver on the GPU nodes "
                    "(pip install torch_memory_saver), or pass --no-offload-train if both fit in GPU memory"
                )
        evaluation = attempt(lambda: EvalConfig.from_args(args, training=True))
        if problems:
            raise ValueError("\n".join(problems))
        if args.global_batch_size is None:
            args.global_batch_size = batch.global_batch_size  # user hooks read it from args (slime does the same)
        megatron = replace(megatron, batching=replace(megatron.batching, global_batch_size=batch.global_batch_size))
        # decided once, here: the rollout worker may not see the GPUs the way the driver does
        args.rollout_backend = rollout.engine.backend
        run = RunConfig(
            run_dir=Path(args.run_dir or args.save or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"),
            save_rollouts=args.save_rollouts,
            plot_interval=args.plot_interval,
            num_rollout=args.num_rollout,
            log_level=args.log_level,
            update_weight_buffer_size=args.update_weight_buffer_size,
            distributed_timeout_s=60.0 * args.distributed_timeout_minutes,
            embedded=bool(getattr(args, "embedded", False)),
        )
        wandb = WandbConfig(
            enabled=args.use_wandb,
            project=args.wandb_project,
            group=args.wandb_group,
            key=args.wandb_key,
            mode=args.wandb_mode,
        )
        return cls(
            layout=layout, batch=batch, run=run, eval=evaluation, wandb=wandb, megatron=megatron, rollout=rollout,
            loss=loss, args=args,
        )  # fmt: skip


# The providers' multi-KB "resolved configuration" lines: useful inside slime, where nothing else shows them, but the
# trainer records every flag in args.json and a mistake's message must not scroll away under them.
_CONFIG_DUMP_LOGGERS = ("slime_entropy.loss.config", "slime_entropy.megatron.config")


class _ToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _demote_config_dumps() -> None:
    for name in _CONFIG_DUMP_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _ToDebug) for f in target.filters):
            target.addFilter(_ToDebug())


def loop_problems(args: argparse.Namespace) -> list[str]:
    """Problems of the rollout-train loop's own flags (estimator, reward KL, timeouts, logging, default task)."""
    problems = []
    if args.advantage_estimator not in SUPPORTED_ADVANTAGE_ESTIMATORS:
        problems.append(
            f"--advantage-estimator {args.advantage_estimator} is not supported by slime_entropy's trainer (it needs "
            f"token-level returns); use one of {', '.join(SUPPORTED_ADVANTAGE_ESTIMATORS)}"
        )
    if args.kl_coef:
        problems.append(
            f"--kl-coef {args.kl_coef}: the reward-side KL penalty is not implemented; use the KL loss "
            "(--use-kl-loss --kl-loss-coef C --ref-load DIR)"
        )
    given = getattr(args, "given_flags", frozenset())
    for dest in ("kl_loss_type", "kl_loss_coef"):
        if dest in given and not args.use_kl_loss:
            flag = "--" + dest.replace("_", "-")
            problems.append(
                f"{flag} has no effect without --use-kl-loss: add --use-kl-loss (and --ref-load) or drop it"
            )
    if args.distributed_timeout_minutes < 1:
        problems.append(f"--distributed-timeout-minutes must be >= 1, got {args.distributed_timeout_minutes}")
    if args.plot_interval < 0:
        problems.append(f"--plot-interval must be >= 0 (0: plots only at the end), got {args.plot_interval}")
    if args.update_weight_buffer_size < 1:
        problems.append(f"--update-weight-buffer-size must be >= 1 byte, got {args.update_weight_buffer_size}")
    if not getattr(args, "embedded", False):
        for flag, value in (("--embedded-sft-steps", args.embedded_sft_steps),
                            ("--embedded-cache-dir", args.embedded_cache_dir)):  # fmt: skip
            if value is not None:
                problems.append(
                    f"{flag} only applies to the built-in default task (no --hf-checkpoint/--prompt-data); drop it"
                )
    elif args.embedded_sft_steps is not None and args.embedded_sft_steps < 1:
        problems.append(f"--embedded-sft-steps must be >= 1, got {args.embedded_sft_steps}")
    if args.wandb_mode != "auto" and not args.use_wandb:
        problems.append("--wandb-mode has no effect without --use-wandb")
    if args.use_wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            problems.append("--use-wandb needs the wandb package (pip install wandb)")
    return problems
