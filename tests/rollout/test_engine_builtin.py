"""The built-in engine over HTTP: SGLang's request/response fields, log-probs, weight updates (disk and broadcast)."""

import asyncio

import httpx
import pytest
import torch

from slime_entropy.rollout.client import EngineRequestError
from slime_entropy.rollout.engine_process import find_free_port
from slime_entropy.rollout.manager import apply_generate_output
from slime_entropy.rollout.sample import Sample, SampleStatus
from slime_entropy.rollout.weight_sync import WeightBroadcaster

PROMPTS = ["What is 2+2?", "Count: 1 2 3", "x", "The answer is \\boxed"]


def _payload(ids, **params):
    return {
        "input_ids": ids,
        "return_logprob": True,
        "sampling_params": {"max_new_tokens": 12, "temperature": 1.0, "no_stop_trim": True, **params},
    }


def _prompt_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _generate_all(engines, payloads):
    async def go():
        return await asyncio.gather(*(engines.pool.generate(p) for p in payloads))

    return engines.run(go())


def _logprobs(model_dir, ids, temperature=1.0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double() / temperature, dim=-1)


def test_generate_returns_sglang_fields_and_logprobs_match_the_model(builtin_engines, tokenizer, tiny_model_dir):
    payloads = [_payload(_prompt_ids(tokenizer, p), temperature=0.8) for p in PROMPTS * 3]
    outputs = _generate_all(builtin_engines, payloads)
    assert {s.num_failures for s in builtin_engines.pool.slots} == {0}
    for payload, out in zip(payloads, outputs, strict=True):
        meta = out["meta_info"]
        assert set(meta) >= {
            "id",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "weight_version",
            "output_token_logprobs",
            "e2e_latency",
        }
        ids = [t[1] for t in meta["output_token_logprobs"]]
        assert out["output_ids"] == ids and meta["completion_tokens"] == len(ids) >= 1
        assert meta["prompt_tokens"] == len(payload["input_ids"])
        assert out["text"] == tokenizer.decode(ids, skip_special_tokens=True)  # SGLang's default
        sample = Sample(index=0, group_index=0, prompt="", tokens=list(payload["input_ids"]))
        apply_generate_output(sample, out)
        assert sample.tokens == payload["input_ids"] + ids and sample.response_length == len(ids)
        assert sample.status == (SampleStatus.TRUNCATED if len(ids) == 12 else SampleStatus.COMPLETED)
    # Recompute with the model for a few responses (one unpadded forward, float64 softmax of logits / T).
    for payload, out in list(zip(payloads, outputs, strict=True))[:4]:
        triples = out["meta_info"]["output_token_logprobs"]
        full = payload["input_ids"] + [t[1] for t in triples]
        ref = _logprobs(tiny_model_dir, full, temperature=0.8)
        n = len(payload["input_ids"])
        assert [t[0] for t in triples] == pytest.approx(
            [ref[n - 1 + i, t[1]].item() for i, t in enumerate(triples)], abs=1e-4
        )


