"""Per-token entropy and log-probs of responses under a transformers model (an HF checkpoint).

The numbers are the trainer's: the fused op :func:`slime_entropy.ops.logprob_entropy.vocab_parallel_logprob_entropy`
over the full vocabulary of ``softmax(logits / T)`` (``T`` = the trainer's ``--rollout-temperature``), fp32
statistics from the model-dtype logits. The logits of response token t come from position t - 1 of the
unpadded prompt + response sequence (one sequence per forward, positions from 0, as the trainer packs them).

Memory: the final hidden states of the response positions are projected by the output layer ``chunk_rows`` rows at
a time, so no ``[T, V]`` logits tensor for the whole response exists. Models whose logits are post-processed after
the output layer (soft-capping, logit scaling) are run through the full forward with ``logits_to_keep`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from slime_entropy.analysis.records import AnalysisSample, require_finite
from slime_entropy.ops.logprob_entropy import default_chunk_rows, vocab_parallel_logprob_entropy

__all__ = ["TransformersScorer", "resolve_dtype"]

logger = logging.getLogger(__name__)

# Config attributes that transform logits after the output projection (gemma2/3, cohere, granite).
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def resolve_dtype(name: str, device: torch.device, config) -> torch.dtype:
    """``auto``: the checkpoint's dtype on an accelerator, float32 on CPU."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cpu":
        return torch.float32
    stored = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.bfloat16


class TransformersScorer:
    """``scorer.score(samples)`` -> the samples with ``entropy`` and ``log_probs`` filled (see module docstring).

    ``temperature``: the trainer's ``--rollout-temperature``. ``backend``: the fused op's backend (``auto`` picks
    Triton on CUDA; on CPU ``eager`` avoids a torch.compile warm-up that a one-off analysis does not repay).
    """

    def __init__(
        self,
        hf_checkpoint: str,
        *,
        temperature: float = 1.0,
        device: str | None = None,
        dtype: str = "auto",
        backend: str | None = None,
        chunk_rows: int | None = None,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM

        if not temperature > 0:
            raise ValueError(f"--rollout-temperature (the entropy temperature) must be > 0, got {temperature}")
        self.name = str(hf_checkpoint)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        config = AutoConfig.from_pretrained(hf_checkpoint)
        self.dtype = resolve_dtype(dtype, self.device, config)
        self.model = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=self.dtype).to(self.device).eval()
        self.inv_temperature = 1.0 / temperature
        self.backend = backend or ("auto" if self.device.type == "cuda" else "eager")
        self.chunk_rows = chunk_rows
        self._postprocessed = [a for a in _LOGIT_POSTPROCESSING if getattr(config, a, None) not in (None, 1.0)]
        if self.model.base_model is self.model:  # no separate decoder to take the hidden states from
            self._postprocessed.append("no base_model")
        if self._postprocessed:
            logger.info("%s: scoring with the full forward (%s)", self.name, ", ".join(self._postprocessed))

    @torch.inference_mode()
    def _logits_rows(self, input_ids: torch.Tensor, num_rows: int):
        """Yield ``(start, logits [c, V])`` chunks for the last ``num_rows`` predicting positions."""
        if self._postprocessed:
            logits = self.model(input_ids=input_ids, logits_to_keep=num_rows + 1).logits[0, :num_rows]
            yield 0, logits
            return
        hidden = self.model.base_model(input_ids=input_ids).last_hidden_state[0]  # [L, H], after the final norm
        seq_len = hidden.shape[0]
        rows = hidden[seq_len - 1 - num_rows : seq_len - 1]
        head = self.model.get_output_embeddings()
        chunk = self.chunk_rows or default_chunk_rows(head.weight.shape[0])
        for start in range(0, num_rows, chunk):
            yield start, head(rows[start : start + chunk])

    @torch.inference_mode()
    def score_one(self, sample: AnalysisSample) -> AnalysisSample:
        tokens = torch.from_numpy(sample.tokens).to(self.device)
        if sample.prompt_length < 1:
            raise ValueError(f"sample {sample.sample_id}: no prompt token before the response; nothing predicts it")
        targets = tokens[sample.prompt_length :]
        log_probs = torch.empty(sample.response_length, dtype=torch.float32)
        entropy = torch.empty(sample.response_length, dtype=torch.float32)
        for start, logits in self._logits_rows(tokens[None], sample.response_length):
            rows = logits.shape[0]
            lp, h = vocab_parallel_logprob_entropy(
                logits.contiguous(),
                targets[start : start + rows].contiguous(),
                inv_temperature=self.inv_temperature,
                backend=self.backend,
            )
            log_probs[start : start + rows] = lp.float().cpu()
            entropy[start : start + rows] = h.float().cpu()
        return sample.replace(entropy=entropy.numpy(), log_probs=log_probs.numpy())

    def score(self, samples: Sequence[AnalysisSample]) -> list[AnalysisSample]:
        out = []
        for i, sample in enumerate(samples):
            out.append(self.score_one(sample))
            if (i + 1) % 100 == 0:
                logger.info("scored %d / %d responses with %s", i + 1, len(samples), self.name)
        require_finite(out, self.name)
        return out

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
