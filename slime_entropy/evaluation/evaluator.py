"""Evaluation through the rollout engines: n responses per prompt, rewards, avg@n and pass@k per eval set.

In the trainer (the rollout engines and grading workers of the :class:`~slime_entropy.rollout.RolloutManager`)::

    evaluator = Evaluator.from_args(args, tokenizer=rollout.tokenizer)    # None without --eval-prompt-data
    if evaluator is not None and evaluator.should_evaluate_before_training(start_rollout_id):
        log(evaluator.evaluate(rollout, rollout_id=start_rollout_id))     # {"eval/aime24": ..., ...}
    for rollout_id in ...:
        ...train, update the engine weights...
        if evaluator is not None and evaluator.should_evaluate(rollout_id, num_rollout_per_epoch):
            log(evaluator.evaluate(rollout, rollout_id))

``evaluate`` needs only ``.pool`` (an :class:`~slime_entropy.rollout.client.EnginePool`), ``.rewards`` (a
:class:`~slime_entropy.rollout.rewards.compute.RewardComputer`) and ``.run(coro)`` (runs a coroutine on the
pool's event loop): a ``RolloutManager`` has them, and so has :class:`EngineSession`, which launches engines and
grading workers for a standalone evaluation (``python -m slime_entropy.evaluation``).

Each prompt's n samples go to the engines as one batched ``/generate`` request (SGLang's batch input: the prompt is
prefilled once), every eval set at once, bounded by the engines' concurrency. The same retries and restarts as the
rollout apply; where the engines take per-sample seeds (the built-in engine), each eval sample has its own
(:data:`EVAL_SEED_OFFSET`), so a checkpoint's result does not depend on how requests were batched. A response is
correct when its scalar reward is >= ``--eval-correct-threshold``.

Logged metrics, per eval set NAME: ``eval/NAME`` = avg@n (mean correctness over the n responses of each prompt,
averaged over prompts; the paper's avg@32 with n = 32), ``eval/NAME/pass@k`` (unbiased estimator), and
``eval/NAME/reward_mean`` (mean scalar reward: slime's ``eval/NAME``), ``eval/NAME/truncated_ratio``,
``eval/NAME/response_length_mean``, ``eval/NAME/num_samples``, ``eval/NAME/num_reward_failures``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import time
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slime_entropy.evaluation.config import EvalConfig
from slime_entropy.evaluation.metrics import avg_at_n, dataset_pass_at_k
from slime_entropy.rollout.data import PromptDataset, PromptItem, load_prompt_records
from slime_entropy.rollout.sample import Sample, SampleStatus

__all__ = ["Evaluator", "EvalReport", "DatasetResult", "EngineSession", "sample_record", "generate_responses"]

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 7919
"""Where engines sample with per-sample seeds (the built-in engine), evaluation sample i uses the seed of
``--rollout-seed + EVAL_SEED_OFFSET`` and i: its draws differ from training sample i's, do not depend on batching,
and are the same at every evaluation, so checkpoints are compared on common random numbers."""


class EnginesLike(Protocol):
    """What :meth:`Evaluator.evaluate` needs: a ``RolloutManager`` or an :class:`EngineSession`."""

    pool: Any
    rewards: Any

    def run(self, coro, timeout: float | None = None): ...


@dataclass
class DatasetResult:
    """One eval set: ``groups[i]`` holds the n samples of prompt i (dataset order), ``correct`` mirrors it."""

    name: str
    groups: list[list[Sample]]
    correct: list[list[bool]]
    metrics: dict[str, float]

    @property
    def counts(self) -> list[tuple[int, int]]:
        """``(n, c)`` per prompt: samples and correct samples."""
        return [(len(c), sum(c)) for c in self.correct]


@dataclass
class EvalReport:
    rollout_id: int
    datasets: dict[str, DatasetResult]
    metrics: dict[str, float] = field(default_factory=dict)


def sample_record(sample: Sample, *, dataset: str, correct: bool | None, reward_key: str | None) -> dict[str, Any]:
    """One JSON line of ``--eval-output-dir`` (also read by ``slime_entropy.analysis --responses``)."""
    from slime_entropy.rollout.rewards.compute import scalar_reward

    reward = sample.reward
    return {
        "dataset": dataset,
        "index": sample.index,
        "group_index": sample.group_index,
        "prompt": sample.prompt,
        "prompt_text": sample.prompt_text,
        "label": sample.label,
        "tokens": sample.tokens,
        "response_length": sample.response_length,
        "response": sample.response,
        "rollout_log_probs": sample.rollout_log_probs,
        "reward": reward if isinstance(reward, (int, float, dict)) or reward is None else str(reward),
        "scalar_reward": None if reward is None else scalar_reward(sample, reward_key),
        "correct": correct,
        "status": sample.status.value,
        "weight_version": sample.weight_version,
        "reward_error": sample.metadata.get("reward_error"),
    }


def _load_dataset(config: EvalConfig, name: str, path: str, tokenizer) -> list[PromptItem]:
    try:
        records = load_prompt_records(
            path, input_key=config.input_key, label_key=config.label_key, metadata_key=config.metadata_key
        )
        dataset = PromptDataset(
            records,
            tokenizer,
            apply_chat_template=config.apply_chat_template,
            chat_template_kwargs=config.apply_chat_template_kwargs,
            max_prompt_len=None,  # dropping eval prompts would silently change the metric
        )
    except ValueError as e:
        raise ValueError(f"--eval-prompt-data {name} {path}: {e}") from None
    items = list(dataset)
    too_long = [item.record.origin for item in items if config.sampling.max_new_tokens(len(item.token_ids)) < 1]
    if too_long:
        raise ValueError(
            f"--eval-prompt-data {name}: {len(too_long)} prompt(s) leave no room for a response under "
            f"--rollout-max-context-len {config.sampling.max_context_len} (first: {too_long[0]}); raise it"
        )
    return items


async def generate_responses(
    pool,
    rewards,
    items: Sequence[PromptItem],
    *,
    n_samples_per_prompt: int,
    sampling,
    first_index: int = 0,
    group_indices: Sequence[int] | None = None,
    semaphore: asyncio.Semaphore | None = None,
) -> list[list[Sample]]:
    """n samples per prompt through ``pool`` (one batched ``/generate`` per prompt), scored by ``rewards`` (skipped
    when ``rewards`` is None). Returns the groups in ``items`` order; ``Sample.index`` counts from ``first_index``,
    ``Sample.group_index`` is ``group_indices[i]`` for prompt i (default: i)."""
    from slime_entropy.rollout.manager import apply_generate_output

    if semaphore is None:
        semaphore = asyncio.Semaphore(max(1, pool.config.total_concurrency // n_samples_per_prompt))

    async def one(position: int, item: PromptItem) -> list[Sample]:
        group = [
            Sample(
                index=first_index + position * n_samples_per_prompt + j,
                group_index=position if group_indices is None else group_indices[position],
                prompt=item.record.prompt,
                prompt_text=item.text,
                tokens=list(item.token_ids),
                label=copy.deepcopy(item.record.label),
                metadata=copy.deepcopy(item.record.metadata),
            )
            for j in range(n_samples_per_prompt)
        ]
        params = sampling.to_sglang(sampling.max_new_tokens(len(item.token_ids)))
        if getattr(pool.config, "seeded_sampling", False):  # the built-in engine: one generator per sample
            from slime_entropy.rollout.manager import sampling_seed

            base = pool.config.seed + EVAL_SEED_OFFSET
            params = [{**params, "sampling_seed": sampling_seed(base, s.index)} for s in group]
        payload = {"input_ids": [s.tokens for s in group], "sampling_params": params, "return_logprob": True}
        async with semaphore:
            outputs = await pool.generate(payload)
        if not isinstance(outputs, list) or len(outputs) != len(group):
            raise RuntimeError(
                f"engine answered a batch of {len(group)} prompts with {type(outputs).__name__} of length "
                f"{len(outputs) if isinstance(outputs, list) else '-'}"
            )
        for sample, output in zip(group, outputs, strict=True):
            apply_generate_output(sample, output)
        if rewards is not None:
            await rewards.score_group(group)
        return group

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(one(i, item)) for i, item in enumerate(items)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # One group failed beyond its retries (or we were cancelled): stop the others, here and on the engines.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.abort_all()
        raise


class Evaluator:
    """Evaluates the engines' current weights on the ``--eval-prompt-data`` sets (see the module docstring)."""

    def __init__(self, config: EvalConfig, tokenizer):
        self.config = config
        self.datasets: dict[str, list[PromptItem]] = {
            d.name: _load_dataset(config, d.name, d.path, tokenizer) for d in config.datasets
        }
        for name, items in self.datasets.items():
            logger.info("eval set %s: %d prompts x %d samples", name, len(items), config.n_samples_per_prompt)

    @classmethod
    def from_args(cls, args: Namespace, tokenizer, *, training: bool = True) -> Evaluator | None:
        """``None`` when ``--eval-prompt-data`` is absent; raises ``ValueError`` for invalid flags or data."""
        config = EvalConfig.from_args(args, training=training)
        return None if config is None else cls(config, tokenizer)

    # ----- schedule (slime's rule; see EvalConfig) -----
    def should_evaluate_before_training(self, start_rollout_id: int) -> bool:
        return self.config.due_before_training(start_rollout_id)

    def should_evaluate(self, rollout_id: int, num_rollout_per_epoch: int | None = None) -> bool:
        return self.config.due_after(rollout_id, num_rollout_per_epoch)

    # ----- evaluation -----
    def evaluate(self, engines: EnginesLike, rollout_id: int) -> dict[str, float]:
        """Evaluate on ``engines`` (a ``RolloutManager`` or :class:`EngineSession`); returns the ``eval/...`` metrics.

        Blocking; runs on the engines' event loop. Writes ``--eval-output-dir`` files when configured.
        """
        return engines.run(self.evaluate_async(engines.pool, engines.rewards, rollout_id)).metrics

    async def evaluate_async(self, pool, rewards, rollout_id: int) -> EvalReport:
        """Coroutine behind :meth:`evaluate` (run it on ``pool``'s event loop). Returns the full report."""
        if rewards is None:
            raise ValueError("evaluation needs reward workers: build the EngineSession with a RewardConfig")
        started = time.monotonic()
        n = self.config.n_samples_per_prompt
        failures_before = rewards.num_failures
        semaphore = asyncio.Semaphore(max(1, pool.config.total_concurrency // n))
        monitor = asyncio.get_running_loop().create_task(pool.monitor(pool.config.health_check_interval))
        names = list(self.datasets)
        items = [item for name in names for item in self.datasets[name]]
        positions = [i for name in names for i in range(len(self.datasets[name]))]  # the prompt's place in its set
        try:  # every eval set at once, so the engines stay busy
            groups = await generate_responses(
                pool,
                rewards,
                items,
                n_samples_per_prompt=n,
                sampling=self.config.sampling,
                group_indices=positions,
                semaphore=semaphore,
            )
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        all_groups, start = [], 0
        for name in names:
            part = groups[start : start + len(self.datasets[name])]
            start += len(part)
            all_groups.append(part)
        report = EvalReport(rollout_id, {})
        for name, groups in zip(names, all_groups, strict=True):
            report.datasets[name] = self._summarise(name, groups)
            report.metrics.update(report.datasets[name].metrics)
        report.metrics["eval/num_reward_failures"] = float(rewards.num_failures - failures_before)
        report.metrics["eval/time_s"] = time.monotonic() - started
        if self.config.output_dir is not None:
            self._write(report)
        for name, result in report.datasets.items():
            logger.info(
                "eval %s (rollout %d): %s",
                name,
                rollout_id,
                ", ".join(f"{k[len(name) + 6:]}={v:.4f}" for k, v in result.metrics.items() if k != f"eval/{name}"),
            )
        return report

    def _summarise(self, name: str, groups: list[list[Sample]]) -> DatasetResult:
        from slime_entropy.rollout.rewards.compute import scalar_reward

        threshold, key = self.config.correct_threshold, self.config.reward_key
        rewards = [[scalar_reward(s, key) for s in g] for g in groups]
        correct = [[r >= threshold for r in g] for g in rewards]
        counts = [(len(c), sum(c)) for c in correct]
        samples = [s for g in groups for s in g]
        n = self.config.n_samples_per_prompt
        prefix = f"eval/{name}"
        avg = avg_at_n(counts)
        metrics = {prefix: avg, f"{prefix}/avg@{n}": avg}
        for k in self.config.reported_pass_ks:
            metrics[f"{prefix}/pass@{k}"] = dataset_pass_at_k(counts, k)
        flat_rewards = [r for g in rewards for r in g]
        metrics[f"{prefix}/reward_mean"] = math.fsum(flat_rewards) / len(flat_rewards)
        metrics[f"{prefix}/truncated_ratio"] = sum(s.status == SampleStatus.TRUNCATED for s in samples) / len(samples)
        metrics[f"{prefix}/response_length_mean"] = sum(s.response_length for s in samples) / len(samples)
        metrics[f"{prefix}/num_samples"] = float(len(samples))
        metrics[f"{prefix}/num_reward_failures"] = float(sum("reward_error" in s.metadata for s in samples))
        return DatasetResult(name, groups, correct, metrics)

    def _write(self, report: EvalReport) -> None:
        out = Path(self.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, result in report.datasets.items():
            path = out / f"eval_{name}_rollout{report.rollout_id}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for group, flags in zip(result.groups, result.correct, strict=True):
                    for sample, ok in zip(group, flags, strict=True):
                        record = sample_record(sample, dataset=name, correct=ok, reward_key=self.config.reward_key)
                        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        summary = {"rollout_id": report.rollout_id, "metrics": report.metrics}
        (out / f"eval_rollout{report.rollout_id}.json").write_text(json.dumps(summary, indent=1) + "\n")


class EngineSession:
    """Engines + grading workers + an event loop, for work outside a ``RolloutManager`` (standalone evaluation,
    analysis). ``with EngineSession(engine_config, reward_config) as engines: evaluator.evaluate(engines, 0)``.

    ``reward_config=None``: no grading workers (``rewards`` is None; generation only). Everything is stopped on
    exit, also after errors.
    """

    def __init__(self, engine_config, reward_config=None, *, hook_args: Namespace | None = None, log_dir=None):
        import tempfile

        from slime_entropy.rollout.client import EnginePool, LoopThread
        from slime_entropy.rollout.rewards.compute import RewardComputer

        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="slime-entropy-engines-")
            log_dir = self._tmp.name
        self.loop = LoopThread(name="slime-entropy-eval")
        self.pool = EnginePool.from_config(engine_config, Path(log_dir))
        self.rewards = RewardComputer(reward_config, hook_args) if reward_config is not None else None
        try:
            self.loop.run(self.pool.start(), timeout=engine_config.startup_timeout + 60)
        except BaseException:
            self.close()
            raise

    def run(self, coro, timeout: float | None = None):
        return self.loop.run(coro, timeout)

    def close(self) -> None:
        try:
            if not self.loop.loop.is_closed():
                self.loop.run(self.pool.close(), timeout=120)
        except Exception:  # noqa: BLE001 - fall back to stopping the processes directly
            logger.exception("clean engine shutdown failed; stopping processes directly")
            self.pool.stop_processes_now()
        finally:
            if self.rewards is not None:
                self.rewards.close()
            self.loop.close()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
