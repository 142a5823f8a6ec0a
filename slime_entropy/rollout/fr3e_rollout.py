"""FR3E's partial rollouts on the engines, and the training data they make (the algorithm: :mod:`.fr3e`).

    explored = explore(manager, result, entropies)      # after the base rollout (RolloutManager.generate)
    per_rank = explored.train_data(manager.config, dp_size)

For each kept group (prompt) of the base rollout: B base trajectories are chosen (correct and wrong alternately), each
gets K anchors from its per-token scores (the trainer's entropies, or the engine's surprisal), and from each prefix
``prompt + response[:t_j]`` one batched ``/generate`` request (``input_ids``, the rollout's sampling parameters, the
same engines and weight version) draws M continuations, which the rollout's reward function grades like any sample.

A partial rollout is an ordinary sample of its prompt's group: ``tokens = prompt + prefix + continuation``, its
response is ``prefix + continuation`` (so the reward sees the whole answer and length shaping the whole length), its
``loss_mask`` is 0 on the prefix and 1 on the continuation (only the tokens it generated itself are trained), and its
``rollout_log_probs`` on the prefix are the base trajectory's. Each gets a fresh run-unique sample index from the data
source (so its ``sampling_seed`` is its own and resumes reproduce it) and a continuation budget of the base budget
minus the prefix length.

Order in the batch, per prompt: the n base samples, then for each chosen base trajectory (ascending) its K states
(ascending anchors) with M samples each. The training batch has ``n + B x K x M`` samples per prompt.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from slime_entropy.rollout import fr3e
from slime_entropy.rollout.batching import build_train_data, split_train_data
from slime_entropy.rollout.grouping import normalize_group_rewards, overlong_penalty
from slime_entropy.rollout.rewards.compute import scalar_reward
from slime_entropy.rollout.sample import Sample

__all__ = ["explore", "Fr3eRollout", "PromptExploration"]


@dataclass
class PromptExploration:
    """One prompt's base group and its partial rollouts."""

    base: list[Sample]
    chosen: list[int]
    """Positions in ``base`` of the explored trajectories."""
    anchors: list[list[int]]
    """Per chosen trajectory: its K anchor positions (response token offsets)."""
    anchor_scores: list[list[float]]
    partials: list[list[list[Sample]]] = field(default_factory=list)
    """``partials[b][j]``: the M continuations from state j of chosen trajectory b."""

    @property
    def samples(self) -> list[Sample]:
        return self.base + [s for chain in self.partials for state in chain for s in state]


@dataclass
class Fr3eRollout:
    rollout_id: int
    prompts: list[PromptExploration]
    advantages: list[float]
    """Per sample of :attr:`samples`: the modulated advantage."""
    metrics: dict[str, float]

    @property
    def samples(self) -> list[Sample]:
        return [s for p in self.prompts for s in p.samples]

    @property
    def groups(self) -> list[list[Sample]]:
        return [p.samples for p in self.prompts]

    def train_data(self, config, dp_size: int) -> list[dict[str, list[Any]]]:
        """Per-DP-rank slime rollout dicts: every key as for a plain rollout, ``rewards`` = the FR3E advantages."""
        data = build_train_data(
            self.groups,
            reward_key=config.reward.reward_key,
            normalization="none",
            max_response_len=config.sampling.max_response_len,
            overlong_buffer_len=config.groups.overlong_buffer_len,
            overlong_penalty_factor=config.groups.overlong_penalty_factor,
        )
        data["rewards"] = list(self.advantages)
        return split_train_data(
            data, dp_size, n_samples_per_prompt=config.fr3e.samples_per_prompt, balance=config.groups.balance_data
        )


def _scores(sample: Sample, entropy: list[float] | None, kind: str) -> list[float]:
    if kind == "surprisal":
        return fr3e.surprisal_scores(sample.rollout_log_probs)
    if entropy is None or len(entropy) != sample.response_length:
        raise ValueError(
            f"sample {sample.index}: FR3E entropy anchors need the trainer's per-token entropies of every base "
            f"response ({sample.response_length} tokens), got {None if entropy is None else len(entropy)}"
        )
    return [float(h) for h in entropy]


