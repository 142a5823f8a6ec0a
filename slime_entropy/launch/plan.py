"""``train.py --dry-run``: resolve every argument, check it, and print the run's plan, without a GPU.

    from slime_entropy.launch.plan import plan_from_args
    print(plan_from_args(args).render())

:func:`plan_from_args` takes train.py's parsed namespace and

1. resolves it with the trainer's own resolver, ``TrainerConfig.from_args(args, on_gpu=<target>,
   check_environment=False)`` (:mod:`slime_entropy.trainer.config`): the loss, rollout, Megatron (the HF
   ``config.json`` against MODEL_ARGS and the parallel sizes), evaluation and loop configs, the cluster layout and the
   batch arithmetic; a real start runs the same checks, so the dry run gives the same answers;
2. adds the checks that need the architecture or the token budget (:mod:`slime_entropy.launch.checks`) and the
   schedule (``--num-epoch`` over the prompt file, when it is readable here);
3. estimates the memory per GPU of training and of the rollout engines, phase by phase when they share the GPUs
   (:mod:`slime_entropy.launch.memory`, where the formulas and assumptions are written down).

Every problem of a step is reported in one ``ValueError`` (one line each, naming the flags). Memory over the
GPU's capacity is not an error (the estimate has a margin of error) but a warning in the plan, and
:attr:`Plan.fits` is False. Facts about the machine running the dry run are not held against the plan: missing
data files, SGLang, torch_memory_saver or wandb not installed there are warnings.

Target. The plan is for CUDA GPUs with bf16 (``--no-bf16`` aside) and SGLang engines, whatever machine runs the dry
run, except for the built-in default task and runs asking for the built-in engine or gloo (``--rollout-backend
builtin``, ``--distributed-backend gloo``), which are planned as CPU runs. ``--plan-gpu-memory-gib`` (default 80) and
``--plan-memory-reserve-gib`` (default 4) set the GPU size and the runtime allowance
(``slime_entropy.launch.arguments.add_plan_arguments`` registers them; without them the defaults apply).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slime_entropy.launch.checks import MicroBatchPlan, TokenBudget, check_parallel_layout, plan_micro_batches
from slime_entropy.launch.config import PlanConfig
from slime_entropy.launch.memory import (
    GiB,
    ParallelSizes,
    RolloutMemory,
    TrainingMemory,
    estimate_rollout_memory,
    estimate_training_memory,
    total_parameters,
)
from slime_entropy.megatron.architecture import HFArchitecture
from slime_entropy.problems import Problems

if TYPE_CHECKING:
    from slime_entropy.megatron.config import CheckpointConfig
    from slime_entropy.rollout.config import DataConfig
    from slime_entropy.trainer.config import BatchPlan, ClusterLayout, TrainerConfig

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
    cluster: ClusterLayout
    batch: BatchPlan
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
    config: TrainerConfig | None = field(default=None, repr=False)
    """The trainer's resolved configuration the plan was made from (``TrainerConfig.from_args``)."""

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


def _checkpoint_status(ckpt: CheckpointConfig) -> tuple[tuple[CheckpointStatus, ...], list[str]]:
    warnings: list[str] = []
    rows = []
    hf = Path(ckpt.hf_checkpoint)
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

    ref = tracker(ckpt.ref_load)
    if ckpt.ref_load is not None:
        if ref is None:
            state = "no torch_dist checkpoint yet: run the HF -> torch_dist conversion first"
            warnings.append(
                f"--ref-load {ckpt.ref_load} holds no {TRACKER_FILENAME}; convert first: python "
                f"tools/convert_hf_to_torch_dist.py ${{MODEL_ARGS[@]}} --hf-checkpoint {ckpt.hf_checkpoint} --save "
                f"{ckpt.ref_load}"
            )
        else:
            state = f"torch_dist, iteration {ref}"
        rows.append(CheckpointStatus("--ref-load", ckpt.ref_load, state))
    loaded = tracker(ckpt.load)
    if ckpt.load is not None:
        if loaded is not None:
            state = f"resumes from iteration {loaded}"
        elif ckpt.ref_load is not None:
            state = "no checkpoint yet: starts from --ref-load"
        else:
            state = "no checkpoint yet: starts from the HF weights"
        rows.append(CheckpointStatus("--load", ckpt.load, state))
    elif ckpt.ref_load is None:
        rows.append(CheckpointStatus("initial weights", str(hf), "the HF safetensors"))
    if ckpt.save is not None:
        every = f"every {ckpt.save_interval} rollouts" if ckpt.save_interval else "at the end"
        rows.append(CheckpointStatus("--save", ckpt.save, f"torch_dist, {every}"))
    return tuple(rows), warnings


