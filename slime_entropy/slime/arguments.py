"""slime_entropy's flags inside slime's own ``parse_args``, without editing slime.

``install()`` replaces ``slime.utils.arguments.parse_args`` by a wrapper that, on every call:

1. chains ``slime_entropy.add_arguments`` after the caller's ``add_custom_arguments``, unless that provider already
   called it (a train.py patched the old way, ``add_custom_arguments=slime_entropy.add_arguments``), so Megatron's
   parser, slime's groups and ours form one parser with each of our flags registered once;
2. just before that parser reads the command line, refuses flags that are not registered and look like ours: the
   ``--entropy-*`` / ``--high-entropy*`` namespace, abbreviations of our flags and near misses (difflib), with a
   did-you-mean. slime v0.1.0 rejects every unknown flag, later releases drop them silently (Megatron parses with
   ``ignore_unknown_args``), so ``--entropy-percentil 0.5`` would leave rho at 0.2 there. Other unknown flags are
   slime's business and keep each release's behaviour;
3. when the command line gives any of our flags, makes ``--loss-type custom_loss --custom-loss-function-path
   slime_entropy.loss.policy_loss_function`` the defaults; after parsing, a run that gave our flags but ends with
   another loss (the user's own ``--loss-type`` / ``--custom-loss-function-path``, or slime's YAML
   ``--custom-config-path``) is refused: our flags would do nothing there;
4. validates our flags (``LossConfig.from_args``) when our loss is selected, so flag problems stop the driver
   before Ray starts anything.

slime's Ray actors receive the parsed Namespace (pickled, our attributes included) and load the loss by its path
in each worker, so slime_entropy must be importable on every node (``pip install``, or PYTHONPATH in Ray's
runtime environment).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from ..loss.arguments import add_arguments

__all__ = ["OUR_LOSS_PATH", "FLAG_NAMESPACES", "LaunchError", "install", "our_flags"]

logger = logging.getLogger(__name__)

OUR_LOSS_PATH = "slime_entropy.loss.policy_loss_function"
# Unknown flags under these prefixes are refused: they can only be misspellings of ours (or of slime's
# --entropy-coef, which is suggested then).
FLAG_NAMESPACES = ("--entropy-", "--high-entropy")
_NEAR_MISS_CUTOFF = 0.85  # difflib ratio above which an unknown flag outside the namespaces is taken for ours
_SUGGESTION_CUTOFF = 0.6
_TIE = 0.03  # a second suggestion only when it is about as close as the best one


class LaunchError(ValueError):
    """A command line the launcher refuses; the message names the flag and the fix."""


@functools.cache
def _our_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(add_help=False))


def our_flags() -> tuple[str, ...]:
    """The long option strings ``slime_entropy.add_arguments`` registers."""
    return tuple(sorted(flag for flag in _our_parser()._option_string_actions if flag.startswith("--")))


def _has_our_flags(parser: argparse.ArgumentParser) -> bool:
    """Whether ``slime_entropy.add_arguments`` already ran on ``parser`` (through the user's own provider)."""
    # get_default answers None for a destination no action has; our switch's default is False.
    return parser.get_default("high_entropy_token_filter") is not None


def _our_settings_changed(args: argparse.Namespace) -> list[str]:
    """Our flags whose value in ``args`` is not their default (set on the command line or by a YAML override)."""
    return [
        action.option_strings[0]
        for action in _our_parser()._actions
        if getattr(args, action.dest, action.default) != action.default
    ]


def _command_line_flags(argv: Sequence[str]) -> list[str]:
    """The option names on a command line (``--flag`` and ``--flag=value``), up to argparse's ``--`` separator."""
    flags = []
    for token in argv:
        if token == "--":
            break
        if token.startswith("--"):
            flags.append(token.split("=", 1)[0])
    return flags


def _unknown_flag_problems(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    known_set = set(known)
    problems = []
    for flag in dict.fromkeys(_command_line_flags(argv)):
        if flag in known_set:
            continue
        spelled = flag.replace("_", "-")
        abbreviates = [ours for ours in our_flags() if ours.startswith(spelled)]
        looks_ours = (
            spelled.startswith(FLAG_NAMESPACES)
            or abbreviates
            or difflib.get_close_matches(spelled, our_flags(), n=1, cutoff=_NEAR_MISS_CUTOFF)
        )
        if not looks_ours:
            continue  # not ours: each slime release keeps its own behaviour for it
        if spelled in known_set:
            hint = f"did you mean {spelled}? (flags are spelled with dashes)"
        elif len(abbreviates) == 1:
            hint = f"did you mean {abbreviates[0]}? (abbreviations are not accepted: slime's parser takes full names)"
        elif abbreviates:
            hint = f"did you mean {' or '.join(abbreviates)}?"
        else:
            hint = _did_you_mean(spelled, known)
        problems.append(f"{flag}: {hint}")
    return problems


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    """The closest known name, and any other about as close."""
    scored = sorted(((difflib.SequenceMatcher(None, name, other).ratio(), other) for other in known), reverse=True)
    close = [other for score, other in scored[:3] if score >= max(_SUGGESTION_CUTOFF, scored[0][0] - _TIE)]
    return f"did you mean {' or '.join(close)}?" if close else f"slime_entropy's flags: {', '.join(our_flags())}"


def _resolves_to_our_loss(path: str | None) -> bool:
    if not path or not path.startswith("slime_entropy."):
        return False  # never import a user's module in the driver; slime imports it in the workers
    module, _, name = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    from ..loss import policy_loss_function

    return function is policy_loss_function


class _Call:
    """The state of one ``parse_args`` call: what the command line asked for, and the finished parser."""

    def __init__(self, user_provider: Callable | None):
        self.user_provider = user_provider
        self.parser: argparse.ArgumentParser | None = None
        self.given_ours: list[str] = []

    def provider(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """slime's add_custom_arguments hook: the user's provider, then ours, then the check on parse."""
        if self.user_provider is not None:
            parser = self.user_provider(parser)
        if not _has_our_flags(parser):
            parser = add_arguments(parser)
        self.parser = parser
        # slime adds its own groups after this hook returns; the check must see them, so it runs when the
        # complete parser starts reading the command line (argparse's parse_args goes through parse_known_args).
        parse_known_args = parser.parse_known_args

        def checked_parse_known_args(args=None, namespace=None):
            self._before_parse(parser, sys.argv[1:] if args is None else list(args))
            return parse_known_args(args, namespace)

        parser.parse_known_args = checked_parse_known_args
        return parser

    def _before_parse(self, parser: argparse.ArgumentParser, argv: list[str]) -> None:
        problems = _unknown_flag_problems(parser, argv)
        if problems:
            raise LaunchError(
                "unknown flags where slime_entropy's live (slime's parser would reject them, as v0.1.0 does, or "
                "drop them silently, as v0.3.1 and main do):\n  " + "\n  ".join(problems)
            )
        given = set(_command_line_flags(argv))
        self.given_ours = [flag for flag in our_flags() if flag in given]
        if self.given_ours:
            parser.set_defaults(loss_type="custom_loss", custom_loss_function_path=OUR_LOSS_PATH)

    def after_parse(self, args: argparse.Namespace) -> None:
        """Checks on the final Namespace (after slime's own validation and its YAML overrides)."""
        if self.parser is None:
            raise LaunchError(
                "slime's parse_args did not call its add_custom_arguments hook, so slime_entropy's flags were not "
                "registered; this slime release is not supported by the launcher"
            )
        dests = {action.dest for action in self.parser._actions}
        strays = [key for key in vars(args) if key.startswith(("entropy_", "high_entropy")) and key not in dests]
        if strays:
            raise LaunchError(
                "unknown settings where slime_entropy's live (from --custom-config-path?):\n  "
                + "\n  ".join(f"{key}: {_did_you_mean(key, sorted(dests))}" for key in strays)
            )
        loss_type, loss_path = getattr(args, "loss_type", None), getattr(args, "custom_loss_function_path", None)
        ours_selected = loss_type == "custom_loss" and _resolves_to_our_loss(loss_path)
        requested = list(dict.fromkeys(self.given_ours + _our_settings_changed(args)))
        if requested and not ours_selected:
            chosen = f"--loss-type {loss_type}"
            if loss_type == "custom_loss":
                chosen += f" --custom-loss-function-path {loss_path}"
            raise LaunchError(
                f"{', '.join(requested)}: these act through slime_entropy's loss, but this run selects {chosen}, "
                f"which ignores them. Select ours with --loss-type custom_loss --custom-loss-function-path "
                f"{OUR_LOSS_PATH} (the launcher's default when our flags are on the command line and no other loss "
                "is chosen), or drop slime_entropy's flags to train with that loss"
            )
        if ours_selected:
            from ..loss.config import LossConfig

            try:
                LossConfig.from_args(args)
            except ValueError as error:
                raise LaunchError(str(error)) from error
            logger.info("slime_entropy: loss %s selected", loss_path)


def _wrap(parse_args: Callable) -> Callable:
    @functools.wraps(parse_args)
    def parse_args_with_slime_entropy(add_custom_arguments=None, *args, **kwargs):
        call = _Call(add_custom_arguments)
        parsed = parse_args(call.provider, *args, **kwargs)
        call.after_parse(parsed)
        return parsed

    parse_args_with_slime_entropy.slime_entropy_wrapped = True
    return parse_args_with_slime_entropy


def install() -> None:
    """Wrap ``slime.utils.arguments.parse_args`` (idempotent). Scripts that import it afterwards get the wrapper."""
    module = importlib.import_module("slime.utils.arguments")
    if not getattr(module.parse_args, "slime_entropy_wrapped", False):
        module.parse_args = _wrap(module.parse_args)
