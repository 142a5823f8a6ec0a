"""FR3E's pure algorithm against plain references and a hand-worked example, and its flags."""

import math
import random

import pytest

from slime_entropy.rollout import fr3e
from slime_entropy.rollout.arguments import add_fr3e_arguments
from slime_entropy.rollout.config import Fr3eConfig


def _reference_anchors(scores, k, mask):
    """Brute force: among candidate positions 1..R-1 with mask 1, the k-subset of largest score sum, ties broken by
    the lexicographically smallest sorted position list (i.e. earlier positions first)."""
    import itertools

    candidates = [t for t in range(1, len(scores)) if mask[t]]
    if len(candidates) <= k:
        base = sorted(candidates)
        return base + [base[-1] if base else 0] * (k - len(base))
    best = None
    for subset in itertools.combinations(candidates, k):
        ranks = sorted(subset, key=lambda t: (-scores[t], t))
        value = [(-scores[t], t) for t in ranks]
        if best is None or value < best[0]:
            best = (value, sorted(subset))
    return best[1]


def test_anchors_are_the_top_k_scores_after_position_zero():
    #           0    1    2    3    4    5    6    7
    scores = [9.0, 0.1, 2.0, 0.5, 2.0, 3.0, 0.0, 1.0]
    assert fr3e.select_anchors(scores, 3) == [2, 4, 5]  # position 0 (the prompt itself) is never an anchor
    assert fr3e.select_anchors(scores, 1) == [5]
    assert fr3e.select_anchors(scores, 2) == [2, 5]  # tie 2.0 at 2 and 4: the earlier wins
    assert fr3e.select_anchors(scores, 3, loss_mask=[1, 1, 1, 1, 1, 0, 1, 1]) == [2, 4, 7]
    assert fr3e.select_anchors(scores[:3], 4) == [1, 2, 2, 2]  # too short: the last anchor repeats
    assert fr3e.select_anchors([5.0], 2) == [0, 0]  # a one-token response: the states are the prompt itself
    with pytest.raises(ValueError, match="finite"):
        fr3e.select_anchors([0.0, float("nan"), 1.0], 1)


def test_anchors_match_a_brute_force_reference_on_random_scores():
    rng = random.Random(0)
    for _ in range(200):
        length = rng.randint(1, 9)
        scores = [float(rng.choice((0.0, 0.5, 1.0, 1.5, rng.random()))) for _ in range(length)]
        mask = [int(rng.random() < 0.8) for _ in range(length)]
        k = rng.randint(1, 4)
        assert fr3e.select_anchors(scores, k, mask) == _reference_anchors(scores, k, mask)


def test_blocks_partition_the_response_at_the_anchors():
    assert fr3e.split_blocks(8, [2, 4, 5]) == [(0, 2), (2, 4), (4, 5), (5, 8)]
    assert fr3e.split_blocks(3, [1, 2, 2]) == [(0, 1), (1, 2), (2, 2), (2, 3)]
    rng = random.Random(1)
    for _ in range(50):
        length = rng.randint(2, 30)
        scores = [rng.random() for _ in range(length)]
        anchors = fr3e.select_anchors(scores, 3)
        blocks = fr3e.split_blocks(length, anchors)
        assert [t for a, b in blocks for t in range(a, b)] == list(range(length))
        assert [b[0] for b in blocks[1:]] == anchors
    with pytest.raises(ValueError):
        fr3e.split_blocks(4, [3, 2])


