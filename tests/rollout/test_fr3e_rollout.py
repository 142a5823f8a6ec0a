"""FR3E's partial rollouts through RolloutManager and real built-in engines (SGLang's ``input_ids`` API)."""

import argparse

import pytest
import torch

from slime_entropy.rollout import fr3e
from slime_entropy.rollout.arguments import add_rollout_arguments
from slime_entropy.rollout.fr3e_rollout import explore
from slime_entropy.rollout.grouping import normalize_group_rewards
from slime_entropy.rollout.manager import RolloutManager, sampling_seed

N, K, M, B = 4, 2, 3, 2


def _args(builtin_engines, prompts, *extra):
    parser = add_rollout_arguments(argparse.ArgumentParser())
    return parser.parse_args(
        [
            "--hf-checkpoint", str(builtin_engines.model_dir), "--prompt-data", str(prompts),
            "--input-key", "prompt", "--label-key", "label", "--apply-chat-template",
            "--rollout-max-response-len", "10", "--rollout-batch-size", "2", "--n-samples-per-prompt", str(N),
            "--custom-rm-path", "tests.rollout.hooks.reward_by_token_parity",
            "--rollout-external-engine-addrs", *builtin_engines.addrs,
            "--fr3e", "--fr3e-num-anchors", str(K), "--fr3e-rollouts-per-anchor", str(M),
            "--fr3e-base-per-prompt", str(B), *extra,
        ]
    )  # fmt: skip


