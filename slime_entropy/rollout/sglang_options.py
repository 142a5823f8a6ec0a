"""SGLang server options re-exported as ``--sglang-<option>`` flags (slime's convention), and back to a command line.

When SGLang is importable its full ``ServerArgs`` option list is mirrored; otherwise (CPU machines, CI) a curated
list of the options RL runs commonly set is registered, so the same launch scripts parse everywhere. Options the
launcher sets itself (model path, host, port, TP size, GPU placement, seeds) are never passed through.

    opts = passthrough_options()                         # tuple[PassthroughOption, ...]
    register_passthrough(parser, opts)                   # adds --sglang-mem-fraction-static, ...
    to_cli(collect_passthrough(args, opts))              # ['--mem-fraction-static', '0.7', ...]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PassthroughOption",
    "passthrough_options",
    "register_passthrough",
    "collect_passthrough",
    "to_cli",
    "LAUNCHER_OWNED",
    "options_from_parser",
]

logger = logging.getLogger(__name__)

# Set by the launcher for each engine; a pass-through copy would conflict.
LAUNCHER_OWNED = frozenset(
    {
        "model-path",
        "tokenizer-path",
        "host",
        "port",
        "tp-size",
        "tensor-parallel-size",
        "base-gpu-id",
        "gpu-id-step",
        "nccl-port",
        "dist-init-addr",
        "nnodes",
        "node-rank",
        "random-seed",
        "help",
    }
)

# Slime's own --sglang-* flags (not SGLang server options).
SLIME_OWNED = frozenset({"server-concurrency", "router-ip", "router-port", "router-request-timeout-secs"})


@dataclass(frozen=True)
class PassthroughOption:
    """One SGLang server option. ``kind``: ``flag`` (store_true), ``value`` or ``list`` (nargs='+')."""

    name: str
    kind: str
    type: Any = str
    help: str = ""

    @property
    def flag(self) -> str:
        return f"--sglang-{self.name}"

    @property
    def dest(self) -> str:
        return "sglang_" + self.name.replace("-", "_")


_CURATED = (
    PassthroughOption("mem-fraction-static", "value", float, "fraction of GPU memory for weights + KV cache"),
    PassthroughOption("context-length", "value", int, "model context length override"),
    PassthroughOption("dtype", "value", str, "weight/activation dtype (auto, bfloat16, float16, ...)"),
    PassthroughOption("kv-cache-dtype", "value", str, "KV cache dtype"),
    PassthroughOption("quantization", "value", str, "weight quantization method"),
    PassthroughOption("attention-backend", "value", str, "attention kernel backend"),
    PassthroughOption("chunked-prefill-size", "value", int, "max tokens per prefill chunk"),
    PassthroughOption("max-running-requests", "value", int, "max concurrently running requests"),
    PassthroughOption("max-total-tokens", "value", int, "KV cache pool size in tokens"),
    PassthroughOption("cuda-graph-bs", "list", int, "batch sizes to capture CUDA graphs for"),
    PassthroughOption("cuda-graph-max-bs", "value", int, "largest CUDA graph batch size"),
    PassthroughOption("disable-cuda-graph", "flag", bool, "do not capture CUDA graphs"),
    PassthroughOption("disable-radix-cache", "flag", bool, "disable prefix caching"),
    PassthroughOption("enable-memory-saver", "flag", bool, "allow release/resume of GPU memory (offload)"),
    PassthroughOption("dp-size", "value", int, "data-parallel size inside one engine"),
    PassthroughOption("ep-size", "value", int, "expert-parallel size inside one engine"),
    PassthroughOption("enable-dp-attention", "flag", bool, "data-parallel attention"),
    PassthroughOption("load-format", "value", str, "weight loading format"),
    PassthroughOption("log-level", "value", str, "server log level"),
    PassthroughOption("trust-remote-code", "flag", bool, "allow custom model code from the checkpoint"),
    PassthroughOption("skip-server-warmup", "flag", bool, "skip the warm-up request at start"),
    PassthroughOption("enable-deterministic-inference", "flag", bool, "batch-invariant kernels"),
)


def options_from_parser(parser: argparse.ArgumentParser) -> tuple[PassthroughOption, ...]:
    """Turn an argparse parser of server options (e.g. from ``ServerArgs.add_cli_args``) into pass-through specs."""
    out = []
    for action in parser._actions:  # argparse exposes no public iterator over actions
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs:
            continue
        name = longs[0][2:].replace("_", "-")
        if name in LAUNCHER_OWNED or name in SLIME_OWNED:
            continue
        if isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction)) and action.nargs == 0:
            kind = "flag"  # store_true / store_false / store_const: passing the flag itself is faithful
        elif action.nargs == 0:
            continue  # count / version / help actions have no pass-through
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1:
            kind = "list"
        else:
            kind = "value"
        out.append(PassthroughOption(name, kind, bool if kind == "flag" else (action.type or str), action.help or ""))
    return tuple(out)


@functools.cache
def passthrough_options() -> tuple[PassthroughOption, ...]:
    """SGLang's own option list when SGLang is importable, else the curated list."""
    if importlib.util.find_spec("sglang") is not None:
        try:
            from sglang.srt.server_args import ServerArgs

            tmp = argparse.ArgumentParser(add_help=False)
            ServerArgs.add_cli_args(tmp)
            return options_from_parser(tmp)
        except Exception as e:  # noqa: BLE001 - a broken SGLang install must not break argument parsing
            logger.warning("could not read SGLang's server options (%s); using the curated --sglang-* list", e)
    return _CURATED


def register_passthrough(parser: argparse.ArgumentParser, options=None) -> None:
    group = parser.add_argument_group("SGLang server options (passed to sglang.launch_server without the prefix)")
    for opt in options if options is not None else passthrough_options():
        if opt.kind == "flag":
            group.add_argument(opt.flag, dest=opt.dest, action="store_true", default=False, help=opt.help)
        elif opt.kind == "list":
            group.add_argument(opt.flag, dest=opt.dest, type=opt.type, nargs="+", default=None, help=opt.help)
        else:
            group.add_argument(opt.flag, dest=opt.dest, type=opt.type, default=None, help=opt.help)


def collect_passthrough(args: Namespace, options=None) -> tuple[tuple[str, Any], ...]:
    """The options the user actually set, as ``(name, value)`` pairs in registration order."""
    chosen = []
    for opt in options if options is not None else passthrough_options():
        value = getattr(args, opt.dest, None)
        if opt.kind == "flag":
            if value:
                chosen.append((opt.name, True))
        elif value is not None:
            chosen.append((opt.name, tuple(value) if opt.kind == "list" else value))
    return tuple(chosen)


def to_cli(pairs) -> list[str]:
    argv = []
    for name, value in pairs:
        argv.append(f"--{name}")
        if value is True:
            continue
        if isinstance(value, (tuple, list)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv
