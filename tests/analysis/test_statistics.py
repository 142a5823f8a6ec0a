"""Analysis numbers on a small saved rollout, checked against plain direct computations."""

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from slime_entropy.analysis.overlap import compare_models, position_overlap
from slime_entropy.analysis.records import AnalysisSample, load_responses, write_responses
from slime_entropy.analysis.statistics import select_bottom, select_top, summarize
from slime_entropy.analysis.tokens import TokenLabeler, text_pieces, token_frequencies, visible
from tests.analysis.conftest import make_rollout_rows


def direct_population(rows):
    return [
        float(h) for r in rows for h, m in zip(r["entropy"], r["loss_mask"], strict=True) if m
    ]  # python floats of the float32 values


def direct_k(n, rho):
    return max(1, math.ceil(Fraction(rho).limit_denominator(10**6) * n))


def direct_percentile(values, q):
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@pytest.mark.parametrize("rho", [0.2, 0.1, 0.37, 1.0])
def test_summary_matches_direct_computation(rollout_file, rho):
    rows = make_rollout_rows()
    samples = load_responses(rollout_file)
    summary = summarize(samples, rho, "all")
    values = direct_population(rows)
    n = len(values)
    assert summary.num_tokens == n and summary.num_responses == len(rows)
    assert summary.entropy_mean == pytest.approx(sum(values) / n, rel=1e-12)
    assert summary.entropy_max == max(values) < 50  # masked-out tokens never count
    assert summary.frac_below_low == sum(v < 0.01 for v in values) / n
    assert summary.frac_zero == sum(v == 0 for v in values) / n
    for q in (1, 50, 80, 99):
        assert summary.percentiles[f"p{q}"] == pytest.approx(direct_percentile(values, q), rel=1e-12, abs=1e-15)
    k = direct_k(n, rho)
    tau = sorted(values, reverse=True)[k - 1]
    assert summary.threshold == tau and summary.num_kept_target == k
    kept = [v for v in values if v >= tau]
    assert summary.num_kept == len(kept) >= k and summary.kept_ratio == len(kept) / n
    assert summary.kept_entropy_mean == pytest.approx(sum(kept) / len(kept), rel=1e-9)
    bottom_tau = sorted(values)[k - 1]
    assert summary.low_threshold == bottom_tau
    for stats, row in zip(summary.responses, rows, strict=True):
        h = [float(x) for x, m in zip(row["entropy"], row["loss_mask"], strict=True) if m]
        assert stats.sample_id == row["id"] and stats.num_tokens == len(h) and stats.reward == row["reward"]
        assert stats.entropy_mean == pytest.approx(sum(h) / len(h), rel=1e-9)
        assert stats.entropy_max == max(h) and stats.frac_below_low == sum(x < 0.01 for x in h) / len(h)
        assert stats.num_kept == sum(x >= tau for x in h)
    if rho == 0.2:  # the fixture's tie plateau straddles this threshold: ties are kept, beyond k
        assert tau == 1.0 and summary.num_kept > k


def test_selection_scopes_masks_and_bottom(rollout_file):
    rows = make_rollout_rows()
    samples = load_responses(rollout_file)
    top = select_top(samples, 0.2, "response")
    for mask, row in zip(top.masks, rows, strict=True):
        h = [float(x) for x, m in zip(row["entropy"], row["loss_mask"], strict=True) if m]
        tau = sorted(h, reverse=True)[direct_k(len(h), 0.2) - 1]
        expected = [bool(m) and float(x) >= tau for x, m in zip(row["entropy"], row["loss_mask"], strict=True)]
        assert mask.tolist() == expected
    bottom = select_bottom(samples, 0.2, "all")
    values = direct_population(rows)
    low = sorted(values)[direct_k(len(values), 0.2) - 1]
    for mask, row in zip(bottom.masks, rows, strict=True):
        expected = [bool(m) and float(x) <= low for x, m in zip(row["entropy"], row["loss_mask"], strict=True)]
        assert mask.tolist() == expected
    everything = select_top(samples, 1.0)
    assert everything.num_kept == len(values) == everything.num_population


