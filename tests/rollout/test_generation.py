"""The built-in engine's sampler, in process: log-probs, sampling controls, finish reasons."""

import pytest
import torch

from slime_entropy.rollout.generation import BatchGenerator, GenerationRequest


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _recompute(model, prompt, output, temperature):
    """Reference: one forward over prompt + response (no padding, no cache), float64 log-softmax of logits / T."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + output])).logits[0].double()
    scaled = logits / (temperature if temperature > 0 else 1.0)
    logprobs = torch.log_softmax(scaled, dim=-1)
    return [logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(output)]


def test_logprobs_match_a_recomputation_for_mixed_rows(model, tokenizer):
    prompts = ["What is 1+1?", "x", "The answer is \\boxed{3} so 100 + 100 = 200 and", "hello world " * 5]
    requests = [
        GenerationRequest(input_ids=_ids(tokenizer, p), max_new_tokens=12, temperature=t, top_p=tp, top_k=tk)
        for p, t, tp, tk in zip(prompts, (1.0, 0.0, 0.7, 1.3), (1.0, 1.0, 0.9, 0.5), (-1, -1, 20, 5), strict=True)
    ]
    results = BatchGenerator(model, tokenizer, seed=0).generate(requests)
    for request, result in zip(requests, results, strict=True):
        assert len(result.output_ids) == len(result.output_logprobs) == 12
        ref = _recompute(model, request.input_ids, result.output_ids, request.temperature)
        assert result.output_logprobs == pytest.approx(ref, abs=1e-4)


def test_greedy_matches_transformers_generate(model, tokenizer):
    prompt = _ids(tokenizer, "Greedy decoding of a tiny model:")
    expected = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=16,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )[0, len(prompt) :].tolist()
    other = _ids(tokenizer, "a longer prompt that forces left padding of the short one, " * 2)
    results = BatchGenerator(model, tokenizer).generate(
        [
            GenerationRequest(input_ids=prompt, max_new_tokens=16, temperature=0.0),
            GenerationRequest(input_ids=other, max_new_tokens=4, temperature=1.0),
        ]
    )
    assert results[0].output_ids == expected
    top1 = BatchGenerator(model, tokenizer, seed=3).generate(
        [GenerationRequest(input_ids=prompt, max_new_tokens=16, temperature=1.0, top_k=1)]
    )
    assert top1[0].output_ids == expected


def test_top_k_and_top_p_restrict_the_support(model, tokenizer):
    prompt = _ids(tokenizer, "sample me")
    generator = BatchGenerator(model, tokenizer, seed=1)
    requests = [GenerationRequest(input_ids=prompt, max_new_tokens=1, temperature=1.0, top_k=3) for _ in range(60)]
    requests += [GenerationRequest(input_ids=prompt, max_new_tokens=1, temperature=1.0, top_p=0.2) for _ in range(60)]
    results = generator.generate(requests)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double(), -1)
    order = probs.argsort(descending=True).tolist()
    nucleus = order[: int((probs[order].cumsum(0) < 0.2).sum()) + 1]
    assert {r.output_ids[0] for r in results[:60]} <= set(order[:3])
    assert {r.output_ids[0] for r in results[60:]} <= set(nucleus)
    assert len({r.output_ids[0] for r in results[:60]}) > 1  # still sampling, not greedy


def test_sampling_is_reproducible_for_a_seed(model, tokenizer):
    requests = [GenerationRequest(input_ids=_ids(tokenizer, "seeded"), max_new_tokens=8) for _ in range(3)]
    first = [r.output_ids for r in BatchGenerator(model, tokenizer, seed=11).generate(requests)]
    again = [r.output_ids for r in BatchGenerator(model, tokenizer, seed=11).generate(requests)]
    other = [r.output_ids for r in BatchGenerator(model, tokenizer, seed=12).generate(requests)]
    assert first == again and first != other


def test_finish_reasons(model, tokenizer):
    prompt = _ids(tokenizer, "stop here")
    greedy = (
        BatchGenerator(model, tokenizer)
        .generate([GenerationRequest(input_ids=prompt, max_new_tokens=10, temperature=0.0)])[0]
        .output_ids
    )
    stop_token = greedy[3]
    stop_text = tokenizer.decode(greedy[4:6])
    results = BatchGenerator(model, tokenizer).generate(
        [
            GenerationRequest(
                input_ids=prompt, max_new_tokens=10, temperature=0.0, stop_token_ids=frozenset({stop_token})
            ),
            GenerationRequest(input_ids=prompt, max_new_tokens=10, temperature=0.0, stop=(stop_text,)),
            GenerationRequest(input_ids=prompt, max_new_tokens=10, temperature=0.0, is_aborted=lambda: True),
            GenerationRequest(input_ids=prompt, max_new_tokens=0),
            GenerationRequest(input_ids=prompt, max_new_tokens=5, temperature=0.0),
        ]
    )
    first = greedy.index(stop_token)
    assert results[0].output_ids == greedy[: first + 1]  # the stop token is kept
    assert results[0].finish_reason == {"type": "stop", "matched": stop_token}
    assert results[1].finish_reason == {"type": "stop", "matched": stop_text}
    assert stop_text in tokenizer.decode(results[1].output_ids) and len(results[1].output_ids) <= 6
    assert results[2].finish_reason["type"] == "abort" and results[2].output_ids == []
    assert results[3].finish_reason == {"type": "length", "length": 0} and results[3].output_ids == []
    assert results[4].finish_reason == {"type": "length", "length": 5} and results[4].output_ids == greedy[:5]


def test_a_seeded_request_draws_the_same_tokens_in_any_batch(model, tokenizer):
    """``sampling_seed``: a row's tokens depend on its seed and logits only, not on its batch mates or its row."""
    prompt = _ids(tokenizer, "Seeded sampling:")
    others = [_ids(tokenizer, text) for text in ("a", "another, longer prompt that pads the batch", "x y z")]

    def seeded(seed):
        return GenerationRequest(input_ids=prompt, max_new_tokens=16, temperature=1.0, seed=seed)

    alone = BatchGenerator(model, tokenizer, seed=0).generate([seeded(7)])[0]
    batch = [GenerationRequest(input_ids=ids, max_new_tokens=5, temperature=1.0) for ids in others]
    mixed = BatchGenerator(model, tokenizer, seed=123).generate(batch[:2] + [seeded(7)] + batch[2:])[2]
    assert mixed.output_ids == alone.output_ids
    assert mixed.output_logprobs == pytest.approx(alone.output_logprobs, abs=1e-5)
    other_seed = BatchGenerator(model, tokenizer, seed=0).generate([seeded(8)])[0]
    assert other_seed.output_ids != alone.output_ids  # the seed matters (16 tokens from a ~300-token vocabulary)


