"""Megatron DDP, Adam (optionally the distributed optimizer) and the learning-rate schedule.

Order matters: weights must be in the model before :func:`build_optimizer`, because Megatron's mixed-precision
and distributed optimizers copy the model parameters into their fp32 main parameters when they are built (after a
later in-place weight change, call ``optimizer.reload_model_params()``).

The schedule counts optimizer steps (one per global batch): warmup over ``--lr-warmup-iters`` steps from
``--lr-warmup-init`` to ``--lr``, then constant, linear or cosine decay to ``--min-lr`` over ``--lr-decay-iters``
steps (default: the run's total steps). Weight decay is constant.
"""

from __future__ import annotations

import logging

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import Float16Module

from slime_entropy.megatron.config import OptimizerConfig
from slime_entropy.megatron.model import ModelBuildConfig

__all__ = ["wrap_for_training", "build_optimizer", "build_lr_scheduler"]

logger = logging.getLogger(__name__)


def wrap_for_training(
    model: torch.nn.Module, config: TransformerConfig, build: ModelBuildConfig, optimizer: OptimizerConfig
) -> DistributedDataParallel:
    """bf16 wrapper (when ``build.bf16``) + Megatron DDP with contiguous gradient buffers.

    Also installs the schedule hooks Megatron's training loop sets on the config: ``no_sync_func`` (gradients are
    reduced once, after the last micro-batch) and ``finalize_model_grads_func`` (the DP reduce / reduce-scatter,
    and the division by the all-reduced token count in per-token mode).
    """
    if build.bf16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=build.accumulate_allreduce_grads_in_fp32 or not build.bf16,
        overlap_grad_reduce=False,
        overlap_param_gather=False,
        use_distributed_optimizer=optimizer.use_distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=None,
    )
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return ddp


def build_optimizer(
    ddp_model: DistributedDataParallel, config: TransformerConfig, settings: OptimizerConfig, bf16: bool
):
    """Megatron's Adam over the model (distributed over DP ranks when ``settings.use_distributed_optimizer``)."""
    opt_config = MegatronOptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=settings.use_distributed_optimizer,
        use_precision_aware_optimizer=settings.use_precision_aware_optimizer,
        optimizer_cpu_offload=settings.optimizer_cpu_offload,
        overlap_cpu_optimizer_d2h_h2d=settings.overlap_cpu_optimizer_d2h_h2d,
    )
    optimizer = get_megatron_optimizer(opt_config, [ddp_model])
    config.grad_scale_func = optimizer.scale_loss
    return optimizer


def build_lr_scheduler(optimizer, settings: OptimizerConfig, total_steps: int) -> OptimizerParamScheduler:
    """Megatron's ``OptimizerParamScheduler`` in optimizer-step units (call ``step(1)`` after each update)."""
    decay_steps = settings.lr_decay_iters or max(total_steps, settings.lr_warmup_iters + 1)
    if decay_steps <= settings.lr_warmup_iters:
        raise ValueError(
            f"the learning-rate decay span ({decay_steps} steps, --lr-decay-iters or the run's total) must exceed "
            f"--lr-warmup-iters ({settings.lr_warmup_iters})"
        )
    return OptimizerParamScheduler(
        optimizer,
        init_lr=settings.lr_warmup_init,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=settings.lr_warmup_iters,
        lr_decay_steps=decay_steps,
        lr_decay_style=settings.lr_decay_style,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
