"""``train.py --dry-run``: resolve every argument, check it, and print the run's plan, without a GPU.

    from slime_entropy.launch.plan import plan_from_args
    print(plan_from_args(args).render())

:func:`plan_from_args` takes train.py's parsed namespace and

1. reads the HF ``config.json`` (``--hf-checkpoint``) and checks the MODEL_ARGS flags against it
   (:func:`~slime_entropy.megatron.architecture.check_model_args`);
2. builds the loss and rollout configs (``LossConfig.from_args``, ``RolloutConfig.from_args``), checks the Megatron
   optimizer / batching / checkpoint flags and the trainer's loop and evaluation flags;
3. resolves the cluster layout and the batch arithmetic with the trainer's own functions
   (``slime_entropy.trainer.config.resolve_layout`` / ``check_batch_arithmetic``) and adds the checks that need the
   architecture or the token budget (:mod:`slime_entropy.launch.checks`);
4. estimates the memory per GPU of training and of the rollout engines, phase by phase when they share the GPUs
   (:mod:`slime_entropy.launch.memory`, where the formulas and assumptions are written down).

Every problem of steps 1-3 is reported in one ``ValueError`` (one line each, naming the flags). Memory over the
GPU's capacity is not an error (the estimate has a margin of error) but a warning in the plan, and
:attr:`Plan.fits` is False. Facts about the machine running the dry run are not held against the plan: missing
data or evaluation files, torch_memory_saver or wandb not installed there are warnings.

Target. The plan is for CUDA GPUs with bf16 (``--no-bf16`` aside) and SGLang engines, whatever machine runs the dry
run, except for the built-in default task and runs asking for the built-in engine or gloo (``--rollout-backend
builtin``, ``--distributed-backend gloo``), which are planned as CPU runs. ``--plan-gpu-memory-gib`` (default 80) and
``--plan-memory-reserve-gib`` (default 4) set the GPU size and the runtime allowance
(``slime_entropy.launch.arguments.add_plan_arguments`` registers them; without them the defaults apply).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slime_entropy.launch.checks import MicroBatchPlan, TokenBudget, check_parallel_layout, plan_micro_batches
from slime_entropy.launch.memory import (
    DEFAULT_GPU_MEMORY_GIB,
    DEFAULT_RESERVE_GIB,
    GiB,
    ParallelSizes,
    RolloutMemory,
    TrainingMemory,
    estimate_rollout_memory,
    estimate_training_memory,
    total_parameters,
)
from slime_entropy.megatron.architecture import HFArchitecture, check_model_args, padded_vocab_size
from slime_entropy.rollout.config import samples_per_prompt

__all__ = ["Plan", "CheckpointStatus", "plan_from_args"]

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"  # Megatron's, as slime_entropy.megatron.checkpoint writes it


@dataclass(frozen=True)
class CheckpointStatus:
    flag: str
    path: str | None
    state: str


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Everything the dry run resolved. ``render()`` is what ``train.py --dry-run`` prints.

    ``cluster`` is the trainer's :class:`~slime_entropy.trainer.config.ClusterLayout`, ``batch`` its
    :class:`~slime_entropy.trainer.config.BatchPlan`. ``rollout`` is None on CPU (the built-in engine).
    """

    on_gpu: bool
    hf_checkpoint: str
    arch: HFArchitecture
    model_args_given: bool
    num_parameters: int
    padded_vocab_size: int
    layout: ParallelSizes
    cluster: Any
    batch: Any
    micro: MicroBatchPlan
    sampling_batch_size: int
    num_rollout: int | None
    num_rollout_source: str
    training: TrainingMemory | None
    rollout: RolloutMemory | None
    gpu_memory_bytes: int
    reserve_bytes: int
    bf16: bool
    reference_on_host: bool
    settings: dict[str, str]
    checkpoints: tuple[CheckpointStatus, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def num_nodes(self) -> int:
        c = self.cluster
        if not self.on_gpu:
            return c.actor_num_nodes
        return max(c.actor_num_nodes, math.ceil(c.num_gpus / c.num_gpus_per_node))

    @property
    def training_peak(self) -> int | None:
        """Bytes per GPU while training: the actor, plus SGLang's pool if it is not released (colocated only)."""
        if self.training is None:
            return None
        shared = self.cluster.colocate and not self.cluster.offload_rollout and self.rollout is not None
        return self.training.total + (self.rollout.static_pool if shared else 0)

    @property
    def rollout_peak(self) -> int | None:
        """Bytes per GPU while generating: SGLang's pool and allowance, plus the actor's state if it is not
        offloaded (colocated only)."""
        if self.rollout is None:
            return None
        kept = self.cluster.colocate and not self.cluster.offload_train and self.training is not None
        return self.rollout.static_pool + self.reserve_bytes + (self.training.model_state if kept else 0)

    @property
    def training_fits(self) -> bool:
        return not self.on_gpu or self.training_peak is None or self.training_peak <= self.gpu_memory_bytes

    @property
    def rollout_fits(self) -> bool:
        if not self.on_gpu or self.rollout is None:
            return True
        return self.rollout.kv_cache > 0 and self.rollout_peak <= self.gpu_memory_bytes

    @property
    def fits(self) -> bool:
        return self.training_fits and self.rollout_fits

    @property
    def num_optimizer_steps(self) -> int | None:
        return None if self.num_rollout is None else self.num_rollout * self.batch.num_steps_per_rollout

    def render(self) -> str:
        return _render(self)


def _hf_architecture(args: argparse.Namespace, problems: list[str]) -> HFArchitecture | None:
    if args.hf_checkpoint is None:
        problems.append("--hf-checkpoint is required: the HF model directory (config.json, weights, tokenizer)")
        return None
    try:
        arch = HFArchitecture.from_hf_checkpoint(args.hf_checkpoint)
    except ValueError as err:
        problems.append(str(err))
        return None
    try:
        check_model_args(args, arch, source=f"{args.hf_checkpoint}/config.json")
    except ValueError as err:
        problems.append(str(err))
    return arch


def _collect(problems: list[str], build, *a, **kw):
    try:
        return build(*a, **kw)
    except ValueError as err:
        problems.append(str(err))
        return None


def _rollout_config(args: argparse.Namespace, problems: list[str]):
    """Validate the rollout flags (data, rewards, sampling, groups). The dry run may happen on a machine without
    SGLang or a GPU, so the engine backend is taken as the built-in one for this validation only; the engines'
    placement is checked by the trainer's ``resolve_layout`` and :func:`check_parallel_layout`."""
    from slime_entropy.rollout.config import RolloutConfig

    probe = copy.copy(args)
    probe.rollout_backend = "builtin"
    return _collect(problems, RolloutConfig.from_args, probe)


def _count_prompts(path: str) -> int | None:
    """Rows of a .jsonl / .json / .parquet prompt file, or None if it is not readable here."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        return pq.ParquetFile(p).metadata.num_rows
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return len(data) if isinstance(data, list) else None
    with p.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _checkpoint_status(args: argparse.Namespace) -> tuple[tuple[CheckpointStatus, ...], list[str]]:
    warnings: list[str] = []
    rows = []
    hf = Path(args.hf_checkpoint)
    has_weights = any(hf.glob("*.safetensors"))
    rows.append(
        CheckpointStatus(
            "--hf-checkpoint",
            str(hf),
            "config.json" + (", safetensors" if has_weights else "; no *.safetensors here (fine for a dry run)"),
        )
    )

    def tracker(path: str | None) -> str | None:
        if path is None:
            return None
        file = Path(path) / TRACKER_FILENAME
        return file.read_text().strip() if file.is_file() else None

    ref = tracker(args.ref_load)
    if args.ref_load is not None:
        if ref is None:
            state = "no torch_dist checkpoint yet: run the HF -> torch_dist conversion first"
            warnings.append(
                f"--ref-load {args.ref_load} holds no {TRACKER_FILENAME}; convert first: python "
                f"tools/convert_hf_to_torch_dist.py ${{MODEL_ARGS[@]}} --hf-checkpoint {args.hf_checkpoint} --save "
                f"{args.ref_load}"
            )
        else:
            state = f"torch_dist, iteration {ref}"
        rows.append(CheckpointStatus("--ref-load", args.ref_load, state))
    loaded = tracker(args.load)
    if args.load is not None:
        if loaded is not None:
            state = f"resumes from iteration {loaded}"
        elif args.ref_load is not None:
            state = "no checkpoint yet: starts from --ref-load"
        else:
            state = "no checkpoint yet: starts from the HF weights"
        rows.append(CheckpointStatus("--load", args.load, state))
    elif args.ref_load is None:
        rows.append(CheckpointStatus("initial weights", str(hf), "the HF safetensors"))
    if args.save is not None:
        every = f"every {args.save_interval} rollouts" if args.save_interval else "at the end"
        rows.append(CheckpointStatus("--save", args.save, f"torch_dist, {every}"))
    return tuple(rows), warnings


def _settings_summary(args: argparse.Namespace, loss, rollout) -> dict[str, str]:
    s: dict[str, str] = {}
    f = loss.entropy_filter
    if f.enabled:
        s["entropy filter"] = (
            f"ON: keep the top {f.keep_fraction:g} of valid tokens by entropy (scope {f.threshold_scope}, "
            f"denominator {f.denominator})"
        )
    else:
        s["entropy filter"] = "off (all tokens)"
    p = loss.policy
    clip = f"clip [{1 - p.eps_clip:g}, {1 + p.eps_clip_high:g}]" + (
        f", dual-clip {p.dual_clip_c:g}" if p.dual_clip_c else ""
    )
    s["policy loss"] = f"{p.mode}, {args.advantage_estimator} advantages, {clip}"
    kl = f"KL loss {p.kl_loss_type} x {p.kl_loss_coef:g} (reference model loaded)" if p.use_kl_loss else "no KL loss"
    s["regularisation"] = f"{kl}, entropy bonus {p.entropy_coef:g}"
    if rollout is not None:
        samp = rollout.sampling
        s["sampling"] = f"temperature {samp.temperature:g}, top-p {samp.top_p:g}, top-k {samp.top_k}"
        g = rollout.groups
        s["rewards"] = f"{rollout.reward.rm_type or rollout.reward.custom_rm_path}, normalisation {g.normalization}"
        if g.dynamic_sampling_filter_path:
            s["dynamic sampling"] = (
                f"{g.dynamic_sampling_filter_path}, rounds of {g.sampling_batch_size} prompts, at most "
                f"{g.dynamic_sampling_max_rounds} rounds"
            )
        if rollout.fr3e is not None:
            s["FR3E"] = rollout.fr3e.summary()
        if g.overlong_buffer_len:
            s["overlong shaping"] = (
                f"buffer {g.overlong_buffer_len} tokens, penalty factor {g.overlong_penalty_factor:g}"
            )
        s["data"] = (
            f"{rollout.data.prompt_data} (input key {rollout.data.input_key!r}, label key {rollout.data.label_key!r})"
        )
    if args.eval_interval and args.eval_prompt_data:
        names = ", ".join(args.eval_prompt_data[0::2])
        length = args.eval_max_response_len or args.rollout_max_response_len
        temperature = args.rollout_temperature if args.eval_temperature is None else args.eval_temperature
        top_p = args.rollout_top_p if args.eval_top_p is None else args.eval_top_p
        s["evaluation"] = (
            f"every {args.eval_interval} rollouts: {names}; {args.n_samples_per_eval_prompt} samples per prompt, "
            f"up to {length} tokens, temperature {temperature:g}, top-p {top_p:g}"
        )
    lr = f"lr {args.lr:g} ({args.lr_decay_style}"
    lr += f", warmup {args.lr_warmup_iters} steps)" if args.lr_warmup_iters else ")"
    s["optimizer"] = f"Adam, {lr}, weight decay {args.weight_decay:g}, grad clip {args.clip_grad:g}"
    return s


def _target_on_gpu(args: argparse.Namespace) -> bool:
    """GPU plan unless the run is the built-in default task or asks for the built-in engine or gloo."""
    cpu = bool(getattr(args, "embedded", False)) or args.rollout_backend == "builtin"
    return not (cpu or args.distributed_backend == "gloo")


def _split_environment(message: str, problems: list[str], warnings: list[str]) -> None:
    """Sort the lines of a validator's error: facts about this machine (files not here, packages not installed here)
    become warnings, everything else stays a problem."""
    lines = [line.strip()[2:] if line.strip().startswith("- ") else line.strip() for line in message.splitlines()]
    for line in lines:
        if not line or line.startswith("invalid "):
            continue
        if "does not exist" in line or "package" in line:
            warnings.append(f"{line} (on this machine)")
        else:
            problems.append(line)


def _trainer_checks(args: argparse.Namespace, on_gpu: bool, problems: list[str], warnings: list[str]):
    """The trainer's layout, batch, loop and evaluation checks; returns its ClusterLayout and BatchPlan (or None)."""
    from slime_entropy.evaluation.config import EvalConfig
    from slime_entropy.trainer import config as trainer_config

    cluster = batch = None
    try:
        cluster = trainer_config.resolve_layout(
            on_gpu=on_gpu,
            actor_num_nodes=args.actor_num_nodes,
            actor_num_gpus_per_node=args.actor_num_gpus_per_node,
            tensor_model_parallel_size=args.tensor_model_parallel_size,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            context_parallel_size=args.context_parallel_size,
            expert_model_parallel_size=args.expert_model_parallel_size,
            expert_tensor_parallel_size=args.expert_tensor_parallel_size,
            colocate=args.colocate,
            # offloading is resolved below: resolve_layout would look for torch_memory_saver on *this* machine
            offload=False,
            offload_train=False,
            offload_rollout=False,
            rollout_num_gpus=args.rollout_num_gpus,
            rollout_num_gpus_per_engine=args.rollout_num_gpus_per_engine,
            num_gpus_per_node=args.num_gpus_per_node,
            rollout_backend="sglang" if on_gpu else "builtin",
            external_engines=bool(args.rollout_external_engine_addrs or args.sglang_router_ip),
            distributed_backend=args.distributed_backend,
            update_weight_transport=args.update_weight_transport,
        )
    except ValueError as err:
        _split_environment(str(err), problems, warnings)
    if cluster is not None:
        offload_train = bool(args.offload or args.colocate) if args.offload_train is None else args.offload_train
        offload_rollout = bool(args.offload or args.colocate) if args.offload_rollout is None else args.offload_rollout
        cluster = dataclasses.replace(cluster, offload_train=offload_train, offload_rollout=offload_rollout)
        if on_gpu and offload_train and importlib.util.find_spec("torch_memory_saver") is None:
            warnings.append(
                "--offload-train (implied by --colocate) needs torch_memory_saver on the GPU nodes; it is not "
                "installed on this machine"
            )
        if args.rollout_batch_size is not None:
            try:
                batch = trainer_config.check_batch_arithmetic(
                    rollout_batch_size=args.rollout_batch_size,
                    n_samples_per_prompt=samples_per_prompt(args),  # with --fr3e: + its partial rollouts
                    num_steps_per_rollout=args.num_steps_per_rollout,
                    global_batch_size=args.global_batch_size,
                    dp_size=cluster.dp_size,
                    balance_data=args.balance_data,
                )
            except ValueError as err:
                _split_environment(str(err), problems, warnings)
    # The trainer's loop and evaluation checks: the dry run must give the same answers.
    for line in trainer_config.loop_problems(args):
        _split_environment(line, problems, warnings)
    try:
        EvalConfig.from_args(args, training=True)
    except ValueError as err:
        _split_environment(str(err), problems, warnings)
    return cluster, batch


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Resolve and check ``args`` for the machines it asks for; raise one ``ValueError`` listing every problem."""
    from slime_entropy.loss.config import LossConfig
    from slime_entropy.megatron.config import flag_problems as megatron_flag_problems

    problems: list[str] = []
    warnings: list[str] = []
    on_gpu = _target_on_gpu(args)
    arch = _hf_architecture(args, problems)
    loss = _collect(problems, LossConfig.from_args, args)
    rollout = _rollout_config(args, problems)
    problems += megatron_flag_problems(args)
    cluster, batch = _trainer_checks(args, on_gpu, problems, warnings)

    tp = args.tensor_model_parallel_size
    world = (
        cluster.num_train_ranks if cluster is not None else args.actor_num_nodes * (args.actor_num_gpus_per_node or 1)
    )
    layout = ParallelSizes(
        world_size=world,
        tensor_parallel_size=tp,
        pipeline_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        expert_parallel_size=args.expert_model_parallel_size,
        expert_tensor_parallel_size=args.expert_tensor_parallel_size,
        sequence_parallel=bool(args.sequence_parallel and tp > 1),
    )
    if arch is not None:
        problems += check_parallel_layout(
            arch,
            layout,
            num_gpus_per_node=args.num_gpus_per_node if on_gpu else max(world, args.num_gpus_per_node),
            rollout_num_gpus_per_engine=args.rollout_num_gpus_per_engine if on_gpu else 1,
        )
    if args.sequence_parallel and tp == 1:
        warnings.append("--sequence-parallel has no effect with --tensor-model-parallel-size 1")
    budget = TokenBudget(
        micro_batch_size=args.micro_batch_size,
        use_dynamic_batch_size=bool(args.use_dynamic_batch_size),
        max_tokens_per_gpu=args.max_tokens_per_gpu,
        log_probs_max_tokens_per_gpu=args.log_probs_max_tokens_per_gpu,
        max_response_len=args.rollout_max_response_len,
        max_prompt_len=args.rollout_max_prompt_len,
        max_context_len=args.rollout_max_context_len,
    )
    micro, budget_problems = plan_micro_batches(
        budget, samples_per_rank_per_step=batch.samples_per_rank_per_step if batch is not None else 1
    )
    problems += budget_problems
    if micro.max_sample_tokens is None:
        warnings.append(
            "the prompt length is unbounded (no --rollout-max-prompt-len / --rollout-max-context-len): a prompt "
            "longer than the token budget minus the response length stops training; the memory estimate assumes "
            "micro-batches of the full budget"
        )
    if problems:
        raise ValueError("the run cannot start as configured:\n  - " + "\n  - ".join(problems))
    assert arch is not None and batch is not None and loss is not None and cluster is not None

    num_rollout, source = _resolve_num_rollout(args, batch)
    bf16 = on_gpu and args.bf16 is not False or bool(args.bf16)
    gpu_gib = args.plan_gpu_memory_gib if hasattr(args, "plan_gpu_memory_gib") else DEFAULT_GPU_MEMORY_GIB
    reserve_gib = args.plan_memory_reserve_gib if hasattr(args, "plan_memory_reserve_gib") else DEFAULT_RESERVE_GIB
    training = None
    if micro.tokens_per_micro_batch is not None:
        training = estimate_training_memory(
            arch,
            layout,
            tokens_per_micro_batch=micro.tokens_per_micro_batch,
            log_prob_tokens_per_micro_batch=micro.log_prob_tokens_per_micro_batch,
            num_micro_batches=micro.micro_batches_per_step[1] if micro.micro_batches_per_step else 1,
            bf16=bf16,
            grads_in_fp32=bool(args.accumulate_allreduce_grads_in_fp32),
            distributed_optimizer=bool(args.use_distributed_optimizer),
            optimizer_cpu_offload=bool(args.optimizer_cpu_offload),
            full_recompute=args.recompute_granularity == "full",
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            reserve_gib=reserve_gib if on_gpu else 0.0,
        )
    else:
        warnings.append("no token budget known (fixed micro-batches and unbounded prompts): activations not estimated")
    if on_gpu and args.recompute_granularity != "full":
        warnings.append(
            "no full activation recompute (--recompute-granularity full --recompute-method uniform "
            "--recompute-num-layers 1 is what slime's scripts use for long responses)"
        )
    rbs = args.rollout_batch_size
    sampling_batch_size = args.over_sampling_batch_size or rbs
    rollout_memory = None
    if on_gpu:
        engines = max(1, cluster.rollout_num_gpus // cluster.rollout_num_gpus_per_engine)
        rollout_memory = estimate_rollout_memory(
            arch,
            engine_tp=cluster.rollout_num_gpus_per_engine,
            gpu_bytes=int(gpu_gib * GiB),
            mem_fraction_static=getattr(args, "sglang_mem_fraction_static", None),
            kv_cache_dtype=getattr(args, "sglang_kv_cache_dtype", None),
            sequence_tokens=micro.max_sample_tokens,
            concurrent_sequences=math.ceil(sampling_batch_size * samples_per_prompt(args) / engines),
        )
    checkpoints, ckpt_warnings = _checkpoint_status(args)
    warnings += ckpt_warnings
    if args.prompt_data and not Path(args.prompt_data).is_file():
        warnings.append(f"--prompt-data {args.prompt_data} does not exist (on this machine)")
    plan = Plan(
        on_gpu=on_gpu,
        hf_checkpoint=args.hf_checkpoint,
        arch=arch,
        model_args_given=args.num_layers is not None or args.hidden_size is not None,
        num_parameters=total_parameters(arch),
        padded_vocab_size=padded_vocab_size(arch.vocab_size, args.make_vocab_size_divisible_by, tp),
        layout=layout,
        cluster=cluster,
        batch=batch,
        micro=micro,
        sampling_batch_size=sampling_batch_size,
        num_rollout=num_rollout,
        num_rollout_source=source,
        training=training,
        rollout=rollout_memory,
        gpu_memory_bytes=int(gpu_gib * GiB),
        reserve_bytes=int(reserve_gib * GiB),
        bf16=bf16,
        reference_on_host=loss.policy.use_kl_loss,
        settings=_settings_summary(args, loss, rollout),
        checkpoints=checkpoints,
        warnings=tuple(warnings),
    )
    return _with_memory_warnings(plan)


def _resolve_num_rollout(args: argparse.Namespace, batch) -> tuple[int | None, str]:
    if args.num_rollout is not None:
        return args.num_rollout, "--num-rollout"
    if args.num_epoch is None:
        return None, "unset (--num-rollout / --num-epoch)"
    count = _count_prompts(args.prompt_data) if args.prompt_data else None
    if count is None:
        return None, f"--num-epoch {args.num_epoch} x the prompts of {args.prompt_data} (not readable here)"
    return (
        max(1, args.num_epoch * count // batch.rollout_batch_size),
        f"--num-epoch {args.num_epoch} x {count} prompts",
    )


def _with_memory_warnings(plan: Plan) -> Plan:
    warnings = list(plan.warnings)
    gib = plan.gpu_memory_bytes / GiB
    if not plan.training_fits:
        shared = (
            " with SGLang's pool still allocated (--no-offload-rollout)"
            if (plan.training_peak != plan.training.total)
            else ""
        )
        warnings.append(
            f"training needs an estimated {plan.training_peak / GiB:.1f} GiB per GPU{shared}, more than the "
            f"{gib:.0f} GiB GPU: raise TP/PP, use --optimizer-cpu-offload, or lower --max-tokens-per-gpu"
        )
    r = plan.rollout
    if r is not None:
        if r.kv_cache <= 0:
            warnings.append(
                f"SGLang's static pool ({r.mem_fraction_static:g} x {gib:.0f} GiB) cannot even hold the engine's "
                f"weights ({r.weights / GiB:.1f} GiB per GPU): raise --rollout-num-gpus-per-engine or "
                "--sglang-mem-fraction-static"
            )
        elif not plan.rollout_fits:
            warnings.append(
                f"generation needs {plan.rollout_peak / GiB:.1f} GiB per GPU (SGLang's static pool "
                f"{r.static_pool / GiB:.1f} GiB, the {plan.reserve_bytes / GiB:.0f} GiB allowance"
                + (
                    ", the actor's state kept on the GPU (--no-offload-train)"
                    if plan.rollout_peak - r.static_pool > plan.reserve_bytes
                    else ""
                )
                + f"), more than the {gib:.0f} GiB GPU: lower --sglang-mem-fraction-static"
            )
        if r.full_length_sequences is not None and r.full_length_sequences < 1 and r.kv_cache > 0:
            warnings.append(
                f"one sequence of {r.sequence_tokens} tokens does not fit the engine's KV cache ({r.kv_tokens} tokens)"
            )
    return dataclasses.replace(plan, warnings=tuple(warnings))


def _size(n: int | float) -> str:
    """Bytes as GiB, or MiB below 1 GiB (tiny CPU models), right-aligned."""
    return f"{n / GiB:7.1f} GiB" if n >= GiB else f"{n / 2**20:7.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _render(p: Plan) -> str:
    a, lay, c, b, m = p.arch, p.layout, p.cluster, p.batch, p.micro
    out: list[str] = []
    add = out.append
    add("slime_entropy dry run: the plan (nothing was started)")
    add("")
    add(f"model        {p.hf_checkpoint}")
    kind = f"{a.model_type}, {_count(p.num_parameters)} parameters"
    if a.is_moe:
        kind += f", MoE {a.num_experts} experts top-{a.moe_router_topk}"
    shape = f"{a.num_layers} layers, hidden {a.hidden_size}, vocab {a.vocab_size} (padded {p.padded_vocab_size})"
    add(f"             {kind}; {shape}")
    given = "match config.json" if p.model_args_given else "not given (the model is built from config.json)"
    add(f"             MODEL_ARGS {given}")
    add("")
    add("world layout")
    unit = "GPUs" if p.on_gpu else "CPU processes"
    if p.on_gpu:
        add(f"  nodes            {p.num_nodes} x {c.num_gpus_per_node} GPUs ({c.num_gpus} GPUs used)")
    else:
        add(f"  nodes            {p.num_nodes} (CPU run: training processes and the built-in engine)")
    add(
        f"  actor (Megatron) {c.num_train_ranks} {unit} = {c.actor_num_nodes} node(s) x {c.actor_num_gpus_per_node}: "
        f"TP {lay.tensor_parallel_size} x PP {lay.pipeline_parallel_size} x CP {lay.context_parallel_size} x DP "
        f"{c.dp_size}, sequence parallel {'on' if lay.sequence_parallel else 'off'}, {c.backend}"
    )
    if a.is_moe:
        experts = f"EP {lay.expert_parallel_size} x ETP {lay.etp} x expert-DP {lay.expert_data_parallel_size}"
        add(f"                   experts: {experts}")
    if p.on_gpu:
        engines = c.rollout_num_gpus // c.rollout_num_gpus_per_engine if c.rollout_num_gpus else 0
        if c.colocate:
            offload = []
            if c.offload_train:
                offload.append("actor offloaded while generating")
            if c.offload_rollout:
                offload.append("SGLang memory released while training")
            mode = "colocated with the actor" + (f" ({', '.join(offload)})" if offload else ", nothing offloaded")
        else:
            mode = "on GPUs of their own"
        add(f"  rollout (SGLang) {engines} engine(s) x {c.rollout_num_gpus_per_engine} GPUs, {mode}")
        add(f"  weight updates   {c.weight_transport}")
        add("  placement        " + "; ".join(_placement(c)))
    else:
        add("  rollout          the built-in engine (CPU)")
    add("")
    add("batches")
    add(
        f"  rollout          {b.rollout_batch_size} prompts x {b.n_samples_per_prompt} samples = "
        f"{b.samples_per_rollout} samples (sampled in rounds of {p.sampling_batch_size} prompts)"
    )
    add(
        f"  optimizer steps  {b.num_steps_per_rollout} per rollout x global batch {b.global_batch_size} samples = "
        f"{b.samples_per_rank_per_step} per DP rank"
    )
    if m.micro_batches_per_step:
        lo, hi = m.micro_batches_per_step
        count = f"{lo}" if lo == hi else f"{lo}-{hi}"
        add(f"  micro-batches    {count} per step and DP rank, {m.tokens_per_micro_batch} tokens each at most")
    longest = "unbounded" if m.max_sample_tokens is None else f"{m.max_sample_tokens} tokens"
    add(f"  longest sample   {longest}")
    total = (
        "unknown" if p.num_rollout is None else f"{p.num_rollout} rollouts = {p.num_optimizer_steps} optimizer steps"
    )
    add(f"  schedule         {total} ({p.num_rollout_source})")
    add("")
    add("algorithm")
    for key, value in p.settings.items():
        add(f"  {key:16s} {value}")
    add("")
    precision = "bf16" if p.bf16 else "fp32"
    if p.on_gpu:
        add(
            f"memory per GPU (estimate; {p.gpu_memory_bytes / GiB:.0f} GiB GPUs, {precision}; formulas: "
            "slime_entropy/launch/memory.py)"
        )
    else:
        add(f"memory per training process (estimate, {precision}, host RAM; formulas: slime_entropy/launch/memory.py)")
    if p.training is not None:
        t = p.training
        add(
            f"  training ({t.parameters.stage}, {_count(t.parameters.total)} parameters per rank, "
            f"{t.tokens_per_micro_batch} tokens per micro-batch)"
        )
        add(f"    weights          {_size(t.weights)}")
        add(f"    gradients        {_size(t.gradients)}")
        where = "host (--optimizer-cpu-offload)" if t.host_optimizer_per_gpu else ("GPU" if p.on_gpu else "host")
        add(f"    Adam states      {_size(t.optimizer)}  (on {where})")
        add(f"    activations      {_size(t.activations)}")
        add(f"    logits           {_size(t.logits)}")
        if p.on_gpu:
            add(f"    runtime reserve  {_size(t.reserve)}")
        add(f"    total            {_size(t.total)}")
        if p.on_gpu and p.training_peak != t.total:
            add(f"    + SGLang's pool  {_size(p.training_peak - t.total)}  (--no-offload-rollout)")
        if p.on_gpu:
            add(f"    peak             {_size(p.training_peak)}  {'fits' if p.training_fits else 'DOES NOT FIT'}")
    r = p.rollout
    if r is not None:
        add(
            f"  rollout (one engine of {c.rollout_num_gpus_per_engine} GPUs, --sglang-mem-fraction-static "
            f"{r.mem_fraction_static:g})"
        )
        add(f"    weights          {_size(r.weights)}")
        add(f"    KV cache         {_size(max(0, r.kv_cache))} = {r.kv_tokens} tokens")
        add(f"    static pool      {_size(r.static_pool)}")
        if p.rollout_peak - r.static_pool > p.reserve_bytes:
            kept = p.rollout_peak - r.static_pool - p.reserve_bytes
            add(f"    + actor state    {_size(kept)}  (--no-offload-train)")
        add(
            f"    peak             {_size(p.rollout_peak)}  {'fits' if p.rollout_fits else 'DOES NOT FIT'}"
            " (pool + runtime reserve)"
        )
        if r.full_length_sequences is not None:
            waves = math.ceil(r.concurrent_sequences / max(1, r.full_length_sequences))
            add(
                f"    concurrency      {r.full_length_sequences} full-length sequences fit; {r.concurrent_sequences} "
                f"are submitted per engine (worst case {waves} wave(s))"
            )
    host = _host_memory_per_node(p)
    if host:
        add(
            f"  host per node    {_size(host)} at most (offloaded Adam states, the offloaded colocated actor, the "
            "reference weights)"
        )
    add("")
    add("checkpoints")
    for row in p.checkpoints:
        add(f"  {row.flag:16s} {row.path}: {row.state}")
    add("")
    if p.warnings:
        add("warnings")
        for w in p.warnings:
            add(f"  - {w}")
    else:
        add("no warnings")
    if p.on_gpu:
        where = f"{p.num_nodes} node(s) x {c.num_gpus_per_node} GPUs of {p.gpu_memory_bytes / GiB:.0f} GiB"
    else:
        where = f"CPU, {c.num_train_ranks} training process(es)"
    add(f"verdict: {'fits' if p.fits else 'DOES NOT FIT'} ({where}, by the estimate above)")
    return "\n".join(out)


def _host_memory_per_node(p: Plan) -> int:
    if p.training is None or not p.on_gpu:
        return 0
    per_gpu = p.training.host_optimizer_per_gpu
    if p.cluster.colocate and p.cluster.offload_train:
        per_gpu += p.training.model_state
    if p.reference_on_host:
        per_gpu += p.training.weights  # the actor keeps the --ref-load weights on the host between KL passes
    return per_gpu * min(p.cluster.num_gpus_per_node, p.cluster.num_train_ranks)


def _placement(c) -> list[str]:
    """What each node runs. GPUs are numbered in node order (the trainer sorts Ray's bundles by node and GPU id);
    the training ranks take the first ones and, without --colocate, the engines the next ones."""
    per_node = c.num_gpus_per_node
    engine_tp = c.rollout_num_gpus_per_engine
    if c.colocate:
        return [
            f"node {node}: training ranks {node * c.actor_num_gpus_per_node}-"
            f"{(node + 1) * c.actor_num_gpus_per_node - 1} + {c.actor_num_gpus_per_node // engine_tp} engine(s)"
            for node in range(c.actor_num_nodes)
        ]
    rows = []
    for node in range(max(1, math.ceil(c.num_gpus / per_node))):
        lo, hi = node * per_node, (node + 1) * per_node
        parts = []
        ranks = range(lo, min(hi, c.num_train_ranks))
        if len(ranks):
            parts.append(f"training ranks {ranks.start}-{ranks.stop - 1}")
        engine_gpus = range(max(lo, c.num_train_ranks), min(hi, c.num_train_ranks + c.rollout_num_gpus))
        if len(engine_gpus):
            parts.append(f"{len(engine_gpus) // engine_tp} engine(s)")
        rows.append(f"node {node}: " + " + ".join(parts))
    return rows
