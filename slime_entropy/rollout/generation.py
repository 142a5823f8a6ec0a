"""Batched autoregressive sampling with a transformers causal LM: the generator behind the built-in engine.

    generator = BatchGenerator(model, tokenizer, seed=0)
    results = generator.generate([GenerationRequest(input_ids=[...], max_new_tokens=32, temperature=1.0), ...])

One call runs one static batch: prompts are left-padded, prefilled together, then decoded one token per step with
the model's KV cache. Rows that finish are removed from the batch (and from the cache) at once, so a long response
does not keep finished rows' compute alive. Each row has its own temperature / top-k / top-p / stop conditions.

Log-prob semantics (SGLang's): the log-prob reported for a sampled token is taken from
``log_softmax(logits / T)`` over the **full vocabulary**, i.e. after temperature scaling and before top-k/top-p
truncation; for greedy rows (``T == 0``) it is ``log_softmax(logits)``. This is the distribution the trainer
recomputes (slime divides its logits by ``--rollout-temperature``).

Finish reasons follow SGLang: ``{"type": "stop", "matched": <token id or stop string>}``,
``{"type": "length", "length": n}``, ``{"type": "abort", "message": ...}``. The matched stop token is part of the
output (as with SGLang's ``no_stop_trim``), so the trainer learns to emit EOS.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["GenerationRequest", "GenerationResult", "BatchGenerator", "position_seed"]

_MASK64 = (1 << 64) - 1


def position_seed(seed: int, position: int) -> int:
    """The seed of the draw at sequence ``position`` of a request seeded with ``seed``: splitmix64 of the pair, so
    neighbouring positions and neighbouring seeds give unrelated streams."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(position) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclass
