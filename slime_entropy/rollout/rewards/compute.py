"""Reward dispatch for a group of samples: custom hook, group hook, or rule-based grading in worker processes.

Order (slime's): ``--custom-rm-path`` (per sample ``fn(args, sample) -> float | dict``, or with ``--group-rm``
``fn(args, samples) -> list``; either may be ``async``), else the sample's ``metadata["rm_type"]``, else
``--rm-type``.

Failure policy: any exception or time-out while scoring a sample gives it reward ``0.0``, stores the reason in
``sample.metadata["reward_error"]``, increments :attr:`RewardComputer.num_failures` and logs a warning (the first
few in full, then one line per 100 failures). A reward failure never stops the rollout.

Time limits: rule-based grading runs in :class:`~slime_entropy.rollout.rewards.pool.GradingPool` processes, whose
workers are killed after ``timeout`` (+ grace). Custom hooks run in this process: an ``async`` hook is cancelled at
the limit; a synchronous hook runs in a helper thread that cannot be killed, so the sample is scored 0.0 at the
limit while the thread runs on in the background.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from argparse import Namespace
from typing import Any

from slime_entropy.rollout.config import RewardConfig
from slime_entropy.rollout.rewards.grading import parse_rm_type
from slime_entropy.rollout.rewards.pool import GradingPool, load_function
from slime_entropy.rollout.sample import Sample

__all__ = ["RewardComputer", "scalar_reward"]

logger = logging.getLogger(__name__)

_GRADER = "slime_entropy.rollout.rewards.grading.rule_based_reward"
_NUM_DETAILED_WARNINGS = 5
_WARNING_INTERVAL = 100


def scalar_reward(sample: Sample, reward_key: str | None) -> float:
    """The number the advantages are built from: ``reward[reward_key]`` for dict rewards, else ``reward``."""
    reward = sample.reward
    if isinstance(reward, dict):
        if reward_key is None:
            raise ValueError(
                f"sample {sample.index}: the reward is a dict with keys {sorted(reward)}; pass --reward-key "
                "(e.g. --reward-key score for --rm-type dapo)"
            )
        if reward_key not in reward:
            raise ValueError(f"--reward-key {reward_key!r} is not in the reward dict (keys: {sorted(reward)})")
        return float(reward[reward_key])
    if reward is None:
        raise ValueError(f"sample {sample.index} has no reward yet")
    return float(reward)


async def _maybe_await(fn, *args, timeout: float):
    if inspect.iscoroutinefunction(fn):
        return await asyncio.wait_for(fn(*args), timeout)
    result = await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
    if inspect.isawaitable(result):  # a sync function returning a coroutine
        result = await asyncio.wait_for(result, timeout)
    return result


class RewardComputer:
    def __init__(self, config: RewardConfig, hook_args: Namespace | None = None):
        self.config = config
        self.hook_args = hook_args
        self.custom_fn = load_function(config.custom_rm_path) if config.custom_rm_path else None
        self._pool: GradingPool | None = None
        self.num_failures = 0
        self.num_scored = 0

    @property
    def pool(self) -> GradingPool:
        if self._pool is None:
            self._pool = GradingPool(self.config.num_workers)
        return self._pool

    def _fail(self, sample: Sample, reason: str) -> None:
        sample.reward = 0.0
        sample.metadata["reward_error"] = reason
        self.num_failures += 1
        if self.num_failures <= _NUM_DETAILED_WARNINGS:
            logger.warning("reward of sample %d set to 0 (failure %d): %s", sample.index, self.num_failures, reason)
        elif self.num_failures % _WARNING_INTERVAL == 0:
            logger.warning(
                "%d reward failures so far (each scored 0); last: %s",
                self.num_failures,
                reason.splitlines()[-1] if reason else "",
            )

    async def _rule_based(self, sample: Sample) -> None:
        rm_type = sample.metadata.get("rm_type") or self.config.rm_type
        try:
            parse_rm_type(rm_type)
            timeout_seconds = max(1, int(self.config.timeout))
            sample.reward = await asyncio.to_thread(
                self.pool.run,
                _GRADER,
                (rm_type, sample.response, sample.label),
                {"timeout_seconds": timeout_seconds},
                timeout=self.config.timeout,
            )
        except Exception as e:  # noqa: BLE001 - the policy is: any failure scores 0 and is counted
            self._fail(sample, f"{type(e).__name__}: {e}")

    async def _custom_one(self, sample: Sample) -> None:
        try:
            sample.reward = await _maybe_await(self.custom_fn, self.hook_args, sample, timeout=self.config.timeout)
        except Exception as e:  # noqa: BLE001
            self._fail(sample, f"{type(e).__name__} in {self.config.custom_rm_path}: {e}")

    async def _custom_group(self, samples: list[Sample]) -> None:
        try:
            rewards: Any = await _maybe_await(self.custom_fn, self.hook_args, samples, timeout=self.config.timeout)
            if not isinstance(rewards, (list, tuple)) or len(rewards) != len(samples):
                raise ValueError(
                    f"--group-rm hook returned {type(rewards).__name__} of length "
                    f"{len(rewards) if hasattr(rewards, '__len__') else '?'} for {len(samples)} samples"
                )
        except Exception as e:  # noqa: BLE001
            for sample in samples:
                self._fail(sample, f"{type(e).__name__} in {self.config.custom_rm_path}: {e}")
            return
        for sample, reward in zip(samples, rewards, strict=True):
            sample.reward = reward

    async def score_group(self, samples: list[Sample]) -> None:
        """Set ``reward`` on every sample of one prompt group (in place)."""
        if self.custom_fn is not None and self.config.group_rm:
            await self._custom_group(samples)
        elif self.custom_fn is not None:
            await asyncio.gather(*(self._custom_one(s) for s in samples))
        else:
            await asyncio.gather(*(self._rule_based(s) for s in samples))
        self.num_scored += len(samples)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
