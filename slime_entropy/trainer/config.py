"""Frozen, validated trainer configuration, built once from the parsed flags.

    config = TrainerConfig.from_args(args)   # one ValueError listing every problem of every provider

:meth:`TrainerConfig.from_args` is the one resolver: it builds the loss (``LossConfig``), rollout
(``RolloutConfig``), Megatron (``MegatronConfig``) and evaluation (``EvalConfig``) configs and the trainer's own,
reports every problem at once and never changes the namespace it reads. The driver, the Ray actors and the dry run
(``slime_entropy.launch.plan``) all work from the result. Its parts are plain functions of numbers:

- :func:`resolve_layout` -> :class:`ClusterLayout`: training ranks per node, colocated vs disaggregated rollout GPUs
  (:func:`~slime_entropy.rollout.config.engine_gpu_count`), the weight-update transport;
- :func:`check_batch_arithmetic` -> :class:`BatchPlan`: ``rollout_batch_size x n_samples_per_prompt =
  num_steps_per_rollout x global_batch_size``, each global batch divisible by the data-parallel size, whole groups
  per rank under ``--balance-data``;
- :func:`check_cluster_resources`: the layout against what a Ray cluster offers;
- :func:`loop_problems`: the loop's own flags (evaluation flags belong to ``slime_entropy.evaluation``).

Each raises ``ValueError`` (or returns messages) whose lines name the flags and the fix.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from slime_entropy.evaluation.config import EvalConfig
from slime_entropy.problems import Problems
from slime_entropy.rollout.config import engine_gpu_count, external_engine_addrs, resolve_backend, sglang_problem

if TYPE_CHECKING:  # the configs' modules import torch and megatron-core: imported when a config is built
    from slime_entropy.loss.config import LossConfig
    from slime_entropy.megatron.config import MegatronConfig
    from slime_entropy.rollout.config import RolloutConfig

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
DEFAULT_GPUS_PER_NODE = 8
"""Training GPUs per node when ``--actor-num-gpus-per-node`` is not given on a GPU cluster (slime's default)."""


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
    rollout_batch_size: int,
    n_samples_per_prompt: int,
    num_steps_per_rollout: int | None,
    global_batch_size: int | None,
    dp_size: int,
    balance_data: bool = False,
) -> BatchPlan:
    """Resolve and check slime's batch arithmetic (see :class:`BatchPlan`). With neither ``num_steps_per_rollout``
    nor ``global_batch_size`` a rollout is one optimizer step.

    Each size on its own is checked where its flag belongs (``--rollout-batch-size`` and ``--n-samples-per-prompt``
    by the rollout's ``GroupConfig``, ``--global-batch-size`` by Megatron's ``BatchingConfig``); this function checks
    how they fit together, and ``--num-steps-per-rollout``, the trainer's own."""
    sizes = (rollout_batch_size, n_samples_per_prompt, dp_size, global_batch_size or 1)
    if min(sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1 (checked by their configs first), got {sizes}")
    problems = Problems()
    problems.check(
        num_steps_per_rollout is None or num_steps_per_rollout >= 1,
        f"--num-steps-per-rollout must be >= 1, got {num_steps_per_rollout}",
    )
    problems.raise_if_any("batch sizes")
    total = rollout_batch_size * n_samples_per_prompt
    if num_steps_per_rollout is not None:
        problems.check(
            total % num_steps_per_rollout == 0,
            f"--rollout-batch-size {rollout_batch_size} x --n-samples-per-prompt {n_samples_per_prompt} = {total} "
            f"samples do not split into --num-steps-per-rollout {num_steps_per_rollout} equal optimizer steps",
        )
        problems.check(
            global_batch_size is None or global_batch_size * num_steps_per_rollout == total,
            f"--global-batch-size {global_batch_size} contradicts --rollout-batch-size {rollout_batch_size} x "
            f"--n-samples-per-prompt {n_samples_per_prompt} / --num-steps-per-rollout {num_steps_per_rollout} = "
            f"{total / num_steps_per_rollout:g}; drop --num-steps-per-rollout (the global batch then sets the "
            "steps per rollout) or --global-batch-size",
        )
        global_batch_size = total // num_steps_per_rollout
    elif global_batch_size is None:
        global_batch_size = total
    else:
        problems.check(
            total % global_batch_size == 0,
            f"a rollout of --rollout-batch-size {rollout_batch_size} x --n-samples-per-prompt {n_samples_per_prompt}"
            f" = {total} samples is not a whole number of --global-batch-size {global_batch_size} steps",
        )
    problems.check(
        not global_batch_size or global_batch_size % dp_size == 0,
        f"the global batch of {global_batch_size} samples does not divide over the data-parallel size {dp_size} "
        "(training ranks / (TP x PP x CP)); change --global-batch-size / --num-steps-per-rollout or the layout",
    )
    problems.check(
        not balance_data or rollout_batch_size % dp_size == 0,
        f"--balance-data gives each of the {dp_size} data-parallel ranks whole prompt groups, but "
        f"--rollout-batch-size {rollout_batch_size} is not a multiple of {dp_size}",
    )
    problems.raise_if_any("batch arithmetic")
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
    """Resolve defaults and check where the training ranks and the engines go (see module doc). Whether the model
    splits into the parallel sizes, the ranks into whole replicas and a pipeline stage into expert groups is
    Megatron's to check (``MegatronConfig.from_args`` with the layout's ``num_train_ranks``)."""
    problems = Problems()
    tp, pp, cp, ep = (tensor_model_parallel_size, pipeline_model_parallel_size, context_parallel_size,
                      expert_model_parallel_size)  # fmt: skip
    model_parallel = max(tp, 1) * max(pp, 1) * max(cp, 1)
    if actor_num_gpus_per_node is None:
        actor_num_gpus_per_node = (
            DEFAULT_GPUS_PER_NODE if on_gpu else max(1, model_parallel // max(actor_num_nodes, 1))
        )
    problems.check(actor_num_nodes >= 1, f"--actor-num-nodes must be >= 1, got {actor_num_nodes}")
    problems.check(
        actor_num_gpus_per_node >= 1, f"--actor-num-gpus-per-node must be >= 1, got {actor_num_gpus_per_node}"
    )
    world = max(actor_num_nodes, 1) * max(actor_num_gpus_per_node, 1)
    if distributed_backend is None:
        distributed_backend = "nccl" if on_gpu else "gloo"
    problems.check(
        distributed_backend != "nccl" or on_gpu,
        "--distributed-backend nccl needs CUDA GPUs; use gloo (the default on CPU machines)",
    )
    offload_train = bool(offload or colocate) if offload_train is None else offload_train
    offload_rollout = bool(offload or colocate) if offload_rollout is None else offload_rollout
    sglang_launched = on_gpu and rollout_backend == "sglang" and not external_engines
    rollout_num_gpus_resolved = 0
    if on_gpu:
        problems.check(
            actor_num_gpus_per_node <= num_gpus_per_node,
            f"--actor-num-gpus-per-node {actor_num_gpus_per_node} exceeds --num-gpus-per-node {num_gpus_per_node}",
        )
        if tp > actor_num_gpus_per_node:
            logger.warning("TP %d spans nodes (%d training GPUs per node): expect slow training", tp,
                           actor_num_gpus_per_node)  # fmt: skip
        if sglang_launched:
            rollout_num_gpus_resolved = (
                problems.collect(
                    lambda: engine_gpu_count(
                        rollout_num_gpus=rollout_num_gpus,
                        num_gpus_per_engine=rollout_num_gpus_per_engine,
                        colocated_gpus=world if colocate else None,
                    )
                )
                or 0
            )
    # weight transport
    can_broadcast = pp == 1 and ep == 1 and not (on_gpu and colocate)
    if update_weight_transport == "auto":
        weight_transport = "broadcast" if (on_gpu and can_broadcast and sglang_launched) else "disk"
    else:
        weight_transport = update_weight_transport
    why = (
        "colocated engines share the training GPUs and NCCL cannot put two ranks on one GPU"
        if on_gpu and colocate
        else "with PP or EP > 1 no single rank holds every weight"
    )
    problems.check(
        weight_transport != "broadcast" or can_broadcast,
        f"--update-weight-transport broadcast is not available here: {why}; use disk",
    )
    problems.raise_if_any("cluster layout")
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
        rollout_num_gpus=rollout_num_gpus_resolved,
        rollout_num_gpus_per_engine=rollout_num_gpus_per_engine,
        num_gpus_per_node=num_gpus_per_node,
        backend=distributed_backend,
        weight_transport=weight_transport,
    )


def check_cluster_resources(layout: ClusterLayout, resources: dict[str, float]) -> None:
    """Raise when a Ray cluster (``ray.cluster_resources()``) cannot hold the layout; waiting would hang forever."""
    problems = Problems()
    detail = f"{layout.num_train_ranks} training" + (
        f" sharing with {layout.rollout_num_gpus} rollout"
        if layout.colocate
        else f" + {layout.rollout_num_gpus} rollout"
    )
    problems.check(
        not layout.on_gpu or resources.get("GPU", 0) >= layout.num_gpus,
        f"the job needs {layout.num_gpus} GPUs ({detail}) but the Ray cluster has {resources.get('GPU', 0):g}; "
        "start more nodes (ray start --address ...) or shrink --actor-num-nodes/--actor-num-gpus-per-node/"
        "--rollout-num-gpus",
    )
    problems.check(resources.get("CPU", 0) > 0, "the Ray cluster has no CPUs")
    problems.raise_if_any("Ray cluster")


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
    default_task: bool = False
    """The built-in default task (no ``--hf-checkpoint``/``--prompt-data``)."""
    advantage_estimator: str = "grpo"
    """``--advantage-estimator`` (one of :data:`SUPPORTED_ADVANTAGE_ESTIMATORS`): one normalised reward per sample
    on every response token."""


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Everything the driver, the training ranks and the rollout worker need, resolved and validated once."""

    layout: ClusterLayout
    batch: BatchPlan
    run: RunConfig
    eval: EvalConfig | None  # None without --eval-prompt-data
    wandb: WandbConfig
    megatron: MegatronConfig
    rollout: RolloutConfig
    loss: LossConfig
    parsed_args: argparse.Namespace = field(repr=False)
    """The namespace as parsed, unchanged; read only by :attr:`slime_args`."""
    warnings: tuple[str, ...] = ()
    """Facts about the machine that resolved the config which a run elsewhere may not share (``check_environment``
    False: a package or file missing here)."""

    @property
    def save_dir(self) -> str | None:
        return self.megatron.checkpoint.save

    @property
    def load_dir(self) -> str | None:
        return self.megatron.checkpoint.load

    @property
    def slime_args(self) -> argparse.Namespace:
        """The flags as slime's ``args`` holds them once slime has resolved them (``--global-batch-size``,
        ``--rollout-backend`` and the ``--ckpt-step`` resumed from filled in), as a fresh copy.

        Recorded in ``args.json`` and W&B, and handed to user hooks (custom reward, filter and generate functions
        receive ``args``: slime's contract). Our own code reads the typed configs above, never this namespace."""
        args = argparse.Namespace(**vars(self.parsed_args))
        args.global_batch_size = self.batch.global_batch_size
        args.rollout_backend = self.rollout.engine.backend
        args.ckpt_step = self.megatron.checkpoint.ckpt_step
        return args

    def resuming_from(self, ckpt_step: int | str) -> TrainerConfig:
        """This config with ``--ckpt-step`` set to the checkpoint the training ranks load."""
        checkpoint = replace(self.megatron.checkpoint, ckpt_step=ckpt_step)
        return replace(self, megatron=replace(self.megatron, checkpoint=checkpoint))

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, *, on_gpu: bool | None = None, check_environment: bool = True
    ) -> TrainerConfig:
        """Resolve and validate every provider's flags and the trainer's; raise one ``ValueError`` listing all
        problems. ``args`` is not modified.

        ``on_gpu``: plan for CUDA GPUs (None: whether this machine has one). ``check_environment`` False: the config
        is for other machines (``train.py --dry-run``), so what only this machine lacks (SGLang, torch_memory_saver,
        wandb) goes to :attr:`warnings` instead of stopping it, and ``--rollout-backend auto`` with GPUs means SGLang.
        """
        import torch

        from slime_entropy.loss.config import LossConfig
        from slime_entropy.megatron.config import MegatronConfig
        from slime_entropy.rollout.config import RolloutConfig

        on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        problems = Problems()
        environment = Problems()  # what this machine lacks: problems here, warnings when planning for others
        _demote_config_dumps()
        loss = problems.collect(lambda: LossConfig.from_args(args))
        # decided once, here: the rollout worker may not see the GPUs the way the driver does
        backend = resolve_backend(
            args.rollout_backend, on_gpu=on_gpu, sglang_installed=None if check_environment else True
        )
        environment.extend(filter(None, [sglang_problem(args.rollout_backend)]))
        layout = problems.collect(
            lambda: resolve_layout(
                on_gpu=on_gpu,
                actor_num_nodes=args.actor_num_nodes,
                actor_num_gpus_per_node=args.actor_num_gpus_per_node,
                tensor_model_parallel_size=args.tensor_model_parallel_size,
                pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                context_parallel_size=args.context_parallel_size,
                expert_model_parallel_size=args.expert_model_parallel_size,
                colocate=args.colocate,
                offload=args.offload,
                offload_train=args.offload_train,
                offload_rollout=args.offload_rollout,
                rollout_num_gpus=args.rollout_num_gpus,
                rollout_num_gpus_per_engine=args.rollout_num_gpus_per_engine,
                num_gpus_per_node=args.num_gpus_per_node,
                rollout_backend=backend,
                external_engines=bool(external_engine_addrs(args)),
                distributed_backend=args.distributed_backend,
                update_weight_transport=args.update_weight_transport,
            )
        )
        # the layout resolved the engines' GPUs (or said why it could not: one engine then stands in)
        engine_gpus = (layout.rollout_num_gpus or None) if layout is not None else args.rollout_num_gpus_per_engine
        rollout = problems.collect(lambda: RolloutConfig.from_args(args, backend=backend, engine_gpus=engine_gpus))
        megatron = problems.collect(
            lambda: MegatronConfig.from_args(
                args, world_size=layout.num_train_ranks if layout else None, on_gpu=on_gpu
            )
        )
        batch = None
        if layout is not None and rollout is not None and megatron is not None:  # each checked its own sizes
            batch = problems.collect(
                lambda: check_batch_arithmetic(
                    rollout_batch_size=rollout.groups.rollout_batch_size,
                    n_samples_per_prompt=rollout.samples_per_prompt,  # with --fr3e: + its partial rollouts
                    num_steps_per_rollout=args.num_steps_per_rollout,
                    global_batch_size=megatron.batching.global_batch_size,
                    dp_size=layout.dp_size,
                    balance_data=rollout.groups.balance_data,
                )
            )
        problems.extend(loop_problems(args))
        if layout is not None and layout.on_gpu and layout.offload_train:
            environment.check(
                importlib.util.find_spec("torch_memory_saver") is not None,
                "--offload-train (implied by --colocate) needs torch_memory_saver on the GPU nodes "
                "(pip install torch_memory_saver), or pass --no-offload-train if both fit in GPU memory",
            )
        if args.use_wandb:
            environment.check(
                importlib.util.find_spec("wandb") is not None,
                "--use-wandb needs the wandb package (pip install wandb)",
            )
        evaluation = problems.collect(lambda: EvalConfig.from_args(args, training=True))
        if check_environment:
            problems.extend(environment.messages)
        problems.raise_if_any()
        megatron = replace(megatron, batching=replace(megatron.batching, global_batch_size=batch.global_batch_size))
        run = RunConfig(
            run_dir=Path(args.run_dir or args.save or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"),
            save_rollouts=args.save_rollouts,
            plot_interval=args.plot_interval,
            num_rollout=args.num_rollout,
            log_level=args.log_level,
            update_weight_buffer_size=args.update_weight_buffer_size,
            distributed_timeout_s=60.0 * args.distributed_timeout_minutes,
            default_task=bool(getattr(args, "embedded", False)),
            advantage_estimator=args.advantage_estimator,
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
            loss=loss, parsed_args=args, warnings=() if check_environment else tuple(environment.messages),
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
    problems = Problems()
    problems.check(
        args.advantage_estimator in SUPPORTED_ADVANTAGE_ESTIMATORS,
        f"--advantage-estimator {args.advantage_estimator} is not supported by slime_entropy's trainer (it needs "
        f"token-level returns); use one of {', '.join(SUPPORTED_ADVANTAGE_ESTIMATORS)}",
    )
    problems.check(
        not args.kl_coef,
        f"--kl-coef {args.kl_coef}: the reward-side KL penalty is not implemented; use the KL loss "
        "(--use-kl-loss --kl-loss-coef C --ref-load DIR)",
    )
    given = getattr(args, "given_flags", frozenset())
    for dest in ("kl_loss_type", "kl_loss_coef"):
        problems.check(
            dest not in given or args.use_kl_loss,
            f"--{dest.replace('_', '-')} has no effect without --use-kl-loss: add --use-kl-loss (and --ref-load) or "
            "drop it",
        )
    problems.check(
        args.distributed_timeout_minutes >= 1,
        f"--distributed-timeout-minutes must be >= 1, got {args.distributed_timeout_minutes}",
    )
    problems.check(
        args.plot_interval >= 0, f"--plot-interval must be >= 0 (0: plots only at the end), got {args.plot_interval}"
    )
    problems.check(
        args.update_weight_buffer_size >= 1,
        f"--update-weight-buffer-size must be >= 1 byte, got {args.update_weight_buffer_size}",
    )
    default_task = bool(getattr(args, "embedded", False))
    for flag, value in (("--embedded-sft-steps", args.embedded_sft_steps),
                        ("--embedded-cache-dir", args.embedded_cache_dir)):  # fmt: skip
        problems.check(
            default_task or value is None,
            f"{flag} only applies to the built-in default task (no --hf-checkpoint/--prompt-data); drop it",
        )
    problems.check(
        args.embedded_sft_steps is None or args.embedded_sft_steps >= 1 or not default_task,
        f"--embedded-sft-steps must be >= 1, got {args.embedded_sft_steps}",
    )
    problems.check(args.wandb_mode == "auto" or args.use_wandb, "--wandb-mode has no effect without --use-wandb")
    return problems.messages
