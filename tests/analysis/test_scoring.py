"""Per-token entropy and log-probs from a transformers model vs a float64 recomputation from the full logits."""

import numpy as np
import pytest
import torch

from slime_entropy.analysis.records import AnalysisSample
from slime_entropy.analysis.scoring import TransformersScorer


def reference(model_dir, sample, temperature):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(sample.tokens)[None]).logits[0]
    rows = logits[sample.prompt_length - 1 : -1] / temperature
    logp = torch.log_softmax(rows, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    targets = torch.from_numpy(sample.response_tokens)
    return entropy.numpy(), logp.gather(1, targets[:, None])[:, 0].numpy()


@pytest.mark.parametrize("full_forward", [False, True])
def test_scores_match_float64_reference(tiny_hf, full_forward):
    rng = np.random.default_rng(0)
    samples = [
        AnalysisSample(
            sample_id=str(i),
            tokens=rng.integers(0, 300, size=p + r),
            response_length=r,
            response_mask=rng.random(r) > 0.2,
        )
        for i, (p, r) in enumerate([(1, 9), (5, 17), (12, 3)])
    ]
    scorer = TransformersScorer(str(tiny_hf), temperature=0.7, chunk_rows=4)
    if full_forward:  # the path of models that post-process their logits (soft-capping, scaling)
        scorer._postprocessed = ["final_logit_softcapping"]
    scored = scorer.score(samples)
    for s in scored:
        entropy, log_probs = reference(tiny_hf, s, 0.7)
        np.testing.assert_allclose(s.entropy, entropy, atol=2e-5, rtol=0)
        np.testing.assert_allclose(s.log_probs, log_probs, atol=2e-5, rtol=0)
        assert s.entropy.dtype == np.float32 and s.log_probs.dtype == np.float32
    with pytest.raises(ValueError, match="no prompt token"):
        scorer.score([AnalysisSample(sample_id="x", tokens=[1, 2], response_length=2, response_mask=[1, 1])])
    with pytest.raises(ValueError, match="--rollout-temperature .* must be > 0"):
        TransformersScorer(str(tiny_hf), temperature=0.0)
