"""SGLang server options re-exported as ``--sglang-<option>`` flags (slime's convention), and back to a command line.

When SGLang is installed its full ``ServerArgs`` option list is mirrored (read once per SGLang version and cached,
because importing SGLang takes seconds); otherwise (CPU machines without it) a curated list of the options RL runs
commonly set is registered, so the same launch scripts parse everywhere. Every curated option exists in the tested
SGLang release (``TESTED_SGLANG``) with the same kind. Options the launcher sets itself (model path, host, port, TP
size, GPU placement, seeds) are refused with the flag to use instead, options SGLang dropped are refused with their
replacements, and an unknown ``--sglang-*`` flag is refused with the nearest known names
(:func:`describe_unknown`).

    opts = passthrough_options()                         # tuple[PassthroughOption, ...]
    register_passthrough(parser, opts)                   # adds --sglang-mem-fraction-static, ...
    to_cli(collect_passthrough(args, opts))              # ['--mem-fraction-static', '0.7', ...]
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from argparse import Namespace
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PassthroughOption",
    "TESTED_SGLANG",
    "passthrough_options",
    "passthrough_source",
    "register_passthrough",
    "collect_passthrough",
    "describe_unknown",
    "to_cli",
    "LAUNCHER_OWNED",
    "REFUSED",
    "options_from_parser",
    "sglang_version",
]

logger = logging.getLogger(__name__)

# The SGLang release the curated list, the request bodies and the launch command lines are tested against
# (tests/rollout/test_sglang_contract.py; constraints-cpu.txt pins it for the test install).
TESTED_SGLANG = "0.5.23"

# Set by the launcher for each engine (a pass-through copy would conflict), with what to use instead.
LAUNCHER_OWNED = {
    "model-path": "--hf-checkpoint",
    "tokenizer-path": "--hf-checkpoint (the engines load the tokenizer from it)",
    "host": "--rollout-engine-host",
    "port": "nothing: each engine gets a free port",
    "tp-size": "--rollout-num-gpus-per-engine",
    "tensor-parallel-size": "--rollout-num-gpus-per-engine",
    "base-gpu-id": "nothing: engines take consecutive GPUs of the rollout placement",
    "gpu-id-step": "nothing: engines take consecutive GPUs of the rollout placement",
    "nccl-port": "nothing: each engine gets a free port",
    "dist-init-addr": "--rollout-external-engine-addrs with engines you start yourself (multi-node engines)",
    "nnodes": "--rollout-external-engine-addrs with engines you start yourself (multi-node engines)",
    "node-rank": "--rollout-external-engine-addrs with engines you start yourself (multi-node engines)",
    "random-seed": "--rollout-seed (engine i gets seed + i)",
}
# Not passed through, for another reason than placement.
REFUSED = {
    # slime's --sglang-config is a YAML of engine groups (PD disaggregation); SGLang's --config would read server
    # options behind the launcher's back. Neither is what a user of this flag could mean here.
    "config": "slime_entropy does not support slime's --sglang-config (engine groups for prefill/decode "
    "disaggregation); pass server options as --sglang-<option> flags",
}
# Options SGLang renamed or split: refused (the old spelling makes every engine exit at start-up) with the new names.
RETIRED = {
    "cuda-graph-bs": "it was split per phase: use --sglang-cuda-graph-bs-decode (the decode batch sizes, what "
    "--cuda-graph-bs set) and/or --sglang-cuda-graph-bs-prefill",
    "cuda-graph-max-bs": "it was split per phase: use --sglang-cuda-graph-max-bs-decode (what --cuda-graph-max-bs "
    "set) and/or --sglang-cuda-graph-max-bs-prefill",
}
# Slime's own --sglang-* flags (registered by the rollout arguments, not SGLang server options).
SLIME_OWNED = frozenset({"server-concurrency", "router-ip", "router-port", "router-request-timeout-secs"})
_NOT_MIRRORED = frozenset(LAUNCHER_OWNED) | frozenset(REFUSED) | SLIME_OWNED | {"help"}
_SCALAR_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class PassthroughOption:
    """One SGLang server option. ``kind``: ``flag`` (takes no value), ``value`` or ``list`` (nargs='+').

    ``type`` is ``int``, ``float`` or ``str``: SGLang's other converters (JSON, sizes like ``32k``) are left to
    SGLang, and the text the user typed is what reaches it."""

    name: str
    kind: str
    type: Any = str
    help: str = ""
    choices: tuple | None = None
    aliases: tuple[str, ...] = ()
    """Other long spellings SGLang accepts for this option (e.g. ``data-parallel-size`` for ``dp-size``)."""

    @property
    def flag(self) -> str:
        return f"--sglang-{self.name}"

    @property
    def dest(self) -> str:
        return "sglang_" + self.name.replace("-", "_")


def _opt(name, kind, type_=str, help_="", choices=None, aliases=()):
    return PassthroughOption(name, kind, type_, help_, choices, aliases)


_CURATED = (
    _opt("mem-fraction-static", "value", float, "fraction of GPU memory for weights + KV cache"),
    _opt("context-length", "value", str, "model context length override (SGLang accepts sizes like 32k)"),
    _opt("dtype", "value", str, "weight/activation dtype (auto, bfloat16, float16, ...)"),
    _opt("kv-cache-dtype", "value", str, "KV cache dtype"),
    _opt("quantization", "value", str, "weight quantization method"),
    _opt("attention-backend", "value", str, "attention kernel backend"),
    _opt("chunked-prefill-size", "value", int, "max tokens per prefill chunk"),
    _opt("max-running-requests", "value", int, "max concurrently running requests"),
    _opt("max-total-tokens", "value", str, "KV cache pool size in tokens (SGLang accepts sizes like 64k)"),
    _opt("cuda-graph-bs-decode", "list", int, "batch sizes to capture decode CUDA graphs for"),
    _opt("cuda-graph-bs-prefill", "list", int, "batch sizes to capture prefill CUDA graphs for"),
    _opt("cuda-graph-max-bs-decode", "value", int, "largest decode CUDA graph batch size"),
    _opt("cuda-graph-max-bs-prefill", "value", int, "largest prefill CUDA graph batch size"),
    _opt("disable-cuda-graph", "flag", bool, "do not capture CUDA graphs (deprecated in SGLang 0.5.23)"),
    _opt("disable-radix-cache", "flag", bool, "disable prefix caching"),
    _opt("enable-memory-saver", "flag", bool, "allow release/resume of GPU memory (offload)"),
    _opt("dp-size", "value", int, "data-parallel size inside one engine", aliases=("data-parallel-size",)),
    _opt("ep-size", "value", int, "expert-parallel size inside one engine", aliases=("expert-parallel-size", "ep")),
    _opt("enable-dp-attention", "flag", bool, "data-parallel attention (deprecated in SGLang 0.5.23)"),
    _opt("load-format", "value", str, "weight loading format"),
    _opt("log-level", "value", str, "server log level"),
    _opt("trust-remote-code", "flag", bool, "allow custom model code from the checkpoint"),
    _opt("skip-server-warmup", "flag", bool, "skip the warm-up request at start"),
    _opt("enable-deterministic-inference", "flag", bool, "batch-invariant kernels"),
)

# argparse actions that take no value and have no faithful pass-through (printing help or a version, counting).
_NO_PASSTHROUGH = (argparse._HelpAction, argparse._VersionAction, argparse._CountAction)


def options_from_parser(parser: argparse.ArgumentParser) -> tuple[PassthroughOption, ...]:
    """Turn an argparse parser of server options (e.g. from ``ServerArgs.add_cli_args``) into pass-through specs."""
    out = []
    for action in parser._actions:  # argparse exposes no public iterator over actions
        longs = [s[2:] for s in action.option_strings if s.startswith("--")]
        if not longs or longs[0].replace("_", "-") in _NOT_MIRRORED or isinstance(action, _NO_PASSTHROUGH):
            continue
        if action.nargs == 0:
            if getattr(action, "error_message", None):
                continue  # a retired flag whose only effect is SGLang's refusal: refused as unknown here
            kind = "flag"  # store_true / store_false / store_const / deprecated spellings: the flag itself is faithful
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1:
            kind = "list"
        else:
            kind = "value"
        scalar = action.type if action.type in (int, float) else str
        # sorted: SGLang builds some choice lists from sets, whose order changes between processes
        choices = tuple(sorted(action.choices, key=str)) if action.choices is not None else None
        if choices is not None and not all(type(c) is scalar for c in choices):
            choices = None  # e.g. choices of a converter's results: SGLang checks them
        out.append(
            PassthroughOption(
                longs[0].replace("_", "-"),
                kind,
                bool if kind == "flag" else scalar,
                action.help or "",
                choices if kind != "flag" else None,
                tuple(a.replace("_", "-") for a in longs[1:]),
            )
        )
    return tuple(out)


def sglang_version() -> str | None:
    """The installed SGLang's version, or None (found without importing SGLang)."""
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def _sglang_spec():
    """SGLang's import spec, found without running its (slow) ``__init__``; None when absent or when an
    import-level stand-in without a spec is in ``sys.modules`` (then it is not the real package)."""
    try:
        return importlib.util.find_spec("sglang")
    except ValueError:
        return None


