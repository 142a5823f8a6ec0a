"""The loss on a CUDA device (Triton kernel, on-device selection) equals the CPU eager path and the float64
reference. Skipped without a GPU."""

import pytest
import torch

from slime_entropy.loss.config import LossConfig
from slime_entropy.loss import loss_function

from .harness import build_rank_input, make_args, make_samples
from .reference import reference_step

pytestmark = pytest.mark.gpu

CASES = [
    "--high-entropy-token-filter --entropy-percentile 0.2",
    "--high-entropy-token-filter --entropy-percentile 0.3 --advantage-estimator gspo --entropy-coef 0.01",
    "--high-entropy-token-filter --calculate-per-token-loss --use-kl-loss --kl-loss-coef 0.1 --kl-loss-type k3",
    "--use-tis --use-kl-loss --kl-loss-coef 0.1",
]


def _to(batch, device):
    return {k: [t.to(device) if torch.is_tensor(t) else t for t in v] for k, v in batch.items()}


@pytest.mark.parametrize("cli", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_loss_matches_cpu_and_reference(cli, dtype):
    samples = make_samples(21, 8, 256, min_len=40, max_len=200, padded_columns=8)
    common = "--rollout-temperature 0.8 --eps-clip 0.2 --eps-clip-high 0.28"
    cpu_args = make_args(f"{common} {cli} --logprob-entropy-backend eager", global_batch_size=8, vocab_size=248)
    gpu_args = make_args(f"{common} {cli}", global_batch_size=8, vocab_size=248)
    rank_input = build_rank_input(samples, list(range(8)), 0, 1, 0, 1)
    logits_cpu = rank_input.logits.detach().to(dtype).float().requires_grad_(True)
    loss_cpu, _, rec_cpu = loss_function(cpu_args, rank_input.batch, 1, logits_cpu)
    loss_cpu.backward()

    logits_gpu = rank_input.logits.detach().to(dtype).cuda().requires_grad_(True)
    loss_gpu, _, rec_gpu = loss_function(gpu_args, _to(rank_input.batch, "cuda"), 1, logits_gpu)
    loss_gpu.backward()
    assert rec_gpu["keys"] == rec_cpu["keys"]
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu.detach(), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(rec_gpu["values"].cpu(), rec_cpu["values"], rtol=2e-5, atol=1e-6)
    grad_gpu = logits_gpu.grad.float().cpu()
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(grad_gpu, logits_cpu.grad, **tol)

    if dtype == torch.float32:
        ref = reference_step(samples, LossConfig.from_args(gpu_args), [list(range(8))], global_batch_size=8)
        per_token = gpu_args.calculate_per_token_loss
        token_count = float(sum(k.sum() for k in ref["kept"])) if per_token and "filter" in cli else None
        if not per_token:
            assert float(loss_gpu) == pytest.approx(ref["loss"], rel=1e-5)
        elif token_count:
            assert float(loss_gpu) == pytest.approx(ref["loss"] * token_count, rel=1e-5)
