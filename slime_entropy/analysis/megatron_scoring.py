"""Per-token entropy and log-probs under a Megatron model loaded from a torch_dist checkpoint: the trainer's path.

The model is built like the trainer's actor (``slime_entropy.megatron``: architecture from the HF ``config.json``,
megatron-core ``GPTModel``, THD-packed micro-batches) and the numbers come from the same no-grad pass
(:func:`slime_entropy.megatron.train_step.compute_log_probs` with the loss bound once, as the actor binds it:
``slime_entropy.loss.bound.BoundLoss`` at ``--rollout-temperature``, Megatron's padded vocabulary columns excluded).

Process layout: a single process (gloo on CPU, NCCL on a GPU) by default. Under ``torchrun`` with
``--tensor-model-parallel-size`` equal to the world size, every rank scores every response and holds identical
results (data and pipeline parallelism are not used here). ``megatron_args`` are the trainer's Megatron flags that
shape the model (``--tensor-model-parallel-size``, ``--bf16``, ``--make-vocab-size-divisible-by``...); the
architecture flags are optional and, when given, checked against ``config.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from slime_entropy.analysis.records import AnalysisSample, require_finite

__all__ = ["MegatronScorer"]

logger = logging.getLogger(__name__)


class MegatronScorer:
    """``scorer.score(samples)`` with a torch_dist checkpoint; ``scorer.close()`` tears the process state down."""

    def __init__(
        self,
        checkpoint: str,
        *,
        hf_checkpoint: str,
        temperature: float = 1.0,
        megatron_args: Sequence[str] = (),
        max_tokens_per_micro_batch: int | None = None,
    ):
        import argparse

        from slime_entropy.megatron import cpu_shim
        from slime_entropy.megatron.arguments import add_actor_arguments

        self.name = str(checkpoint)
        parser = add_actor_arguments(argparse.ArgumentParser(prog="megatron scorer"))
        argv = ["--hf-checkpoint", str(hf_checkpoint), "--rollout-temperature", repr(float(temperature))]
        try:
            self.args = parser.parse_args(argv + list(megatron_args))
        except SystemExit:
            raise ValueError(f"invalid --megatron-args {list(megatron_args)} (see the message above)") from None
        self.max_tokens = max_tokens_per_micro_batch
        cpu_shim.apply()
        from slime_entropy.megatron.groups import init_default_process_group

        self._owns_process_group = init_default_process_group()
        try:
            self._build(checkpoint)
        except BaseException:
            self.close()
            raise

    def _build(self, checkpoint: str) -> None:
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from slime_entropy.loss.bound import BoundLoss
        from slime_entropy.loss.config import LossConfig
        from slime_entropy.megatron.actor import initialize_parallel_state
        from slime_entropy.megatron.config import MegatronConfig
        from slime_entropy.megatron.checkpoint import checkpoint_path, load_checkpoint, read_tracker
        from slime_entropy.megatron.groups import ActorGroups
        from slime_entropy.megatron.model import build_gpt_model

        world = dist.get_world_size()
        args = self.args
        if world != args.tensor_model_parallel_size * args.pipeline_model_parallel_size:
            raise ValueError(
                f"the Megatron scorer runs tensor parallel only: {world} process(es) need "
                f"--tensor-model-parallel-size {world} in --megatron-args"
            )
        if args.pipeline_model_parallel_size != 1:
            raise ValueError("the Megatron scorer does not support --pipeline-model-parallel-size > 1")
        self.megatron = settings = MegatronConfig.from_args(args, world_size=world, on_gpu=torch.cuda.is_available())
        initialize_parallel_state(settings, world)
        model_parallel_cuda_manual_seed(settings.seed)
        self.groups = ActorGroups.from_megatron()
        # the loss's true vocabulary is the model's (Megatron pads the output layer beyond it)
        self.loss = BoundLoss(
            LossConfig.from_args(args), self.groups.loss, global_batch_size=None, vocab_size=settings.arch.vocab_size
        )
        self.model = build_gpt_model(settings.arch, settings.build)
        source = checkpoint
        if read_tracker(source) is not None:
            source = checkpoint_path(source)[0]
        load_checkpoint(source, self.model)
        logger.info("Megatron scorer: %s (TP=%d)", source, args.tensor_model_parallel_size)

    def score(self, samples: Sequence[AnalysisSample]) -> list[AnalysisSample]:
        from slime_entropy.megatron.batching import TrainSample
        from slime_entropy.megatron.train_step import compute_log_probs

        work = [
            TrainSample(
                tokens=torch.from_numpy(s.tokens.copy()),
                response_length=s.response_length,
                loss_mask=torch.from_numpy(s.response_mask.astype(np.int64)),
            )
            for s in samples
        ]
        compute_log_probs(
            self.model,
            work,
            loss=self.loss,
            groups=self.groups,
            micro_batch_size=None if self.max_tokens else 1,
            max_tokens=self.max_tokens,
            pad_multiple=self.megatron.batching.pad_multiple,
            store_as="log_probs",
            with_entropy=True,
        )
        out = []
        for s, w in zip(samples, work, strict=True):
            out.append(s.replace(entropy=w.fields["entropy"].numpy(), log_probs=w.fields["log_probs"].numpy()))
        require_finite(out, self.name)
        return out

    def close(self) -> None:
        from megatron.core import parallel_state

        self.model = None
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False
