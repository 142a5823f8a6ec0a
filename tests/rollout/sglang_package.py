"""The real SGLang package for the contract tests: its ``ServerArgs`` parser and its request classes.

SGLang is installed on CPU machines without its GPU dependencies (``requirements-sglang-cpu.txt``; the README's test
command does it). Without it the tests that need it skip and say why; with ``SLIME_ENTROPY_REQUIRE_SGLANG=1``
(``.ci/run`` sets it, as the README's test command installs SGLang) they fail instead.

``sglang.srt.managers.io_struct`` reaches, through SGLang's model-config registry, a few multimodal configs that
import ``torchvision`` at module level for image preprocessing. PyPI's torchvision is built against the CUDA torch
and does not load next to the CPU torch (and transformers would then fail to import its image utilities), so where
torchvision is absent an import-level stand-in is present *only while io_struct is imported*; nothing of it is
called (the request classes never touch images).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest


def require_sglang() -> None:
    if importlib.util.find_spec("sglang") is not None:
        return
    reason = (
        "SGLang is not installed: pip install -c constraints-cpu.txt --no-deps -r requirements-sglang-cpu.txt "
        "(the README's test command does)"
    )
    if os.environ.get("SLIME_ENTROPY_REQUIRE_SGLANG") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@functools.cache
def server_args_parser() -> argparse.ArgumentParser:
    """SGLang's own command-line parser (``ServerArgs.add_cli_args``), as ``sglang.launch_server`` builds it."""
    require_sglang()
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    return parser


def server_args(argv: list[str]):
    """``ServerArgs`` of an engine command line (``argv`` after ``-m sglang.launch_server``), as SGLang builds it."""
    from sglang.srt.server_args import ServerArgs

    return ServerArgs.from_cli_args(server_args_parser().parse_args(argv))


class _Unused:
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unused()

    def __call__(self, *args, **kwargs):
        return _Unused()


@contextlib.contextmanager
def _torchvision_stand_in():
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    import transformers.utils.import_utils as hf_imports

    hf_imports.is_torchvision_available()  # cached as False before the stand-in exists

    def attribute(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unused()

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__path__ = []
        module.__getattr__ = attribute
        sys.modules[name] = module
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)


@functools.cache
def io_struct():
    """``sglang.srt.managers.io_struct``: the dataclasses SGLang's HTTP server builds from each request body."""
    require_sglang()
    import torch  # noqa: F401 - imported before the stand-in exists
    import transformers  # noqa: F401

    with _torchvision_stand_in():
        import sglang.srt.managers.io_struct as module
    return module
