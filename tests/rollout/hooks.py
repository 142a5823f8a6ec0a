"""User hooks (custom rewards, filters, grading tasks) referenced by dotted path from the rollout tests."""

from __future__ import annotations

import asyncio
import os
import signal
import time


def reward_by_group(args, sample):
    """Uniform rewards for groups whose index is a multiple of 3 (filtered by DAPO), mixed rewards otherwise."""
    if sample.group_index % 3 == 0:
        return 1.0
    return float(sample.index % 2)


async def async_reward_len(args, sample):
    await asyncio.sleep(0)
    return {"score": float(sample.response_length), "acc": True}


def group_reward(args, samples):
    return [float(i) for i, _ in enumerate(samples)]


def group_reward_wrong_length(args, samples):
    return [1.0]


def reward_raises(args, sample):
    if sample.index % 2:
        raise RuntimeError("boom in a reward")
    return 1.0


def reward_sleeps(args, sample):
    time.sleep(5)
    return 1.0


async def async_reward_sleeps(args, sample):
    await asyncio.sleep(30)
    return 1.0


def kill_engine_once(args, sample):
    """Fault injection: the first scored sample SIGKILLs the engine process ``args.pid_to_kill``."""
    if not args.killed:
        args.killed = True
        os.kill(args.pid_to_kill, signal.SIGKILL)
    return float(sample.index % 2)


def keep_even_groups(args, samples):
    return samples[0].group_index % 2 == 0


class Verdict:
    def __init__(self, keep):
        self.keep = keep


async def async_keep_all(args, samples):
    return Verdict(True)


def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


def raise_value_error(message):
    raise ValueError(message)


def exit_hard(code):
    os._exit(code)


def reward_by_token_parity(args, sample):
    """1 when the response's token ids sum to an even number: depends on every sampled token, so values of FR3E states
    differ from prefix to prefix even with a random model."""
    return float(sum(sample.response_tokens) % 2 == 0)
