"""Tiny random HF checkpoints, argument namespaces and rollout samples for the Megatron actor tests.

Everything here is module-level and picklable: gloo worlds spawn processes that import it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

VOCAB = 256


def _common(**overrides) -> dict:
    config = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,  # far from uniform next-token distributions: log-prob comparisons are sensitive
        rms_norm_eps=1e-6,
    )
    config.update(overrides)
    return config


def save_tiny_model(kind: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a random tiny ``kind`` checkpoint with save_pretrained: qwen3 | qwen3_tied | llama | qwen2 | qwen3_moe."""
    import transformers

    torch.manual_seed(seed)
    if kind in ("qwen3", "qwen3_tied"):
        config = transformers.Qwen3Config(**_common(head_dim=16, tie_word_embeddings=kind == "qwen3_tied"))
        model = transformers.Qwen3ForCausalLM(config)
    elif kind == "llama":
        rope = {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        }  # fmt: skip
        config = transformers.LlamaConfig(
            **_common(rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=16384), rope_parameters=rope
        )
        model = transformers.LlamaForCausalLM(config)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(**_common(tie_word_embeddings=True))
        model = transformers.Qwen2ForCausalLM(config)
    elif kind == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            **_common(head_dim=16, tie_word_embeddings=False),
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
        )
        model = transformers.Qwen3MoeForCausalLM(config)
    else:
        raise ValueError(kind)
    if kind == "qwen2":  # make the q/k/v biases non-trivial (HF initialises them to zero)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_proj.bias"):
                    p.normal_(0.0, 0.2)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def make_args(argv: list[str]) -> argparse.Namespace:
    """Every flag the actor reads: slime_entropy's loss flags, slime's loss flags, the Megatron actor flags,
    --hf-checkpoint and --rollout-temperature."""
    from slime_entropy.megatron.arguments import add_actor_arguments

    return add_actor_arguments(argparse.ArgumentParser()).parse_args(argv)


def build_actor(args: argparse.Namespace, *, num_total_steps: int):
    """The MegatronActor of ``args`` in this process's world, its configs resolved as the driver resolves them."""
    import torch.distributed as dist

    from slime_entropy.loss.config import LossConfig
    from slime_entropy.megatron.actor import MegatronActor
    from slime_entropy.megatron.config import MegatronConfig

    megatron = MegatronConfig.from_args(args, world_size=dist.get_world_size(), on_gpu=torch.cuda.is_available())
    return MegatronActor(megatron, LossConfig.from_args(args), num_total_steps=num_total_steps, hook_args=args)


def make_samples(num_samples: int, seed: int = 0, vocab: int = VOCAB):
    """Rollout samples of varied lengths: random prompt/response tokens, advantages, some masked-out tokens."""
    from slime_entropy.megatron.batching import TrainSample

    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_samples):
        prompt_len = int(torch.randint(3, 9, (1,), generator=g))
        response_len = int(torch.randint(4, 14, (1,), generator=g))
        tokens = torch.randint(0, vocab, (prompt_len + response_len,), generator=g)
        mask = torch.ones(response_len, dtype=torch.int64)
        if i % 3 == 0:
            mask[-2:] = 0
        advantages = torch.randn(response_len, generator=g)
        samples.append(TrainSample(tokens, response_len, mask, {"advantages": advantages}))
    return samples


def hf_reference_logits(hf_dir: Path, samples) -> list[torch.Tensor]:
    """transformers' fp32 logits of each sample alone: [total_length, vocab] per sample."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(s.tokens[None]).logits[0] for s in samples]


def init_megatron(tp: int = 1, pp: int = 1, ep: int = 1, seed: int = 1234) -> None:
    """Shim + parallel state + RNG tracker for a test worker (re-initialises if a layout already exists)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from slime_entropy.megatron import cpu_shim

    cpu_shim.apply()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep
    )
    model_parallel_cuda_manual_seed(seed)


def packed_logits(model, samples, pad_multiple: int = 1) -> torch.Tensor:
    """Run the GPTModel (not wrapped, PP=1) on the packed samples; returns [T_used, V/TP] without the padding."""
    from slime_entropy.megatron.batching import build_micro_batch
    from slime_entropy.megatron.train_step import forward_logits

    batch = build_micro_batch(samples, pad_multiple, torch.device("cpu"), fields=())
    model.eval()
    with torch.no_grad():
        logits = forward_logits(model, batch)
    return logits[0, : sum(batch["total_lengths"])]
