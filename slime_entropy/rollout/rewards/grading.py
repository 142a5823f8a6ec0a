"""Rule-based math rewards (``--rm-type deepscaler|math|dapo`` and their ``boxed_`` variants), graded with math-verify.

Semantics (slime's ``slime/rollout/rm_hub``):

- ``deepscaler``: the answer is the last ``\\boxed{}`` after the last ``</think>`` (else after ``###Response``);
  **no marker gives 0.0**. Reward 1.0 if the answer is equivalent to the label, else 0.0 (also with no answer).
- ``math``: the last ``\\boxed{}`` anywhere; 1.0 / 0.0.
- ``dapo``: the last ``Answer: ...`` in the final 300 characters; reward ``{"score": ±1.0, "acc": bool, "pred": str}``
  (use ``--reward-key score``); wrong or missing answers score -1.0.
- ``boxed_<t>``: the content of the last ``\\boxed{}`` *is* the answer; then ``<t>``'s scoring rule applies (no
  marker requirement).

``boxed_<t>`` deliberately differs from slime, where the extracted box content is re-scanned by ``<t>`` (so
``boxed_deepscaler`` and ``boxed_dapo`` always score their failure value there).

Equivalence is decided by math-verify (``parse`` + ``verify``): fractions, decimals, percentages, units in
``\\text{}``, ``x=3`` against ``3``, intervals, sets, LaTeX variants. Security: the model's answer is parsed
**only** by math-verify's LaTeX extraction (an ANTLR grammar, ``latex2sympy2_extended``); no ``eval``, ``sympify`` or
``parse_expr`` ever sees model output. The label (trusted dataset content) may also be parsed as a plain expression.
math-verify's own timeouts use ``SIGALRM`` and therefore only work in a process's main thread; these functions are
run in :mod:`slime_entropy.rollout.rewards.pool` worker processes, which also enforce a hard per-sample limit.
"""

from __future__ import annotations

from typing import Any

from slime_entropy.rollout.rewards.answers import dapo_answer, deepscaler_region, last_boxed

__all__ = ["RULE_BASED_TYPES", "answers_equivalent", "rule_based_reward", "parse_rm_type"]

RULE_BASED_TYPES = ("deepscaler", "math", "dapo")
_INVALID = "[INVALID]"


def parse_rm_type(rm_type: str) -> tuple[bool, str]:
    """``"boxed_dapo"`` -> ``(True, "dapo")``; raises ``ValueError`` for unknown types."""
    boxed = rm_type.startswith("boxed_")
    base = rm_type[len("boxed_") :] if boxed else rm_type
    if base not in RULE_BASED_TYPES:
        choices = ", ".join(RULE_BASED_TYPES + tuple(f"boxed_{t}" for t in RULE_BASED_TYPES))
        raise ValueError(
            f"--rm-type {rm_type!r} is not a rule-based reward; choose one of {choices}, " "or pass --custom-rm-path"
        )
    return boxed, base


def _label_text(label: Any) -> str:
    if isinstance(label, bool) or label is None:
        raise ValueError(f"label must be a number or a string, got {label!r}")
    if isinstance(label, (int, float)):
        return repr(label) if isinstance(label, float) else str(label)
    if not isinstance(label, str):
        raise ValueError(f"label must be a number or a string, got {type(label).__name__}")
    boxed = last_boxed(label)  # MATH-style reference solutions carry their answer in a box
    return boxed if boxed is not None else label


def answers_equivalent(answer: str, label: Any, *, timeout_seconds: int = 5) -> bool:
    """Whether the extracted ``answer`` (LaTeX or plain) equals ``label`` according to math-verify."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_text = _label_text(label).strip()
    if not answer.strip() or not gold_text:
        return False
    gold = parse(
        gold_text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=timeout_seconds
    )
    if not gold:
        gold = parse(f"${gold_text}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout_seconds)
    pred = parse(
        "\\boxed{" + answer + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
        parsing_timeout=timeout_seconds,
    )
    if not gold or not pred:
        return gold_text == answer.strip()
    return bool(verify(gold, pred, timeout_seconds=timeout_seconds))


def rule_based_reward(rm_type: str, response: str, label: Any, *, timeout_seconds: int = 5) -> float | dict:
    """Score one response; see the module table. Raises only for a bad ``rm_type`` or label."""
    boxed, base = parse_rm_type(rm_type)
    if boxed:
        answer = last_boxed(response)
    elif base == "deepscaler":
        region = deepscaler_region(response)
        answer = last_boxed(region) if region is not None else None
    elif base == "math":
        answer = last_boxed(response)
    else:
        answer = dapo_answer(response)
    correct = answer is not None and answers_equivalent(answer, label, timeout_seconds=timeout_seconds)
    if base == "dapo":
        return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": answer if answer is not None else _INVALID}
    return 1.0 if correct else 0.0
