"""The one way every config collects what is wrong with the user's flags.

A config checks all of its fields before it raises, so the user fixes every mistake in one go::

    problems = Problems()
    problems.check(lr >= 0, f"--lr must be >= 0, got {lr}")
    problems.raise_if_any("optimizer flags")    # ValueError: "invalid optimizer flags:\n  - --lr must be ..."

Each message names the flag and the fix. :meth:`Problems.collect` runs a builder that may raise such a
``ValueError`` and keeps its message, so a resolver can report the problems of several configs at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["Problems"]

T = TypeVar("T")


class Problems:
    """An ordered list of problem messages (see module doc)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.messages)

    def check(self, ok: bool, message: str) -> None:
        """Record ``message`` unless ``ok``."""
        if not ok:
            self.messages.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        self.messages.extend(messages)

    def collect(self, build: Callable[[], T]) -> T | None:
        """``build()``; on ``ValueError`` record its message and return None."""
        try:
            return build()
        except ValueError as e:
            self.messages.append(str(e))
            return None

    def raise_if_any(self, what: str | None = None) -> None:
        """Raise one ``ValueError`` listing every message: ``invalid <what>:`` and one line each, or (``what``
        None) the messages as they are, one per line (each already says what it is about)."""
        if not self.messages:
            return
        if what is None:
            raise ValueError("\n".join(self.messages))
        raise ValueError(f"invalid {what}:\n  - " + "\n  - ".join(self.messages))
