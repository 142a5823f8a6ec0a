"""The rollout flags: the flags other packages read register alone from here, and the FR3E flags' help texts quote
the defaults an unset flag resolves to."""

import argparse

import pytest

from slime_entropy.rollout.arguments import (
    add_hf_checkpoint_argument,
    add_rollout_arguments,
    add_rollout_temperature_argument,
)
from slime_entropy.rollout.config import FR3E_FLAGS, Fr3eConfig
from tests.loss.test_arguments import quoted_default


def test_the_flags_other_packages_read_register_alone():
    """--hf-checkpoint and --rollout-temperature belong to the rollout flags; a parser without them (the Megatron
    actor's tools, the loss's) registers each from here, with the same definition."""
    parser = argparse.ArgumentParser()
    add_hf_checkpoint_argument(parser)
    add_rollout_temperature_argument(parser)
    argv = ["--hf-checkpoint", "m", "--rollout-temperature", "0.7"]
    alone = parser.parse_args(argv)
    full = add_rollout_arguments(argparse.ArgumentParser()).parse_args(argv)
    assert (alone.hf_checkpoint, alone.rollout_temperature) == (full.hf_checkpoint, full.rollout_temperature)
    with pytest.raises(argparse.ArgumentError, match="--hf-checkpoint"):
        add_rollout_arguments(parser)  # one owner: registering the rollout flags on top is a conflict


@pytest.mark.parametrize("field", [name for name in FR3E_FLAGS if name != "sharpen_power"])
def test_an_unset_fr3e_flag_resolves_to_the_default_its_help_quotes(field):
    parser = add_rollout_arguments(argparse.ArgumentParser())
    help_text = parser._option_string_actions[FR3E_FLAGS[field]].help
    args = parser.parse_args(["--fr3e", "--n-samples-per-prompt", "4"])
    assert quoted_default(help_text) == getattr(Fr3eConfig.from_args(args), field), help_text


def test_sharpening_is_off_unless_given():
    parser = add_rollout_arguments(argparse.ArgumentParser())
    assert "Default: off" in parser._option_string_actions["--fr3e-sharpen-power"].help
    assert Fr3eConfig.from_args(parser.parse_args(["--fr3e", "--n-samples-per-prompt", "4"])).sharpen_power is None
