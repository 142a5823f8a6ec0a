"""Deterministic tiny Qwen3 checkpoints (model + tokenizer + chat template) built locally, for tests and benchmarks.

    path = save_tiny_qwen3(tmp_path / "tiny", TinyModelSpec(seed=0))
    tokenizer = AutoTokenizer.from_pretrained(path); model = AutoModelForCausalLM.from_pretrained(path)

Nothing is downloaded. The tokenizer is a byte-level BPE written by hand: the 256 byte symbols (ids 0-255, in byte
order), a fixed list of merges for common math words (so a token is often longer than one character), and the
Qwen-style special tokens ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos) plus ``<think>`` and
``</think>`` as ordinary added tokens. Its chat template is a minimal Qwen-style one. The model is a random
``Qwen3ForCausalLM`` whose vocabulary is exactly the tokenizer's, so every id it can sample decodes.

The same ``(spec, seed)`` gives bit-identical files on every run and machine (the RNG is forked, so callers' global
RNG state is untouched). ``initializer_range`` is larger than Qwen's 0.02 on purpose: it makes the random model's
next-token distributions far from uniform, so tests comparing log-probs or greedy outputs are sensitive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TinyModelSpec", "build_tiny_tokenizer", "save_tiny_qwen3", "CHAT_TEMPLATE", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words whose byte-level spellings are merged left to right into single tokens ("Ġ" is the byte-level space).
_MERGED_WORDS = (
    "the",
    "Ġthe",
    "Ġis",
    "Ġanswer",
    "Answer",
    "boxed",
    "\\boxed",
    "frac",
    "\\frac",
    "sqrt",
    "Ġ=",
    "Ġ+",
    "10",
    "100",
    "think",
    "Ġso",
    "Ġwait",
    "Ġthus",
    "Ġof",
    "Ġto",
    "ing",
    "Ġand",
)


@dataclass(frozen=True, kw_only=True)
class TinyModelSpec:
    """Architecture and seed of a tiny random Qwen3 (defaults: 2 layers, hidden 64, 4 heads / 2 KV heads)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = False
    initializer_range: float = 0.2
    seed: int = 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (printable ASCII/Latin-1 map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def build_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE vocabulary of a few hundred tokens and a chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_map = _bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in _MERGED_WORDS:
        symbols = "".join(byte_map[b] for b in word.replace("Ġ", " ").encode("utf-8"))
        prefix = symbols[0]
        for ch in symbols[1:]:
            merged = prefix + ch
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((prefix, ch))
            prefix = merged

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def save_tiny_qwen3(path: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Write a tiny random Qwen3 checkpoint (config, safetensors weights, tokenizer, chat template) to ``path``."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    spec = spec or TinyModelSpec()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen3ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "tiny_model_spec.json").write_text(json.dumps(spec.__dict__, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a tiny random Qwen3 checkpoint (model + tokenizer).")
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(save_tiny_qwen3(args.path, TinyModelSpec(seed=args.seed)))


if __name__ == "__main__":
    main()
