"""The ``Sample`` record: one prompt, one generated response, and everything the trainer needs from it.

Field names follow ``slime.utils.types.Sample`` so that user hooks written for slime (``--custom-rm-path``,
``--dynamic-sampling-filter-path``) work unchanged: they read ``sample.prompt``, ``sample.response``,
``sample.label``, ``sample.reward``, ``sample.metadata``, ``sample.tokens``, ``sample.response_length``,
``sample.status``.

Worked example (prompt of 3 tokens, response of 2 tokens that ended with EOS)::

    Sample(index=17, group_index=4, prompt="1+1=?", tokens=[11, 12, 13, 50, 2], response="2<|im_end|>",
           response_length=2, rollout_log_probs=[-0.7, -0.1], status=SampleStatus.COMPLETED, reward=1.0)

``tokens`` is prompt followed by response; the response is ``tokens[-response_length:]``. ``rollout_log_probs``
has one entry per response token: the engine's log-probability of that token under the temperature-scaled
distribution (before top-k/top-p truncation), as SGLang reports it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sample", "SampleStatus"]


class SampleStatus(str, enum.Enum):
    """Lifecycle of a sample. ``TRUNCATED`` = hit ``--rollout-max-response-len``; ``ABORTED`` = cancelled."""

    PENDING = "pending"
    COMPLETED = "completed"
    TRUNCATED = "truncated"
    ABORTED = "aborted"


@dataclass(kw_only=True)
class Sample:
    """One prompt/response pair. Mutable: the rollout fills the response, log-probs, status and reward in turn."""

    index: int
    """Globally unique id of this sample within a run (never reused, also not across retries)."""
    group_index: int
    """Id of the prompt group: the ``--n-samples-per-prompt`` samples of one prompt share it."""
    prompt: str | list[dict[str, Any]]
    """The prompt as stored in the dataset (text, or a chat message list before templating)."""
    prompt_text: str = ""
    """The exact text sent to the tokenizer (after the chat template, if any)."""
    tokens: list[int] = field(default_factory=list)
    """Prompt token ids followed by response token ids."""
    response: str = ""
    """Decoded response text (special tokens kept unless ``--rollout-skip-special-tokens``)."""
    response_length: int = 0
    """Number of response tokens (the tail of ``tokens``)."""
    label: Any = None
    """Ground truth from ``--label-key`` (``None`` when the dataset has none)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form per-prompt data from ``--metadata-key``; shared (copied) by the samples of a group."""
    rollout_log_probs: list[float] = field(default_factory=list)
    """Per response token: log-prob under the engine's temperature-scaled distribution."""
    loss_mask: list[int] | None = None
    """Per response token 0/1; ``None`` means all ones (plain single-turn generation)."""
    reward: float | dict[str, Any] | None = None
    """Reward model output: a number, or a dict (then ``--reward-key`` selects the scalar)."""
    status: SampleStatus = SampleStatus.PENDING
    weight_version: str | None = None
    """Version string of the engine weights that produced the response (as sent with the weight update)."""

    @property
    def prompt_length(self) -> int:
        return len(self.tokens) - self.response_length

    @property
    def response_tokens(self) -> list[int]:
        return self.tokens[len(self.tokens) - self.response_length :]

    def effective_loss_mask(self) -> list[int]:
        """``loss_mask`` with ``None`` expanded to all ones; always ``response_length`` long."""
        if self.loss_mask is None:
            return [1] * self.response_length
        if len(self.loss_mask) != self.response_length:
            raise ValueError(
                f"sample {self.index}: loss_mask has {len(self.loss_mask)} entries for {self.response_length} "
                "response tokens; a custom hook that edits the response must also edit loss_mask"
            )
        return list(self.loss_mask)
