import hashlib

import torch

from slime_entropy.testing import TinyModelSpec, build_tiny_tokenizer, save_tiny_qwen3


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, tiny_model_dir, tiny_model_dir_b):
    again = save_tiny_qwen3(tmp_path / "again", TinyModelSpec(seed=0))
    assert _digest(again) == _digest(tiny_model_dir)
    assert _digest(tiny_model_dir_b)["model.safetensors"] != _digest(tiny_model_dir)["model.safetensors"]
    assert _digest(tiny_model_dir_b)["tokenizer.json"] == _digest(tiny_model_dir)["tokenizer.json"]


def test_building_does_not_touch_the_callers_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    save_tiny_qwen3(tmp_path / "m", TinyModelSpec(seed=5))
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_round_trips_text_and_has_qwen_style_chat_template(tokenizer):
    text = "The answer is \\boxed{\\frac{1}{2}}.<think>wait, so</think> 100% ünïcode"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges make some tokens longer than one byte
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""
    assert tokenizer.convert_tokens_to_ids("</think>") != tokenizer.unk_token_id


def test_model_vocabulary_matches_tokenizer_and_logits_are_not_flat(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == len(tokenizer) == len(build_tiny_tokenizer())
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    with torch.no_grad():
        logprobs = model(torch.tensor([[1, 2, 3, 4]])).logits.log_softmax(-1)[0, -1]
    assert logprobs.max() - logprobs.min() > 3.0  # far from uniform: log-prob comparisons are sensitive
