"""Where the slime and Megatron-LM source trees used by the compatibility tests live.

The trees are not part of the project and slime is not on the package index: a checkout finds them through
``SLIME_ENTROPY_THIRD_PARTY`` (a folder holding ``slime/<release>/`` and ``megatron-lm-core_v0.16.1/``), else at
``../shared/third_party`` beside the repository. Without them the tests that need them skip and say why; with
``SLIME_ENTROPY_REQUIRE_THIRD_PARTY=1`` (``.ci/run`` sets it when the trees are there) a missing tree fails instead.
The trees may be read-only: a test that must write next to one copies it to a temporary folder first.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SLIME_RELEASES = ("v0.1.0", "v0.3.1", "head-624b824a8")
MEGATRON_TREE = "megatron-lm-core_v0.16.1"


def third_party_root() -> Path | None:
    """The folder with the trees, or None when this checkout has none."""
    configured = os.environ.get("SLIME_ENTROPY_THIRD_PARTY")
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "third_party"
    return root if root.is_dir() else None


def _require(path: Path | None, what: str) -> Path:
    if path is not None and path.is_dir():
        return path
    reason = (
        f"{what} not found: set SLIME_ENTROPY_THIRD_PARTY to the folder holding slime/<release>/ and "
        f"{MEGATRON_TREE}/ (default: ../shared/third_party beside the repository)"
    )
    if os.environ.get("SLIME_ENTROPY_REQUIRE_THIRD_PARTY") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def slime_tree(release: str) -> Path:
    """The root of slime ``release`` (one of SLIME_RELEASES: it holds the ``slime/`` package); skips without it."""
    if release not in SLIME_RELEASES:
        raise ValueError(f"unknown slime release {release!r}; known: {', '.join(SLIME_RELEASES)}")
    root = third_party_root()
    return _require(root / "slime" / release if root else None, f"slime {release} source tree")


def megatron_training_tree() -> Path:
    """The Megatron-LM tree holding ``megatron/training`` (slime's parse_args imports it); skips without it."""
    root = third_party_root()
    return _require(root / MEGATRON_TREE if root else None, "Megatron-LM megatron/training tree")