def _partial(manager, base: Sample, prefix_length: int) -> Sample:
    """A new sample of ``base``'s group holding ``base``'s first ``prefix_length`` response tokens."""
    source = manager.data_source
    index = source.next_sample_index
    source.next_sample_index += 1
    prompt_length = base.prompt_length
    prefix = base.response_tokens[:prefix_length]
    skip_special = manager.config.sampling.skip_special_tokens
    return Sample(
        index=index,
        group_index=base.group_index,
        prompt=base.prompt,
        prompt_text=base.prompt_text,
        tokens=list(base.tokens[:prompt_length]) + list(prefix),
        response=manager.tokenizer.decode(prefix, skip_special_tokens=skip_special) if prefix else "",
        response_length=prefix_length,
        label=base.label,
        metadata=dict(base.metadata),
        rollout_log_probs=list(base.rollout_log_probs[:prefix_length]),
    )


async def _explore_state(manager, state: list[Sample], budget: int, bar: tqdm) -> None:
    prefix_length = state[0].response_length
    await manager._generate_group(state, bar, max_new_tokens=budget)
    for sample in state:
        sample.loss_mask = [0] * prefix_length + [1] * (sample.response_length - prefix_length)
    await manager.rewards.score_group(state)


async def _explore(manager, result, entropies: dict[int, list[float]] | None) -> Fr3eRollout:
    config = manager.config
    cfg = config.fr3e
    key = config.reward.reward_key
    started = time.monotonic()
    prompts: list[PromptExploration] = []
    position = 0
    for group in result.groups:
        correct = [scalar_reward(s, key) > cfg.correct_threshold for s in group]
        chosen = fr3e.choose_base_trajectories(correct, cfg.base_per_prompt)
        anchors, anchor_scores = [], []
        for b in chosen:
            sample = group[b]
            entropy = None if entropies is None else entropies.get(position + b)
            scores = _scores(sample, entropy, cfg.anchor_score)
            chosen_anchors = fr3e.select_anchors(scores, cfg.num_anchors, sample.effective_loss_mask())
            anchors.append(chosen_anchors)
            anchor_scores.append([scores[t] for t in chosen_anchors])
        prompts.append(
            PromptExploration(base=list(group), chosen=chosen, anchors=anchors, anchor_scores=anchor_scores)
        )
        position += len(group)
    # Sample indices are handed out in batch order before anything runs, so they do not depend on completion order.
    tasks = []
    bar = tqdm(
        total=len(prompts) * cfg.extra_samples_per_prompt,
        desc=f"rollout {result.rollout_id} FR3E",
        unit="sample",
        disable=None if manager.progress is None else not manager.progress,
        leave=False,
    )
    for p in prompts:
        for b, chain_anchors in zip(p.chosen, p.anchors, strict=True):
            chain = []
            for t in chain_anchors:
                state = [_partial(manager, p.base[b], t) for _ in range(cfg.rollouts_per_anchor)]
                budget = config.sampling.max_new_tokens(p.base[b].prompt_length) - t
                tasks.append(asyncio.get_running_loop().create_task(_explore_state(manager, state, budget, bar)))
                chain.append(state)
            p.partials.append(chain)
    monitor = asyncio.get_running_loop().create_task(manager.pool.monitor(config.engine.health_check_interval))
    try:
        await asyncio.gather(*tasks)
    finally:
        monitor.cancel()
        bar.close()
        unfinished = [t for t in tasks if not t.done()]
        for task in unfinished:  # one state failed beyond its retries: stop the others, on the engines too
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            await manager.pool.abort_all()
    advantages, values, factors = _advantages(prompts, config)
    return Fr3eRollout(
        result.rollout_id,
        prompts,
        advantages,
        _metrics(prompts, values, factors, entropies, time.monotonic() - started, config),
    )


