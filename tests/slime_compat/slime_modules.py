"""Load one slime release's own loss modules from its source tree, in a test process.

Only slime's package ``__init__`` files are bypassed (they import the Ray actors, SGLang, torch_memory_saver and
deep_ep, which cannot run on a CPU machine); every module the loss uses (``backends/megatron_utils/loss.py``,
``cp_utils.py``, ``data.py``'s helpers, ``utils/ppo_utils.py``, ``utils/misc.py``, ...) is slime's own file,
imported unmodified. One process holds one release: the three trees all define the package ``slime``.

slime decorates its ``ppo_utils`` kernels with ``torch.compile``; on a CPU test machine the inductor C++ build
of every kernel would dominate the run, so the workers run them eagerly (``torch._dynamo`` disabled): the same
Python code, the semantics slime compiles.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

LOSS = "slime.backends.megatron_utils.loss"
CP_UTILS = "slime.backends.megatron_utils.cp_utils"
PPO_UTILS = "slime.utils.ppo_utils"
_PACKAGES = ("slime", "slime.utils", "slime.backends", "slime.backends.megatron_utils")


def load_slime_loss(tree: Path) -> types.ModuleType:
    """Import ``slime.backends.megatron_utils.loss`` (and what it imports) from ``tree``; returns the module."""
    import torch._dynamo

    torch._dynamo.config.disable = True
    loaded = sys.modules.get(LOSS)
    if loaded is not None:
        if not Path(loaded.__file__).is_relative_to(tree):
            raise RuntimeError(f"this process already holds slime from {loaded.__file__}, not {tree}")
        return loaded
    for name in _PACKAGES:
        package = types.ModuleType(name)
        package.__path__ = [str(tree.joinpath(*name.split(".")))]
        sys.modules[name] = package
    return importlib.import_module(LOSS)
