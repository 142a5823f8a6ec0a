"""What the driver checks before it starts Ray or any process: the inputs a run reads, and where it resumes.

    config = preflight(config)        # ValueError: every problem, each naming the file (and line) and the fix

A mistake in the data or a damaged checkpoint found by a worker 30 s into the run would surface as a dead actor;
found here, it is one message and exit status 2, and nothing was started.

Inputs
    ``--hf-checkpoint`` (a Hugging Face model directory whose tokenizer loads), the chat template when
    ``--apply-chat-template`` is given (present, and it renders the first prompts), ``--prompt-data`` and every
    ``--eval-prompt-data`` file: every row is read in one streamed pass (:data:`MAX_CHECKED_ROWS` at most; a longer
    file is checked up to that row here and in full when the rollout worker loads it) and checked as the rollout
    worker will read it: valid JSON, ``--input-key``, ``--label-key``, ``--metadata-key``.

Resume
    :func:`resume_plan` decides where the run resumes. The checkpoint ``--load`` names (``--ckpt-step``, else the
    tracker's) must be complete (:func:`~slime_entropy.megatron.checkpoint.verify_checkpoint`) and its data position
    readable. A damaged newest checkpoint is passed over for the newest complete one, said on the console (the
    rollouts after it are redone); a damaged ``--ckpt-step`` stops the run, naming the steps that are complete. A run
    directory whose earlier attempt checkpointed elsewhere, or was made with other training flags, is refused: the
    rerun would start over and drop its metrics, or continue someone else's training. ``--dry-run`` prints the same
    findings as warnings.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slime_entropy.megatron.config import CheckpointConfig
    from slime_entropy.trainer.config import TrainerConfig

__all__ = ["MAX_CHECKED_ROWS", "ResumePlan", "resume_plan", "check_inputs", "preflight", "dry_run_findings"]

logger = logging.getLogger(__name__)

MAX_CHECKED_ROWS = 1_000_000
"""Rows of a data file the driver checks before starting. A million rows of 136 bytes (136 MB) took 15-21 s on a
loaded 2-core machine, half the rollout worker's full load of the same file (measured with
``check_prompt_records`` / ``load_prompt_records`` on a generated file)."""


@dataclass
class ResumePlan:
    """Where a run resumes: ``start`` (the first rollout it trains), the checkpoint step it loads (None: none),
    ``notes`` for the console and ``problems`` that stop it."""

    start: int = 0
    step: int | str | None = None
    fallback: bool = False
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _checkpoint_problem(load: str, step: int | str) -> str | None:
    from slime_entropy.megatron.checkpoint import iteration_dirname, verify_checkpoint
    from slime_entropy.trainer.resume import data_state_path, read_data_state

    problem = verify_checkpoint(Path(load) / iteration_dirname(step))
    if problem is None and step != "release":
        state = data_state_path(load, int(step))
        if state.is_file():
            try:
                read_data_state(state)
            except ValueError as e:
                problem = str(e)
    return problem


def _complete_steps(load: str, below: int | None = None) -> list[int]:
    from slime_entropy.megatron.checkpoint import list_iterations

    steps = [s for s in list_iterations(load) if below is None or s < below]
    return [s for s in steps if _checkpoint_problem(load, s) is None]


def resume_plan(checkpoint: CheckpointConfig) -> ResumePlan:
    """Where a run with these checkpoint flags resumes (see the module doc). Reads sizes and small JSON files only."""
    from slime_entropy.megatron.checkpoint import CheckpointError, read_tracker

    plan = ResumePlan()
    load = checkpoint.load
    if load is None or checkpoint.finetune:
        return plan
    step = checkpoint.ckpt_step
    if step is not None:
        problem = _checkpoint_problem(load, step)
        if problem is not None:
            complete = _complete_steps(load)
            plan.problems.append(
                f"--ckpt-step {step}: the checkpoint is damaged: {problem}; "
                + (f"pass --ckpt-step {complete[-1]} (complete: {complete})" if complete else
                   f"{load} holds no complete checkpoint")  # fmt: skip
            )
            return plan
    else:
        try:
            step = read_tracker(load)
        except CheckpointError as e:
            plan.problems.append(f"{e} (--load {load})")
            return plan
        if step is None:
            return plan
        problem = _checkpoint_problem(load, step)
        if problem is not None:
            complete = _complete_steps(load, below=None if step == "release" else int(step))
            if not complete:
                plan.problems.append(
                    f"the newest checkpoint in --load {load} (step {step}) is damaged: {problem}; there is no older "
                    "complete checkpoint to resume from: move the directory away (or pass another --load/--save) to "
                    "start over"
                )
                return plan
            plan.notes.append(
                f"resume: the newest checkpoint in {load} (step {step}) is damaged: {problem}. Resuming from step "
                f"{complete[-1]}, the newest complete one (as --ckpt-step {complete[-1]}); the rollouts after it are "
                "redone"
            )
            step, plan.fallback = complete[-1], True
    plan.step = step
    plan.start = 0 if step == "release" else int(step) + 1
    if plan.start:
        plan.notes.append(
            f"resume: starting at rollout {plan.start}, after the checkpoint of rollout {plan.start - 1} in {load}"
        )
    return plan


def _run_dir_problems(flags: argparse.Namespace, load: str | None, run_dir: Path, start: int) -> list[str]:
    """The run directory against this command (``flags`` as ``args.json`` records them, ``--load``): the same
    checkpoints and, when resuming, the same training flags."""
    from slime_entropy.megatron.checkpoint import read_tracker
    from slime_entropy.trainer.resume import RunDirectory

    recorded = run_dir / "args.json"
    if not recorded.is_file():
        return []
    try:
        previous = json.loads(recorded.read_text())
    except json.JSONDecodeError:
        return [f"{recorded} is damaged (not valid JSON); remove it, or use another --run-dir"]
    problems = []
    saved_to = previous.get("save")
    if saved_to and Path(saved_to).resolve() != Path(load or "").resolve():
        try:
            iteration = read_tracker(saved_to)
        except ValueError:
            iteration = None
        if iteration is not None:
            problems.append(
                f"--run-dir {run_dir} belongs to a run that saved its checkpoints to {saved_to} (up to step "
                f"{iteration}), but this command resumes from {load or 'no checkpoint (no --load/--save)'}: it "
                f"would start over and drop that run's metrics. Pass --save {saved_to} (or --load {saved_to}) to "
                "resume it, or another --run-dir for a new run"
            )
    if start > 0:
        problems += RunDirectory.flag_differences(recorded, flags)
    return problems


def _check_data(path: str, what: str, *, input_key, label_key, metadata_key, tokenizer, chat_template: bool,
                template_kwargs) -> None:  # fmt: skip
    from slime_entropy.rollout.data import PromptDataset, check_prompt_records

    first = check_prompt_records(
        path, input_key=input_key, label_key=label_key, metadata_key=metadata_key, max_rows=MAX_CHECKED_ROWS
    )
    if tokenizer is not None:
        try:
            PromptDataset(first, tokenizer, apply_chat_template=chat_template, chat_template_kwargs=template_kwargs)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - a template that fails to render, whatever it raises
            raise ValueError(
                f"{first[0].origin}: the chat template of --hf-checkpoint fails on this prompt ({type(e).__name__}: "
                f"{e}); fix the template or the prompt, or drop --apply-chat-template"
            ) from None
    logger.debug("checked %s %s", what, path)


def check_inputs(config: TrainerConfig) -> list[str]:
    """Problems of the model directory, tokenizer, chat template and data files (see the module doc)."""
    problems: list[str] = []
    model = Path(config.rollout.engine.hf_checkpoint)
    tokenizer = None
    if not model.is_dir():
        problems.append(f"--hf-checkpoint {model}: no such directory (a Hugging Face model directory)")
    elif not (model / "config.json").is_file():
        problems.append(f"--hf-checkpoint {model}: no config.json there; is it a Hugging Face model directory?")
    else:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model))
        except Exception as e:  # noqa: BLE001 - whatever transformers raises for a broken tokenizer
            problems.append(f"--hf-checkpoint {model}: its tokenizer does not load ({type(e).__name__}: {e})")
    data = config.rollout.data
    try:
        _check_data(
            data.prompt_data, "--prompt-data", input_key=data.input_key, label_key=data.label_key,
            metadata_key=data.metadata_key, tokenizer=tokenizer, chat_template=data.apply_chat_template,
            template_kwargs=data.apply_chat_template_kwargs,
        )  # fmt: skip
    except ValueError as e:
        problems.append(str(e))
    evaluation = config.eval
    for dataset in evaluation.datasets if evaluation is not None else ():
        try:
            _check_data(
                dataset.path, "--eval-prompt-data", input_key=evaluation.input_key, label_key=evaluation.label_key,
                metadata_key=evaluation.metadata_key, tokenizer=tokenizer,
                chat_template=evaluation.apply_chat_template, template_kwargs=evaluation.apply_chat_template_kwargs,
            )  # fmt: skip
        except ValueError as e:
            problems.append(f"--eval-prompt-data {dataset.name}: {e}")
    return problems


def preflight(config: TrainerConfig) -> TrainerConfig:
    """Check everything (module doc) and return the config to run: with a damaged newest checkpoint passed over,
    ``--ckpt-step`` set to the one resumed from. Raises one ``ValueError`` listing every problem."""
    plan = resume_plan(config.megatron.checkpoint)
    problems = list(plan.problems)
    if plan.fallback:
        config = config.resuming_from(plan.step)  # what the training ranks load
    if not plan.problems:
        problems += _run_dir_problems(config.slime_args, config.load_dir, config.run.run_dir, plan.start)
    problems += check_inputs(config)
    if problems:
        raise ValueError("\n".join(problems))
    for note in plan.notes:
        logger.log(logging.WARNING if plan.fallback else logging.INFO, "%s", note)
    return config


def dry_run_findings(args: argparse.Namespace, config: TrainerConfig | None = None) -> list[str]:
    """What a real start of this command would say about resuming: its notes, and its problems as warnings (the
    dry run reads no data and starts nothing). ``config``: the dry run's resolved config (None: it did not resolve;
    the flags as given are compared with a recorded run's)."""
    from slime_entropy.megatron.config import CheckpointConfig

    checkpoint = config.megatron.checkpoint if config is not None else CheckpointConfig.from_args(args)
    plan = resume_plan(checkpoint)
    findings = list(plan.notes)
    problems = list(plan.problems)
    run_dir = args.run_dir or args.save
    if run_dir is not None and not plan.problems:
        flags = config.slime_args if config is not None else args
        problems += _run_dir_problems(flags, checkpoint.load, Path(run_dir), plan.start)
    findings += [f"warning: a real start would stop here: {p}" for p in problems]
    return findings
