"""A small end-to-end look at the filter: one micro-batch through slime's loss contract on a tensor-parallel gloo
world, with the filter off and at several rho, on a tiny random language model.

    python -m slime_entropy.demo [--tp 2] [--rho 1.0 0.5 0.2] [--steps 20]

Each rank holds one vocabulary shard of the output layer (Megatron's vocab-parallel layout), entropies and
log-probs come from the fused vocab-parallel kernel, the threshold from the exact radix select, and the metrics
are reduced exactly as slime reduces them. After the table, a few Adam steps on one fixed batch show how much of
the batch each setting trains on, and how the policy's entropy moves.
"""

from __future__ import annotations

import argparse
import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import collectives
from .loss.arguments import add_arguments, add_slime_loss_arguments
from .rollout.arguments import add_rollout_temperature_argument

VOCAB, HIDDEN = 512, 64


def _loss_args(cli: str, global_batch_size: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_slime_loss_arguments(parser)
    add_rollout_temperature_argument(parser)
    parser.add_argument("--global-batch-size", type=int)
    parser.add_argument("--vocab-size", type=int, default=None)
    return parser.parse_args([*cli.split(), "--global-batch-size", str(global_batch_size)])


class TinyShardedLM(torch.nn.Module):
    """Embedding + MLP + a vocab-parallel output layer (this rank's rows of the [V, H] output matrix)."""

    def __init__(self, tp_rank: int, tp_size: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=g) * 0.5)
        self.mix = torch.nn.Parameter(torch.randn(HIDDEN, HIDDEN, generator=g) / math.sqrt(HIDDEN))
        full_out = torch.randn(VOCAB, HIDDEN, generator=g) * 0.4
        shard = VOCAB // tp_size
        self.out = torch.nn.Parameter(full_out[tp_rank * shard : (tp_rank + 1) * shard].clone())
        # a per-position sharpness makes some positions confident and others not, as in real chains of thought
        self.sharpness = torch.rand(4096, 1, generator=g) ** 3 * 12 + 0.2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed[tokens]
        h = h + torch.tanh(h @ self.mix)
        h = h * self.sharpness[: tokens.shape[0]]
        return (h @ self.out.t()).unsqueeze(0)  # [1, T, V/TP]


def _batch(num_samples: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    unconcat, totals, responses, masks, advantages = [], [], [], [], []
    for i in range(num_samples):
        prompt = int(torch.randint(4, 12, (1,), generator=g))
        response = int(torch.randint(24, 64, (1,), generator=g))
        unconcat.append(torch.randint(0, VOCAB, (prompt + response,), generator=g))
        totals.append(prompt + response)
        responses.append(response)
        masks.append(torch.ones(response, dtype=torch.long))
        # GRPO-style: one advantage per sample, groups of 4 normalised around 0
        advantages.append(torch.full((response,), float(1.0 if i % 4 < 2 else -1.0)))
    return {
        "unconcat_tokens": unconcat,
        "tokens": torch.cat(unconcat).unsqueeze(0),
        "total_lengths": totals,
        "response_lengths": responses,
        "loss_masks": masks,
        "advantages": advantages,
    }


def _reduce(record, cp_size: int = 1) -> dict[str, float]:
    values = record["values"].clone()
    # TP ranks report identical values; the demo world is one data-parallel replica
    collectives.all_reduce_sum_(values, dist.group.WORLD)
    values /= dist.get_world_size()
    return {k: float(v) * cp_size / float(values[0]) for k, v in zip(record["keys"], values[1:], strict=False)}


def _worker(rank: int, world: int, port: int, rhos: list[float], steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from megatron.core import parallel_state as mpu

    from .loss import get_log_probs_and_entropy, loss_function

    mpu.initialize_model_parallel(tensor_model_parallel_size=world)
    batch = _batch(16)
    settings = [("all tokens", "")] + [
        (f"top {rho:.0%}", f"--high-entropy-token-filter --entropy-percentile {rho}") for rho in rhos
    ]
    rows = []
    for label, cli in settings:
        args = _loss_args(f"--rollout-temperature 1.0 --eps-clip 0.2 --eps-clip-high 0.28 {cli}", global_batch_size=16)
        model = TinyShardedLM(mpu.get_tensor_model_parallel_rank(), world)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        with torch.no_grad():
            old = get_log_probs_and_entropy(
                model(batch["tokens"][0]),
                args=args,
                unconcat_tokens=batch["unconcat_tokens"],
                total_lengths=batch["total_lengths"],
                response_lengths=batch["response_lengths"],
                with_entropy=True,
            )
        batch["log_probs"] = old["log_probs"]
        start_entropy = torch.cat(old["entropy"]).mean().item()
        first = None
        for _ in range(steps):
            optimizer.zero_grad()
            logits = model(batch["tokens"][0])
            loss, _, record = loss_function(args, batch, 1, logits)
            loss.backward()
            optimizer.step()
            metrics = _reduce(record)
            first = first or metrics
        with torch.no_grad():
            after = get_log_probs_and_entropy(
                model(batch["tokens"][0]),
                args=args,
                unconcat_tokens=batch["unconcat_tokens"],
                total_lengths=batch["total_lengths"],
                response_lengths=batch["response_lengths"],
                with_entropy=True,
            )
        end_entropy = torch.cat(after["entropy"]).mean().item()
        new_logp = torch.cat(after["log_probs"])
        gain = float((new_logp - torch.cat(old["log_probs"])).mul(torch.cat(batch["advantages"])).mean())
        rows.append((label, first, start_entropy, end_entropy, gain))
    if rank == 0:
        header = (
            f"{'setting':<12}{'kept ratio':>11}{'threshold':>11}{'H (all)':>9}{'H (kept)':>10}"
            f"{'H after':>10}{'A*dlogp':>10}"
        )
        print(
            f"\nslime_entropy demo: 16 responses, {sum(batch['response_lengths'])} response tokens, vocab {VOCAB} "
            f"split over TP={world} gloo ranks, {steps} Adam steps per setting\n"
        )
        print(header)
        print("-" * len(header))
        for label, m, h0, h1, gain in rows:
            filtered = "entropy_token_ratio" in m
            ratio = f"{m['entropy_token_ratio']:.3f}" if filtered else "1"
            tau = f"{m['entropy_threshold']:.3f}" if filtered else "-"
            kept_mean = m["entropy_kept_mean"] if filtered else h0
            print(f"{label:<12}{ratio:>11}{tau:>11}{h0:>9.3f}{kept_mean:>10.3f}{h1:>10.3f}{gain:>10.4f}")
        print(
            "\nkept ratio >= rho (ties are kept). H: mean token entropy (nats) before training, over all valid tokens "
            "and over the kept ones;\nH after: after the steps; A*dlogp: mean advantage-weighted log-prob change "
            "(> 0: the policy moved toward positive-advantage tokens)."
        )
    mpu.destroy_model_parallel()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m slime_entropy.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tp", type=int, default=2, help=f"tensor-parallel ranks (gloo processes); must divide {VOCAB}"
    )
    parser.add_argument("--rho", type=float, nargs="+", default=[1.0, 0.5, 0.2], help="keep fractions to compare")
    parser.add_argument("--steps", type=int, default=20, help="Adam steps per setting")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.tp < 1 or VOCAB % options.tp:
        parser.error(f"--tp must divide the demo vocabulary ({VOCAB}), got {options.tp}")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(options.tp, _free_port(), options.rho, options.steps), nprocs=options.tp, join=True)


if __name__ == "__main__":
    main()
