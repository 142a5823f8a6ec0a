"""Token text: per-token pieces of a response, readable token labels, and frequency tables of selected tokens.

Pieces come from incremental decoding (the decoded text of a growing window minus that of the window without the
new token), so they concatenate to the decoded response and multi-byte characters split over several byte-level
tokens are attributed to the token that completes them (the others get an empty piece).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slime_entropy.analysis.records import AnalysisSample

__all__ = ["text_pieces", "TokenLabeler", "TokenCount", "token_frequencies", "visible"]

_REPLACEMENT = "\ufffd"


def text_pieces(tokenizer, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> tuple[str, ...]:
    """One decoded piece per token of ``token_ids``; ``"".join(pieces) == tokenizer.decode(token_ids)``.

    Each step decodes two short windows that start at the previously emitted token (the left context that
    SentencePiece-style tokenizers need for leading spaces), so the cost is linear in the length. A token that leaves
    an incomplete character gets ``""``; the token completing it carries the character.
    """
    ids = [int(t) for t in token_ids]
    decode = tokenizer.decode
    pieces: list[str] = []
    prefix_start = read_start = 0
    for i in range(len(ids)):
        prefix = decode(ids[prefix_start:read_start], skip_special_tokens=skip_special_tokens)
        full = decode(ids[prefix_start : i + 1], skip_special_tokens=skip_special_tokens)
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT) and full.startswith(prefix):
            pieces.append(full[len(prefix) :])
            prefix_start, read_start = read_start, i + 1
        else:
            pieces.append("")
    if ids and read_start < len(ids):  # trailing invalid bytes: their replacement characters go to the last token
        prefix = decode(ids[prefix_start:read_start], skip_special_tokens=skip_special_tokens)
        full = decode(ids[prefix_start:], skip_special_tokens=skip_special_tokens)
        pieces[-1] += full[len(prefix) :] if full.startswith(prefix) else full
    return tuple(pieces)


def _escape_invisible(ch: str) -> str:
    if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
    return ch


def visible(text: str) -> str:
    """A label that shows what the token is: leading/trailing spaces as '␣', newlines '⏎', tabs '⇥', carriage returns
    '␍', other control/format characters as ``\\xNN`` escapes; the empty string as '∅'."""
    if text == "":
        return "∅"
    out = text.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")
    out = "".join(_escape_invisible(ch) for ch in out)
    stripped = out.strip(" ")
    if stripped != out:
        lead = len(out) - len(out.lstrip(" "))
        trail = len(out) - len(out.rstrip(" "))
        out = "␣" * lead + stripped + "␣" * trail
    return out


class TokenLabeler:
    """Readable label of a token id: its decoded text with visible whitespace, else its vocabulary string, else
    ``#id`` (no tokenizer)."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def raw(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"#{token_id}"
        text = self.tokenizer.decode([int(token_id)], skip_special_tokens=False)
        if _REPLACEMENT in text or text == "":
            converted = self.tokenizer.convert_ids_to_tokens(int(token_id))
            text = converted if isinstance(converted, str) else f"#{token_id}"
        return text

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id not in self._cache:
            self._cache[token_id] = visible(self.raw(token_id))
        return self._cache[token_id]


@dataclass(frozen=True)
class TokenCount:
    token_id: int
    label: str
    count: int
    """Occurrences among the selected tokens."""
    share: float
    """count / number of selected tokens."""
    occurrences: int
    """Occurrences among all valid tokens."""
    selected_rate: float
    """count / occurrences: how often this token is selected when it appears."""
    entropy_mean: float
    """Mean entropy of the selected occurrences."""


def token_frequencies(
    samples: Sequence[AnalysisSample],
    masks: Sequence[np.ndarray],
    labeler: TokenLabeler,
    *,
    limit: int | None = 50,
) -> list[TokenCount]:
    """The most frequent token ids among the positions ``masks`` select, most frequent first (ties: lower id).

    Counting is by token id over valid response tokens; ``masks[i]`` is bool ``[R_i]`` (e.g. a
    :class:`~slime_entropy.analysis.statistics.Selection`'s masks).
    """
    selected: Counter[int] = Counter()
    everywhere: Counter[int] = Counter()
    entropy_sum: dict[int, float] = {}
    for s, mask in zip(samples, masks, strict=True):
        response = s.response_tokens
        everywhere.update(response[s.response_mask].tolist())
        ids = response[mask].tolist()
        selected.update(ids)
        if s.entropy is not None:
            for token_id, h in zip(ids, s.entropy[mask].tolist(), strict=True):
                entropy_sum[token_id] = entropy_sum.get(token_id, 0.0) + h
    total = sum(selected.values())
    ranked = sorted(selected.items(), key=lambda item: (-item[1], item[0]))
    if limit is not None:
        ranked = ranked[:limit]
    return [
        TokenCount(
            token_id=token_id,
            label=labeler(token_id),
            count=count,
            share=count / total,
            occurrences=everywhere[token_id],
            selected_rate=count / everywhere[token_id],
            entropy_mean=entropy_sum.get(token_id, float("nan")) / count,
        )
        for token_id, count in ranked
    ]
