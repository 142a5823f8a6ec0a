"""FR3E's pure algorithm ("First Return, Entropy-Eliciting Explore", arXiv 2507.07017): anchors, blocks, state
values, advantages and their adaptive modulation. No engines, no torch.distributed; plain Python on per-sample lists.

Notation (one prompt; see ``docs/fr3e.md`` for the full picture)::

    base group      n samples from the prompt = the state S_0;  V(S_0) = their fraction correct
    a base trajectory y (R response tokens) with per-token scores h_1 .. h_R (entropy, or surprisal -log p)
    anchors         t_1 < ... < t_K: the K highest-scoring positions in [1, R - 1] (0-based; ties: earlier first)
    states          S_j = prompt + y[:t_j] (the prefix ends just before the uncertain token, which is re-sampled)
    blocks          B_0 = y[0:t_1), B_j = y[t_j:t_{j+1}), B_K = y[t_K:R)
    partials        M continuations from each S_j; V(S_j) = their fraction correct
    ΔV_0 = 1 - V(S_0),  ΔV_j = V(S_j) - V(S_{j-1})  (j >= 1)
    α_j = exp(-ΔV_j)    (optionally ΔV sharpened first: sign(ΔV) |ΔV|^p / Σ_j |ΔV_j|^p)
    Â   = α_j * normalise(r; the group of S_j)      on the tokens the sample generated itself

A state whose value rose over its predecessor (the block before it helped) has its advantages damped, one whose value
fell has them amplified: learning concentrates where the trajectory's success is still undecided.

The released code (``Zheng0428/FR3E``, ``compute_srpo_outcome_advantage``) differs in ways the options expose: it
picks anchors by the lowest sampled-token probability (``score="surprisal"`` here), and normalises rewards over all of
a prompt's samples at once (``normalization_scope="prompt"``) rather than per state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "select_anchors",
    "split_blocks",
    "surprisal_scores",
    "choose_base_trajectories",
    "state_value",
    "value_deltas",
    "sharpen",
    "modulation_factors",
    "state_advantages",
]


def select_anchors(scores: Sequence[float], num_anchors: int, loss_mask: Sequence[int] | None = None) -> list[int]:
    """The ``num_anchors`` highest-scoring response positions of one trajectory, ascending.

    ``scores[t]`` (length R) is the uncertainty of the distribution that response token ``t`` was drawn from. Candidate
    positions are ``1 .. R - 1`` (position 0 would give an empty prefix, i.e. the prompt itself, S_0) where the loss
    mask is 1; among equal scores the earlier position wins. A trajectory with fewer candidates than ``num_anchors``
    repeats its last anchor (0, the prompt, when it has none), so every trajectory yields exactly ``num_anchors``
    states and the rollout's size stays fixed; a repeated state is sampled again as its own group.
    """
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
    length = len(scores)
    if loss_mask is not None and len(loss_mask) != length:
        raise ValueError(f"loss_mask has {len(loss_mask)} entries for {length} scores")
    candidates = [t for t in range(1, length) if loss_mask is None or loss_mask[t]]
    for t in candidates:
        if not math.isfinite(float(scores[t])):
            raise ValueError(f"score at position {t} is {scores[t]}; anchors need finite scores")
    ranked = sorted(candidates, key=lambda t: (-float(scores[t]), t))[:num_anchors]
    anchors = sorted(ranked)
    while len(anchors) < num_anchors:
        anchors.append(anchors[-1] if anchors else 0)
    return anchors


def split_blocks(length: int, anchors: Sequence[int]) -> list[tuple[int, int]]:
    """The ``K + 1`` blocks ``[start, end)`` of a response of ``length`` tokens cut at ``anchors`` (ascending).
    Repeated anchors give empty blocks."""
    bounds = [0, *anchors, length]
    if any(bounds[i] > bounds[i + 1] for i in range(len(bounds) - 1)):
        raise ValueError(f"anchors {list(anchors)} must be ascending within [0, {length}]")
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def surprisal_scores(log_probs: Sequence[float]) -> list[float]:
    """The released code's anchor score: ``-log p`` of the sampled token (high = unlikely = uncertain), a proxy for
    the entropy that needs only the engine's log-probs."""
    return [-float(lp) for lp in log_probs]


def choose_base_trajectories(correct: Sequence[bool], num: int) -> list[int]:
    """Which ``num`` of a prompt's base samples get explored: correct and wrong ones alternately (a correct one first),
    each kind in sample order; when one kind runs out the other fills up. Returns ascending sample positions."""
    if not 1 <= num <= len(correct):
        raise ValueError(f"cannot choose {num} of {len(correct)} base trajectories")
    right = [i for i, c in enumerate(correct) if c]
    wrong = [i for i, c in enumerate(correct) if not c]
    chosen: list[int] = []
    while len(chosen) < num:
        for pool in (right, wrong):
            if pool and len(chosen) < num:
                chosen.append(pool.pop(0))
    return sorted(chosen)


def state_value(rewards: Sequence[float], threshold: float) -> float:
    """V(S) = the fraction of the state's rollouts whose reward exceeds ``threshold`` (correct)."""
    if not rewards:
        raise ValueError("a state needs at least one rollout")
    return sum(float(r) > threshold for r in rewards) / len(rewards)


def value_deltas(values: Sequence[float]) -> list[float]:
    """``[1 - V(S_0), V(S_1) - V(S_0), ..., V(S_K) - V(S_{K-1})]`` for the chain ``values = [V(S_0), ..., V(S_K)]``."""
    if not values:
        raise ValueError("need V(S_0)")
    return [1.0 - values[0]] + [values[j] - values[j - 1] for j in range(1, len(values))]


def sharpen(deltas: Sequence[float], power: float) -> list[float]:
    """``sign(d) |d|^p / Σ |d|^p`` over the chain (the released code's optional sharpening, p = 1.5 there); all zero
    when every delta is zero."""
    weights = [abs(d) ** power for d in deltas]
    total = sum(weights)
    if total == 0:
        return [0.0] * len(deltas)
    return [math.copysign(w / total, d) for w, d in zip(weights, deltas, strict=True)]


def modulation_factors(values: Sequence[float], *, sharpen_power: float | None = None) -> list[float]:
    """α_j = exp(-ΔV_j) for each state of the chain (see the module doc)."""
    deltas = value_deltas(values)
    if sharpen_power is not None:
        deltas = sharpen(deltas, sharpen_power)
    return [math.exp(-d) for d in deltas]


def state_advantages(normalized_by_state: Sequence[Sequence[float]], factors: Sequence[float]) -> list[list[float]]:
    """Â for every rollout of every state: ``factors[j] * normalized_by_state[j][i]`` (the normalisation, per state or
    over the prompt, is the caller's)."""
    if len(normalized_by_state) != len(factors):
        raise ValueError(f"{len(normalized_by_state)} states but {len(factors)} modulation factors")
    return [[alpha * a for a in normalized] for normalized, alpha in zip(normalized_by_state, factors, strict=True)]
