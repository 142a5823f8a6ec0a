"""Reward hooks referenced by dotted path from the evaluation tests (importable by the grading side)."""

from __future__ import annotations


def first_token_parity(args, sample):
    """1.0 when the first response token id is even: deterministic in the response, so tests can recompute it."""
    return 1.0 if sample.tokens[len(sample.tokens) - sample.response_length] % 2 == 0 else 0.0
