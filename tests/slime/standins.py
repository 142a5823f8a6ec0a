"""Import-level stand-ins for what slime's ``parse_args`` imports but a CPU machine cannot install.

Activated in a subprocess by a ``sitecustomize.py`` that calls ``install()`` (see ``stand_in_train.py``); never in
the pytest process. Nothing here stands in for slime or for Megatron code that the tree holds:

- ``sglang`` / ``sglang_router`` (CUDA-only): the names slime imports at module level. ``ServerArgs.add_cli_args``
  registers a few of SGLang's server flags under their SGLang names (slime re-exports them as ``--sglang-*``),
  ``RouterArgs.add_cli_args`` a few router flags. Always used, even where a (partial) sglang is installed.
- ``torch_memory_saver`` (builds a CUDA hook): slime v0.1.0's actor imports it at module level.
- ``megatron.rl.parallel_utils``: ``megatron/training/training.py`` (core_v0.16.1) imports it unconditionally, but
  the Megatron-LM tree kept for tests holds only ``megatron/training`` and ``megatron/legacy``. Used only while
  ``megatron.rl`` is not importable.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # a package, so that submodules can be registered under it
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    sys.modules[name] = module
    return module


class ServerArgs:
    """SGLang's server options, as far as slime's parser and the seed's command line need them."""

    @staticmethod
    def add_cli_args(parser):
        parser.add_argument("--model-path", type=str, default=None)
        parser.add_argument("--mem-fraction-static", type=float, default=None)
        parser.add_argument("--cuda-graph-bs", type=int, nargs="+", default=None)
        parser.add_argument("--data-parallel-size", "--dp-size", type=int, default=1)
        parser.add_argument("--pipeline-parallel-size", "--pp-size", type=int, default=1)
        parser.add_argument("--expert-parallel-size", "--ep-size", type=int, default=1)
        parser.add_argument("--enable-dp-attention", action="store_true")


class RouterArgs:
    @staticmethod
    def add_cli_args(parser, use_router_prefix=False, exclude_host_port=False):
        prefix = "--router-" if use_router_prefix else "--"
        parser.add_argument(f"{prefix}balance-abs-threshold", type=int, default=64)
        parser.add_argument(f"{prefix}balance-rel-threshold", type=float, default=1.5)
        parser.add_argument(f"{prefix}log-level", type=str, default="info")


def install() -> None:
    _module("sglang", __version__="0.5.2")
    _module("sglang.srt")
    _module("sglang.srt.server_args", ServerArgs=ServerArgs)
    _module(
        "sglang.srt.constants",
        GPU_MEMORY_TYPE_KV_CACHE="kv_cache",
        GPU_MEMORY_TYPE_WEIGHTS="weights",
        GPU_MEMORY_TYPE_CUDA_GRAPH="cuda_graph",
    )
    _module("sglang.srt.utils", MultiprocessingSerializer=object, kill_process_tree=None)
    _module("sglang.srt.patch_torch", monkey_patch_torch_reductions=None)
    _module("sglang_router")
    _module("sglang_router.launch_router", RouterArgs=RouterArgs)
    if importlib.util.find_spec("torch_memory_saver") is None:
        _module("torch_memory_saver", torch_memory_saver=types.SimpleNamespace(_impl=None))
    # find_spec imports the parent: the pip megatron-core namespace package, extended by the tree on PYTHONPATH.
    if importlib.util.find_spec("megatron.rl") is None:
        _module("megatron.rl")
        _module("megatron.rl.parallel_utils", build_inference_pg_collection=None)
