"""HF <-> Megatron weights: logits equal transformers' (fp32, 1e-5) and the export round trip is bit-exact.

One gloo world of 2 ranks covers, for each model family, TP=2, TP=1 (x DP=2), and for Qwen3 PP=2, for Qwen3-MoE
EP=2; plus ``save_hf_checkpoint`` at TP=2 and the converter command HF -> torch_dist -> HF.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed import run_world
from tests.megatron.helpers import hf_reference_logits, make_samples, save_tiny_model

pytestmark = pytest.mark.multiprocess

KINDS = ("qwen3", "llama", "qwen2", "qwen3_moe")


def _pp_logits(model, samples):
    """Logits through megatron's pipeline schedule (forward only); the last stage returns them."""
    from slime_entropy.megatron.batching import build_micro_batch
    from slime_entropy.megatron.train_step import _run_schedule

    batch = build_micro_batch(samples, 1, torch.device("cpu"), fields=())
    out = []

    def loss_func_for(b, n):
        def loss_func(logits):
            out.append(logits.detach().clone())
            return logits.new_zeros(()), torch.ones((), dtype=torch.int), {}

        return loss_func

    model.eval()
    with torch.no_grad():
        _run_schedule(model, [batch], loss_func_for, forward_only=True)
    return out[0][0, : sum(batch["total_lengths"])] if out else None


def _worker(rank, world_size, dirs, samples, hf_out):
    from megatron.core import parallel_state

    from slime_entropy.megatron.architecture import HFArchitecture
    from slime_entropy.megatron.hf_bridge import iter_hf_weights, load_hf_weights, save_hf_checkpoint
    from slime_entropy.megatron.model import ModelBuildConfig, build_gpt_model
    from tests.megatron.helpers import init_megatron, packed_logits

    results = {}
    for kind, hf_dir in dirs.items():
        arch = HFArchitecture.from_hf_checkpoint(hf_dir)
        layouts = [("tp2", dict(tp=2)), ("tp1", dict(tp=1))]
        if kind == "qwen3":
            layouts.append(("pp2", dict(pp=2)))
        if kind == "qwen3_moe":
            layouts.append(("ep2", dict(ep=2)))
        for name, layout in layouts:
            init_megatron(**layout)
            build = ModelBuildConfig(
                tensor_model_parallel_size=layout.get("tp", 1),
                pipeline_model_parallel_size=layout.get("pp", 1),
                expert_model_parallel_size=layout.get("ep", 1),
                make_vocab_size_divisible_by=1,
            )
            model = build_gpt_model(arch, build)
            load_hf_weights(model, arch, hf_dir)
            logits = _pp_logits(model, samples) if name == "pp2" else packed_logits(model, samples)
            exported = dict(iter_hf_weights(model, arch))
            results[(kind, name)] = {"logits": logits, "exported": exported}
            if kind == "qwen3" and name == "tp2":
                save_hf_checkpoint(model, arch, hf_out, hf_dir)
            parallel_state.destroy_model_parallel()
    return results


def test_logits_match_transformers_and_export_is_bit_exact(tmp_path):
    dirs = {kind: str(save_tiny_model(kind, tmp_path / kind, seed=i)) for i, kind in enumerate(KINDS)}
    samples = make_samples(3, seed=5)
    hf_out = str(tmp_path / "exported_tp2")
    results = run_world(_worker, 2, args=(dirs, samples, hf_out), timeout=400)
    for kind, hf_dir in dirs.items():
        reference = torch.cat(hf_reference_logits(hf_dir, samples))
        original = load_file(f"{hf_dir}/model.safetensors")
        layouts = {name for (k, name) in results[0] if k == kind}
        assert {"tp1", "tp2"} <= layouts
        for name in sorted(layouts):
            per_rank = [r[(kind, name)] for r in results]
            if name == "tp2":
                logits = torch.cat([r["logits"] for r in per_rank], dim=-1)  # vocab shards
            elif name == "pp2":
                logits = per_rank[1]["logits"]  # last stage
                assert per_rank[0]["logits"] is None
            else:
                logits = per_rank[0]["logits"]
                torch.testing.assert_close(per_rank[1]["logits"], logits, rtol=0, atol=0)
            assert logits.shape == reference.shape, (kind, name)
            err = (logits - reference).abs().max().item()
            assert err < 1e-5, f"{kind} {name}: max |megatron - transformers| = {err}"
            exported = {}
            for r in per_rank:  # PP / EP ranks each export their own part
                exported.update(r["exported"])
            assert set(exported) == set(original), (kind, name, set(exported) ^ set(original))
            for key, tensor in original.items():
                assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), (kind, name, key)

    written = load_file(f"{hf_out}/model.safetensors")
    original = load_file(f"{dirs['qwen3']}/model.safetensors")
    assert set(written) == set(original)
    assert all(torch.equal(written[k], original[k]) for k in original)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(hf_out, dtype=torch.float32)
    assert type(reloaded).__name__ == "Qwen3ForCausalLM"


def test_converter_commands_round_trip(tmp_path):
    hf_dir = save_tiny_model("qwen3_moe", tmp_path / "hf", seed=3)
    dist_dir, back = tmp_path / "dist", tmp_path / "back"
    common = [sys.executable, "-m", "slime_entropy.megatron.convert"]
    model_args = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--group-query-attention",
                  "--num-query-groups", "2", "--kv-channels", "16", "--qk-layernorm", "--swiglu",
                  "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--normalization", "RMSNorm",
                  "--num-experts", "4", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
                  "--make-vocab-size-divisible-by", "1"]  # fmt: skip
    subprocess.run(
        common + ["hf-to-torch-dist", "--hf-checkpoint", str(hf_dir), "--save", str(dist_dir)] + model_args,
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (dist_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    subprocess.run(
        common + ["torch-dist-to-hf", "--input-dir", str(dist_dir), "--output-dir", str(back), "--origin-hf-dir",
                  str(hf_dir), "--make-vocab-size-divisible-by", "1"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    original, converted = load_file(f"{hf_dir}/model.safetensors"), load_file(f"{back}/model.safetensors")
    assert set(original) == set(converted)
    assert all(torch.equal(original[k], converted[k]) for k in original)
    assert (back / "config.json").read_text() == (hf_dir / "config.json").read_text()

    wrong = subprocess.run(
        common + ["hf-to-torch-dist", "--hf-checkpoint", str(hf_dir), "--save", str(tmp_path / "x"),
                  "--num-layers", "3", "--hidden-size", "64"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "--num-layers 3 but" in wrong.stderr and "has 2" in wrong.stderr and "pass --num-layers 2" in wrong.stderr
