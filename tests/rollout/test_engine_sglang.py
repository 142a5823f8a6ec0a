"""SGLang engines: placement and launch command lines (no GPU needed); a smoke run when SGLang and a GPU exist."""

import importlib.util
import sys

import pytest

from slime_entropy.rollout.client import EnginePool
from slime_entropy.rollout.config import EngineConfig
from slime_entropy.rollout.engine_sglang import plan_sglang_engines, sglang_server_command


def test_engines_are_placed_on_consecutive_gpus():
    plan = plan_sglang_engines(num_engines=3, num_gpus_per_engine=2, num_gpus_per_node=8)
    assert [(p.engine_index, p.base_gpu_id, p.tp_size) for p in plan] == [(0, 0, 2), (1, 2, 2), (2, 4, 2)]
    with pytest.raises(ValueError, match="5 engines x 2 GPUs = 10 GPUs exceed --num-gpus-per-node 8"):
        plan_sglang_engines(num_engines=5, num_gpus_per_engine=2, num_gpus_per_node=8)


def test_engines_use_the_given_gpu_ids():
    # e.g. the rollout GPUs 4-7 of a node whose GPUs 0-3 train (disaggregated placement)
    plan = plan_sglang_engines(num_engines=2, num_gpus_per_engine=2, num_gpus_per_node=8, gpu_ids=(4, 5, 6, 7))
    assert [(p.base_gpu_id, p.tp_size) for p in plan] == [(4, 2), (6, 2)]
    with pytest.raises(ValueError, match="not consecutive"):
        plan_sglang_engines(num_engines=1, num_gpus_per_engine=2, num_gpus_per_node=8, gpu_ids=(1, 3))
    with pytest.raises(ValueError, match=r"exceed the engines' GPUs \[4, 5\]"):
        plan_sglang_engines(num_engines=2, num_gpus_per_engine=2, num_gpus_per_node=8, gpu_ids=(4, 5))


def test_launch_command_line():
    placement = plan_sglang_engines(num_engines=2, num_gpus_per_engine=4, num_gpus_per_node=8)[1]
    argv = sglang_server_command(
        model_path="/ckpt/Qwen3-32B",
        host="127.0.0.1",
        port=30001,
        placement=placement,
        nccl_port=40001,
        seed=42,
        options=(("mem-fraction-static", 0.7), ("cuda-graph-bs-decode", (1, 2, 4, 8)), ("enable-memory-saver", True)),
    )
    assert argv == [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/ckpt/Qwen3-32B",
        "--host",
        "127.0.0.1",
        "--port",
        "30001",
        "--tp-size",
        "4",
        "--base-gpu-id",
        "4",
        "--nccl-port",
        "40001",
        "--random-seed",
        "43",
        "--mem-fraction-static",
        "0.7",
        "--cuda-graph-bs-decode",
        "1",
        "2",
        "4",
        "8",
        "--enable-memory-saver",
    ]
    with pytest.raises(ValueError, match="--sglang-tp-size is set by the launcher"):
        sglang_server_command(
            model_path="m", host="h", port=1, placement=placement, nccl_port=2, seed=0, options=(("tp-size", 2),)
        )


def test_pool_builds_one_sglang_server_per_engine_without_starting_them(tmp_path):
    config = EngineConfig(
        backend="sglang",
        hf_checkpoint="/ckpt",
        num_engines=2,
        num_gpus_per_engine=2,
        num_gpus_per_node=4,
        sglang_options=(("log-level", "warning"),),
    )
    pool = EnginePool.from_config(config, tmp_path)
    argvs = [slot.process.command_for_port(31000 + slot.index) for slot in pool.slots]
    assert [a[a.index("--base-gpu-id") + 1] for a in argvs] == ["0", "2"]
    assert [a[a.index("--port") + 1] for a in argvs] == ["31000", "31001"]
    assert all(a[a.index("--host") + 1] == "127.0.0.1" and a[-2:] == ["--log-level", "warning"] for a in argvs)
    assert all(slot.process.proc is None for slot in pool.slots)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="needs SGLang")
def test_smoke_against_real_sglang(tmp_path, tiny_model_dir):
    """One real SGLang engine: generate with log-probs through the same client, then a disk weight update."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    config = EngineConfig(
        backend="sglang",
        hf_checkpoint=str(tiny_model_dir),
        num_engines=1,
        num_gpus_per_node=torch.cuda.device_count(),
        startup_timeout=600,
        sglang_options=(
            ("mem-fraction-static", 0.3),
            ("disable-cuda-graph", True),
            ("attention-backend", "torch_native"),  # the tiny model's head_dim 16 is not a fused-kernel size
            ("dtype", "float32"),
        ),
    )
    pool = EnginePool.from_config(config, tmp_path)

    async def scenario():
        await pool.start()
        try:
            payload = {
                "input_ids": [1, 2, 3, 4],
                "return_logprob": True,
                "sampling_params": {"max_new_tokens": 8, "temperature": 1.0, "no_stop_trim": True},
            }
            out = await pool.generate(payload)
            await pool.update_weights_from_disk(str(tiny_model_dir), weight_version="2")
            return out
        finally:
            await pool.close()

    out = asyncio.run(scenario())
    triples = out["meta_info"]["output_token_logprobs"]
    assert 1 <= len(triples) <= 8
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = [1, 2, 3, 4] + [t[1] for t in triples]
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits.float().log_softmax(-1)[0]
    ref = [logprobs[3 + i, t[1]].item() for i, t in enumerate(triples)]
    assert max(abs(a - t[0]) for a, t in zip(ref, triples, strict=True)) < 5e-2
