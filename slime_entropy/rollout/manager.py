"""The rollout loop: prompts -> engines -> rewards -> (dynamic sampling) -> per-DP-rank training data.

    with RolloutManager.from_args(args) as rollout:            # launches the engines, loads the data
        for rollout_id in range(num_rollout):
            result = rollout.generate(rollout_id)                # RolloutResult: kept groups + metrics
            per_rank = rollout.train_data(result, dp_size)       # slime-keyed dicts, one per DP rank
            ...train...
            rollout.update_weights_from_disk(hf_dir, weight_version=str(rollout_id + 1))

Dataflow of one ``generate`` call::

    data source --(sampling round: over_sampling_batch_size prompts)--> groups of n samples
        group task: one batched POST /generate for the n samples (SGLang batch input; in-flight samples bounded
                    by --sglang-server-concurrency per engine; retried as a whole on engine failure) -> reward of
                    the whole group (custom / group / rule-based in grading processes)
        finished group --filter(--dynamic-sampling-filter-path)--> kept | dropped
    while kept + in-flight groups < rollout_batch_size: start another sampling round
    once rollout_batch_size groups are kept: cancel the other groups, abort them on the engines, and hand their
    prompts back to the data source (served first next time); extra finished groups are handed back as well.

Without a filter every finished group is kept, so one round of ``--rollout-batch-size`` prompts (the default
``--over-sampling-batch-size``) makes the rollout. Kept groups are returned ordered by group index, which makes
a rollout's content independent of completion order; with ``seeded_sampling`` (the built-in engine) every sample also
carries its own ``sampling_seed``, so its tokens are independent of batching and retries, and a resumed run
regenerates the samples of the uninterrupted one. A progress bar counts generated samples.

Why one request per group (slime sends one per sample): the n samples share their prompt, so an SGLang engine
prefills it once (radix cache) when they arrive together, and the HTTP cost per sample drops n-fold, which is what
keeps the client's overhead small next to generation (see ``benchmarks/bench_rollout.py``). A failed request is
retried as a whole and its samples are filled only from a successful answer, so a group is never half-filled.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import tempfile
import time
import weakref
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from slime_entropy.rollout.batching import build_train_data, split_train_data
from slime_entropy.rollout.client import EnginePool, LoopThread
from slime_entropy.rollout.config import RolloutConfig
from slime_entropy.rollout.data import PromptDataset, RolloutDataSource, load_prompt_records
from slime_entropy.rollout.rewards.compute import RewardComputer, scalar_reward
from slime_entropy.rollout.rewards.pool import load_function
from slime_entropy.rollout.sample import Sample, SampleStatus

__all__ = ["RolloutManager", "RolloutResult", "apply_generate_output", "sampling_seed"]

logger = logging.getLogger(__name__)


def sampling_seed(rollout_seed: int, sample_index: int) -> int:
    """The ``sampling_seed`` of one sample: a function of ``--rollout-seed`` and the sample's run-unique index only,
    so the same sample gets the same draws after a retry, an engine restart or a resumed run."""
    return (rollout_seed * 1_000_003 + sample_index) % (2**63 - 1)


def apply_generate_output(sample: Sample, output: dict[str, Any]) -> None:
    """Append one SGLang ``/generate`` answer (with ``return_logprob``) to ``sample``."""
    meta = output["meta_info"]
    triples = meta["output_token_logprobs"]
    new_tokens = [int(t[1]) for t in triples]
    if "output_ids" in output and list(output["output_ids"]) != new_tokens:
        raise ValueError(f"sample {sample.index}: output_ids and output_token_logprobs disagree")
    sample.tokens = sample.tokens + new_tokens
    sample.response_length += len(new_tokens)
    sample.response += output["text"]
    sample.rollout_log_probs = sample.rollout_log_probs + [float(t[0]) for t in triples]
    kind = meta["finish_reason"]["type"] if meta.get("finish_reason") else "stop"
    sample.status = {"length": SampleStatus.TRUNCATED, "abort": SampleStatus.ABORTED}.get(kind, SampleStatus.COMPLETED)
    sample.weight_version = meta.get("weight_version")


@dataclass
class RolloutResult:
    rollout_id: int
    groups: list[list[Sample]]
    """``rollout_batch_size`` kept groups of ``n_samples_per_prompt`` samples, ordered by group index."""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g]


def _effective_max_prompt_len(config: RolloutConfig) -> int | None:
    """``--rollout-max-prompt-len``, tightened so that every kept prompt leaves room for at least one new token
    under ``--rollout-max-context-len`` (a response of 0 tokens cannot be trained on)."""
    limits = [config.data.max_prompt_len]
    if config.sampling.max_context_len is not None:
        limits.append(config.sampling.max_context_len - 1)
    limits = [n for n in limits if n is not None]
    return min(limits) if limits else None


def _shutdown(pool: EnginePool, loop: LoopThread, rewards: RewardComputer) -> None:
    try:
        pool.stop_processes_now()
    finally:
        rewards.close()
        loop.close()


class RolloutManager:
    def __init__(
        self,
        config: RolloutConfig,
        *,
        hook_args: Namespace | None = None,
        run_dir: str | Path | None = None,
        tokenizer=None,
        progress: bool | None = None,
    ):
        """Load the data, start the engines (or connect to external ones) and the grading workers.

        ``hook_args`` is handed to user hooks as their ``args`` (slime's contract). ``run_dir`` receives the engine
        logs (a temporary directory by default). ``progress=None`` shows the bar only on a terminal.
        """
        from transformers import AutoTokenizer

        self.config = config
        self.hook_args = hook_args
        self.progress = progress
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.engine.hf_checkpoint)
        records = load_prompt_records(
            config.data.prompt_data,
            input_key=config.data.input_key,
            label_key=config.data.label_key,
            metadata_key=config.data.metadata_key,
        )
        dataset = PromptDataset(
            records,
            self.tokenizer,
            apply_chat_template=config.data.apply_chat_template,
            chat_template_kwargs=config.data.apply_chat_template_kwargs,
            max_prompt_len=_effective_max_prompt_len(config),
        )
        self.data_source = RolloutDataSource(
            dataset,
            n_samples_per_prompt=config.groups.n_samples_per_prompt,
            shuffle=config.data.shuffle,
            seed=config.data.seed,
        )
        path = config.groups.dynamic_sampling_filter_path
        self.filter_fn = load_function(path) if path else None
        self.rewards = RewardComputer(config.reward, hook_args)
        self._tmp = None
        if run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="slime-entropy-rollout-")
            run_dir = self._tmp.name
        self.run_dir = Path(run_dir)
        self._group_slots: asyncio.Semaphore | None = None  # created on the manager's loop
        self._loop = LoopThread()
        self.pool = EnginePool.from_config(config.engine, self.run_dir / "engine-logs")
        self._finalizer = weakref.finalize(self, _shutdown, self.pool, self._loop, self.rewards)
        try:
            self._loop.run(self.pool.start())
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_args(cls, args: Namespace, **kwargs) -> RolloutManager:
        return cls(RolloutConfig.from_args(args), hook_args=args, **kwargs)

    @property
    def num_rollout(self) -> int:
        return self.config.data.resolve_num_rollout(
            len(self.data_source.dataset), self.config.groups.rollout_batch_size
        )

    @property
    def num_rollout_per_epoch(self) -> int:
        """Rollouts that use up the prompt data once (slime evaluates at every epoch end)."""
        return max(1, len(self.data_source.dataset) // self.config.groups.rollout_batch_size)

    # ----- one rollout -----
    async def _generate_group(self, group: list[Sample], bar: tqdm, max_new_tokens: int | None = None) -> None:
        """One batched ``/generate`` request for the whole group (all samples share the prompt). ``max_new_tokens``:
        the budget when the samples already hold part of their response (FR3E's continuations)."""
        if max_new_tokens is None:
            max_new_tokens = self.config.sampling.max_new_tokens(len(group[0].tokens))
        assert max_new_tokens >= 1, "prompts that fill --rollout-max-context-len are dropped when loading"
        params = self.config.sampling.to_sglang(max_new_tokens)
        if self.config.engine.seeded_sampling:
            params = [{**params, "sampling_seed": sampling_seed(self.config.engine.seed, s.index)} for s in group]
        payload = {"input_ids": [sample.tokens for sample in group], "sampling_params": params, "return_logprob": True}
        if self._group_slots is None:
            self._group_slots = asyncio.Semaphore(max(1, self.config.engine.total_concurrency // len(group)))
        async with self._group_slots:
            outputs = await self.pool.generate(payload)
        if not isinstance(outputs, list) or len(outputs) != len(group):
            raise RuntimeError(
                f"engine answered a batch of {len(group)} prompts with {type(outputs).__name__} "
                f"of length {len(outputs) if isinstance(outputs, list) else '-'}"
            )
        for sample, output in zip(group, outputs, strict=True):
            apply_generate_output(sample, output)
        bar.update(len(group))

    async def _run_group(self, group: list[Sample], bar: tqdm) -> list[Sample]:
        await self._generate_group(group, bar)
        await self.rewards.score_group(group)
        return group

    async def _keep(self, group: list[Sample]) -> bool:
        if self.filter_fn is None:
            return True
        verdict = self.filter_fn(self.hook_args, group)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict.keep if hasattr(verdict, "keep") else verdict)

    async def _generate(self, rollout_id: int) -> RolloutResult:
        groups_cfg = self.config.groups
        target = groups_cfg.rollout_batch_size
        started = time.monotonic()
        failures_before, retries_before = self.rewards.num_failures, self.pool.num_retries
        restarts_before = sum(s.num_restarts for s in self.pool.slots)
        kept: list[list[Sample]] = []
        tasks: dict[asyncio.Task, list[Sample]] = {}
        num_rounds = num_dropped = num_finished = 0
        monitor = asyncio.get_running_loop().create_task(self.pool.monitor(self.config.engine.health_check_interval))
        bar = tqdm(
            total=target * groups_cfg.n_samples_per_prompt,
            desc=f"rollout {rollout_id}",
            unit="sample",
            disable=(None if self.progress is None else not self.progress),
            leave=False,
        )
        try:
            while len(kept) < target:
                if len(kept) + len(tasks) < target:
                    if self.filter_fn is not None and num_rounds >= groups_cfg.dynamic_sampling_max_rounds:
                        raise RuntimeError(
                            f"rollout {rollout_id}: only {len(kept)} of {target} groups passed "
                            f"{groups_cfg.dynamic_sampling_filter_path} after {num_rounds} sampling rounds of "
                            f"{groups_cfg.sampling_batch_size} prompts; raise --dynamic-sampling-max-rounds or "
                            "--over-sampling-batch-size, or check the rewards (all groups uniform?)"
                        )
                    num_rounds += 1
                    for group in self.data_source.next_groups(groups_cfg.sampling_batch_size):
                        tasks[asyncio.get_running_loop().create_task(self._run_group(group, bar))] = group
                    bar.total = max(bar.total, (len(kept) + len(tasks)) * groups_cfg.n_samples_per_prompt)
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: tasks[t][0].group_index):
                    group = tasks.pop(task)
                    task.result()  # re-raises an engine failure that exhausted its retries
                    num_finished += 1
                    if len(kept) < target and await self._keep(group):
                        kept.append(group)
                    elif len(kept) >= target:
                        self.data_source.push_back_groups([group[0].group_index])  # surplus: serve again later
                    else:
                        num_dropped += 1
                bar.set_postfix(kept=len(kept), dropped=num_dropped)
        finally:
            monitor.cancel()
            cancelled = list(tasks.items())
            for task, _ in cancelled:
                task.cancel()
            if cancelled:
                await asyncio.gather(*(t for t, _ in cancelled), return_exceptions=True)
                await self.pool.abort_all()
                self.data_source.push_back_groups([g[0].group_index for _, g in cancelled])
            bar.close()
        kept.sort(key=lambda g: g[0].group_index)
        self.data_source.release_groups([g[0].group_index for g in kept])
        elapsed = time.monotonic() - started
        return RolloutResult(
            rollout_id,
            kept,
            self._metrics(
                kept,
                elapsed,
                num_rounds,
                num_finished,
                num_dropped,
                self.rewards.num_failures - failures_before,
                self.pool.num_retries - retries_before,
                sum(s.num_restarts for s in self.pool.slots) - restarts_before,
            ),
        )

    def _metrics(
        self, kept, elapsed, num_rounds, num_finished, num_dropped, num_reward_failures, num_retries, num_restarts
    ) -> dict[str, float]:
        samples = [s for g in kept for s in g]
        lengths = [s.response_length for s in samples]
        raw = [scalar_reward(s, self.config.reward.reward_key) for s in samples]
        return {
            "rollout/time_s": elapsed,
            "rollout/response_tokens_per_s": sum(lengths) / max(elapsed, 1e-9),
            "rollout/response_length_mean": sum(lengths) / max(len(lengths), 1),
            "rollout/response_length_max": float(max(lengths, default=0)),
            "rollout/truncated_ratio": sum(s.status == SampleStatus.TRUNCATED for s in samples) / max(len(samples), 1),
            "rollout/raw_reward_mean": sum(raw) / max(len(raw), 1),
            "rollout/num_sampling_rounds": float(num_rounds),
            "rollout/num_groups_finished": float(num_finished),
            "rollout/num_groups_dropped": float(num_dropped),
            "rollout/num_reward_failures": float(num_reward_failures),
            "rollout/num_request_retries": float(num_retries),
            "rollout/num_engine_restarts": float(num_restarts),
        }

    def generate(self, rollout_id: int) -> RolloutResult:
        """Generate and score one rollout (blocking). Raises if engines stay unavailable beyond the retries."""
        return self._loop.run(self._generate(rollout_id))

    def train_data(self, result: RolloutResult, dp_size: int) -> list[dict[str, list[Any]]]:
        """Per-DP-rank slime rollout dicts (see :mod:`slime_entropy.rollout.batching`)."""
        g = self.config.groups
        data = build_train_data(
            result.groups,
            reward_key=self.config.reward.reward_key,
            normalization=g.normalization,
            max_response_len=self.config.sampling.max_response_len,
            overlong_buffer_len=g.overlong_buffer_len,
            overlong_penalty_factor=g.overlong_penalty_factor,
        )
        return split_train_data(data, dp_size, n_samples_per_prompt=g.n_samples_per_prompt, balance=g.balance_data)

    # ----- weights -----
    def update_weights_from_disk(self, path: str | Path, weight_version: str | None = None) -> None:
        """Every engine loads the HF safetensors checkpoint at ``path``; later responses carry ``weight_version``."""
        self._loop.run(self.pool.update_weights_from_disk(str(path), weight_version))

    def run(self, coro, timeout: float | None = None):
        """Run a coroutine on the manager's event loop (e.g. a :class:`WeightBroadcaster` call)."""
        return self._loop.run(coro, timeout)

    # ----- lifecycle -----
    def state_dict(self) -> dict[str, Any]:
        return {"data_source": self.data_source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data_source.load_state_dict(state["data_source"])

    def close(self) -> None:
        if self._finalizer.alive:
            try:
                if not self._loop.loop.is_closed():
                    self._loop.run(self.pool.close(), timeout=120)
            except Exception:  # noqa: BLE001 - fall back to the synchronous stop below
                logger.exception("clean engine shutdown failed; stopping processes directly")
            self._finalizer()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RolloutManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
