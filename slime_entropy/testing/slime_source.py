"""Load one slime release's own loss modules from its source tree, in a test or benchmark process.

Only slime's package ``__init__`` files are bypassed (they import the Ray actors, SGLang, torch_memory_saver and
deep_ep, which cannot run on a CPU machine); every module the loss uses (``backends/megatron_utils/loss.py``,
``cp_utils.py``, ``data.py``'s helpers, ``utils/ppo_utils.py``, ``utils/misc.py``, ...) is slime's own file,
imported unmodified. One process holds one release: the three trees all define the package ``slime``.

slime decorates its ``ppo_utils`` kernels with ``torch.compile``; on a CPU test machine the inductor C++ build
of every kernel would dominate the run, so the workers run them eagerly (``torch._dynamo`` disabled): the same
Python code, the semantics slime compiles. Benchmarks keep slime's compilation (``eager=False``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

from slime_entropy.loss.arguments import add_arguments, add_slime_loss_arguments
from slime_entropy.rollout.arguments import add_rollout_temperature_argument

LOSS = "slime.backends.megatron_utils.loss"
CP_UTILS = "slime.backends.megatron_utils.cp_utils"
PPO_UTILS = "slime.utils.ppo_utils"
_PACKAGES = ("slime", "slime.utils", "slime.backends", "slime.backends.megatron_utils")


def load_slime_loss(tree: Path, *, eager: bool = True) -> types.ModuleType:
    """Import ``slime.backends.megatron_utils.loss`` (and what it imports) from ``tree``; returns the module."""
    import torch._dynamo

    if eager:
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


def slime_loss_args(family: str, argv: list[str], *, global_batch_size: int) -> argparse.Namespace:
    """The loss flags as slime's parser of release ``family`` ('v0.1' or 'v0.3') leaves them: slime's defaults for
    the loss options that release has, plus slime_entropy's flags."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_slime_loss_arguments(parser)
    add_rollout_temperature_argument(parser)
    parser.add_argument("--global-batch-size", type=int)
    parser.add_argument("--vocab-size", type=int, default=None)
    if family == "v0.3":
        for flag in (
            "--use-rollout-logprobs",
            "--get-mismatch-metrics",
            "--use-unbiased-kl",
            "--use-opsm",
            "--allgather-cp",
            "--recompute-loss-function",
        ):
            parser.add_argument(flag, action="store_true")
        parser.add_argument("--custom-tis-function-path", default=None)
        parser.add_argument("--custom-pg-loss-reducer-function-path", default=None)
        parser.add_argument("--opsm-delta", type=float, default=1e-4)
        parser.add_argument("--rollout-top-p", type=float, default=1.0)
        parser.add_argument("--eps-clip-c", type=float, default=None)
        parser.add_argument("--log-probs-chunk-size", type=int, default=-1)
    return parser.parse_args(argv + ["--global-batch-size", str(global_batch_size)])
