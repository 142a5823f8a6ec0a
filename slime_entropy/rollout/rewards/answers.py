"""Answer extraction from model responses: pure string scanning, no evaluation of any kind.

- :func:`last_boxed` — content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, escaped ``\\{``/``\\}``
  ignored when counting; the brace-less form ``\\boxed 5`` is accepted), or ``None``.
- :func:`deepscaler_region` — the text after the last ``</think>`` (else after the last ``###Response``), or ``None``
  when neither marker is present (slime's deepscaler then scores 0).
- :func:`dapo_answer` — the last ``Answer: ...`` line in the last 300 characters (DAPO/Minerva style), or ``None``.
"""

from __future__ import annotations

import re

__all__ = ["last_boxed", "deepscaler_region", "dapo_answer", "DAPO_TAIL_CHARS"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_DAPO_ANSWER_RE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
DAPO_TAIL_CHARS = 300


def _braced_content(text: str, open_index: int) -> str | None:
    """Content between ``text[open_index] == '{'`` and its matching ``}``; ``None`` if it never closes."""
    depth = 0
    i = open_index
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2  # an escaped brace is a literal, not a group delimiter
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last box command in ``text`` (stripped), or ``None`` if there is none or it is unbalanced."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = start + len(cmd)
    if rest < len(text) and (text[rest].isalpha()):
        return None  # e.g. "\boxedx" is another macro, not a box
    j = rest
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        content = _braced_content(text, j)
        return content.strip() if content is not None else None
    if j > rest:  # "\boxed 5": the argument runs to the next space or dollar sign
        match = re.match(r"[^\s$]+", text[j:])
        return match.group(0) if match else None
    return None


def deepscaler_region(text: str) -> str | None:
    """The part of a response deepscaler grades: after the last ``</think>``, else after ``###Response``."""
    for marker in ("</think>", "###Response"):
        k = text.rfind(marker)
        if k >= 0:
            return text[k + len(marker) :]
    return None


def dapo_answer(text: str) -> str | None:
    """The last ``Answer: x`` in the final 300 characters, stripped of surrounding ``$`` and spaces."""
    matches = _DAPO_ANSWER_RE.findall(text[-DAPO_TAIL_CHARS:])
    if not matches:
        return None
    answer = matches[-1].strip().strip("$").strip()
    return answer or None