def _cache_file() -> Path | None:
    """Where the option list of the installed SGLang is cached: keyed by its version and its server_args.py."""
    spec = _sglang_spec()
    if spec is None or not spec.submodule_search_locations:
        return None
    server_args = Path(spec.submodule_search_locations[0]) / "srt" / "server_args.py"
    try:
        stat = server_args.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{server_args}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("SLIME_ENTROPY_CACHE") or Path.home() / ".cache" / "slime_entropy")
    return root / "sglang-options" / f"{sglang_version()}-{key}.json"


def _encode(options: Iterable[PassthroughOption]) -> str:
    rows = [{**asdict(o), "type": o.type.__name__} for o in options]
    return json.dumps(rows)


def _decode(text: str) -> tuple[PassthroughOption, ...]:
    rows = json.loads(text)
    return tuple(
        PassthroughOption(
            r["name"],
            r["kind"],
            _SCALAR_TYPES[r["type"]],
            r["help"],
            None if r["choices"] is None else tuple(r["choices"]),
            tuple(r["aliases"]),
        )
        for r in rows
    )


def read_sglang_options() -> tuple[PassthroughOption, ...]:
    """The installed SGLang's option list, read from ``ServerArgs.add_cli_args`` (imports SGLang)."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    return options_from_parser(parser)


@functools.cache
def passthrough_options() -> tuple[PassthroughOption, ...]:
    """SGLang's own option list when SGLang is installed, else the curated list."""
    if _sglang_spec() is None:
        return _CURATED
    cache = _cache_file()
    if cache is not None and cache.is_file():
        try:
            return _decode(cache.read_text())
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring the unreadable SGLang option cache %s (%s)", cache, e)
    try:
        options = read_sglang_options()
    except Exception as e:  # noqa: BLE001 - a broken SGLang install must not break argument parsing
        logger.warning("could not read SGLang's server options (%s); using the curated --sglang-* list", e)
        return _CURATED
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".tmp", delete=False) as f:
                f.write(_encode(options))
            os.replace(f.name, cache)
        except OSError as e:
            logger.debug("could not cache SGLang's option list in %s: %s", cache, e)
    return options


