"""The built-in default task: ``python train.py`` with no model and no data learns something on a laptop CPU.

What it is
    *Chain addition.* A prompt is 2-4 digits joined by ``+`` (``3+4+2``); the answer is worked out one addition per
    line and boxed::

        3+4=7
        7+2=9
        \\boxed{9}

    The reward is slime's rule-based ``--rm-type math`` (the last ``\\boxed{}`` against the label). The task has
    forking tokens in the paper's sense: the format is deterministic once learnt, the intermediate results are where a
    chain goes right or wrong, so the high-entropy tokens the filter keeps are the result digits.

Where the model's initial competence comes from
    A tiny Qwen3-architecture model (2 layers, hidden 64, tied embeddings, the byte-level tokenizer and chat template
    of :mod:`slime_entropy.testing.tiny_models`) gets a short supervised warm-up before RL: ``sft_steps`` Adam steps on
    worked solutions in which every intermediate result is, with probability ``noise`` (0.3), off by 1 or 2 (the
    chain then continues from the wrong value, so the box holds the chain's own final value). The warmed-up model
    therefore knows the format and the method but is unreliable exactly at the forks: sampled at temperature 1 it
    answers roughly 40% of the prompts correctly. That is the regime RLVR works in (the right answer is among the
    samples, not yet the policy's habit), and the reward has room to rise. The warm-up runs once (about a minute on
    two cores) and is cached under ``--embedded-cache-dir``, keyed by everything that defines it.

What ``python train.py`` then runs (every flag can be overridden on the command line; see :func:`default_task_argv`)
    16 prompts x 8 samples per rollout, GRPO advantages, one optimizer step per rollout (lr 1e-3), the filter on
    at rho = 0.2, 40 rollouts, a checkpoint after every rollout in ``<run-dir>/checkpoints`` (rerunning resumes),
    held-out evaluation every 10
    rollouts, rollout dumps and plots in ``runs/embedded/``. ``benchmarks/accept_embedded_learning.py`` checks that
    the mean reward of the last 5 rollouts is clearly above the first 5.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "DefaultTaskSpec",
    "DefaultTaskAssets",
    "DEFAULT_SPEC",
    "default_task_argv",
    "prepare_default_task",
    "problem_prompt",
    "worked_solution",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the task, data or warm-up recipe changes (invalidates caches)


@dataclass(frozen=True, kw_only=True)
class DefaultTaskSpec:
    """Everything that defines the default task's model, warm-up and data (the cache key)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 192
    max_position_embeddings: int = 256
    min_terms: int = 2
    max_terms: int = 4
    num_train_prompts: int = 4096
    num_eval_prompts: int = 256
    sft_steps: int = 1000
    sft_batch_size: int = 32
    sft_lr: float = 1e-2
    sft_warmup_steps: int = 20
    noise: float = 0.3
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEFAULT_SPEC = DefaultTaskSpec()


