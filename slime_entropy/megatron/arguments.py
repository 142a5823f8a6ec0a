"""The Megatron and slime training flags the actor reads (their frozen configs: ``slime_entropy.megatron.config``).

``add_megatron_arguments(parser) -> parser`` registers Megatron's own spellings (slime users pass them unchanged:
``MODEL_ARGS``, ``--tensor-model-parallel-size``, ``--lr`` ...) plus slime's actor/checkpoint flags (``--ref-load``,
``--save-hf``, ``--use-dynamic-batch-size`` ...). The actor also reads flags other packages own: the loss flags
(``slime_entropy.loss.arguments``, including ``--calculate-per-token-loss`` and ``--use-kl-loss``),
``--hf-checkpoint`` and ``--rollout-temperature`` (``slime_entropy.rollout.arguments``), and ``--kl-coef`` (the
trainer's; read here when present). :func:`add_actor_arguments` composes all of them, each from its owner, for tools
that run the actor without train.py.

Defaults follow slime where slime overrides Megatron (``--seed 1234``, ``--micro-batch-size 1``, distributed
optimizer on, ``--clip-grad 1.0``).
"""

from __future__ import annotations

import argparse

from slime_entropy.megatron.config import LR_DECAY_STYLES

__all__ = ["add_megatron_arguments", "add_actor_arguments", "add_torch_dist_to_hf_arguments"]