def test_a_seeded_continuation_from_a_prefix_reproduces_the_uninterrupted_generation(model, tokenizer):
    """FR3E's partial rollouts: ``prompt + response[:t]`` with the same ``sampling_seed`` draws ``response[t:]``, for
    every cut point, alone or batched with other continuations (the draw at a position is seeded by seed and
    position, as SGLang's seeded sampler does)."""
    prompt = _ids(tokenizer, "Continue me:")

    def request(ids, max_new_tokens, seed=5):
        return GenerationRequest(input_ids=ids, max_new_tokens=max_new_tokens, temperature=1.0, top_p=0.95, seed=seed)

    whole = BatchGenerator(model, tokenizer, seed=0).generate([request(prompt, 20)])[0]
    response = whole.output_ids
    assert len(response) == 20
    cuts = [1, 7, 13, 19]
    continued = BatchGenerator(model, tokenizer, seed=99).generate(
        [request(prompt + response[:t], 20 - t) for t in cuts] + [request(prompt, 20, seed=6)]
    )
    for t, result in zip(cuts, continued, strict=False):
        assert result.output_ids == response[t:], t
        assert result.output_logprobs == pytest.approx(whole.output_logprobs[t:], abs=1e-4)
    assert continued[-1].output_ids != response  # another seed, another sample
