"""HF <-> torch_dist checkpoint conversion (slime's ``tools/convert_hf_to_torch_dist.py`` and its inverse).

::

    # HF -> torch_dist (what --ref-load expects: <save>/release + latest_checkpointed_iteration.txt = release)
    python -m slime_entropy.megatron.convert hf-to-torch-dist --hf-checkpoint /models/Qwen3-4B \
        --save /ckpt/Qwen3-4B_torch_dist ${MODEL_ARGS[@]}
    # torch_dist -> HF (a checkpoint root, which follows its tracker, or an iter_*/release directory)
    python -m slime_entropy.megatron.convert torch-dist-to-hf --input-dir /ckpt/run/iter_0000099 \
        --output-dir /models/Qwen3-4B-step99 --origin-hf-dir /models/Qwen3-4B

Single process by default (gloo on CPU, NCCL on a GPU); under ``torchrun`` the ranks form a pipeline of
``world_size`` stages unless ``--pipeline-model-parallel-size``/``--tensor-model-parallel-size`` say otherwise.
The MODEL_ARGS flags are accepted and checked against the HF config like the trainer does. torch_dist checkpoints
are layout-independent: convert at any TP/PP and train at another.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from slime_entropy.megatron.groups import init_default_process_group

__all__ = ["main", "hf_to_torch_dist", "torch_dist_to_hf"]

logger = logging.getLogger(__name__)


def _build(args: argparse.Namespace, hf_dir: str):
    from slime_entropy.megatron import cpu_shim
    from slime_entropy.megatron.actor import initialize_parallel_state
    from slime_entropy.megatron.config import MegatronConfig
    from slime_entropy.megatron.groups import ActorGroups
    from slime_entropy.megatron.model import build_gpt_model

    cpu_shim.apply()
    args.hf_checkpoint = hf_dir
    world = dist.get_world_size()
    if world > 1 and args.pipeline_model_parallel_size == 1 and args.tensor_model_parallel_size == 1:
        args.pipeline_model_parallel_size = world
    settings = MegatronConfig.from_args(args, world_size=world, on_gpu=torch.cuda.is_available())
    initialize_parallel_state(settings, world)
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(settings.seed)
    return settings, build_gpt_model(settings.arch, settings.build), ActorGroups.from_megatron()


def hf_to_torch_dist(args: argparse.Namespace) -> Path:
    from slime_entropy.megatron.checkpoint import save_checkpoint
    from slime_entropy.megatron.hf_bridge import load_hf_weights

    if args.save is None:
        raise ValueError("hf-to-torch-dist needs --save DIR (the torch_dist output)")
    settings, model, groups = _build(args, args.hf_checkpoint)
    load_hf_weights(model, settings.arch, args.hf_checkpoint)
    return save_checkpoint(args.save, "release", model, groups=groups, weights_only=True)


def torch_dist_to_hf(args: argparse.Namespace) -> Path:
    from slime_entropy.megatron.checkpoint import checkpoint_path, load_checkpoint, read_tracker
    from slime_entropy.megatron.hf_bridge import save_hf_checkpoint

    settings, model, groups = _build(args, args.origin_hf_dir)
    source = Path(args.input_dir)
    if read_tracker(source) is not None:
        source = checkpoint_path(source)[0]
    load_checkpoint(source, model)
    dtype = getattr(torch, args.dtype or settings.arch.torch_dtype)
    return save_hf_checkpoint(model, settings.arch, args.output_dir, args.origin_hf_dir, dtype=dtype, groups=groups)


def build_parser() -> argparse.ArgumentParser:
    from slime_entropy.megatron.arguments import add_megatron_arguments, add_torch_dist_to_hf_arguments
    from slime_entropy.rollout.arguments import add_hf_checkpoint_argument

    parser = argparse.ArgumentParser(prog="slime-entropy-convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_dist = commands.add_parser("hf-to-torch-dist", help="HF safetensors -> torch_dist (<save>/release)")
    to_hf = commands.add_parser("torch-dist-to-hf", help="torch_dist -> HF safetensors + config + tokenizer")
    for command in (to_dist, to_hf):
        add_megatron_arguments(command)
        add_hf_checkpoint_argument(command)
    add_torch_dist_to_hf_arguments(to_hf)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    init_default_process_group()
    try:
        out = hf_to_torch_dist(args) if args.command == "hf-to-torch-dist" else torch_dist_to_hf(args)
        if dist.get_rank() == 0:
            print(f"wrote {out}")
    finally:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