def _settings_summary(config: TrainerConfig) -> dict[str, str]:
    s: dict[str, str] = {}
    f = config.loss.entropy_filter
    if f.enabled:
        s["entropy filter"] = (
            f"ON: keep the top {f.keep_fraction:g} of valid tokens by entropy (scope {f.threshold_scope}, "
            f"denominator {f.denominator})"
        )
    else:
        s["entropy filter"] = "off (all tokens)"
    p = config.loss.policy
    clip = f"clip [{1 - p.eps_clip:g}, {1 + p.eps_clip_high:g}]" + (
        f", dual-clip {p.dual_clip_c:g}" if p.dual_clip_c else ""
    )
    s["policy loss"] = f"{p.mode}, {config.run.advantage_estimator} advantages, {clip}"
    kl = f"KL loss {p.kl_loss_type} x {p.kl_loss_coef:g} (reference model loaded)" if p.use_kl_loss else "no KL loss"
    s["regularisation"] = f"{kl}, entropy bonus {p.entropy_coef:g}"
    rollout = config.rollout
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
        s["overlong shaping"] = f"buffer {g.overlong_buffer_len} tokens, penalty factor {g.overlong_penalty_factor:g}"
    s["data"] = (
        f"{rollout.data.prompt_data} (input key {rollout.data.input_key!r}, label key {rollout.data.label_key!r})"
    )
    e = config.eval
    if e is not None and e.interval:
        names = ", ".join(d.name for d in e.datasets)
        es = e.sampling
        s["evaluation"] = (
            f"every {e.interval} rollouts: {names}; {e.n_samples_per_prompt} samples per prompt, up to "
            f"{es.max_response_len} tokens, temperature {es.temperature:g}, top-p {es.top_p:g}"
        )
    o = config.megatron.optimizer
    lr = f"lr {o.lr:g} ({o.lr_decay_style}"
    lr += f", warmup {o.lr_warmup_iters} steps)" if o.lr_warmup_iters else ")"
    s["optimizer"] = f"Adam, {lr}, weight decay {o.weight_decay:g}, grad clip {o.clip_grad:g}"
    return s


def _target_on_gpu(args: argparse.Namespace) -> bool:
    """GPU plan unless the run is the built-in default task or asks for the built-in engine or gloo."""
    cpu = bool(getattr(args, "embedded", False)) or args.rollout_backend == "builtin"
    return not (cpu or args.distributed_backend == "gloo")


