"""GPU checks of the Megatron actor in one NCCL process (run by test_gpu.py, or by hand on a GPU machine).

    python -m tests.megatron._gpu_smoke OUT_DIR

1. logits of a tiny Qwen3 and Qwen3-MoE (fp32, TP1) equal transformers' on the GPU within 1e-5, export bit-exact;
2. the actor (bf16 default on GPU, distributed optimizer, filter on) trains 3 steps with finite, changing losses;
3. save -> load into a fresh actor -> the next step's loss and weights equal the uninterrupted run's.
Prints one JSON line of results; exits non-zero on failure.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(out_dir: str) -> None:
    out = Path(out_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)

    from megatron.core import parallel_state

    from slime_entropy.megatron.architecture import HFArchitecture
    from slime_entropy.megatron.hf_bridge import iter_hf_weights, load_hf_weights
    from slime_entropy.megatron.model import ModelBuildConfig, build_gpt_model, transformer_engine_usable
    from tests.megatron.helpers import (
        build_actor,
        hf_reference_logits,
        init_megatron,
        make_args,
        make_samples,
        save_tiny_model,
    )

    results = {"te": transformer_engine_usable(), "device": torch.cuda.get_device_name()}
    samples = make_samples(3, seed=5)
    for kind in ("qwen3", "qwen3_moe"):
        hf_dir = save_tiny_model(kind, out / kind)
        reference = torch.cat(hf_reference_logits(hf_dir, samples))
        init_megatron()
        arch = HFArchitecture.from_hf_checkpoint(hf_dir)
        model = build_gpt_model(arch, ModelBuildConfig(make_vocab_size_divisible_by=1))
        load_hf_weights(model, arch, hf_dir)
        from slime_entropy.megatron.batching import build_micro_batch
        from slime_entropy.megatron.train_step import forward_logits

        batch = build_micro_batch(samples, 128, torch.device("cuda"), fields=())
        model.eval()
        with torch.no_grad():
            logits = forward_logits(model, batch)[0, : sum(batch["total_lengths"])].float().cpu()
        results[f"{kind}_logits_err"] = (logits - reference).abs().max().item()
        from safetensors.torch import load_file

        original = load_file(f"{hf_dir}/model.safetensors")
        exported = dict(iter_hf_weights(model, arch))
        results[f"{kind}_export_exact"] = set(original) == set(exported) and all(
            torch.equal(original[k], exported[k]) for k in original
        )
        parallel_state.destroy_model_parallel()

    hf_dir = str(out / "qwen3")
    common = ["--hf-checkpoint", hf_dir, "--global-batch-size", "4", "--lr", "1e-3", "--make-vocab-size-divisible-by",
              "1", "--high-entropy-token-filter", "--save", str(out / "ckpt"), "--micro-batch-size", "2"]  # fmt: skip
    actor = build_actor(make_args(common), num_total_steps=4)
    results["bf16"] = actor.megatron.build.bf16
    losses = []
    for step in range(3):
        batch_samples = make_samples(4, seed=50 + step)
        actor.compute_log_probs(batch_samples)
        losses.append(actor.train(step, batch_samples)[0]["loss"])
        if step == 1:
            actor.save(step)
    results["losses"] = losses
    weights = dict(iter_hf_weights(actor.model, actor.megatron.arch))
    parallel_state.destroy_model_parallel()

    resumed = build_actor(make_args(common + ["--load", str(out / "ckpt")]), num_total_steps=4)
    batch_samples = make_samples(4, seed=52)
    resumed.compute_log_probs(batch_samples)
    results["resumed_start"] = resumed.start_rollout_id
    results["resumed_loss"] = resumed.train(2, batch_samples)[0]["loss"]
    resumed_weights = dict(iter_hf_weights(resumed.model, resumed.megatron.arch))
    results["resume_weights_exact"] = all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    print(json.dumps(results), flush=True)

    ok = (
        (results["qwen3_logits_err"] < 1e-5 if not results["te"] else results["qwen3_logits_err"] < 2e-3)
        and results["qwen3_export_exact"]
        and results["qwen3_moe_export_exact"]
    )
    ok = ok and all(torch.isfinite(torch.tensor(losses))) and results["resumed_start"] == 2
    ok = ok and results["resumed_loss"] == losses[2] and results["resume_weights_exact"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1])
