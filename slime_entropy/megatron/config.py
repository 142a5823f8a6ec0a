"""Frozen configs of the Megatron actor, built from the flags ``slime_entropy.megatron.arguments`` registers.

:meth:`MegatronConfig.from_args` is the only place that reads those flags. Every config reports what is wrong with
it through ``problems() -> Problems`` (``slime_entropy.problems``); ``from_args`` gathers them all and raises one
``ValueError`` naming each flag and its fix, and the rest of ``slime_entropy.megatron`` receives the frozen objects.

:func:`parallel_size_problems` is the one home of the rules that tie the parallel sizes to the model and the rank
count (TP divides the heads, PP the layers, ...): the actor's config and the dry run's layout check
(``slime_entropy.launch.checks``) call it.

Defaults follow slime where slime overrides Megatron (``--seed 1234``, ``--micro-batch-size 1``, distributed
optimizer on, ``--clip-grad 1.0``). ``--bf16`` defaults to on for a GPU run (``on_gpu``: every CUDA GPU runs bf16,
natively or emulated; pass ``--no-bf16`` for fp32) and off on a CPU (no native bf16 on most CPUs; pass ``--bf16``
to force it).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields

from slime_entropy.megatron.architecture import HFArchitecture, check_model_args, padded_vocab_size
from slime_entropy.problems import Problems

__all__ = [
    "ModelBuildConfig",
    "OptimizerConfig",
    "BatchingConfig",
    "CheckpointConfig",
    "MegatronConfig",
    "parallel_size_problems",
    "LR_DECAY_STYLES",
]

logger = logging.getLogger(__name__)

LR_DECAY_STYLES = ("constant", "cosine", "linear")


@dataclass(frozen=True, kw_only=True)
class ModelBuildConfig:
    """How to build the model (everything except the architecture, which comes from config.json).

    ``transformer_impl``: ``"auto"`` (TE when usable), ``"local"`` or ``"transformer_engine"``.
    ``recompute_*``: Megatron's activation recompute (``--recompute-granularity full --recompute-method uniform``).
    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int | None = None
    sequence_parallel: bool = False
    bf16: bool = False
    make_vocab_size_divisible_by: int = 128
    transformer_impl: str = "auto"
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int | None = None
    moe_grouped_gemm: bool = False
    moe_token_dispatcher_type: str = "alltoall"
    moe_aux_loss_coeff: float = 0.0
    moe_router_dtype: str | None = "fp32"
    calculate_per_token_loss: bool = False
    accumulate_allreduce_grads_in_fp32: bool = False
    attention_softmax_in_fp32: bool = True


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adam with Megatron's LR schedule. ``lr_decay_iters`` None: decay over the run's total steps."""

    lr: float = 1e-6
    min_lr: float = 0.0
    lr_decay_style: str = "constant"
    lr_decay_iters: int | None = None
    lr_warmup_iters: int = 0
    lr_warmup_init: float = 0.0
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    use_distributed_optimizer: bool = True
    use_precision_aware_optimizer: bool = False
    optimizer_cpu_offload: bool = False
    overlap_cpu_optimizer_d2h_h2d: bool = False

    def problems(self) -> Problems:
        p = Problems()
        p.check(self.lr >= 0, f"--lr must be >= 0, got {self.lr}")
        p.check(0 <= self.min_lr <= self.lr, f"--min-lr ({self.min_lr}) must lie in [0, --lr ({self.lr})]")
        p.check(self.lr_decay_style in LR_DECAY_STYLES, f"--lr-decay-style must be one of {LR_DECAY_STYLES}")
        p.check(self.lr_warmup_iters >= 0, f"--lr-warmup-iters must be >= 0, got {self.lr_warmup_iters}")
        p.check(
            self.lr_decay_iters is None or self.lr_decay_iters > self.lr_warmup_iters,
            f"--lr-decay-iters ({self.lr_decay_iters}) must exceed --lr-warmup-iters ({self.lr_warmup_iters})",
        )
        p.check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        p.check(self.clip_grad >= 0, f"--clip-grad must be >= 0 (0 disables clipping), got {self.clip_grad}")
        p.check(0 <= self.adam_beta1 < 1, f"--adam-beta1 must lie in [0, 1), got {self.adam_beta1}")
        p.check(0 <= self.adam_beta2 < 1, f"--adam-beta2 must lie in [0, 1), got {self.adam_beta2}")
        p.check(self.adam_eps > 0, f"--adam-eps must be > 0, got {self.adam_eps}")
        p.check(
            not self.optimizer_cpu_offload or self.use_distributed_optimizer,
            "--optimizer-cpu-offload needs the distributed optimizer (drop --no-use-distributed-optimizer)",
        )
        return p

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OptimizerConfig:
        """Read slime's optimizer flags (no checks: see :meth:`problems`)."""
        return cls(
            lr=args.lr,
            min_lr=args.min_lr,
            lr_decay_style=args.lr_decay_style,
            lr_decay_iters=args.lr_decay_iters,
            lr_warmup_iters=args.lr_warmup_iters,
            lr_warmup_init=args.lr_warmup_init,
            weight_decay=args.weight_decay,
            clip_grad=args.clip_grad,
            adam_beta1=args.adam_beta1,
            adam_beta2=args.adam_beta2,
            adam_eps=args.adam_eps,
            use_distributed_optimizer=bool(args.use_distributed_optimizer),
            use_precision_aware_optimizer=bool(args.use_precision_aware_optimizer),
            optimizer_cpu_offload=bool(args.optimizer_cpu_offload),
            overlap_cpu_optimizer_d2h_h2d=bool(args.overlap_cpu_optimizer_d2h_h2d),
        )


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """How a rank's samples become micro-batches.

    Fixed: ``micro_batch_size`` samples per micro-batch. Dynamic: greedy first-fit packing of samples into
    micro-batches of at most ``max_tokens_per_gpu`` tokens (``log_probs_max_tokens_per_gpu`` for no-grad passes).
    Either way every data-parallel rank runs the same number of micro-batches. ``pad_multiple``: the packed stream
    length is rounded up to a multiple of it (TP x --data-pad-size-multiplier).
    """

    micro_batch_size: int = 1
    global_batch_size: int | None = None
    use_dynamic_batch_size: bool = False
    max_tokens_per_gpu: int | None = None
    log_probs_max_tokens_per_gpu: int | None = None
    pad_multiple: int = 128

    def problems(self) -> Problems:
        p = Problems()
        p.check(self.micro_batch_size >= 1, f"--micro-batch-size must be >= 1, got {self.micro_batch_size}")
        p.check(
            self.global_batch_size is None or self.global_batch_size >= 1,
            f"--global-batch-size must be >= 1, got {self.global_batch_size}",
        )
        p.check(
            not self.use_dynamic_batch_size or self.max_tokens_per_gpu is not None,
            "--use-dynamic-batch-size needs --max-tokens-per-gpu (the token budget of a micro-batch)",
        )
        p.check(
            self.max_tokens_per_gpu is None or self.max_tokens_per_gpu >= 1,
            f"--max-tokens-per-gpu must be >= 1, got {self.max_tokens_per_gpu}",
        )
        p.check(
            self.log_probs_max_tokens_per_gpu is None or self.use_dynamic_batch_size,
            "--log-probs-max-tokens-per-gpu only applies with --use-dynamic-batch-size",
        )
        p.check(self.pad_multiple >= 1, f"--data-pad-size-multiplier must be >= 1, got {self.pad_multiple}")
        return p

    @property
    def log_probs_token_budget(self) -> int | None:
        return self.log_probs_max_tokens_per_gpu or self.max_tokens_per_gpu

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BatchingConfig:
        """Read slime's batching flags; the packed stream is padded to TP x --data-pad-size-multiplier."""
        return cls(
            micro_batch_size=args.micro_batch_size,
            global_batch_size=args.global_batch_size,
            use_dynamic_batch_size=bool(args.use_dynamic_batch_size),
            max_tokens_per_gpu=args.max_tokens_per_gpu,
            log_probs_max_tokens_per_gpu=args.log_probs_max_tokens_per_gpu,
            pad_multiple=args.tensor_model_parallel_size * args.data_pad_size_multiplier,
        )


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """slime's checkpoint flags: ``--load``/``--save`` torch_dist directories with slime's tracker file,
    ``--ref-load`` for the initial (and reference) weights, ``--save-hf`` for HF exports of the saved weights."""

    hf_checkpoint: str
    load: str | None = None
    save: str | None = None
    save_interval: int | None = None
    ref_load: str | None = None
    ref_ckpt_step: int | None = None
    ckpt_step: int | None = None
    save_hf: str | None = None
    no_load_optim: bool = False
    no_load_rng: bool = False
    finetune: bool = False
    needs_ref_model: bool = False

    def problems(self) -> Problems:
        p = Problems()
        p.check(
            self.save_interval is None or self.save_interval >= 1,
            f"--save-interval must be >= 1, got {self.save_interval}",
        )
        p.check(self.save_interval is None or self.save is not None, "--save-interval needs --save DIR")
        p.check(
            not self.needs_ref_model or self.ref_load is not None,
            "--use-kl-loss / --kl-coef need the reference model: pass --ref-load <torch_dist dir> (convert the HF "
            "checkpoint with slime-entropy-convert hf-to-torch-dist)",
        )
        return p

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CheckpointConfig:
        """Read slime's checkpoint flags. The reference model is needed for the KL loss or a reward KL."""
        needs_ref = bool(getattr(args, "use_kl_loss", False)) or float(getattr(args, "kl_coef", 0.0) or 0.0) != 0.0
        return cls(
            hf_checkpoint=args.hf_checkpoint or "",
            load=args.load,
            save=args.save,
            save_interval=args.save_interval,
            ref_load=args.ref_load,
            ref_ckpt_step=args.ref_ckpt_step,
            ckpt_step=args.ckpt_step,
            save_hf=args.save_hf,
            no_load_optim=bool(args.no_load_optim),
            no_load_rng=bool(args.no_load_rng),
            finetune=bool(args.finetune),
            needs_ref_model=needs_ref,
        )


