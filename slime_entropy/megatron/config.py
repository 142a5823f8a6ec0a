"""Frozen configs of the Megatron actor, built from the flags ``slime_entropy.megatron.arguments`` registers.

:meth:`MegatronConfig.from_args` is the only place that reads those flags. It validates everything at once and
raises one ``ValueError`` naming each flag and its fix; the rest of ``slime_entropy.megatron`` receives the frozen
objects.

Defaults follow slime where slime overrides Megatron (``--seed 1234``, ``--micro-batch-size 1``, distributed
optimizer on, ``--clip-grad 1.0``). ``--bf16`` defaults to on where the hardware has bf16 (a CUDA GPU that reports
it) and off on a CPU (no native bf16 on most CPUs; pass ``--bf16`` to force it).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from typing import Any

import torch

from slime_entropy.megatron.arguments import LR_DECAY_STYLES
from slime_entropy.megatron.architecture import HFArchitecture, check_model_args, padded_vocab_size
from slime_entropy.megatron.model import ModelBuildConfig
from slime_entropy.problems import Problems

__all__ = ["OptimizerConfig", "BatchingConfig", "CheckpointConfig", "MegatronConfig"]

logger = logging.getLogger(__name__)

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

    def problems(self) -> list[str]:
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
        return p.messages

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OptimizerConfig:
        """Read slime's optimizer flags; validation is :meth:`problems`."""
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

    def problems(self) -> list[str]:
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
        return p.messages

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
    """slime's checkpoint flags (see slime-reference §10)."""

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

    def problems(self) -> list[str]:
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
        return p.messages

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


def flag_problems(args: argparse.Namespace) -> list[str]:
    """The checks of the actor's flags that need neither the model nor the hardware: optimizer, batching,
    checkpoints, precision and MoE dispatch. Shared by the actor and ``train.py --dry-run``."""
    p = Problems()
    p.messages += OptimizerConfig.from_args(args).problems()
    p.messages += BatchingConfig.from_args(args).problems()
    p.messages += CheckpointConfig.from_args(args).problems()
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
    """Everything the Megatron actor needs, resolved once from ``args``."""

    arch: HFArchitecture
    build: ModelBuildConfig
    optimizer: OptimizerConfig
    batching: BatchingConfig
    checkpoint: CheckpointConfig
    context_parallel_size: int = 1
    seed: int = 1234

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

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, world_size: int | None = None, *, on_gpu: bool | None = None
    ) -> MegatronConfig:
        """Validate and freeze. ``world_size``: the number of training ranks, to check the layout against;
        ``on_gpu``: the ranks run on CUDA GPUs (None: whether this machine has one)."""
        if getattr(args, "hf_checkpoint", None) is None:
            raise ValueError("--hf-checkpoint is required: the HF model directory the actor builds its model from")
        arch = HFArchitecture.from_hf_checkpoint(args.hf_checkpoint)
        check_model_args(args, arch, source=f"{args.hf_checkpoint}/config.json")
        problems = Problems()
        on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
        cp, ep = args.context_parallel_size, args.expert_model_parallel_size
        for flag, value in (
            ("--tensor-model-parallel-size", tp),
            ("--pipeline-model-parallel-size", pp),
            ("--context-parallel-size", cp),
            ("--expert-model-parallel-size", ep),
        ):
            problems.check(value >= 1, f"{flag} must be >= 1, got {value}")
        problems.check(
            cp == 1,
            f"--context-parallel-size {cp}: context parallelism is not supported by slime_entropy's actor yet; use "
            "--context-parallel-size 1 (more TP or dynamic batching for long sequences)",
        )
        problems.check(
            arch.num_attention_heads % max(tp, 1) == 0 and arch.num_query_groups % max(tp, 1) == 0,
            f"--tensor-model-parallel-size {tp} must divide the attention heads ({arch.num_attention_heads}) and the "
            f"query groups ({arch.num_query_groups})",
        )
        problems.check(
            arch.num_layers % max(pp, 1) == 0,
            f"--pipeline-model-parallel-size {pp} must divide --num-layers ({arch.num_layers})",
        )
        if arch.is_moe:
            problems.check(
                arch.num_experts % max(ep, 1) == 0,
                f"--expert-model-parallel-size {ep} must divide the {arch.num_experts} experts",
            )
        else:
            problems.check(ep == 1, f"--expert-model-parallel-size {ep} needs an MoE model; drop it")
        if world_size is not None:
            problems.check(
                world_size % (tp * pp * cp) == 0,
                f"{world_size} training ranks are not a multiple of TP x PP x CP = {tp}x{pp}x{cp}",
            )
        problems.check(
            not (args.sequence_parallel and not on_gpu),
            "--sequence-parallel is not available on CPU (megatron-core's torch norms reject it without "
            "transformer-engine/apex); drop it for CPU runs",
        )
        if args.vocab_size is not None:
            problems.check(args.vocab_size == arch.vocab_size, "--vocab-size must equal config.json's vocab_size")
        problems.check(
            not (args.moe_grouped_gemm and not on_gpu), "--moe-grouped-gemm needs transformer-engine on a GPU"
        )
        problems.messages += flag_problems(args)
        bf16 = args.bf16
        if bf16 is None:
            # planned from a machine without a GPU: the GPUs of the plan (A100, H100) have bf16
            bf16 = bool(on_gpu and (torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True))
        build = ModelBuildConfig(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=args.expert_tensor_parallel_size,
            sequence_parallel=bool(args.sequence_parallel and tp > 1),
            bf16=bool(bf16),
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
        optimizer = OptimizerConfig.from_args(args)
        batching = BatchingConfig.from_args(args)
        checkpoint = CheckpointConfig.from_args(args)
        if problems.messages:
            raise ValueError("invalid Megatron actor flags:\n  - " + "\n  - ".join(problems.messages))
        settings = cls(
            arch=arch,
            build=build,
            optimizer=optimizer,
            batching=batching,
            checkpoint=checkpoint,
            context_parallel_size=cp,
            seed=args.seed,
        )
        logger.info("slime_entropy megatron settings: %s", _describe(settings))
        return settings


def _describe(obj: Any) -> str:
    if hasattr(obj, "__dataclass_fields__"):
        return (
            f"{type(obj).__name__}("
            + ", ".join(f"{f.name}={_describe(getattr(obj, f.name))}" for f in fields(obj))
            + ")"
        )
    return repr(obj)