def test_token_frequencies_match_counter(rollout_file):
    rows = make_rollout_rows()
    samples = load_responses(rollout_file)
    top = select_top(samples, 0.2)
    table = token_frequencies(samples, top.masks, TokenLabeler(None), limit=None)
    selected, everywhere, sums = Counter(), Counter(), {}
    for row, mask in zip(rows, top.masks, strict=True):
        response = row["tokens"][-row["response_length"] :]
        for t, h, m, kept in zip(response, row["entropy"], row["loss_mask"], mask, strict=True):
            everywhere[t] += bool(m)
            if kept:
                selected[t] += 1
                sums[t] = sums.get(t, 0.0) + h
    assert [(t.token_id, t.count) for t in table] == sorted(selected.items(), key=lambda x: (-x[1], x[0]))
    total = sum(selected.values())
    for t in table:
        assert t.label == f"#{t.token_id}" and t.occurrences == everywhere[t.token_id]
        assert t.share == t.count / total and t.selected_rate == t.count / everywhere[t.token_id]
        assert t.entropy_mean == pytest.approx(sums[t.token_id] / t.count, rel=1e-6)


def test_overlap_matches_sets(rollout_file):
    samples = load_responses(rollout_file)
    rng = np.random.default_rng(3)
    other = [
        s.replace(entropy=s.entropy * rng.uniform(0.5, 1.5, size=s.response_length).astype(np.float32))
        for s in samples
    ]
    result = compare_models([("a", samples), ("b", other), ("c", samples)], 0.2)
    ref, new = select_top(samples, 0.2), select_top(other, 0.2)
    set_a = {(i, j) for i, m in enumerate(ref.masks) for j in np.flatnonzero(m)}
    set_b = {(i, j) for i, m in enumerate(new.masks) for j in np.flatnonzero(m)}
    ab = result["vs_reference"][0]
    assert (ab.reference, ab.other, ab.num_common) == ("a", "b", len(set_a & set_b))
    assert ab.overlap == len(set_a & set_b) / len(set_a) < 1 and ab.jaccard == len(set_a & set_b) / len(set_a | set_b)
    h_a = np.concatenate([s.entropy[s.response_mask] for s in samples]).astype(np.float64)
    h_b = np.concatenate([s.entropy[s.response_mask] for s in other]).astype(np.float64)
    assert ab.entropy_pearson == pytest.approx(np.corrcoef(h_a, h_b)[0, 1])
    assert result["vs_reference"][1].overlap == 1.0  # c has a's entropies
    bc = result["vs_previous"][1]
    assert (bc.reference, bc.other) == ("b", "c") and bc.overlap == len(set_a & set_b) / len(set_b)
    with pytest.raises(ValueError, match="same responses"):
        position_overlap(samples, samples[:-1], reference_selection=ref, other_selection=new)


def test_responses_round_trip_and_validation(rollout_file, tmp_path):
    samples = load_responses(rollout_file)
    path = write_responses(tmp_path / "again.jsonl.gz", samples)
    again = load_responses(path)
    for a, b in zip(samples, again, strict=True):
        assert a.sample_id == b.sample_id and np.array_equal(a.tokens, b.tokens)
        assert np.array_equal(a.entropy, b.entropy) and np.array_equal(a.response_mask, b.response_mask)
        assert np.array_equal(a.log_probs, b.log_probs) and a.reward == b.reward
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": [1, 2, 3], "response_length": 2, "entropy": [0.1]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*entropy has 1 entries for 2"):
        load_responses(bad)
    bad.write_text('{"tokens": [1, 2, 3]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing 'response_length'"):
        load_responses(bad)
    with pytest.raises(ValueError, match="response_length 5 must lie"):
        AnalysisSample(sample_id="x", tokens=[1, 2], response_length=5, response_mask=[1] * 5)


def test_text_pieces_and_labels():
    from slime_entropy.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    for text in ["Wait, the answer is \\boxed{10}.", "日本語 é ü\n\nthus so<|im_end|>", "a\tb  c"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = text_pieces(tokenizer, ids)
        assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids) == text
    invalid = [0xE6, 65, 0xE6, 0x97]  # a broken multi-byte sequence, then an unfinished one at the end
    assert "".join(text_pieces(tokenizer, invalid)) == tokenizer.decode(invalid)
    assert visible(" wait") == "␣wait" and visible("\n\n") == "⏎⏎" and visible("") == "∅"
    assert visible("a\x7f") == "a\\x7f"
    labeler = TokenLabeler(tokenizer)
    wait_id = tokenizer.convert_tokens_to_ids("Ġwait")
    assert labeler(wait_id) == "␣wait" and TokenLabeler(None)(7) == "#7"
