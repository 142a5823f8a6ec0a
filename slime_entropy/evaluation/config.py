"""Frozen, validated evaluation configuration, built once from the argparse namespace.

    config = EvalConfig.from_args(args)        # None without --eval-prompt-data; one ValueError listing every problem

Sampling and data settings fall back to the rollout flags (``--rollout-temperature``, ``--rollout-top-p``,
``--rollout-top-k``, ``--rollout-max-response-len``, ``--rollout-max-context-len``, ``--rollout-stop``,
``--rollout-stop-token-ids``, ``--rollout-skip-special-tokens``, ``--input-key``, ``--label-key``,
``--metadata-key``, ``--apply-chat-template`` and its kwargs, ``--reward-key``) when no ``--eval-*`` override is
given, as in slime.
"""

from __future__ import annotations

import dataclasses
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any

from slime_entropy.evaluation.metrics import default_pass_ks
from slime_entropy.problems import Problems
from slime_entropy.rollout.config import SamplingConfig

__all__ = ["EvalDataset", "EvalConfig", "EvalSamplingConfig"]


@dataclass(frozen=True, kw_only=True)
class EvalSamplingConfig(SamplingConfig):
    """The rollout's sampling config, except that temperature 0 (greedy decoding) is allowed: evaluation only
    samples, nothing divides logits by it."""

    def __post_init__(self):
        if self.temperature == 0:
            dataclasses.replace(self, temperature=1.0)  # validates every other field
            return
        if self.temperature < 0:
            raise ValueError(f"--eval-temperature must be >= 0 (0 = greedy), got {self.temperature}")
        super().__post_init__()


