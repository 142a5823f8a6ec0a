"""The CPU shim: its assumptions about megatron-core hold, and what it redirects behaves.

``test_assumptions_about_megatron_core`` is the upgrade guard: it fails, listing what changed, when a new
megatron-core uses a CUDA API on the training path that the shim has not reviewed, or moves a function it patches.
The behavioural checks run in a spawned process (the shim changes process-wide state).
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_world

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shim is a no-op with CUDA")


def test_assumptions_about_megatron_core():
    from slime_entropy.megatron import cpu_shim

    broken = cpu_shim.verify_assumptions()
    assert broken == [], "megatron-core changed under the CPU shim:\n" + "\n".join(broken)
    used = cpu_shim.cuda_api_used_on_training_path()
    assert "current_device" in used and "get_rng_state" in used  # the scan really reads megatron's sources
    unreviewed = sorted(set(used) - set(cpu_shim.CUDA_API_ON_TRAINING_PATH))
    assert unreviewed == [], f"torch.cuda APIs the shim has not reviewed: {unreviewed}"


def _behaviour(rank, world_size):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    from slime_entropy.megatron import cpu_shim

    before = {}
    for name, call in (("current_device", torch.cuda.current_device), ("get_rng_state", torch.cuda.get_rng_state)):
        try:
            call()
            before[name] = "ok"
        except (AssertionError, RuntimeError):
            before[name] = "raises"
    assert cpu_shim.apply() is True and cpu_shim.apply() is True  # idempotent
    out = {"before": before, "applied": cpu_shim.is_applied()}
    out["zeros_device"] = str(torch.zeros(2, device="cuda").device)
    out["tensor_device"] = str(torch.tensor([1.0], device=torch.cuda.current_device()).device)
    out["to_cuda"] = str(torch.ones(1).to("cuda").device) + "," + str(torch.ones(1).cuda().device)
    out["type_names"] = [
        torch.ones(1).type(),
        torch.ones(1, dtype=torch.bfloat16).type(),
        torch.ones(1).type(torch.int64).dtype,
    ]
    out["stream_equal"] = torch.cuda.Stream() == torch.cuda.current_stream()
    with torch.cuda.stream(torch.cuda.Stream()):
        out["in_stream_ctx"] = True

    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(123)
    tracker = get_cuda_rng_tracker()
    outside_before = torch.rand(3)
    with tracker.fork():
        forked_a = torch.rand(3)
    with tracker.fork():
        forked_b = torch.rand(3)
    torch.manual_seed(0)
    model_parallel_cuda_manual_seed(123)
    with get_cuda_rng_tracker().fork():
        forked_again = torch.rand(3)
    out["fork_advances"] = not torch.equal(forked_a, forked_b)
    out["fork_reproducible"] = torch.equal(forked_a, forked_again)
    out["fork_isolated"] = not torch.equal(outside_before, forked_a)
    parallel_state.destroy_model_parallel()
    return out


@pytest.mark.multiprocess
def test_shim_redirects_cuda_calls_to_the_cpu():
    out = run_world(_behaviour, 1, timeout=120)[0]
    assert out["before"] == {"current_device": "raises", "get_rng_state": "raises"}  # it only replaces failures
    assert out["applied"]
    assert out["zeros_device"] == "cpu" and out["tensor_device"] == "cpu" and out["to_cuda"] == "cpu,cpu"
    assert out["type_names"][:2] == ["torch.cuda.FloatTensor", "torch.cuda.BFloat16Tensor"]
    assert out["type_names"][2] == torch.int64  # Tensor.type(dtype) still converts
    assert out["stream_equal"] and out["in_stream_ctx"]
    assert out["fork_advances"] and out["fork_reproducible"] and out["fork_isolated"]
