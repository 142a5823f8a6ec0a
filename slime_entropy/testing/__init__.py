"""Helpers for tests and benchmarks: deterministic tiny models and tokenizers built locally (no downloads)."""

from slime_entropy.testing.tiny_models import TinyModelSpec, build_tiny_tokenizer, save_tiny_qwen3

__all__ = ["TinyModelSpec", "build_tiny_tokenizer", "save_tiny_qwen3"]