@dataclass(frozen=True)
class DefaultTaskAssets:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def train_data(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def eval_data(self) -> Path:
        return self.root / "eval.jsonl"

    @property
    def complete(self) -> bool:
        return (self.root / "COMPLETE").is_file()


def default_cache_dir() -> Path:
    return Path(os.environ.get("SLIME_ENTROPY_CACHE") or Path.home() / ".cache" / "slime_entropy")


def _spec_from_args(args) -> DefaultTaskSpec:
    if args.embedded_sft_steps is None:
        return DEFAULT_SPEC
    return DefaultTaskSpec(**{**asdict(DEFAULT_SPEC), "sft_steps": args.embedded_sft_steps})


def assets_for(args) -> DefaultTaskAssets:
    cache = Path(args.embedded_cache_dir) if args.embedded_cache_dir else default_cache_dir()
    return DefaultTaskAssets(cache / f"embedded-{_spec_from_args(args).key()}")


# ----- the task -----
def _problem(rng: random.Random, spec: DefaultTaskSpec) -> tuple[int, ...]:
    return tuple(rng.randint(0, 9) for _ in range(rng.randint(spec.min_terms, spec.max_terms)))


def problem_prompt(terms: tuple[int, ...]) -> str:
    return "+".join(str(t) for t in terms)


def worked_solution(terms: tuple[int, ...], rng: random.Random | None = None, noise: float = 0.0) -> str:
    """One addition per line, then the boxed result of the chain. With ``rng``, each intermediate result is off by
    1 or 2 with probability ``noise`` (never negative) and the chain continues from it."""
    lines, acc = [], terms[0]
    for term in terms[1:]:
        result = acc + term
        if rng is not None and rng.random() < noise:
            result = max(0, result + rng.choice((-2, -1, 1, 2)))
        lines.append(f"{acc}+{term}={result}")
        acc = result
    return "\n".join(lines) + f"\n\\boxed{{{acc}}}"


def _write_data(assets_root: Path, spec: DefaultTaskSpec) -> None:
    rng = random.Random(spec.seed)
    seen: set[tuple[int, ...]] = set()
    evaluation = []
    while len(evaluation) < spec.num_eval_prompts:
        terms = _problem(rng, spec)
        if terms not in seen:
            seen.add(terms)
            evaluation.append(terms)
    train = []
    while len(train) < spec.num_train_prompts:
        terms = _problem(rng, spec)
        if terms not in seen:  # held-out prompts never appear in training
            train.append(terms)

    def rows(problems):
        return "".join(
            json.dumps({"prompt": [{"role": "user", "content": problem_prompt(t)}], "label": str(sum(t))}) + "\n"
            for t in problems
        )

    (assets_root / "train.jsonl").write_text(rows(train))
    (assets_root / "eval.jsonl").write_text(rows(evaluation))


# ----- the warm-up -----
def _build_model(spec: DefaultTaskSpec, tokenizer):
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    return model


def _sft_batch(rng: random.Random, spec: DefaultTaskSpec, tokenizer):
    import torch

    sequences, labels = [], []
    for _ in range(spec.sft_batch_size):
        terms = _problem(rng, spec)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": problem_prompt(terms)}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(worked_solution(terms, rng, spec.noise) + tokenizer.eos_token, add_special_tokens=False)
        answer_ids = answer_ids["input_ids"]
        sequences.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)  # loss on the response only
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    label_ids = torch.full((len(sequences), width), -100)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(seq)] = 1
    return input_ids, label_ids, attention


def _warm_up(model, tokenizer, spec: DefaultTaskSpec, progress: bool) -> float:
    """``spec.sft_steps`` AdamW steps on noisy worked solutions; returns the last loss."""
    import torch
    from tqdm import tqdm

    rng = random.Random(spec.seed + 1)
    # One thread: for a model this small more threads only add synchronisation, and on a busy machine spinning
    # OpenMP threads are many times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / spec.sft_warmup_steps))
    model.train()
    loss_value = float("nan")
    bar = tqdm(
        range(spec.sft_steps),
        desc="default task: warm-up",
        unit="step",
        disable=None if progress else True,
        leave=False,
    )
    for _ in bar:
        input_ids, labels, attention = _sft_batch(rng, spec, tokenizer)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    model.eval()
    torch.set_num_threads(threads)
    return loss_value


def prepare_default_task(args, *, progress: bool = True) -> DefaultTaskAssets:
    """The default task's model and data, built (warm-up included) unless cached. Safe to run concurrently: the
    assets are written to a private directory and renamed into place."""
    import torch

    from slime_entropy.testing.tiny_models import build_tiny_tokenizer

    assets = assets_for(args)
    if assets.complete:
        return assets
    spec = _spec_from_args(args)
    started = time.monotonic()
    logger.info("default task: building the tiny model and its warm-up (%d steps; cached in %s)", spec.sft_steps,
                assets.root)  # fmt: skip
    tmp = assets.root.parent / f".{assets.root.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write_data(tmp, spec)
        tokenizer = build_tiny_tokenizer()
        with torch.random.fork_rng(devices=[]):
            model = _build_model(spec, tokenizer)
            loss = _warm_up(model, tokenizer, spec, progress)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "spec.json").write_text(json.dumps({"format": FORMAT_VERSION, **asdict(spec)}, indent=1) + "\n")
        (tmp / "COMPLETE").write_text(f"warm-up loss {loss:.4f}, {time.monotonic() - started:.0f} s\n")
        try:
            tmp.rename(assets.root)
        except OSError:
            if not assets.complete:  # not someone else's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("default task: warm-up done in %.0f s (final loss %.3f)", time.monotonic() - started, loss)
    return assets