def passthrough_source() -> str:
    """Where the registered ``--sglang-*`` list comes from, for messages."""
    version = sglang_version()
    if passthrough_options() is not _CURATED and version is not None:
        return f"the installed SGLang {version}"
    return f"the curated --sglang-* list (SGLang is not installed here; the list is checked against {TESTED_SGLANG})"


class _Refuse(argparse.Action):
    """A flag that is recognised only to be refused with a message saying what to use instead."""

    def __init__(self, option_strings, dest, message: str, **kwargs):
        self.message = message
        super().__init__(option_strings, dest, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.message}")


def register_passthrough(parser: argparse.ArgumentParser, options=None) -> None:
    options = tuple(options if options is not None else passthrough_options())
    group = parser.add_argument_group("SGLang server options (passed to sglang.launch_server without the prefix)")
    for opt in options:
        flags = [opt.flag, *(f"--sglang-{a}" for a in opt.aliases)]
        if opt.kind == "flag":
            group.add_argument(*flags, dest=opt.dest, action="store_true", default=False, help=opt.help)
        else:
            nargs = "+" if opt.kind == "list" else None
            group.add_argument(
                *flags, dest=opt.dest, type=opt.type, nargs=nargs, default=None, choices=opt.choices, help=opt.help
            )
    known = {n for o in options for n in (o.name, *o.aliases)}
    refusals = {name: f"set by the launcher for each engine; use {hint}" for name, hint in LAUNCHER_OWNED.items()}
    refusals |= REFUSED
    release = sglang_version() if options is not _CURATED and sglang_version() else f"{TESTED_SGLANG} (tested)"
    refusals |= {name: f"SGLang {release} has no --{name}; {hint}" for name, hint in RETIRED.items()}
    for name, message in refusals.items():
        if name not in known and f"--sglang-{name}" not in parser._option_string_actions:
            parser.add_argument(f"--sglang-{name}", action=_Refuse, message=message)


def describe_unknown(flag: str, options=None) -> str | None:
    """Why an unrecognised ``--sglang-*`` flag is refused, with the nearest registered names; None for other flags."""
    if not flag.startswith("--sglang-"):
        return None
    name = flag.split("=", 1)[0].removeprefix("--sglang-")
    options = tuple(options if options is not None else passthrough_options())
    names = sorted({n for o in options for n in (o.name, *o.aliases)} | SLIME_OWNED)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    nearest = f"; nearest: {', '.join('--sglang-' + c for c in close)}" if close else ""
    return f"{flag}: {passthrough_source()} has no server option --{name}{nearest}"


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


def to_cli(pairs: Sequence[tuple[str, Any]]) -> list[str]:
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