@dataclass(frozen=True)
class EvalDataset:
    name: str
    path: str


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    datasets: tuple[EvalDataset, ...]
    n_samples_per_prompt: int = 1
    sampling: SamplingConfig
    interval: int | None = None
    skip_before_train: bool = False
    input_key: str = "input"
    label_key: str | None = None
    metadata_key: str | None = "metadata"
    apply_chat_template: bool = False
    apply_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    reward_key: str | None = None
    pass_ks: tuple[int, ...] = ()
    """k values of pass@k; empty means :func:`default_pass_ks` of ``n_samples_per_prompt``."""
    correct_threshold: float = 1.0
    output_dir: str | None = None

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("--eval-prompt-data needs at least one NAME PATH pair")
        names = [d.name for d in self.datasets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"--eval-prompt-data: dataset names must be unique, {duplicates} repeat")
        for d in self.datasets:
            if not d.name or "/" in d.name or d.name.strip() != d.name:
                raise ValueError(
                    f"--eval-prompt-data: {d.name!r} is not a usable name (it is logged as eval/NAME: no '/', no "
                    "surrounding spaces)"
                )
        if self.n_samples_per_prompt < 1:
            raise ValueError(f"--n-samples-per-eval-prompt must be >= 1, got {self.n_samples_per_prompt}")
        if self.interval is not None and self.interval < 1:
            raise ValueError(f"--eval-interval must be >= 1, got {self.interval}")
        bad = [k for k in self.pass_ks if not 1 <= k <= self.n_samples_per_prompt]
        if bad:
            raise ValueError(
                f"--eval-pass-k {bad}: each k must lie in [1, --n-samples-per-eval-prompt "
                f"{self.n_samples_per_prompt}] (pass@k draws k of the n responses)"
            )
        if not self.input_key:
            raise ValueError("--eval-input-key (or --input-key) must be a non-empty field name")

    # ----- schedule (slime's rule) -----
    def due_before_training(self, start_rollout_id: int) -> bool:
        """Before the first rollout of a fresh run (not on resume), unless ``--skip-eval-before-train``."""
        return self.interval is not None and start_rollout_id == 0 and not self.skip_before_train

    def due_after(self, rollout_id: int, num_rollout_per_epoch: int | None = None) -> bool:
        """After rollout ``rollout_id`` (once its weights reached the engines): every ``--eval-interval`` rollouts and
        at each epoch end."""
        if self.interval is None:
            return False
        step = rollout_id + 1
        return step % self.interval == 0 or bool(num_rollout_per_epoch and step % num_rollout_per_epoch == 0)

    @property
    def reported_pass_ks(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.pass_ks))) if self.pass_ks else default_pass_ks(self.n_samples_per_prompt)

    @classmethod
    def from_args(cls, args: Namespace, *, training: bool = True) -> EvalConfig | None:
        """The evaluation config, or ``None`` when ``--eval-prompt-data`` is absent.

        ``training``: the namespace drives a training run, so ``--eval-prompt-data`` without ``--eval-interval``
        (which would never evaluate) is refused; the standalone evaluation command passes ``False``.
        Raises one ``ValueError`` listing every problem, each naming its flag and fix.
        """
        pairs = getattr(args, "eval_prompt_data", None)
        interval = getattr(args, "eval_interval", None)
        problems = Problems()
        if not pairs:
            if training and interval is not None:
                raise ValueError("--eval-interval needs --eval-prompt-data NAME PATH [NAME PATH ...]")
            return None
        problems.check(
            len(pairs) % 2 == 0,
            f"--eval-prompt-data takes NAME PATH pairs, got {len(pairs)} value(s) {pairs}; e.g. "
            "--eval-prompt-data aime24 /data/aime-2024.jsonl",
        )
        problems.check(
            not training or interval is not None,
            "--eval-prompt-data without --eval-interval never evaluates during training; add --eval-interval N "
            "(or evaluate a checkpoint with 'python -m slime_entropy.evaluation')",
        )
        max_response_len = getattr(args, "eval_max_response_len", None)
        if max_response_len is None:
            max_response_len = getattr(args, "rollout_max_response_len", None)
        problems.check(
            max_response_len is not None, "--eval-max-response-len (or --rollout-max-response-len) is required"
        )
        sampling = None
        if max_response_len is not None:
            try:
                sampling = EvalSamplingConfig(
                    temperature=_first(args, "eval_temperature", "rollout_temperature", 1.0),
                    top_p=_first(args, "eval_top_p", "rollout_top_p", 1.0),
                    top_k=_first(args, "eval_top_k", "rollout_top_k", -1),
                    max_response_len=max_response_len,
                    max_context_len=getattr(args, "rollout_max_context_len", None),
                    stop=tuple(getattr(args, "rollout_stop", None) or ()),
                    stop_token_ids=tuple(getattr(args, "rollout_stop_token_ids", None) or ()),
                    skip_special_tokens=bool(getattr(args, "rollout_skip_special_tokens", False)),
                )
            except ValueError as e:  # name the eval flag when the value came from one
                problems.extend([_eval_flag_names(str(e), args)])
        problems.raise_if_any("evaluation arguments")
        try:
            return cls(
                datasets=tuple(EvalDataset(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)),
                n_samples_per_prompt=getattr(args, "n_samples_per_eval_prompt", 1),
                sampling=sampling,
                interval=interval,
                skip_before_train=bool(getattr(args, "skip_eval_before_train", False)),
                input_key=_first(args, "eval_input_key", "input_key", "input"),
                label_key=_first(args, "eval_label_key", "label_key", None),
                metadata_key=getattr(args, "metadata_key", "metadata"),
                apply_chat_template=bool(getattr(args, "apply_chat_template", False)),
                apply_chat_template_kwargs=dict(getattr(args, "apply_chat_template_kwargs", None) or {}),
                reward_key=getattr(args, "reward_key", None),
                pass_ks=tuple(getattr(args, "eval_pass_k", None) or ()),
                correct_threshold=float(getattr(args, "eval_correct_threshold", 1.0)),
                output_dir=getattr(args, "eval_output_dir", None),
            )
        except ValueError as e:
            raise ValueError(f"invalid evaluation arguments:\n  - {e}") from None


def _first(args: Namespace, eval_name: str, rollout_name: str, default):
    value = getattr(args, eval_name, None)
    if value is None:
        value = getattr(args, rollout_name, None)
    return default if value is None else value


def _eval_flag_names(message: str, args: Namespace) -> str:
    """SamplingConfig names the rollout flags; say the eval flag instead when that is where the value came from."""
    for suffix in ("temperature", "top-p", "top-k", "max-response-len"):
        if getattr(args, "eval_" + suffix.replace("-", "_"), None) is not None:
            message = message.replace(f"--rollout-{suffix}", f"--eval-{suffix}")
    return message