def _advantages(prompts: list[PromptExploration], config) -> tuple[list[float], list, list]:
    """Per sample (batch order) the modulated advantage; also each chain's values and factors (for the metrics)."""
    cfg, groups = config.fr3e, config.groups
    key = config.reward.reward_key
    out: list[float] = []
    all_values, all_factors = [], []
    for p in prompts:
        samples = p.samples
        shaped = [
            scalar_reward(s, key)
            + overlong_penalty(
                s.response_length,
                max_response_len=config.sampling.max_response_len,
                buffer_len=groups.overlong_buffer_len,
                factor=groups.overlong_penalty_factor,
            )
            for s in samples
        ]
        sizes = [len(p.base)] + [cfg.rollouts_per_anchor] * (len(p.chosen) * cfg.num_anchors)
        scope = sizes if cfg.normalization_scope == "state" else [len(samples)]
        normalized = normalize_group_rewards(shaped, scope, groups.normalization)
        v0 = fr3e.state_value([scalar_reward(s, key) for s in p.base], cfg.correct_threshold)
        chains_values, chains_factors = [], []
        for chain in p.partials:
            chain_values = [v0] + [
                fr3e.state_value([scalar_reward(s, key) for s in state], cfg.correct_threshold) for state in chain
            ]
            chains_values.append(chain_values)
            if cfg.modulation == "exp":
                chains_factors.append(fr3e.modulation_factors(chain_values, sharpen_power=cfg.sharpen_power))
            else:
                chains_factors.append([1.0] * len(chain_values))
        # S_0 is shared by the chains; its factor depends on V(S_0) only, except through sharpening's normalisation
        # over a chain: then the base samples take the chains' mean.
        state_factors = [statistics.fmean(f[0] for f in chains_factors)]
        for f in chains_factors:
            state_factors.extend(f[1:])
        by_state, start = [], 0
        for size in sizes:
            by_state.append(normalized[start : start + size])
            start += size
        for advantages in fr3e.state_advantages(by_state, state_factors):
            out.extend(advantages)
        all_values.extend(chains_values)
        all_factors.extend(chains_factors)
    return out, all_values, all_factors


def _metrics(prompts, values, factors, entropies, elapsed: float, config) -> dict[str, float]:
    cfg = config.fr3e
    key = config.reward.reward_key
    partials = [s for p in prompts for chain in p.partials for state in chain for s in state]
    base = [s for p in prompts for s in p.base]
    generated = [s.response_length - sum(1 for m in s.loss_mask if m == 0) for s in partials]
    base_tokens = sum(s.response_length for s in base)
    relative, scores, repeated = [], [], 0
    for p in prompts:
        for b, anchors, anchor_scores in zip(p.chosen, p.anchors, p.anchor_scores, strict=True):
            length = max(p.base[b].response_length, 1)
            relative.extend(t / length for t in anchors)
            scores.extend(anchor_scores)
            repeated += len(anchors) - len(set(anchors))
    metrics = {
        "fr3e/num_partial_samples": float(len(partials)),
        "fr3e/partial_raw_reward": statistics.fmean(scalar_reward(s, key) for s in partials) if partials else 0.0,
        "fr3e/partial_generated_tokens": float(sum(generated)),
        "fr3e/base_response_tokens": float(base_tokens),
        "fr3e/extra_generation_ratio": sum(generated) / max(base_tokens, 1),
        "fr3e/anchor_relative_position": statistics.fmean(relative) if relative else 0.0,
        "fr3e/anchor_score": statistics.fmean(scores) if scores else 0.0,
        "fr3e/num_repeated_anchors": float(repeated),
        "fr3e/value_s0": statistics.fmean(v[0] for v in values) if values else 0.0,
        "fr3e/modulation_mean": statistics.fmean(a for f in factors for a in f) if factors else 1.0,
        "fr3e/modulation_min": min((a for f in factors for a in f), default=1.0),
        "fr3e/modulation_max": max((a for f in factors for a in f), default=1.0),
        "perf/fr3e_rollout_time": elapsed,
    }
    for j in range(1, cfg.num_anchors + 1):
        metrics[f"fr3e/value_s{j}"] = statistics.fmean(v[j] for v in values) if values else 0.0
        metrics[f"fr3e/modulation_s{j}"] = statistics.fmean(f[j] for f in factors) if factors else 1.0
    if entropies is not None:
        tokens = [h for i in range(len(base)) for h in entropies.get(i, ())]
        metrics["fr3e/base_entropy"] = statistics.fmean(tokens) if tokens else 0.0
    return metrics


def explore(manager, result, entropies: dict[int, list[float]] | None = None) -> Fr3eRollout:
    """Run FR3E's partial rollouts for the base rollout ``result`` of ``manager`` (blocking). ``entropies``: per
    global sample position of ``result.samples``, the per-response-token entropies (``--fr3e-anchor-score
    entropy``)."""
    if manager.config.fr3e is None:
        raise ValueError("explore() needs a rollout config with --fr3e")
    return manager.run(_explore(manager, result, entropies))