@contextlib.contextmanager
def planning_assets(args: argparse.Namespace) -> Iterator[argparse.Namespace]:
    """The flags to plan ``--dry-run`` with. Before the default task has ever run, the plan needs the model's
    config.json and the data files, but the warm-up (about a minute) is training, which a dry run must not do: this
    writes the data and the untrained tiny model (same architecture and tokenizer) to a temporary directory, yields a
    copy of ``args`` whose flags that name the uncached assets point there, and removes it afterwards. For other runs
    and once the cache exists it yields ``args`` itself. ``args`` is never changed."""
    assets = assets_for(args)
    if not getattr(args, "embedded", False) or assets.complete:
        yield args
        return
    from slime_entropy.testing.tiny_models import build_tiny_tokenizer

    with tempfile.TemporaryDirectory(prefix="slime-entropy-plan-") as tmp:
        stand_in = DefaultTaskAssets(Path(tmp))
        spec = _spec_from_args(args)
        _write_data(stand_in.root, spec)
        tokenizer = build_tiny_tokenizer()
        _build_model(spec, tokenizer).save_pretrained(stand_in.model_dir, safe_serialization=True)
        tokenizer.save_pretrained(stand_in.model_dir)
        logger.info("default task: not built yet; planning with its untrained model in %s (same shapes)", tmp)
        swap = {str(assets.model_dir): str(stand_in.model_dir), str(assets.train_data): str(stand_in.train_data),
                str(assets.eval_data): str(stand_in.eval_data)}  # fmt: skip
        planned = argparse.Namespace(**vars(args))
        planned.hf_checkpoint = swap.get(args.hf_checkpoint, args.hf_checkpoint)
        planned.prompt_data = swap.get(args.prompt_data, args.prompt_data)
        if args.eval_prompt_data:
            planned.eval_prompt_data = [swap.get(item, item) for item in args.eval_prompt_data]
        yield planned


def default_task_argv(args) -> list[str]:
    """The default task's flags (the user's own flags are parsed after these and win). No ``--load``: a run resumes
    from its ``--save`` (the trainer's rule), so ``--save DIR`` of the user's moves both. No
    ``--num-steps-per-rollout``: one step per rollout is the default, and a ``--global-batch-size`` of the user's
    must not contradict it."""
    assets = assets_for(args)
    run_dir = args.run_dir or args.save or _default_run_dir()  # as every task: the run directory defaults to --save
    checkpoints = str(Path(run_dir) / "checkpoints")
    return [
        "--hf-checkpoint", str(assets.model_dir), "--prompt-data", str(assets.train_data),
        "--input-key", "prompt", "--label-key", "label", "--apply-chat-template", "--rollout-shuffle",
        "--rm-type", "math", "--reward-num-workers", "1",
        "--rollout-batch-size", "16", "--n-samples-per-prompt", "8",
        "--rollout-max-response-len", "32", "--rollout-temperature", "1.0", "--num-rollout", "40",
        "--builtin-engine-num-threads", "2",
        "--high-entropy-token-filter", "--entropy-percentile", "0.2",
        "--lr", "1e-3", "--weight-decay", "0.0",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096", "--logprob-entropy-backend", "eager",
        "--eval-interval", "10", "--eval-prompt-data", "heldout", str(assets.eval_data),
        "--run-dir", run_dir, "--save", checkpoints, "--save-interval", "1",
        "--save-rollouts",
    ]  # fmt: skip


def _default_run_dir() -> str:
    return "runs/embedded"
