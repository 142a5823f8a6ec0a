"""slime's parse_args under the launcher, on each slime release: flags, typos, loss selection (see conftest.py)."""

from __future__ import annotations

import argparse

import pytest

from slime_entropy import add_arguments
from slime_entropy.slime.arguments import _unknown_flag_problems, our_flags
from tests.slime.conftest import RELEASES_WITH_YAML

OUR_LOSS = "slime_entropy.loss.policy_loss_function"


def _refusal(run, name: str) -> str:
    outcome = run.variant(name)
    assert outcome.get("error") == "LaunchError", f"{run.release} {name}: expected a refusal, got {outcome}"
    return outcome["message"]


def test_seed_command_line_parses_with_our_flags_and_selects_our_loss(launch_run):
    seed = launch_run.report["seed"]
    assert seed["high_entropy_token_filter"] is True
    assert seed["entropy_percentile"] == 0.2
    assert seed["loss_type"] == "custom_loss"
    assert seed["custom_loss_function_path"] == OUR_LOSS
    # slime's, Megatron's and SGLang's flags keep their meaning next to ours.
    assert seed["entropy_coef"] == 0.0 and seed["eps_clip"] == 0.2 and seed["eps_clip_high"] == 0.28
    assert seed["kl_loss_type"] == "low_var_kl" and seed["use_kl_loss"] is True
    assert seed["rollout_temperature"] == 0.8 and seed["n_samples_per_prompt"] == 8
    assert seed["global_batch_size"] == 128
    assert seed["tensor_model_parallel_size"] == 1 and seed["lr"] == 1e-6
    assert seed["sglang_mem_fraction_static"] == 0.7


def test_our_values_are_parsed(launch_run):
    assert launch_run.variant("rho")["args"]["entropy_percentile"] == 0.35


@pytest.mark.parametrize(
    "name, flag, suggestion",
    [
        ("typo", "--entropy-percentil", "did you mean --entropy-percentile?"),
        ("abbreviation", "--entropy-perc", "did you mean --entropy-percentile?"),
        ("underscore", "--entropy_percentile", "did you mean --entropy-percentile?"),
        ("switch_typo", "--high-entropy-token-filer", "did you mean --high-entropy-token-filter"),
        ("slime_flag_typo", "--entropy-coeff", "did you mean --entropy-coef"),
    ],
)
def test_misspelt_flags_in_our_namespace_are_refused_with_did_you_mean(launch_run, name, flag, suggestion):
    message = _refusal(launch_run, name)
    assert f"{flag}: {suggestion}" in message


def test_why_typos_must_be_refused_slime_alone(launch_run):
    """slime's own parse_args, with our flags registered the old way: v0.1.0 rejects the typo, later releases drop
    it and rho silently stays at its default."""
    outcome = launch_run.variant("typo_slime_alone")
    if launch_run.release == "v0.1.0":
        assert outcome["exit"] == 2 and "unrecognized arguments: --entropy-percentil 0.5" in outcome["stderr"]
    else:
        assert outcome["args"]["entropy_percentile"] is None  # the 0.5 is gone


def test_unknown_flags_of_others_keep_each_releases_behaviour(launch_run):
    ours, alone = launch_run.variant("other_unknown"), launch_run.variant("other_unknown_slime_alone")
    if launch_run.release == "v0.1.0":
        assert ours["exit"] == alone["exit"] == 2
        assert "unrecognized arguments: --foo-bar 1" in ours["stderr"]
    else:
        assert "foo_bar" not in ours["args"]  # dropped silently, as slime does
        assert ours["args"] == {
            **alone["args"],
            **{key: ours["args"][key] for key in ours["args"] if key not in alone["args"]},
        }


def test_without_our_flags_slime_keeps_its_own_loss(launch_run):
    args, alone = launch_run.variant("no_ours")["args"], launch_run.variant("no_ours_slime_alone")["args"]
    assert args["loss_type"] == alone["loss_type"] == "policy_loss"
    assert args["custom_loss_function_path"] is None
    assert args["high_entropy_token_filter"] is False and args["entropy_percentile"] is None