def _entropies(model_dir, samples):
    """The full-distribution entropy of every response token under the HF model (what the trainer's pass reports)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    out = {}
    with torch.no_grad():
        for position, s in enumerate(samples):
            logits = model(torch.tensor([s.tokens])).logits[0, s.prompt_length - 1 : len(s.tokens) - 1]
            logp = torch.log_softmax(logits, dim=-1)
            out[position] = (-(logp.exp() * logp).sum(-1)).tolist()
    return out


def test_partial_rollouts_continue_the_anchored_prefixes_and_carry_modulated_advantages(builtin_engines, math_prompts):
    args = _args(builtin_engines, math_prompts, "--balance-data")
    with RolloutManager.from_args(args, progress=False) as rollout:
        base = rollout.generate(0)
        entropies = _entropies(builtin_engines.model_dir, base.samples)
        explored = explore(rollout, base, entropies)
        config = rollout.config
        assert len(explored.samples) == 2 * config.fr3e.samples_per_prompt == 2 * (N + B * K * M)
        indices = [s.index for s in explored.samples]
        partial_indices = [s.index for p in explored.prompts for chain in p.partials for st in chain for s in st]
        assert len(set(indices)) == len(indices) and min(partial_indices) >= 2 * N  # fresh run-unique indices
        position = 0
        expected_advantages = []
        for p, group in zip(explored.prompts, base.groups, strict=True):
            assert p.base == group and len(p.partials) == B
            correct = [s.reward > 0 for s in group]
            assert p.chosen == fr3e.choose_base_trajectories(correct, B)
            chains = []
            for b, anchors, chain in zip(p.chosen, p.anchors, p.partials, strict=True):
                trajectory = group[b]
                assert anchors == fr3e.select_anchors(entropies[position + b], K)  # the K most uncertain positions
                assert len(chain) == K and all(len(state) == M for state in chain)
                for t, state in zip(anchors, chain, strict=True):
                    for s in state:
                        prefix = trajectory.tokens[: trajectory.prompt_length + t]
                        assert s.tokens[: len(prefix)] == prefix and s.prompt_length == trajectory.prompt_length
                        assert s.rollout_log_probs[:t] == trajectory.rollout_log_probs[:t]
                        assert s.loss_mask == [0] * t + [1] * (s.response_length - t)
                        assert 1 <= s.response_length - t and s.response_length <= 10  # the base budget, in total
                        assert s.weight_version == trajectory.weight_version and s.reward is not None
                        assert s.reward == float(sum(s.response_tokens) % 2 == 0)  # graded on prefix + continuation
                        assert s.response.startswith(rollout.tokenizer.decode(trajectory.response_tokens[:t]))
                chains.append([fr3e.state_value([s.reward for s in group], 0.0)]
                              + [fr3e.state_value([s.reward for s in state], 0.0) for state in chain])  # fmt: skip
            # reference: GRPO per state, times exp(-dV) of the state's chain
            factors = [fr3e.modulation_factors(values) for values in chains]
            rewards = [s.reward for s in p.samples]
            sizes = [N] + [M] * (B * K)
            normalized = normalize_group_rewards(rewards, sizes, "grpo")
            alphas = [factors[0][0]] * N + [f for chain in factors for f in chain[1:] for _ in range(M)]
            assert factors[0][0] == factors[1][0]  # S_0's factor depends on V(S_0) only
            expected_advantages += [a * x for a, x in zip(alphas, normalized, strict=True)]
            position += len(group)
        assert explored.advantages == pytest.approx(expected_advantages, rel=1e-12, abs=1e-12)
        assert any(a != 0 for a in explored.advantages)
        per_rank = explored.train_data(config, dp_size=2)
        for data in per_rank:
            assert len(data["tokens"]) == config.fr3e.samples_per_prompt  # whole prompts per rank (--balance-data)
            for i, pos in enumerate(data["partition"]):
                s = explored.samples[pos]
                assert (
                    data["rewards"][i] == explored.advantages[pos] and data["loss_masks"][i] == s.effective_loss_mask()
                )
        m = explored.metrics
        assert m["fr3e/num_partial_samples"] == 2 * B * K * M
        assert 0 < m["fr3e/extra_generation_ratio"] and m["fr3e/partial_generated_tokens"] > 0
        assert {"fr3e/value_s0", "fr3e/value_s1", "fr3e/value_s2", "fr3e/modulation_s1", "fr3e/base_entropy",
                "fr3e/anchor_relative_position", "perf/fr3e_rollout_time"} <= set(m)  # fmt: skip


def test_surprisal_anchors_and_a_restored_position_reproduce_the_partial_rollouts(builtin_engines, math_prompts):
    """The released code's anchors (lowest sampled-token probability) need no trainer pass; the partial rollouts have
    their own seeded indices, so a manager restored to the same data position regenerates them token for token."""
    args = _args(builtin_engines, math_prompts, "--fr3e-anchor-score", "surprisal", "--fr3e-normalization-scope",
                 "prompt", "--fr3e-sharpen-power", "1.5")  # fmt: skip
    with RolloutManager.from_args(args, progress=False) as first:
        state = first.state_dict()
        base = first.generate(0)
        explored = explore(first, base, None)
        for p in explored.prompts:
            for b, anchors in zip(p.chosen, p.anchors, strict=True):
                assert anchors == fr3e.select_anchors([-lp for lp in p.base[b].rollout_log_probs], K)
        expected = [(s.index, s.tokens, s.reward) for s in explored.samples]
        # the released code's scope: one normalisation over the prompt's n + B K M samples, sharpened factors
        reference = []
        for p in explored.prompts:
            v0 = fr3e.state_value([s.reward for s in p.base], 0.0)
            factors = [fr3e.modulation_factors([v0] + [fr3e.state_value([s.reward for s in st], 0.0) for st in chain],
                                               sharpen_power=1.5) for chain in p.partials]  # fmt: skip
            alphas = [sum(f[0] for f in factors) / B] * N + [a for f in factors for a in f[1:] for _ in range(M)]
            normalized = normalize_group_rewards([s.reward for s in p.samples], [len(p.samples)], "grpo")
            reference += [a * x for a, x in zip(alphas, normalized, strict=True)]
        assert explored.advantages == pytest.approx(reference, rel=1e-12, abs=1e-12)
        # the engines' input_ids API continues a trajectory exactly: the base sample's own seed from its anchor
        s = next(s for s in base.samples if s.response_length >= 3)
        cut = s.prompt_length + 2
        params = {**first.config.sampling.to_sglang(s.response_length - 2),
                  "sampling_seed": sampling_seed(first.config.engine.seed, s.index)}  # fmt: skip
        out = first.run(first.pool.generate({"input_ids": s.tokens[:cut], "sampling_params": params,
                                             "return_logprob": True}))  # fmt: skip
        assert s.tokens[:cut] + out["output_ids"] == s.tokens
    with RolloutManager.from_args(args, progress=False) as resumed:
        resumed.load_state_dict(state)
        again = explore(resumed, resumed.generate(0), None)
        assert [(s.index, s.tokens, s.reward) for s in again.samples] == expected
        assert again.advantages == explored.advantages


def test_fr3e_without_entropies_refuses_by_name(builtin_engines, math_prompts):
    with RolloutManager.from_args(_args(builtin_engines, math_prompts), progress=False) as rollout:
        with pytest.raises(ValueError, match="trainer's per-token entropies"):
            explore(rollout, rollout.generate(0), {})


def test_dynamic_sampling_filters_the_base_groups_before_they_are_explored(builtin_engines, math_prompts):
    args = _args(
        builtin_engines, math_prompts, "--fr3e-anchor-score", "surprisal", "--over-sampling-batch-size", "3",
        "--dynamic-sampling-filter-path", "slime_entropy.rollout.filters.check_reward_nonzero_std",
    )  # fmt: skip
    with RolloutManager.from_args(args, progress=False) as rollout:
        base = rollout.generate(0)
        explored = explore(rollout, base, None)
    assert [p.base for p in explored.prompts] == base.groups and len(base.groups) == 2
    assert all(len({s.reward for s in p.base}) == 2 for p in explored.prompts)  # only groups with signal
    assert len(explored.samples) == 2 * (N + B * K * M)
    # B = 2 of a mixed group: one correct and one wrong trajectory are explored
    assert all(sorted(p.base[b].reward for b in p.chosen) == [0.0, 1.0] for p in explored.prompts)
