"""The Megatron training actor: one object per training rank, slime's ``MegatronTrainRayActor`` without Ray.

Life cycle (every method is collective over all training ranks)::

    actor = MegatronActor(megatron, loss, num_total_steps=...)  # parallel state, model, weights, DDP, Adam,
                                                                # LR schedule, the loss bound to its groups
    actor.compute_log_probs(samples)              # old-policy log-probs (+ entropies), ref log-probs
    metrics = actor.train(rollout_id, samples)    # one optimizer step per global batch
    actor.maybe_save(rollout_id)                  # torch_dist (+ --save-hf) every --save-interval rollouts
    actor.save_hf(out_dir)                        # HF checkpoint of the current weights

``megatron`` (``MegatronConfig``) and ``loss`` (``LossConfig``) are the frozen configs the driver resolved from the
flags; the actor reads no argument namespace (a user's ``--custom-loss-function-path`` function gets ``hook_args``).

Initial weights, as slime: ``--load`` with a tracker file resumes (weights, optimizer, scheduler, RNG;
``start_rollout_id`` = saved iteration + 1); otherwise ``--ref-load`` gives the weights (no
optimizer state, ``start_rollout_id`` 0); otherwise the ``--hf-checkpoint`` safetensors. With ``--use-kl-loss`` or
``--kl-coef`` the ``--ref-load`` weights are kept in host memory and swapped into the model for the reference pass.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from slime_entropy.megatron import cpu_shim
from slime_entropy.problems import Problems

if TYPE_CHECKING:
    from slime_entropy.loss.bound import BoundLoss
    from slime_entropy.loss.config import LossConfig
    from slime_entropy.megatron.config import MegatronConfig

__all__ = ["MegatronActor"]

logger = logging.getLogger(__name__)


def initialize_parallel_state(megatron: MegatronConfig, world_size: int) -> None:
    """megatron-core's parallel state for ``megatron``'s layout (or check that the existing one matches)."""
    from megatron.core import parallel_state as mpu

    build = megatron.build
    if mpu.model_parallel_is_initialized():
        current = (mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size())
        wanted = (build.tensor_model_parallel_size, build.pipeline_model_parallel_size)
        if current != wanted:
            raise ValueError(f"megatron parallel state is already initialised with TP, PP = {current}, not {wanted}")
        return
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=build.tensor_model_parallel_size,
        pipeline_model_parallel_size=build.pipeline_model_parallel_size,
        context_parallel_size=megatron.context_parallel_size,
        expert_model_parallel_size=build.expert_model_parallel_size,
        expert_tensor_parallel_size=build.expert_tensor_parallel_size,
    )


class MegatronActor:
    """Model, optimizer and checkpoints of one training rank (see module docstring)."""

    def __init__(
        self,
        megatron: MegatronConfig,
        loss: LossConfig,
        *,
        num_total_steps: int,
        hook_args: argparse.Namespace | None = None,
    ):
        """``hook_args``: handed only to a user's ``--custom-loss-function-path`` function (slime's signature)."""
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from slime_entropy.megatron.checkpoint import checkpoint_path, load_checkpoint
        from slime_entropy.megatron.groups import ActorGroups
        from slime_entropy.megatron.hf_bridge import load_hf_weights
        from slime_entropy.megatron.model import build_gpt_model, build_transformer_config
        from slime_entropy.megatron.optimizer import build_lr_scheduler, build_optimizer, wrap_for_training

        if not dist.is_initialized():
            raise RuntimeError("initialise torch.distributed (NCCL on GPUs, gloo on CPUs) before building the actor")
        cpu_shim.apply()
        world_size = dist.get_world_size()
        if megatron.world_size is not None and megatron.world_size != world_size:
            raise ValueError(
                f"the Megatron config was checked for {megatron.world_size} training ranks but this world has "
                f"{world_size}; resolve it with MegatronConfig.from_args(args, world_size={world_size}, ...)"
            )
        problems = Problems()
        problems.extend(megatron.layout_problems(world_size))
        problems.raise_if_any(f"Megatron layout for a world of {world_size} ranks")
        self.megatron = megatron
        initialize_parallel_state(megatron, world_size)
        torch.manual_seed(megatron.seed)
        model_parallel_cuda_manual_seed(megatron.seed)
        self.groups = ActorGroups.from_megatron()
        self.loss = self.bind_loss(loss, hook_args=hook_args)
        self.transformer_config = build_transformer_config(megatron.arch, megatron.build)
        gpt = build_gpt_model(megatron.arch, megatron.build, self.transformer_config)
        ckpt = megatron.checkpoint

        self.ref_weights: dict[str, torch.Tensor] | None = None
        ref = checkpoint_path(ckpt.ref_load, ckpt.ref_ckpt_step) if ckpt.ref_load else None
        if ckpt.ref_load and ref is None:
            raise ValueError(
                f"--ref-load {ckpt.ref_load} has no {Path(ckpt.ref_load).name}/latest_checkpointed_iteration.txt; "
                "convert the HF checkpoint first (slime-entropy-convert hf-to-torch-dist)"
            )
        resume = checkpoint_path(ckpt.load, ckpt.ckpt_step) if ckpt.load else None
        if ref is not None:
            load_checkpoint(ref[0], gpt)
            if ckpt.needs_ref_model:
                self.ref_weights = _snapshot(gpt)
            logger.info("initial weights from --ref-load %s", ref[0])
        else:
            load_hf_weights(gpt, megatron.arch, ckpt.hf_checkpoint)
            logger.info("initial weights from --hf-checkpoint %s", ckpt.hf_checkpoint)

        self.model = wrap_for_training(gpt, self.transformer_config, megatron.build, megatron.optimizer)
        self.optimizer = build_optimizer(self.model, self.transformer_config, megatron.optimizer, megatron.build.bf16)
        self.scheduler = build_lr_scheduler(self.optimizer, megatron.optimizer, num_total_steps)
        self.start_rollout_id = 0
        if resume is not None:
            load_optimizer = not (ckpt.no_load_optim or ckpt.finetune)
            iteration = load_checkpoint(
                resume[0],
                self.model,
                self.optimizer,
                self.scheduler,
                load_optimizer=load_optimizer,
                load_rng=not (ckpt.no_load_rng or ckpt.finetune),
            )
            if not ckpt.finetune and iteration != "release":
                self.start_rollout_id = int(iteration) + 1
            logger.info("resumed from --load %s (iteration %s)", resume[0], iteration)

    def bind_loss(self, loss: LossConfig, *, hook_args: argparse.Namespace | None = None) -> BoundLoss:
        """``loss`` bound to this actor's process groups, global batch size and vocabulary (the model's true
        vocabulary: Megatron pads the output layer beyond it)."""
        from slime_entropy.loss.bound import BoundLoss

        return BoundLoss(
            loss,
            self.groups.loss,
            global_batch_size=self.megatron.batching.global_batch_size,
            vocab_size=self.megatron.arch.vocab_size,
            hook_args=hook_args,
        )

    # ---- passes -------------------------------------------------------------------------------------------------

    @property
    def _log_prob_batching(self) -> dict:
        b = self.megatron.batching
        if b.use_dynamic_batch_size:
            return {"micro_batch_size": None, "max_tokens": b.log_probs_token_budget}
        return {"micro_batch_size": b.micro_batch_size, "max_tokens": None}

    @property
    def _train_batching(self) -> dict:
        b = self.megatron.batching
        if b.use_dynamic_batch_size:
            return {"micro_batch_size": None, "max_tokens": b.max_tokens_per_gpu}
        return {"micro_batch_size": b.micro_batch_size, "max_tokens": None}

    def compute_log_probs(self, samples: Sequence) -> None:
        """Old-policy ``log_probs`` and ``entropy`` (the fused kernel yields both; the step-scope threshold reads the
        entropies) and, with a reference model, ``ref_log_probs``, stored in each sample's ``fields`` (last pipeline
        stage only)."""
        from slime_entropy.megatron.train_step import compute_log_probs

        kwargs = dict(loss=self.loss, groups=self.groups, pad_multiple=self.megatron.batching.pad_multiple)
        if self.ref_weights is not None:
            with _swapped_weights(self.model, self.ref_weights):
                compute_log_probs(
                    self.model,
                    samples,
                    store_as="ref_log_probs",
                    with_entropy=False,
                    **kwargs,
                    **self._log_prob_batching,
                )
        compute_log_probs(
            self.model, samples, store_as="log_probs", with_entropy=True, **kwargs, **self._log_prob_batching
        )

    def train(self, rollout_id: int, samples: Sequence) -> list[dict[str, float]]:
        """Optimizer steps over this DP rank's share of one rollout, ``global_batch_size / DP`` samples each."""
        from slime_entropy.megatron.train_step import compute_step_threshold, train_step

        gbs = self.megatron.batching.global_batch_size
        if gbs is None:
            raise ValueError(
                "training needs the global batch size (samples per optimizer step): pass --global-batch-size, or "
                "resolve the configs with TrainerConfig.from_args, which derives it from the rollout batch"
            )
        dp = self.groups.dp_cp_size
        if gbs % dp:
            raise ValueError(f"--global-batch-size {gbs} must be a multiple of the data-parallel size {dp}")
        per_rank = gbs // dp
        if len(samples) % per_rank:
            raise ValueError(
                f"rollout {rollout_id}: this rank has {len(samples)} samples, not a multiple of "
                f"global_batch_size / DP = {per_rank}"
            )
        entropy_filter = self.loss.config.entropy_filter
        use_step_scope = entropy_filter.enabled and entropy_filter.threshold_scope == "step"
        results = []
        for start in range(0, len(samples), per_rank):
            step_samples = samples[start : start + per_rank]
            threshold = None
            if use_step_scope and self.groups.is_last_stage:
                threshold = compute_step_threshold(
                    step_samples, entropy_filter.keep_fraction, self.groups, method=entropy_filter.selection_method
                ).threshold
            metrics = train_step(
                self.model,
                self.optimizer,
                self.scheduler,
                step_samples,
                loss=self.loss,
                groups=self.groups,
                pad_multiple=self.megatron.batching.pad_multiple,
                step_threshold=threshold,
                **self._train_batching,
            )
            metrics["rollout_id"] = float(rollout_id)
            results.append(metrics)
        return results

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def save(self, rollout_id: int) -> Path:
        """torch_dist checkpoint of iteration ``rollout_id`` into ``--save`` (atomic), plus ``--save-hf``."""
        from slime_entropy.megatron.checkpoint import save_checkpoint

        ckpt = self.megatron.checkpoint
        if ckpt.save is None:
            raise ValueError("saving needs --save DIR")
        path = save_checkpoint(ckpt.save, rollout_id, self.model, self.optimizer, self.scheduler, groups=self.groups)
        if ckpt.save_hf:
            self.save_hf(ckpt.save_hf.format(rollout_id=rollout_id))
        return path

    def maybe_save(self, rollout_id: int, num_rollout: int | None = None) -> Path | None:
        """Save when ``(rollout_id + 1) % --save-interval == 0`` or at the last rollout (slime's rule)."""
        ckpt = self.megatron.checkpoint
        if ckpt.save is None or ckpt.save_interval is None:
            return None
        last = num_rollout is not None and rollout_id + 1 == num_rollout
        if (rollout_id + 1) % ckpt.save_interval == 0 or last:
            return self.save(rollout_id)
        return None

    def save_hf(self, out_dir: str | Path) -> Path:
        """HF checkpoint (safetensors in the source checkpoint's dtype, config, tokenizer) of the current weights."""
        from slime_entropy.megatron.hf_bridge import save_hf_checkpoint

        dtype = getattr(torch, self.megatron.arch.torch_dtype, None)
        return save_hf_checkpoint(
            self.model,
            self.megatron.arch,
            out_dir,
            self.megatron.checkpoint.hf_checkpoint,
            dtype=dtype,
            groups=self.groups,
        )


def _snapshot(model) -> dict[str, torch.Tensor]:
    from slime_entropy.megatron.hf_bridge import unwrap_model

    return {name: p.detach().to("cpu", copy=True) for name, p in unwrap_model(model).named_parameters()}


class _swapped_weights:
    """Context: the model holds ``weights`` inside, its own weights again after (bit-exact restore)."""

    def __init__(self, model, weights: dict[str, torch.Tensor]):
        self.model, self.weights, self.backup = model, weights, None

    @torch.no_grad()
    def __enter__(self):
        from slime_entropy.megatron.hf_bridge import unwrap_model

        params = dict(unwrap_model(self.model).named_parameters())
        self.backup = _snapshot(self.model)
        for name, tensor in self.weights.items():
            params[name].copy_(tensor)
        return self

    @torch.no_grad()
    def __exit__(self, *exc):
        from slime_entropy.megatron.hf_bridge import unwrap_model

        params = dict(unwrap_model(self.model).named_parameters())
        for name, tensor in self.backup.items():
            params[name].copy_(tensor)
        self.backup = None