def test_any_of_our_loss_flags_selects_our_loss(launch_run):
    args = launch_run.variant("shaping_only")["args"]
    assert args["loss_type"] == "custom_loss" and args["custom_loss_function_path"] == OUR_LOSS


def test_a_users_own_argument_provider_still_works(launch_run):
    args = launch_run.variant("user_provider")["args"]
    assert args["my_flag"] == 3 and args["high_entropy_token_filter"] is True
    # A train.py already patched the old way (add_custom_arguments=slime_entropy.add_arguments): no conflict.
    assert launch_run.variant("old_recipe")["args"]["entropy_percentile"] == 0.2


def test_another_loss_with_our_flags_is_refused(launch_run):
    message = _refusal(launch_run, "user_loss")
    assert "--custom-loss-function-path my_project.losses.my_loss" in message and OUR_LOSS in message
    assert "--high-entropy-token-filter" in message
    assert "--loss-type policy_loss" in _refusal(launch_run, "slime_loss")


def test_our_loss_chosen_explicitly_is_accepted(launch_run):
    args = launch_run.variant("explicit_ours")["args"]
    assert args["loss_type"] == "custom_loss" and args["custom_loss_function_path"] == OUR_LOSS


def test_our_flag_checks_run_in_the_driver(launch_run):
    message = _refusal(launch_run, "needs_switch")
    assert "--entropy-percentile" in message and "--high-entropy-token-filter" in message


def test_yaml_overrides_are_checked(launch_run):
    if launch_run.release not in RELEASES_WITH_YAML:
        pytest.skip(f"slime {launch_run.release} has no --custom-config-path")
    assert "entropy_percentil" in _refusal(launch_run, "yaml_typo")
    assert "entropy_percentile" in _refusal(launch_run, "yaml_typo")
    message = _refusal(launch_run, "yaml_switch")
    assert "--high-entropy-token-filter" in message and "--loss-type policy_loss" in message


# The check itself, on a plain parser shaped like slime's (no slime needed).


def _slime_like_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--entropy-coef", type=float, default=0.0)
    parser.add_argument("--eps-clip", type=float, default=0.2)
    return add_arguments(parser)


def test_check_ignores_known_flags_values_and_others_unknowns():
    parser = _slime_like_parser()
    argv = ["--entropy-percentile=0.3", "--entropy-coef", "0", "--eps-clip", "0.2", "--foo-bar", "-x"]
    assert _unknown_flag_problems(parser, argv) == []
    # After argparse's "--" separator nothing is an option.
    assert _unknown_flag_problems(parser, ["--", "--entropy-percentil"]) == []


def test_check_refuses_typos_abbreviations_and_near_misses_of_ours():
    problems = _unknown_flag_problems(
        parser := _slime_like_parser(),
        ["--entropy-percentil=0.5", "--policy-loss-mod", "ppo", "--entropy-unknown", "1", "--dual-clip-cc", "3"],
    )
    assert problems[0].startswith("--entropy-percentil: did you mean --entropy-percentile?")
    assert problems[1].startswith("--policy-loss-mod: did you mean --policy-loss-mode?")
    assert problems[2].startswith("--entropy-unknown:")
    assert problems[3].startswith("--dual-clip-cc: did you mean --dual-clip-c?")
    assert len(problems) == 4
    assert _unknown_flag_problems(parser, ["--entropy-filter-mask", "x"])[0].startswith(
        "--entropy-filter-mask: did you mean --entropy-filter-mask-entropy-loss or --entropy-filter-mask-kl-loss?"
    )


def test_our_flags_lists_what_add_arguments_registers():
    assert "--high-entropy-token-filter" in our_flags() and "--entropy-percentile" in our_flags()
    assert "--entropy-coef" not in our_flags()  # slime's
