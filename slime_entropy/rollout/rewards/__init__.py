"""Rewards: answer extraction, math-verify grading, a time-limited grading pool, and per-group dispatch."""

from slime_entropy.rollout.rewards.compute import RewardComputer, scalar_reward
from slime_entropy.rollout.rewards.grading import RULE_BASED_TYPES, answers_equivalent, rule_based_reward

__all__ = ["RewardComputer", "scalar_reward", "RULE_BASED_TYPES", "answers_equivalent", "rule_based_reward"]