def _problem_lines(message: str) -> list[str]:
    """The problems of a config's ``ValueError``, one line each, without the ``invalid ...:`` headers."""
    lines = [line.strip() for line in message.splitlines()]
    return [line.removeprefix("- ") for line in lines if line and not line.startswith("invalid ")]


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Resolve and check ``args`` for the machines it asks for; raise one ``ValueError`` listing every problem."""
    from slime_entropy.trainer.config import TrainerConfig

    on_gpu = _target_on_gpu(args)
    lines = []
    try:
        target = PlanConfig.from_args(args)
    except ValueError as err:
        lines += _problem_lines(str(err))
    try:
        config = TrainerConfig.from_args(args, on_gpu=on_gpu, check_environment=False)
    except ValueError as err:
        lines += _problem_lines(str(err))
    if lines:
        raise ValueError("the run cannot start as configured:\n  - " + "\n  - ".join(lines)) from None
    return _plan(config, args, target)


def _plan(config: TrainerConfig, args: argparse.Namespace, target: PlanConfig) -> Plan:
    """The plan of a resolved config: the checks that need the architecture or the token budget, the schedule and
    the memory estimates. ``args`` is read for the planner's own flags and for what the user wrote (MODEL_ARGS)."""
    on_gpu, cluster, batch, megatron, rollout = (
        config.layout.on_gpu,
        config.layout,
        config.batch,
        config.megatron,
        config.rollout,
    )
    build, arch = megatron.build, megatron.arch
    problems = Problems()
    warnings = [f"{w} (on this machine)" for w in config.warnings]
    tp = build.tensor_model_parallel_size
    layout = ParallelSizes(
        world_size=cluster.num_train_ranks,
        tensor_parallel_size=tp,
        pipeline_parallel_size=build.pipeline_model_parallel_size,
        context_parallel_size=megatron.context_parallel_size,
        expert_parallel_size=build.expert_model_parallel_size,
        expert_tensor_parallel_size=build.expert_tensor_parallel_size,
        sequence_parallel=build.sequence_parallel,
    )
    problems.extend(
        check_parallel_layout(
            arch,
            layout,
            num_gpus_per_node=(
                cluster.num_gpus_per_node if on_gpu else max(cluster.num_train_ranks, cluster.num_gpus_per_node)
            ),
            rollout_num_gpus_per_engine=cluster.rollout_num_gpus_per_engine if on_gpu else 1,
        )
    )
    if args.sequence_parallel and tp == 1:
        warnings.append("--sequence-parallel has no effect with --tensor-model-parallel-size 1")
    batching = megatron.batching
    budget = TokenBudget(
        micro_batch_size=batching.micro_batch_size,
        use_dynamic_batch_size=batching.use_dynamic_batch_size,
        max_tokens_per_gpu=batching.max_tokens_per_gpu,
        log_probs_max_tokens_per_gpu=batching.log_probs_max_tokens_per_gpu,
        max_response_len=rollout.sampling.max_response_len,
        max_prompt_len=rollout.data.max_prompt_len,
        max_context_len=rollout.sampling.max_context_len,
    )
    micro, budget_problems = plan_micro_batches(budget, samples_per_rank_per_step=batch.samples_per_rank_per_step)
    problems.extend(budget_problems)
    if micro.max_sample_tokens is None:
        warnings.append(
            "the prompt length is unbounded (no --rollout-max-prompt-len / --rollout-max-context-len): a prompt "
            "longer than the token budget minus the response length stops training; the memory estimate assumes "
            "micro-batches of the full budget"
        )
    num_rollout, source = _resolve_num_rollout(rollout.data, batch)
    if problems:
        raise ValueError("the run cannot start as configured:\n  - " + "\n  - ".join(problems.messages))

    training = None
    if micro.tokens_per_micro_batch is not None:
        training = estimate_training_memory(
            arch,
            layout,
            tokens_per_micro_batch=micro.tokens_per_micro_batch,
            log_prob_tokens_per_micro_batch=micro.log_prob_tokens_per_micro_batch,
            num_micro_batches=micro.micro_batches_per_step[1] if micro.micro_batches_per_step else 1,
            bf16=build.bf16,
            grads_in_fp32=build.accumulate_allreduce_grads_in_fp32,
            distributed_optimizer=megatron.optimizer.use_distributed_optimizer,
            optimizer_cpu_offload=megatron.optimizer.optimizer_cpu_offload,
            full_recompute=build.recompute_granularity == "full",
            make_vocab_size_divisible_by=build.make_vocab_size_divisible_by,
            reserve_gib=target.memory_reserve_gib if on_gpu else 0.0,
        )
    else:
        warnings.append("no token budget known (fixed micro-batches and unbounded prompts): activations not estimated")
    if on_gpu and build.recompute_granularity != "full":
        warnings.append(
            "no full activation recompute (--recompute-granularity full --recompute-method uniform "
            "--recompute-num-layers 1 is what slime's scripts use for long responses)"
        )
    sampling_batch_size = rollout.groups.sampling_batch_size
    rollout_memory = None
    if on_gpu:
        engines = max(1, cluster.rollout_num_gpus // cluster.rollout_num_gpus_per_engine)
        sglang = dict(rollout.engine.sglang_options)
        rollout_memory = estimate_rollout_memory(
            arch,
            engine_tp=cluster.rollout_num_gpus_per_engine,
            gpu_bytes=target.gpu_memory_bytes,
            mem_fraction_static=sglang.get("mem-fraction-static"),
            kv_cache_dtype=sglang.get("kv-cache-dtype"),
            sequence_tokens=micro.max_sample_tokens,
            concurrent_sequences=math.ceil(sampling_batch_size * rollout.samples_per_prompt / engines),
        )
    checkpoints, ckpt_warnings = _checkpoint_status(megatron.checkpoint)
    warnings += ckpt_warnings
    if not Path(rollout.data.prompt_data).is_file():
        warnings.append(f"--prompt-data {rollout.data.prompt_data} does not exist (on this machine)")
    plan = Plan(
        on_gpu=on_gpu,
        hf_checkpoint=megatron.checkpoint.hf_checkpoint,
        arch=arch,
        model_args_given=args.num_layers is not None or args.hidden_size is not None,
        num_parameters=total_parameters(arch),
        padded_vocab_size=megatron.padded_vocab_size,
        layout=layout,
        cluster=cluster,
        batch=batch,
        micro=micro,
        sampling_batch_size=sampling_batch_size,
        num_rollout=num_rollout,
        num_rollout_source=source,
        training=training,
        rollout=rollout_memory,
        gpu_memory_bytes=target.gpu_memory_bytes,
        reserve_bytes=target.memory_reserve_bytes,
        bf16=build.bf16,
        reference_on_host=config.loss.policy.use_kl_loss,
        settings=_settings_summary(config),
        checkpoints=checkpoints,
        warnings=tuple(warnings),
        config=config,
    )
    return _with_memory_warnings(plan)


def _resolve_num_rollout(data: DataConfig, batch: BatchPlan) -> tuple[int | None, str]:
    """The run's length as the rollout worker will resolve it (``DataConfig.resolve_num_rollout``) from the prompt
    file when it is readable here; the file here may be a stand-in for the cluster's, so a count that gives no
    rollout leaves the length unknown rather than stopping the plan."""
    if data.num_rollout is not None:
        return data.num_rollout, "--num-rollout"
    if data.num_epoch is None:
        return None, "unset (--num-rollout / --num-epoch)"
    count = _count_prompts(data.prompt_data)
    if count is None:
        return None, f"--num-epoch {data.num_epoch} x the prompts of {data.prompt_data} (not readable here)"
    try:
        return (
            data.resolve_num_rollout(count, batch.rollout_batch_size),
            f"--num-epoch {data.num_epoch} x {count} prompts",
        )
    except ValueError as err:
        return None, f"unknown: {err} (with {data.prompt_data} as it is on this machine)"


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