def add_megatron_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the Megatron/slime actor flags on ``parser`` and return it."""
    g = parser.add_argument_group("megatron: model architecture (MODEL_ARGS; checked against --hf-checkpoint)")
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--ffn-hidden-size", type=int, default=None)
    g.add_argument("--num-attention-heads", type=int, default=None)
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=int, default=None)
    g.add_argument("--kv-channels", type=int, default=None)
    g.add_argument("--qk-layernorm", action="store_true")
    g.add_argument("--normalization", choices=("RMSNorm", "LayerNorm"), default=None)
    g.add_argument("--norm-epsilon", type=float, default=None)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_true")
    g.add_argument("--add-qkv-bias", action="store_true")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--position-embedding-type", choices=("rope",), default=None)
    g.add_argument("--use-rotary-position-embeddings", action="store_true")
    g.add_argument("--rotary-base", type=float, default=None)
    g.add_argument("--rotary-percent", type=float, default=None)
    g.add_argument("--use-rope-scaling", action="store_true")
    g.add_argument("--rope-scaling-factor", type=float, default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="True vocabulary size (default: config.json's).")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--seq-length", type=int, default=None, help="Accepted for compatibility; packing ignores it.")
    g.add_argument("--attention-dropout", type=float, default=0.0)
    g.add_argument("--hidden-dropout", type=float, default=0.0)
    g.add_argument("--num-experts", type=int, default=None)
    g.add_argument("--moe-ffn-hidden-size", type=int, default=None)
    g.add_argument("--moe-router-topk", type=int, default=None)
    g.add_argument("--moe-router-score-function", choices=("softmax", "sigmoid"), default=None)
    g.add_argument("--moe-router-pre-softmax", action="store_true")
    g.add_argument("--moe-layer-freq", default=None, help="Integer N, or a list such as '[1]*48'.")
    g.add_argument("--moe-token-dispatcher-type", choices=("alltoall", "allgather"), default="alltoall")
    g.add_argument("--moe-grouped-gemm", action="store_true", help="TE grouped GEMM for experts (GPU).")
    g.add_argument("--moe-token-drop-policy", choices=("probs", "position"), default="probs")
    g.add_argument("--moe-router-dtype", choices=("fp32", "fp64"), default="fp32")
    g.add_argument("--moe-permute-fusion", action="store_true", help="Accepted; the fused permute needs TE (off).")
    g.add_argument("--moe-aux-loss-coeff", type=float, default=0.0)

    g = parser.add_argument_group("megatron: parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--expert-model-parallel-size", type=int, default=1)
    g.add_argument("--expert-tensor-parallel-size", type=int, default=None)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument(
        "--transformer-impl",
        choices=("auto", "local", "transformer_engine"),
        default="auto",
        help="Layer implementation: transformer-engine when it imports on a GPU (auto), or megatron-core's local "
        "pure-torch spec.",
    )

    g = parser.add_argument_group("megatron: precision and memory")
    g.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 parameters with fp32 main weights (default: on where the GPU supports bf16, off on CPU).",
    )
    g.add_argument("--fp16", action="store_true", help="Not supported (use --bf16); accepted to give a clear error.")
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true")
    g.add_argument("--attention-softmax-in-fp32", action="store_true")
    g.add_argument("--attention-backend", default=None, help="Accepted for compatibility (TE picks the backend).")
    g.add_argument("--recompute-granularity", choices=("full", "selective"), default=None)
    g.add_argument("--recompute-method", choices=("uniform", "block"), default=None)
    g.add_argument("--recompute-num-layers", type=int, default=None)

    g = parser.add_argument_group("megatron: optimizer and learning rate")
    g.add_argument("--optimizer", choices=("adam",), default="adam")
    g.add_argument("--lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=LR_DECAY_STYLES, default="constant")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="Default: --num-rollout x steps per rollout.")
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip-grad", type=float, default=1.0, help="Global gradient-norm clip; 0 disables.")
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument(
        "--use-distributed-optimizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Shard optimizer state over data-parallel ranks (slime forces it on).",
    )
    g.add_argument("--use-precision-aware-optimizer", action="store_true")
    g.add_argument("--optimizer-cpu-offload", action="store_true")
    g.add_argument("--overlap-cpu-optimizer-d2h-h2d", action="store_true")
    g.add_argument("--seed", type=int, default=1234)

    g = parser.add_argument_group("megatron: batching")
    g.add_argument("--micro-batch-size", type=int, default=1, help="Samples per micro-batch (fixed batching).")
    g.add_argument("--global-batch-size", type=int, default=None, help="Samples per optimizer step (all DP ranks).")
    g.add_argument(
        "--use-dynamic-batch-size",
        action="store_true",
        help="Pack samples greedily into micro-batches of at most --max-tokens-per-gpu tokens.",
    )
    g.add_argument("--max-tokens-per-gpu", type=int, default=None)
    g.add_argument(
        "--log-probs-max-tokens-per-gpu",
        type=int,
        default=None,
        help="Token budget of the no-grad log-prob passes (default: --max-tokens-per-gpu).",
    )
    g.add_argument(
        "--data-pad-size-multiplier",
        type=int,
        default=128,
        help="The packed stream is padded to a multiple of TP x this (slime: 128).",
    )

    g = parser.add_argument_group("slime: checkpoints (--hf-checkpoint: the rollout flags)")
    g.add_argument("--load", default=None, help="torch_dist checkpoint directory to resume from.")
    g.add_argument("--save", default=None, help="torch_dist checkpoint directory to save to.")
    g.add_argument("--save-interval", type=int, default=None, help="Save every N rollouts.")
    g.add_argument(
        "--ref-load",
        default=None,
        help="torch_dist checkpoint of the reference model; also the initial weights when --load has none.",
    )
    g.add_argument("--ref-ckpt-step", type=int, default=None, help="Iteration of --ref-load to use (default: latest).")
    g.add_argument("--ckpt-step", type=int, default=None, help="Iteration of --load to use (default: latest).")
    g.add_argument("--save-hf", default=None, help="Also write an HF checkpoint here on save ({rollout_id} allowed).")
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--finetune", action="store_true", help="Load weights only and restart the iteration count.")
    g.add_argument("--ckpt-format", choices=("torch_dist",), default="torch_dist")
    return parser


def add_actor_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every flag the Megatron actor reads, each registered by its owner: the loss flags (ours and slime's), the
    Megatron flags, ``--hf-checkpoint`` and ``--rollout-temperature``. For tools that build the actor without the
    trainer's parser (scoring, benchmarks, tests); train.py composes the full providers instead."""
    from slime_entropy.loss.arguments import add_arguments, add_slime_loss_arguments
    from slime_entropy.rollout.arguments import add_hf_checkpoint_argument, add_rollout_temperature_argument

    add_arguments(parser)
    add_slime_loss_arguments(parser)
    add_megatron_arguments(parser)
    add_hf_checkpoint_argument(parser)
    add_rollout_temperature_argument(parser)
    return parser


def add_torch_dist_to_hf_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's ``torch-dist-to-hf`` flags beyond the Megatron ones (``slime_entropy.megatron.convert``)."""
    parser.add_argument("--input-dir", required=True, help="checkpoint root (follows its tracker) or iter_* dir")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--origin-hf-dir", required=True, help="HF directory of the model (config, tokenizer)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="dtype of the written weights (default: the origin config's)",
    )
    return parser
