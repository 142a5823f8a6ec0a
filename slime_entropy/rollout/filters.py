"""Dynamic-sampling filters for ``--dynamic-sampling-filter-path`` (slime's hook contract).

A filter is called once per finished prompt group as ``fn(args, samples) -> bool`` (``True`` keeps the group);
it may also return an object with a boolean ``keep`` attribute (slime HEAD's ``DynamicFilterOutput``), and may be
``async``. ``args`` is the run's argparse namespace; ``samples`` carry their rewards already.
"""

from __future__ import annotations

from slime_entropy.rollout.sample import Sample

__all__ = ["check_reward_nonzero_std"]


def check_reward_nonzero_std(args, samples: list[Sample], **kwargs) -> bool:
    """DAPO's filter: keep a group unless all its rewards are equal (all correct or all wrong => no signal).

    Dict rewards are compared through ``args.reward_key`` (e.g. ``score`` for ``--rm-type dapo``).
    """
    from slime_entropy.rollout.rewards.compute import scalar_reward

    reward_key = getattr(args, "reward_key", None) if args is not None else None
    rewards = [scalar_reward(s, reward_key) for s in samples]
    return max(rewards) - min(rewards) > 0.0