def test_batch_requests_text_input_and_bad_requests(builtin_engines, tokenizer):
    url = builtin_engines.urls[0]
    batch = httpx.post(
        f"{url}/generate",
        json={
            "input_ids": [[1, 2, 3], [4, 5]],
            "return_logprob": False,
            "sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3}],
        },
        timeout=60,
    ).json()
    assert [len(o["output_ids"]) for o in batch] == [2, 3] and "output_token_logprobs" not in batch[0]["meta_info"]
    text = httpx.post(
        f"{url}/generate", json={"text": "hello", "sampling_params": {"max_new_tokens": 2}}, timeout=60
    ).json()
    assert text["meta_info"]["prompt_tokens"] == len(_prompt_ids(tokenizer, "hello"))
    for body, message in [
        ({"input_ids": [1], "sampling_params": {"frequency_penalty": 0.5}}, "frequency_penalty=0.5 is not supported"),
        ({"input_ids": [1], "sampling_params": {"beam_width": 2}}, "unsupported sampling_params ['beam_width']"),
        ({"input_ids": [1], "stream": True}, "stream=true is not supported"),
        ({"input_ids": [100000]}, "input_ids must lie in"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": 5000}}, "exceeds the context length"),
        ({"sampling_params": {}}, "give input_ids or text"),
    ]:
        response = httpx.post(f"{url}/generate", json=body, timeout=30)
        assert response.status_code == 400 and message in response.json()["error"]["message"], body
    with pytest.raises(EngineRequestError, match="HTTP 400"):
        builtin_engines.run(builtin_engines.pool.generate({"input_ids": [1], "sampling_params": {"n": 2}}))


def test_control_endpoints(builtin_engines):
    url = builtin_engines.urls[1]
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/health_generate", timeout=60).status_code == 200
    assert httpx.post(f"{url}/flush_cache", timeout=10).status_code == 200
    info = httpx.get(f"{url}/get_model_info", timeout=10).json()
    assert info["is_generation"] is True and info["model_path"] == str(builtin_engines.model_dir)
    assert httpx.get(f"{url}/get_server_info", timeout=10).json()["max_batch_size"] == 16


def test_memory_release_and_resume_are_enforced_like_sglang(builtin_engines, tokenizer):
    url = builtin_engines.urls[0]
    body = {"input_ids": _prompt_ids(tokenizer, "x"), "sampling_params": {"max_new_tokens": 2}}
    assert httpx.post(f"{url}/release_memory_occupation", json={}, timeout=10).json()["success"]
    try:
        refused = httpx.post(f"{url}/generate", json=body, timeout=30)
        assert refused.status_code == 400 and "released" in refused.json()["error"]["message"]
        update = httpx.post(f"{url}/update_weights_from_disk", json={"model_path": "/nowhere"}, timeout=30)
        assert update.status_code == 400 and "weights are released" in update.json()["message"]
        resumed = httpx.post(f"{url}/resume_memory_occupation", json={"tags": ["weights"]}, timeout=10)
        assert resumed.json()["success"]
        assert httpx.post(f"{url}/generate", json=body, timeout=30).status_code == 400  # the KV cache is still out
        bad = httpx.post(f"{url}/resume_memory_occupation", json={"tags": ["optimizer"]}, timeout=10)
        assert bad.status_code == 400 and "unknown memory tags" in bad.json()["message"]
    finally:
        httpx.post(f"{url}/resume_memory_occupation", json={}, timeout=10)
    assert httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 200


def test_sampling_seed_makes_a_request_reproducible(builtin_engines, tokenizer):
    ids = _prompt_ids(tokenizer, "Count: 1 2 3")
    seeded = [_payload(ids, max_new_tokens=16, sampling_seed=11) for _ in range(3)]
    outputs = _generate_all(builtin_engines, seeded)  # concurrent: batched together and spread over both engines
    assert len({tuple(o["output_ids"]) for o in outputs}) == 1
    other = _generate_all(builtin_engines, [_payload(ids, max_new_tokens=16, sampling_seed=12)])[0]
    assert other["output_ids"] != outputs[0]["output_ids"]


def test_abort_request(builtin_engines, tokenizer):
    url = builtin_engines.urls[0]

    async def go():
        async with httpx.AsyncClient(timeout=120) as http:
            await http.post(f"{url}/pause_generation")  # hold the request in the queue so the abort lands first
            pending = asyncio.ensure_future(
                http.post(
                    f"{url}/generate",
                    json={
                        "input_ids": [1, 2, 3],
                        "rid": "to-abort",
                        "return_logprob": True,
                        "sampling_params": {"max_new_tokens": 64, "ignore_eos": True},
                    },
                )
            )
            await asyncio.sleep(0.5)
            aborted = (await http.post(f"{url}/abort_request", json={"rid": "to-abort"})).json()
            await http.post(f"{url}/continue_generation")
            return aborted, (await pending).json()

    aborted, out = asyncio.run(go())
    assert aborted["num_aborted"] == 1
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["output_ids"] == []


def _greedy_outputs(engines, tokenizer):
    payloads = [_payload(_prompt_ids(tokenizer, p), temperature=0.0, max_new_tokens=8) for p in PROMPTS]
    outputs = _generate_all(engines, payloads * 2)  # both engines serve some of them
    return [o["output_ids"] for o in outputs], {o["meta_info"]["weight_version"] for o in outputs}


def test_disk_weight_update_changes_outputs_and_round_trips(
    builtin_engines, tokenizer, tiny_model_dir, tiny_model_dir_b
):
    engines = builtin_engines
    before, _ = _greedy_outputs(engines, tokenizer)
    assert before[: len(PROMPTS)] == before[len(PROMPTS) :]  # greedy: both engines agree
    try:
        engines.run(engines.pool.update_weights_from_disk(str(tiny_model_dir_b), weight_version="b-1"))
        after, versions = _greedy_outputs(engines, tokenizer)
        assert versions == {"b-1"} and after != before
        # The new outputs are model B's greedy continuations.
        ids = _prompt_ids(tokenizer, PROMPTS[0])
        ref = _logprobs(tiny_model_dir_b, ids + after[0])
        assert after[0] == [int(ref[len(ids) - 1 + i].argmax()) for i in range(len(after[0]))]
        # A checkpoint that does not fit is refused and leaves the served weights alone.
        with pytest.raises(EngineRequestError, match="no .safetensors files"):
            engines.run(engines.pool.update_weights_from_disk(str(tiny_model_dir_b / "nope"), weight_version="x"))
        assert _greedy_outputs(engines, tokenizer) == (after, {"b-1"})
    finally:
        engines.run(engines.pool.update_weights_from_disk(str(tiny_model_dir), weight_version="a-2"))
    assert _greedy_outputs(engines, tokenizer) == (before, {"a-2"})


def test_broadcast_weight_update_reaches_every_engine(builtin_engines, tokenizer, tiny_model_dir, tiny_model_dir_b):
    """The NCCL-path protocol (/init_weights_update_group + /update_weights_from_distributed), run over gloo."""
    from safetensors.torch import load_file

    engines = builtin_engines
    before, _ = _greedy_outputs(engines, tokenizer)
    weights_b = load_file(str(tiny_model_dir_b / "model.safetensors"))
    weights_a = load_file(str(tiny_model_dir / "model.safetensors"))
    broadcaster = WeightBroadcaster(
        engines.pool,
        master_address="127.0.0.1",
        master_port=find_free_port(),
        backend="gloo",
        group_name="test_weight_group",
        timeout_s=60,
    )
    assert [b["rank_offset"] for b in broadcaster.init_group_bodies()] == [1, 2]
    assert broadcaster.world_size == 3
    engines.run(broadcaster.init_group())
    try:
        names = sorted(weights_b)
        half = len(names) // 2  # two buckets, as a trainer would send them
        engines.run(broadcaster.update([(n, weights_b[n]) for n in names[:half]], weight_version="nccl-1"))
        engines.run(broadcaster.update([(n, weights_b[n]) for n in names[half:]], weight_version="nccl-1"))
        via_broadcast, versions = _greedy_outputs(engines, tokenizer)
        assert versions == {"nccl-1"} and via_broadcast != before
        engines.run(engines.pool.update_weights_from_disk(str(tiny_model_dir_b), weight_version="disk-b"))
        assert _greedy_outputs(engines, tokenizer)[0] == via_broadcast  # the same weights as loading B from disk
        body = broadcaster.update_body(["w"], ["bfloat16"], [(2, 3)], weight_version="7", flush_cache=True)
        assert body == {
            "names": ["w"],
            "dtypes": ["bfloat16"],
            "shapes": [[2, 3]],
            "group_name": "test_weight_group",
            "flush_cache": True,
            "weight_version": "7",
        }
    finally:
        engines.run(broadcaster.update(sorted(weights_a.items()), weight_version="a-3"))
    assert _greedy_outputs(engines, tokenizer) == (before, {"a-3"})


def test_engine_restarted_after_a_broadcast_is_kept_out_until_the_next_update(
    builtin_engines, tokenizer, tiny_model_dir
):
    import os
    import signal

    from safetensors.torch import load_file

    engines = builtin_engines
    pool = engines.pool
    before, _ = _greedy_outputs(engines, tokenizer)
    weights_a = load_file(str(tiny_model_dir / "model.safetensors"))
    broadcaster = WeightBroadcaster(
        pool,
        master_address="127.0.0.1",
        master_port=find_free_port(),
        backend="gloo",
        group_name="restart_group",
        timeout_s=60,
    )
    engines.run(broadcaster.init_group())
    engines.run(broadcaster.update(sorted(weights_a.items()), weight_version="bc-a"))
    victim = pool.slots[1]
    os.kill(victim.process.pid, signal.SIGKILL)

    async def wait_for_restart():
        monitor = asyncio.ensure_future(pool.monitor(0.2))
        try:
            while victim.num_restarts == 0 or not victim.available:
                await asyncio.sleep(0.1)
        finally:
            monitor.cancel()

    engines.run(wait_for_restart(), timeout=240)
    assert victim.stale and not victim.routable  # it would serve the initial checkpoint, not the broadcast weights
    served_before = httpx.get(f"{victim.url}/get_server_info", timeout=10).json()["num_requests"]
    outputs, versions = _greedy_outputs(engines, tokenizer)
    assert outputs == before and versions == {"bc-a"}  # all served by the engine that has the weights
    assert httpx.get(f"{victim.url}/get_server_info", timeout=10).json()["num_requests"] == served_before
    with pytest.raises(RuntimeError, match="an engine was restarted"):
        engines.run(broadcaster.update(sorted(weights_a.items()), weight_version="bc-a2"))
    engines.run(pool.update_weights_from_disk(str(tiny_model_dir), weight_version="a-4"))
    assert victim.routable
    assert _greedy_outputs(engines, tokenizer) == (before, {"a-4"})