class GenerationRequest:
    input_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: frozenset[int] = frozenset()
    """Token ids that end the response (the engine adds EOS unless ``ignore_eos``)."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """SGLang's ``sampling_seed``: the draw for the token at sequence position p (prompt tokens included) comes from
    a generator seeded with ``position_seed(seed, p)``, so the tokens depend only on the seed, the positions and the
    logits, not on which other requests share the batch, and a request for ``prompt + prefix`` continues exactly as
    the uninterrupted request for ``prompt`` would have (SGLang's seeded sampler also hashes seed and position).
    None: the engine's generator."""
    is_aborted: Callable[[], bool] = field(default=lambda: False)


@dataclass
class GenerationResult:
    output_ids: list[int]
    output_logprobs: list[float]
    finish_reason: dict


class BatchGenerator:
    def __init__(self, model, tokenizer, *, seed: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.rng = torch.Generator().manual_seed(seed)
        # transformers >= 5 calls the KV cache argument ``cache``; older versions ``past_key_values``.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _forward(self, cache=None, **kwargs):
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        out = self.model(use_cache=True, **kwargs)
        new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        return out.logits[:, -1, :].float(), new_cache

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _multinomial(self, probs_BV: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
        """One draw per row: from the engine's generator for the batch, or row by row where a row has its own."""
        if all(g is None for g in generators):
            return torch.multinomial(probs_BV, 1, generator=self.rng)
        return torch.stack(
            [torch.multinomial(probs_BV[r], 1, generator=g or self.rng) for r, g in enumerate(generators)]
        )

    def _sample(
        self,
        logits_BV: torch.Tensor,
        rows: list[GenerationRequest],
        generators: list[torch.Generator | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token per row and its log-prob under ``log_softmax(logits / T)`` (T = 1 for greedy rows).

        ``generators``: per row, its own generator (seeded requests) or None (the engine's)."""
        generators = generators or [None] * len(rows)
        device = logits_BV.device
        temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=device)
        greedy = temps == 0
        scaled_BV = logits_BV / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
        logprobs_BV = torch.log_softmax(scaled_BV, dim=-1)
        vocab = scaled_BV.shape[-1]
        top_k = torch.tensor([r.top_k if r.top_k > 0 else vocab for r in rows], device=device)
        top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32, device=device)
        if bool((top_k < vocab).any() or (top_p < 1).any()):
            sorted_BV, order_BV = scaled_BV.sort(dim=-1, descending=True)
            probs_BV = torch.softmax(sorted_BV, dim=-1)
            mass_before_BV = probs_BV.cumsum(dim=-1) - probs_BV
            ranks_V = torch.arange(vocab, device=device)
            drop_BV = (ranks_V[None, :] >= top_k[:, None]) | (mass_before_BV > top_p[:, None])
            sorted_BV = sorted_BV.masked_fill(drop_BV, float("-inf"))
            choice_B = self._multinomial(torch.softmax(sorted_BV, dim=-1), generators)
            sampled_B = order_BV.gather(-1, choice_B).squeeze(-1)
        else:
            sampled_B = self._multinomial(torch.softmax(scaled_BV, dim=-1), generators).squeeze(-1)
        tokens_B = torch.where(greedy, logits_BV.argmax(dim=-1), sampled_B)
        return tokens_B, logprobs_BV.gather(-1, tokens_B[:, None]).squeeze(-1)

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        outputs: list[list[int]] = [[] for _ in requests]
        logprobs: list[list[float]] = [[] for _ in requests]
        active = []
        for i, req in enumerate(requests):
            if req.max_new_tokens <= 0:
                results[i] = GenerationResult([], [], {"type": "length", "length": 0})
            elif not req.input_ids:
                raise ValueError("empty prompt")
            else:
                active.append(i)
        if not active:
            return results  # type: ignore[return-value]

        device = next(self.model.parameters()).device
        max_len = max(len(requests[i].input_ids) for i in active)
        input_ids = torch.full((len(active), max_len), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(active), max_len), dtype=torch.long)
        for row, i in enumerate(active):
            ids = requests[i].input_ids
            input_ids[row, max_len - len(ids) :] = torch.tensor(ids)
            attention[row, max_len - len(ids) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits_BV, cache = self._forward(input_ids=input_ids, attention_mask=attention, position_ids=positions)
        last_pos = positions[:, -1]

        generators = {
            i: torch.Generator().manual_seed(requests[i].seed) for i in active if requests[i].seed is not None
        }
        while active:
            rows = [requests[i] for i in active]
            for i in active:
                if i in generators:  # the draw at this sequence position has its own seed (see GenerationRequest)
                    generators[i].manual_seed(
                        position_seed(requests[i].seed, len(requests[i].input_ids) + len(outputs[i]))
                    )
            tokens_B, token_logprobs_B = self._sample(logits_BV, rows, [generators.get(i) for i in active])
            keep = []
            for row, (i, req) in enumerate(zip(active, rows, strict=True)):
                if req.is_aborted():
                    results[i] = GenerationResult(outputs[i], logprobs[i], {"type": "abort", "message": "aborted"})
                    continue
                token = int(tokens_B[row])
                outputs[i].append(token)
                logprobs[i].append(float(token_logprobs_B[row]))
                reason = None
                if token in req.stop_token_ids:
                    reason = {"type": "stop", "matched": token}
                elif req.stop:
                    text = self._decode(outputs[i])
                    matched = next((s for s in req.stop if s in text), None)
                    if matched is not None:
                        reason = {"type": "stop", "matched": matched}
                if reason is None and len(outputs[i]) >= req.max_new_tokens:
                    reason = {"type": "length", "length": len(outputs[i])}
                if reason is None:
                    keep.append(row)
                else:
                    results[i] = GenerationResult(outputs[i], logprobs[i], reason)
            if not keep:
                break
            if len(keep) < len(active):
                keep_t = torch.tensor(keep, device=device)
                cache.batch_select_indices(keep_t)
                attention, last_pos, tokens_B = attention[keep_t], last_pos[keep_t], tokens_B[keep_t]
                active = [active[r] for r in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
            last_pos = last_pos + 1
            logits_BV, cache = self._forward(
                cache, input_ids=tokens_B[:, None], attention_mask=attention, position_ids=last_pos[:, None]
            )
        return results  # type: ignore[return-value]
