"""``python -m slime_entropy.slime SCRIPT [slime flags]``: run a slime script with slime_entropy's flags.

Run it where ``python SCRIPT`` would run (a slime checkout, or slime on PYTHONPATH)::

    python -m slime_entropy.slime train.py [slime flags] --high-entropy-token-filter --entropy-percentile 0.2

The script runs as ``__main__`` with ``sys.argv = [SCRIPT, flags...]`` and the script's folder first on
``sys.path``, exactly as ``python SCRIPT`` would; slime's files are not edited. Before it starts, slime's
``parse_args`` is wrapped (see ``slime_entropy.slime.arguments``): our flags are registered, the loss is
selected, and misspelt flags of ours are refused.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
from collections.abc import Sequence

from .arguments import LaunchError, install


def _prog() -> str:
    """How the launcher was invoked: ``python -m slime_entropy.slime`` or the ``slime-entropy-slime`` script."""
    name = os.path.basename(sys.argv[0])
    return "python -m slime_entropy.slime" if name in ("__main__.py", "-c", "") else name


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run SCRIPT with slime_entropy's flags; returns the exit status (2: refused)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _prog()
    usage = f"usage: {prog} SCRIPT [flags...]   (SCRIPT: slime's train.py or train_async.py)"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{__doc__}")
        return 0 if argv else 2
    script, flags = argv[0], argv[1:]
    if script.startswith("-"):
        return _fail(prog, f"the first argument is the script to run (e.g. train.py), got the flag {script}\n{usage}")
    if not os.path.isfile(script):
        return _fail(prog, f"script {script} not found (run from your slime checkout, e.g. cd /path/to/slime)")

    # What `python SCRIPT` does: the script's folder (symlinks resolved) replaces the launcher's sys.path entry.
    # Ray relies on it too: it ships the driver script's folder to its workers only if it is on sys.path.
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    sys.argv = [script, *flags]
    try:
        importlib.import_module("slime.utils.arguments")
    except ModuleNotFoundError as error:
        if error.name != "slime" and not (error.name or "").startswith("slime."):
            raise
        return _fail(
            prog,
            f"slime is not importable from {sys.path[0]} or PYTHONPATH ({error}): run from a slime checkout "
            "(cd /path/to/slime) or add it to PYTHONPATH",
        )
    install()
    try:
        runpy.run_path(script, run_name="__main__")
    except LaunchError as error:
        return _fail(prog, str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