def test_values_modulation_and_advantages_on_a_hand_worked_example():
    """One prompt, n = 4 base samples (2 correct), K = 2 anchors, M = 4 rollouts per state:

    V(S_0) = 2/4 = 0.5, V(S_1) = 3/4 = 0.75, V(S_2) = 1/4 = 0.25
    dV = [1 - 0.5, 0.75 - 0.5, 0.25 - 0.75] = [0.5, 0.25, -0.5]
    alpha = exp(-dV) = [0.60653066, 0.77880078, 1.64872127]
    per-state GRPO: S_0 rewards [1,0,1,0]: mean 0.5, unbiased std 0.57735027 -> +-0.8660254 (x alpha_0)
                    S_1 rewards [1,1,1,0]: mean 0.75, std 0.5 -> [0.5, 0.5, 0.5, -1.5] (x alpha_1)
    """
    assert fr3e.state_value([1, 0, 1, 0], 0.0) == 0.5
    values = [0.5, fr3e.state_value([1, 1, 1, 0], 0.0), fr3e.state_value([0, 1, 0, 0], 0.0)]
    assert values == [0.5, 0.75, 0.25]
    assert fr3e.value_deltas(values) == [0.5, 0.25, -0.5]
    alpha = fr3e.modulation_factors(values)
    assert alpha == pytest.approx([math.exp(-0.5), math.exp(-0.25), math.exp(0.5)], rel=1e-12)
    assert alpha == pytest.approx([0.60653066, 0.77880078, 1.64872127], rel=1e-8)
    normalized = [[0.8660254, -0.8660254, 0.8660254, -0.8660254], [0.5, 0.5, 0.5, -1.5]]
    adv = fr3e.state_advantages(normalized, alpha[:2])
    assert adv[0] == pytest.approx([0.52527096, -0.52527096, 0.52527096, -0.52527096], rel=1e-7)
    assert adv[1] == pytest.approx([0.38940039, 0.38940039, 0.38940039, -1.16820117], rel=1e-7)
    # the released code's sharpening, p = 1.5: |dV|^1.5 = [0.35355339, 0.125, 0.35355339], sum 0.83210678
    sharp = fr3e.sharpen([0.5, 0.25, -0.5], 1.5)
    assert sharp == pytest.approx([0.42488945, 0.15022110, -0.42488945], rel=1e-7)
    assert fr3e.sharpen([0.0, 0.0], 1.5) == [0.0, 0.0]
    assert fr3e.modulation_factors(values, sharpen_power=1.5) == pytest.approx([math.exp(-x) for x in sharp])


def test_base_trajectories_alternate_correct_and_wrong():
    assert fr3e.choose_base_trajectories([False, True, False, True], 1) == [1]
    assert fr3e.choose_base_trajectories([False, True, False, True], 2) == [0, 1]
    assert fr3e.choose_base_trajectories([False, False, True], 3) == [0, 1, 2]
    assert fr3e.choose_base_trajectories([False, False, False], 2) == [0, 1]
    with pytest.raises(ValueError):
        fr3e.choose_base_trajectories([True], 2)
    assert fr3e.surprisal_scores([-0.5, -2.0]) == [0.5, 2.0]


def _args(argv):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--n-samples-per-prompt", type=int, default=8)
    parser.add_argument("--rollout-stop", nargs="+", default=None)
    parser.add_argument("--disable-rewards-normalization", dest="rewards_normalization", action="store_false")
    return add_fr3e_arguments(parser).parse_args(argv)


def test_flags_build_a_frozen_config_and_refuse_nonsense_by_name():
    assert Fr3eConfig.from_args(_args([])) is None
    config = Fr3eConfig.from_args(_args(["--fr3e", "--fr3e-num-anchors", "3", "--fr3e-base-per-prompt", "2"]))
    assert (config.num_anchors, config.rollouts_per_anchor, config.base_per_prompt) == (3, 4, 2)
    assert config.samples_per_prompt == 8 + 2 * 3 * 4
    with pytest.raises(AttributeError):
        config.num_anchors = 5  # frozen
    cases = {
        ("--fr3e-num-anchors", "2"): "only apply with --fr3e",
        ("--fr3e", "--fr3e-num-anchors", "0"): "--fr3e-num-anchors must be >= 1",
        ("--fr3e", "--fr3e-base-per-prompt", "9"): "--fr3e-base-per-prompt 9",
        ("--fr3e", "--fr3e-rollouts-per-anchor", "1"): "--fr3e-rollouts-per-anchor 1",
        ("--fr3e", "--fr3e-sharpen-power", "-1"): "--fr3e-sharpen-power must be > 0",
        ("--fr3e", "--fr3e-modulation", "none", "--fr3e-sharpen-power", "1.5"): "no effect with --fr3e-modulation",
        ("--fr3e", "--rollout-stop", "</s>"): "--rollout-stop-token-ids",
    }
    for argv, message in cases.items():
        with pytest.raises(ValueError, match=message):
            Fr3eConfig.from_args(_args(list(argv)))
    # M = 1 is fine when the normalisation spans the prompt or is off
    assert Fr3eConfig.from_args(_args(["--fr3e", "--fr3e-rollouts-per-anchor", "1", "--fr3e-normalization-scope",
                                       "prompt"])).rollouts_per_anchor == 1  # fmt: skip
    assert Fr3eConfig.from_args(_args(["--fr3e", "--fr3e-rollouts-per-anchor", "1",
                                       "--disable-rewards-normalization"])) is not None  # fmt: skip
