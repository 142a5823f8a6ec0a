"""Where each response token's logits row sits in slime's packed micro-batch, with and without context parallelism.

Pure index arithmetic: no tensors of logits, no communication.

Packing (slime, THD): samples are concatenated, ``total_lengths[i]`` tokens each (prompt + response); the stream
is padded at the end. The logits row at position p predicts the token at p + 1, so the ``response_lengths[i]``
response tokens of sample i are scored by rows ``[start - 1, end - 1)`` of that sample.

Context parallelism (zigzag, load balanced): every sequence is padded to a multiple of ``2 * cp_size`` and cut
into ``2 * cp_size`` chunks of ``c = ceil(total / (2 * cp_size))`` positions; CP rank r holds chunks r and
``2 * cp_size - 1 - r``, so its local stream holds ``2 * c`` rows per sample. A rank scores the response tokens
whose predicting row it holds; per-token tensors on that rank (log-probs, advantages, masks) hold those tokens in
order: chunk r's part first, then chunk ``2 * cp_size - 1 - r``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["zigzag_token_ranges", "ResponseSpans"]

Range = tuple[int, int]


def zigzag_token_ranges(
    total_length: int, response_length: int, cp_rank: int, cp_size: int
) -> tuple[int, tuple[Range, Range], tuple[Range, Range]]:
    """Token ranges a CP rank scores for one sample.

    Returns ``(chunk_size, chunk_starts, token_ranges)``: the chunk length c, the first sequence position of
    each of the rank's two chunks, and the two half-open ranges of *token* positions (sequence coordinates) whose
    predicting logits row lies in those chunks, clipped to the response. An empty range is ``(0, 0)``.
    """
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"invalid context-parallel rank {cp_rank} of {cp_size}")
    if not 0 <= response_length < total_length:
        raise ValueError(
            f"a sample needs a non-empty prompt: total_length={total_length}, response_length={response_length}"
        )
    prompt_length = total_length - response_length
    chunk = (total_length + 2 * cp_size - 1) // (2 * cp_size)
    starts = (cp_rank * chunk, (2 * cp_size - 1 - cp_rank) * chunk)
    ranges = []
    for start in starts:
        # rows [start, start + chunk) predict tokens [start + 1, start + chunk + 1); keep response tokens only.
        first_row = max(start, prompt_length - 1)
        last_row = min(start + chunk, total_length - 1)
        ranges.append((first_row + 1, last_row + 1) if first_row < last_row else (0, 0))
    return chunk, starts, (ranges[0], ranges[1])


@dataclass(frozen=True)
class ResponseSpans:
    """Local response tokens of one micro-batch on one CP rank.

    Attributes:
        rows: [N] int64 logits rows (local packed stream) that score the local response tokens, sample-major.
        targets: [N] int64 the tokens those rows score.
        local_lengths: per sample, how many of its response tokens are local (sum = N).
        response_slices: per sample, the (start, end) ranges *in response coordinates* of the local tokens;
            ``local_part(full, i)`` cuts a full-response tensor (e.g. a loss mask) down to them.
    """

    rows: torch.Tensor
    targets: torch.Tensor
    local_lengths: list[int]
    response_slices: list[tuple[Range, ...]]

    @classmethod
    def build(
        cls,
        unconcat_tokens: list[torch.Tensor],
        total_lengths: list[int],
        response_lengths: list[int],
        cp_rank: int = 0,
        cp_size: int = 1,
        device: torch.device | str | None = None,
    ) -> ResponseSpans:
        if not len(unconcat_tokens) == len(total_lengths) == len(response_lengths):
            raise ValueError(
                f"batch is inconsistent: {len(unconcat_tokens)} unconcat_tokens, {len(total_lengths)} total_lengths, "
                f"{len(response_lengths)} response_lengths"
            )
        row_parts: list[torch.Tensor] = []
        target_parts: list[torch.Tensor] = []
        local_lengths: list[int] = []
        response_slices: list[tuple[Range, ...]] = []
        offset = 0  # first row of the current sample in the local stream
        for i, (tokens, total, response) in enumerate(
            zip(unconcat_tokens, total_lengths, response_lengths, strict=True)
        ):
            if tokens.numel() != total:
                raise ValueError(
                    f"sample {i}: unconcat_tokens has {tokens.numel()} tokens but total_lengths says {total}"
                )
            prompt = total - response
            if cp_size == 1:
                if not 0 <= response < total:
                    raise ValueError(f"sample {i}: needs a non-empty prompt (total={total}, response={response})")
                token_ranges: tuple[Range, ...] = ((prompt, total),)
                row_starts = (offset,)
                seq_starts = (0,)
                offset += total
            else:
                chunk, seq_starts, token_ranges = zigzag_token_ranges(total, response, cp_rank, cp_size)
                row_starts = (offset, offset + chunk)
                offset += 2 * chunk
            slices = []
            length = 0
            for (first, last), row_start, seq_start in zip(token_ranges, row_starts, seq_starts, strict=True):
                if first == last:
                    continue
                # the row scoring token t sits at sequence position t - 1
                row_parts.append(torch.arange(first - 1 - seq_start + row_start, last - 1 - seq_start + row_start))
                target_parts.append(tokens.reshape(-1)[first:last].to(torch.int64))
                slices.append((first - prompt, last - prompt))
                length += last - first
            local_lengths.append(length)
            response_slices.append(tuple(slices))
        rows = torch.cat(row_parts) if row_parts else torch.zeros(0, dtype=torch.int64)
        targets = torch.cat(target_parts) if target_parts else torch.zeros(0, dtype=torch.int64)
        return cls(
            rows=rows.to(device),
            targets=targets.to(device),
            local_lengths=local_lengths,
            response_slices=response_slices,
        )

    @property
    def num_samples(self) -> int:
        return len(self.local_lengths)

    def local_part(self, full_response: torch.Tensor, sample: int) -> torch.Tensor:
        """The local tokens of a per-token tensor that covers sample ``sample``'s whole response."""
        pieces = [full_response[a:b] for a, b in self.response_slices[sample]]
        if not pieces:
            return full_response[:0]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def local_masks(self, loss_masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-sample local slices of full-response loss masks."""
        if len(loss_masks) != self.num_samples:
            raise ValueError(f"batch has {len(loss_masks)} loss_masks for {self.num_samples} samples")
        return [self.local_part(mask, i) for i, mask in enumerate(loss_masks)]
