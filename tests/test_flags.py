"""The flag list of every command, and the package that registers each flag, frozen in ``tests/data/flags.txt``.

A flag added, removed, renamed or moved to another package is a deliberate change: the test fails with the diff, and
``python -m tests.test_flags --update`` rewrites the file (commit it with the change). Owners are recorded while the
parsers are built: each ``add_argument`` call is attributed to the package of the module that made it. SGLang's own
server options, mirrored as ``--sglang-<option>`` by ``slime_entropy.rollout.sglang_options``, follow the installed
SGLang release and are checked against SGLang itself (``tests/rollout/test_sglang_contract.py``); they are listed
here as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "data" / "flags.txt"
UPDATE = "python -m tests.test_flags --update"
MIRROR = "slime_entropy.rollout.sglang_options"  # SGLang's server options, one --sglang-<option> each


def _commands() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Every command's parser builder, by the command line that runs it."""
    import slime_entropy
    from slime_entropy import demo
    from slime_entropy.analysis import ablation
    from slime_entropy.analysis import cli as analysis_cli
    from slime_entropy.evaluation import cli as evaluation_cli
    from slime_entropy.launch import ray_cluster
    from slime_entropy.megatron import convert
    from slime_entropy.rollout import __main__ as rollout_main
    from slime_entropy.trainer.arguments import build_parser

    return {
        "python train.py": build_parser,
        "slime's train.py with slime_entropy.add_arguments": lambda: slime_entropy.add_arguments(
            argparse.ArgumentParser(add_help=False)
        ),
        "python -m slime_entropy.analysis": analysis_cli.build_parser,
        "python -m slime_entropy.analysis.ablation": ablation.build_parser,
        "python -m slime_entropy.evaluation": evaluation_cli.build_parser,
        "python -m slime_entropy.rollout": rollout_main.build_parser,
        "python -m slime_entropy.megatron.convert": convert.build_parser,
        "python -m slime_entropy.launch.ray_cluster": ray_cluster.build_parser,
        "python -m slime_entropy.demo": demo.build_parser,
    }


def _package(module: str) -> str:
    """``slime_entropy.rollout.arguments`` -> ``slime_entropy.rollout``; argparse's own ``-h`` -> ``argparse``."""
    if module == "argparse" or not module.startswith("slime_entropy"):
        return module
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


@contextlib.contextmanager
def _recording() -> Iterator[list[tuple[str, str]]]:
    """Record ``(option string, registering module)`` for every ``add_argument`` while the block runs."""
    calls: list[tuple[str, str]] = []
    original = argparse._ActionsContainer.add_argument  # parsers and argument groups both register through it

    def add_argument(self, *args, **kwargs):
        action = original(self, *args, **kwargs)
        module = sys._getframe(1).f_globals.get("__name__", "?")
        calls.extend((option, module) for option in action.option_strings)
        return action

    argparse._ActionsContainer.add_argument = add_argument
    try:
        yield calls
    finally:
        argparse._ActionsContainer.add_argument = original


def _sub_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


def flag_owners() -> dict[str, dict[str, set[str]]]:
    """command -> option string -> the packages that registered it (sub-commands as 'command sub')."""
    result: dict[str, dict[str, set[str]]] = {}
    for command, build in _commands().items():
        with _recording() as calls:
            parser = build()
        owners: dict[str, set[str]] = {}
        for option, module in calls:
            owners.setdefault(option, set()).add(module)
        # Sub-commands (convert, ray_cluster) register on their own parsers: split the record by parser.
        subs = _sub_commands(parser)
        if subs:
            for name, sub in subs.items():
                result[f"{command} {name}"] = {o: owners[o] for o in sub._option_string_actions}
        else:
            result[command] = {o: owners[o] for o in parser._option_string_actions}
    return result


def render() -> str:
    lines = [
        "# The flags of slime_entropy's commands and the package that registers each one (tests/test_flags.py).",
        f"# After a deliberate change: {UPDATE}",
    ]
    for command, owners in flag_owners().items():
        lines.append(f"\n[{command}]")
        mirrored = sorted(o for o, modules in owners.items() if modules == {MIRROR})
        rows = sorted(
            (_package(next(iter(modules))), option) for option, modules in owners.items() if option not in mirrored
        )
        lines.extend(f"{option} {package}" for package, option in rows)
        if mirrored:
            lines.append(f"--sglang-<SGLang server option> {_package(MIRROR)} (mirrored from SGLang)")
    return "\n".join(lines) + "\n"


def check_frozen() -> None:
    expected = GOLDEN.read_text() if GOLDEN.is_file() else ""
    actual = render()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(GOLDEN), "now"))
        raise AssertionError(
            f"the flag list changed (a flag added, removed, renamed or moved to another package):\n{diff}\n"
            f"If the change is deliberate, run `{UPDATE}` and commit tests/data/flags.txt with it."
        )


def test_flag_list_and_owners_are_frozen():
    check_frozen()


def test_a_new_flag_fails_the_freeze(monkeypatch):
    from slime_entropy.trainer import arguments

    providers = arguments.argument_providers()

    def add_extra_arguments(parser):
        parser.add_argument("--extra-flag")
        return parser

    monkeypatch.setattr(arguments, "argument_providers", lambda: (*providers, add_extra_arguments))
    with pytest.raises(AssertionError, match=r"\n\+--extra-flag tests\.test_flags\n(?s:.*)tests\.test_flags --update"):
        check_frozen()


def test_each_flag_has_one_registering_module_per_command():
    for command, owners in flag_owners().items():
        shared = {option: sorted(modules) for option, modules in owners.items() if len(modules) > 1}
        assert not shared, f"{command}: flags registered from several modules: {shared}"


def test_train_py_providers_register_disjoint_flags():
    """Each provider of train.py's parser, alone on a fresh parser, registers only its own flags: no provider
    registers another's flag when it happens to run first (argparse would reject a duplicate only when both ran)."""
    from slime_entropy.trainer.arguments import argument_providers

    seen: dict[str, str] = {}
    for provider in argument_providers():
        parser = provider(argparse.ArgumentParser(add_help=False))
        name = f"{provider.__module__}.{provider.__name__}"
        for option in parser._option_string_actions:
            assert option not in seen, f"{option} is registered by {seen[option]} and by {name}"
            seen[option] = name


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: {UPDATE}")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(render())
    print(f"wrote {GOLDEN}")
