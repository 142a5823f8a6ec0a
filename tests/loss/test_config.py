"""Flags: registration, parsing-time validation, resolution into frozen configs, and clear errors."""

import argparse
import re

import pytest

import slime_entropy
from slime_entropy.loss.arguments import add_slime_loss_arguments
from slime_entropy.loss.config import EntropyFilterConfig, LossConfig
from slime_entropy.rollout.arguments import add_rollout_temperature_argument


def parse(argv: str):
    parser = argparse.ArgumentParser()
    returned = slime_entropy.add_arguments(parser)
    assert returned is parser  # slime's add_custom_arguments contract: the callback returns the parser
    add_slime_loss_arguments(parser)
    add_rollout_temperature_argument(parser)
    return parser.parse_args(argv.split())


def test_seed_example_flags_resolve():
    args = parse(
        "--high-entropy-token-filter --entropy-percentile 0.2 --eps-clip 0.2 --eps-clip-high 0.28 "
        "--use-kl-loss --kl-loss-coef 0.00 --kl-loss-type low_var_kl --entropy-coef 0.00 "
        "--rollout-temperature 0.8"
    )
    config = LossConfig.from_args(args)
    assert config.entropy_filter == EntropyFilterConfig(enabled=True, keep_fraction=0.2)
    assert config.policy.eps_clip_high == 0.28 and config.policy.temperature == 0.8
    assert config.policy.mode == "ppo" and config.policy.kl_estimator == "low_var_kl"


def test_defaults_are_off_and_documented_values():
    config = LossConfig.from_args(parse(""))
    assert not config.entropy_filter.enabled
    assert config.policy.eps_clip_high == config.policy.eps_clip == 0.2
    on = LossConfig.from_args(parse("--high-entropy-token-filter"))
    assert on.entropy_filter.keep_fraction == 0.2
    assert on.entropy_filter.threshold_scope == "dp" and on.entropy_filter.denominator == "kept"


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "abc", "nan"])
def test_percentile_outside_unit_interval_is_rejected_at_parse_time(value, capsys):
    with pytest.raises(SystemExit):
        parse(f"--high-entropy-token-filter --entropy-percentile {value}")
    assert "--entropy-percentile" in capsys.readouterr().err


def test_percentile_one_is_allowed():
    assert (
        LossConfig.from_args(parse("--high-entropy-token-filter --entropy-percentile 1")).entropy_filter.keep_fraction
        == 1.0
    )


def test_filter_options_without_the_switch_are_errors_not_silent_no_ops():
    with pytest.raises(ValueError) as err:
        LossConfig.from_args(
            parse("--entropy-percentile 0.1 --entropy-threshold-scope local --entropy-filter-denominator all")
        )
    message = str(err.value)
    for flag in ("--entropy-percentile", "--entropy-threshold-scope", "--entropy-filter-denominator"):
        assert flag in message
    assert "--high-entropy-token-filter" in message


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as err:
        LossConfig.from_args(
            parse(
                "--high-entropy-token-filter --entropy-filter-mask-kl-loss --clip-cov-ratio 0.1 "
                "--entropy-advantage-kappa 3 --policy-loss-mode ppo --advantage-estimator gspo"
            )
        )
    message = str(err.value)
    for fragment in (
        "--entropy-filter-mask-kl-loss needs --use-kl-loss",
        "--clip-cov-ratio",
        "--entropy-advantage-kappa",
        "contradicts --advantage-estimator gspo",
    ):
        assert fragment in message


@pytest.mark.parametrize(
    "argv,fragment",
    [
        ("--dual-clip-c 0.5", "--dual-clip-c must be > 1"),
        ("--entropy-advantage-alpha 0.4 --entropy-advantage-kappa 0.5", "--entropy-advantage-kappa must be >= 1"),
        ("--tis-clip 1 --tis-clip-low 2", "--tis-clip-low"),
        ("--policy-loss-mode clip_cov --clip-cov-lb 5 --clip-cov-ub 1", "--clip-cov-lb"),
        ("--kl-loss-type k3 --eps-clip -0.1", "--eps-clip must be >= 0"),
        ("--policy-loss-mode gpg --dual-clip-c 3", "--dual-clip-c applies"),
    ],
)
def test_bad_values_name_the_flag(argv, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        LossConfig.from_args(parse(argv))


def test_auto_mode_follows_the_advantage_estimator():
    assert LossConfig.from_args(parse("--advantage-estimator gspo")).policy.mode == "gspo"
    assert LossConfig.from_args(parse("--advantage-estimator cispo")).policy.mode == "cispo"
    assert LossConfig.from_args(parse("--policy-loss-mode gmpo")).policy.mode == "gmpo"


def test_slime_heads_eps_clip_c_is_honoured():
    args = parse("")
    args.eps_clip_c = 10.0
    assert LossConfig.from_args(args).policy.dual_clip_c == 10.0
    args.dual_clip_c = 3.0
    with pytest.raises(ValueError, match="disagree"):
        LossConfig.from_args(args)


def test_missing_flags_explain_how_to_register_them():
    parser = argparse.ArgumentParser()
    add_slime_loss_arguments(parser)
    with pytest.raises(ValueError, match=r"add_custom_arguments=slime_entropy.add_arguments"):
        LossConfig.from_args(parser.parse_args([]))
    parser = argparse.ArgumentParser()
    slime_entropy.add_arguments(parser)
    with pytest.raises(ValueError, match="add_slime_loss_arguments"):
        LossConfig.from_args(parser.parse_args([]))
    # --rollout-temperature is the rollout package's flag: the message names its registrar, and only that.
    add_slime_loss_arguments(parser)
    with pytest.raises(
        ValueError, match=r"\(--rollout-temperature\)\. .*\.add_rollout_temperature_argument\(parser\)\.$"
    ) as e:
        LossConfig.from_args(parser.parse_args([]))
    assert "add_slime_loss_arguments" not in str(e.value)


def test_configs_are_frozen():
    config = LossConfig.from_args(parse("--high-entropy-token-filter"))
    with pytest.raises(AttributeError):
        config.entropy_filter.keep_fraction = 0.5