def parallel_size_problems(
    arch: HFArchitecture | None,
    *,
    tensor: int,
    pipeline: int,
    context: int,
    expert: int,
    expert_tensor: int | None,
    sequence_parallel: bool,
    world_size: int | None,
) -> list[str]:
    """Every reason Megatron cannot split ``arch`` over these parallel sizes and ``world_size`` ranks.

    ``arch`` None: only the rules that need no model (sizes >= 1, CP, the rank count). ``expert_tensor`` None:
    the expert tensor-parallel size is TP (megatron-core's default). ``world_size`` None: the rank count is not
    checked. Empty when the layout works. Each message names the flag and the fix.
    """
    sizes = {
        "--tensor-model-parallel-size": tensor,
        "--pipeline-model-parallel-size": pipeline,
        "--context-parallel-size": context,
        "--expert-model-parallel-size": expert,
        "--expert-tensor-parallel-size": 1 if expert_tensor is None else expert_tensor,
    }
    p = Problems()
    for flag, value in sizes.items():
        p.check(value >= 1, f"{flag} must be >= 1, got {value}")
    if p:
        return p.messages  # the divisibility rules below mean nothing for sizes < 1
    tp, pp, cp, ep = tensor, pipeline, context, expert
    etp = expert_tensor or tp
    p.check(
        cp == 1,
        f"--context-parallel-size {cp}: slime_entropy's actor does not support context parallelism yet; use "
        "--context-parallel-size 1 (more TP, or dynamic batching with a larger --max-tokens-per-gpu for long "
        "sequences)",
    )
    if world_size is not None:
        p.check(
            world_size % (tp * pp * cp) == 0,
            f"{world_size} training ranks are not a multiple of TP x PP x CP = {tp} x {pp} x {cp}: no whole model "
            "replicas; change the rank count or the parallel sizes",
        )
        p.check(
            ep == 1 or (world_size // pp) % (ep * etp) == 0,
            f"--expert-model-parallel-size {ep} x expert TP {etp} must divide the {world_size // pp} ranks of a "
            "pipeline stage",
        )
    if arch is None:
        return p.messages
    p.check(
        arch.num_attention_heads % tp == 0 and arch.num_query_groups % tp == 0,
        f"--tensor-model-parallel-size {tp} must divide the {arch.num_attention_heads} attention heads and the "
        f"{arch.num_query_groups} query groups",
    )
    p.check(
        arch.num_layers % pp == 0,
        f"--pipeline-model-parallel-size {pp} must divide the {arch.num_layers} layers (uneven stages are not "
        "supported)",
    )
    if arch.is_moe:
        p.check(
            arch.num_experts % ep == 0, f"--expert-model-parallel-size {ep} must divide the {arch.num_experts} experts"
        )
        p.check(
            arch.moe_ffn_hidden_size is None or arch.moe_ffn_hidden_size % etp == 0,
            f"the expert tensor-parallel size {etp} (--expert-tensor-parallel-size, default TP) must divide the "
            f"expert FFN size {arch.moe_ffn_hidden_size}",
        )
        p.check(
            not (ep > 1 and tp > 1 and not sequence_parallel),
            f"expert parallelism ({ep}) with tensor parallelism ({tp}) needs --sequence-parallel (megatron-core "
            "requires it)",
        )
    else:
        p.check(ep == 1, f"--expert-model-parallel-size {ep} needs an MoE model; drop it")
        p.check(expert_tensor in (None, tp), "--expert-tensor-parallel-size only applies to MoE models; drop it")
    return p.messages


def _precision_and_dispatch_problems(args: argparse.Namespace) -> list[str]:
    p = Problems()
    p.check(not args.fp16, "--fp16 is not supported; use --bf16 (slime's default)")
    p.check(
        args.make_vocab_size_divisible_by >= 1,
        f"--make-vocab-size-divisible-by must be >= 1, got {args.make_vocab_size_divisible_by}",
    )
    p.check(
        args.moe_token_dispatcher_type == "alltoall",
        "--moe-token-dispatcher-type allgather does not support variable sequence lengths; use alltoall "
        "(slime switches to it too)",
    )
    return p.messages


@dataclass(frozen=True, kw_only=True)
class MegatronConfig:
    """Everything the Megatron actor needs, resolved once from ``args``.

    ``world_size``: the number of training ranks the layout was checked against (None: not checked; the actor
    then checks its own world).
    """

    arch: HFArchitecture
    build: ModelBuildConfig
    optimizer: OptimizerConfig
    batching: BatchingConfig
    checkpoint: CheckpointConfig
    context_parallel_size: int = 1
    seed: int = 1234
    world_size: int | None = None

    @property
    def padded_vocab_size(self) -> int:
        return padded_vocab_size(
            self.arch.vocab_size, self.build.make_vocab_size_divisible_by, self.build.tensor_model_parallel_size
        )

    @property
    def model_parallel_size(self) -> int:
        return (
            self.build.tensor_model_parallel_size
            * self.build.pipeline_model_parallel_size
            * self.context_parallel_size
        )

    def layout_problems(self, world_size: int | None) -> list[str]:
        """:func:`parallel_size_problems` of this model and layout on ``world_size`` ranks."""
        build = self.build
        return parallel_size_problems(
            self.arch,
            tensor=build.tensor_model_parallel_size,
            pipeline=build.pipeline_model_parallel_size,
            context=self.context_parallel_size,
            expert=build.expert_model_parallel_size,
            expert_tensor=build.expert_tensor_parallel_size,
            sequence_parallel=build.sequence_parallel,
            world_size=world_size,
        )

    def problems(self) -> Problems:
        """The layout against the model and ``world_size``, and every part's own problems."""
        p = Problems()
        p.extend(self.layout_problems(self.world_size))
        for part in (self.optimizer, self.batching, self.checkpoint):
            p.extend(part.problems().messages)
        return p

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, world_size: int | None, on_gpu: bool) -> MegatronConfig:
        """Validate and freeze. ``world_size``: the number of training ranks to check the layout against (None: not
        checked). ``on_gpu``: whether the run trains on GPUs (the caller decides: the dry run plans GPU runs on
        machines without one)."""
        if getattr(args, "hf_checkpoint", None) is None:
            raise ValueError("--hf-checkpoint is required: the HF model directory the actor builds its model from")
        arch = HFArchitecture.from_hf_checkpoint(args.hf_checkpoint)
        check_model_args(args, arch, source=f"{args.hf_checkpoint}/config.json")
        problems = Problems()
        problems.check(
            on_gpu or not args.sequence_parallel,
            "--sequence-parallel is not available on CPU (megatron-core's torch norms reject it without "
            "transformer-engine/apex); drop it for CPU runs",
        )
        if args.vocab_size is not None:
            problems.check(args.vocab_size == arch.vocab_size, "--vocab-size must equal config.json's vocab_size")
        problems.check(on_gpu or not args.moe_grouped_gemm, "--moe-grouped-gemm needs transformer-engine on a GPU")
        problems.extend(_precision_and_dispatch_problems(args))
        tp = args.tensor_model_parallel_size
        bf16 = on_gpu if args.bf16 is None else bool(args.bf16)
        build = ModelBuildConfig(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            expert_model_parallel_size=args.expert_model_parallel_size,
            expert_tensor_parallel_size=args.expert_tensor_parallel_size,
            sequence_parallel=bool(args.sequence_parallel and tp > 1),
            bf16=bf16,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            transformer_impl=args.transformer_impl,
            attention_dropout=args.attention_dropout,
            hidden_dropout=args.hidden_dropout,
            recompute_granularity=args.recompute_granularity,
            recompute_method=args.recompute_method,
            recompute_num_layers=args.recompute_num_layers,
            moe_grouped_gemm=bool(args.moe_grouped_gemm),
            moe_token_dispatcher_type=args.moe_token_dispatcher_type,
            moe_aux_loss_coeff=args.moe_aux_loss_coeff,
            moe_router_dtype=args.moe_router_dtype,
            calculate_per_token_loss=bool(getattr(args, "calculate_per_token_loss", False)),
            accumulate_allreduce_grads_in_fp32=bool(args.accumulate_allreduce_grads_in_fp32),
            attention_softmax_in_fp32=True,
        )
        config = cls(
            arch=arch,
            build=build,
            optimizer=OptimizerConfig.from_args(args),
            batching=BatchingConfig.from_args(args),
            checkpoint=CheckpointConfig.from_args(args),
            context_parallel_size=args.context_parallel_size,
            seed=args.seed,
            world_size=world_size,
        )
        problems.extend(config.problems().messages)
        problems.raise_if_any("Megatron actor flags")
        logger.info("slime_entropy megatron settings: %s", _describe(config))
        return config


def _describe(obj: object) -> str:
    if hasattr(obj, "__dataclass_fields__"):
        return (
            f"{type(obj).__name__}("
            + ", ".join(f"{f.name}={_describe(getattr(obj, f.name))}" for f in fields(obj))
            + ")"
        )
    return repr(obj)
