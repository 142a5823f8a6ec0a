"""The loss flags' help texts tell the truth: a flag left unset resolves to the default its help quotes."""

import argparse
import re

import pytest

from slime_entropy.loss.arguments import add_arguments, add_slime_loss_arguments
from slime_entropy.loss.config import LossConfig
from slime_entropy.rollout.arguments import add_rollout_temperature_argument


def _parser() -> argparse.ArgumentParser:
    parser = add_slime_loss_arguments(add_arguments(argparse.ArgumentParser()))
    add_rollout_temperature_argument(parser)
    return parser


def quoted_default(help_text: str) -> str | float:
    """The value after 'default' / 'Default:' in a help text, as a string or a number."""
    match = re.search(r"[Dd]efault:? ('?[\w.+-]+'?)", help_text)
    assert match, help_text
    text = match.group(1).rstrip(".")
    return text.strip("'") if not re.fullmatch(r"[\d.e+-]+", text) else float(text)


@pytest.mark.parametrize(
    "flag, enabling, resolved",
    [
        ("--entropy-percentile", "--high-entropy-token-filter", lambda c: c.entropy_filter.keep_fraction),
        ("--entropy-threshold-scope", "--high-entropy-token-filter", lambda c: c.entropy_filter.threshold_scope),
        ("--entropy-filter-denominator", "--high-entropy-token-filter", lambda c: c.entropy_filter.denominator),
        ("--entropy-selection-method", "--high-entropy-token-filter", lambda c: c.entropy_filter.selection_method),
        ("--clip-cov-ratio", "--policy-loss-mode clip_cov", lambda c: c.policy.clip_cov_ratio),
        ("--clip-cov-lb", "--policy-loss-mode clip_cov", lambda c: c.policy.clip_cov_lb),
        ("--clip-cov-ub", "--policy-loss-mode clip_cov", lambda c: c.policy.clip_cov_ub),
        ("--kl-cov-ratio", "--policy-loss-mode kl_cov", lambda c: c.policy.kl_cov_ratio),
        ("--kl-cov-coef", "--policy-loss-mode kl_cov", lambda c: c.policy.kl_cov_coef),
        ("--entropy-advantage-kappa", "--entropy-advantage-alpha 0.1", lambda c: c.policy.advantage_kappa),
    ],
)
def test_an_unset_flag_resolves_to_the_default_its_help_quotes(flag, enabling, resolved):
    parser = _parser()
    action = parser._option_string_actions[flag]
    help_text = action.help
    config = LossConfig.from_args(parser.parse_args(enabling.split()))
    assert quoted_default(help_text) == resolved(config), help_text
