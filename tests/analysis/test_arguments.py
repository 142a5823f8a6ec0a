"""The analysis command's flags resolve into the report's config; its defaults are the config's."""

import pytest

from slime_entropy.analysis.cli import build_parser
from slime_entropy.analysis.config import ReportOptions


def test_unset_flags_give_the_default_report_options():
    args = build_parser().parse_args(["--out-dir", "x"])
    assert ReportOptions.from_args(args) == ReportOptions()


def test_report_flags_resolve_and_are_checked():
    parser = build_parser()
    argv = ["--out-dir", "x", "--rho", "0.5", "--scope", "response", "--num-top-tokens", "7", "--title", "T"]
    options = ReportOptions.from_args(parser.parse_args(argv))
    assert (options.rho, options.scope, options.num_top_tokens, options.title) == (0.5, "response", 7, "T")
    with pytest.raises(ValueError, match="--num-top-tokens"):
        ReportOptions.from_args(parser.parse_args(["--out-dir", "x", "--num-top-tokens", "0"]))
