"""Flags (names and defaults as in slime), validation messages, and the --sglang-* pass-through."""

import argparse
import importlib.util

import pytest

from slime_entropy.rollout.arguments import add_rollout_arguments
from slime_entropy.rollout.config import EngineConfig, GroupConfig, RolloutConfig, SamplingConfig, resolve_backend
from slime_entropy.rollout.sglang_options import (
    collect_passthrough,
    options_from_parser,
    passthrough_options,
    register_passthrough,
    to_cli,
)


def _parse(argv):
    parser = add_rollout_arguments(argparse.ArgumentParser())
    assert isinstance(parser, argparse.ArgumentParser)
    return parser.parse_args(argv)


def _valid_argv(tiny_model_dir, prompts):
    return [
        "--hf-checkpoint",
        str(tiny_model_dir),
        "--prompt-data",
        str(prompts),
        "--rollout-batch-size",
        "4",
        "--rollout-max-response-len",
        "16",
        "--rm-type",
        "math",
    ]


def test_slime_defaults():
    args = _parse([])
    slime_defaults = {
        "rollout_temperature": 1.0,
        "rollout_top_p": 1.0,
        "rollout_top_k": -1,
        "rollout_max_response_len": None,
        "rollout_stop": None,
        "rollout_stop_token_ids": None,
        "rollout_skip_special_tokens": False,
        "input_key": "input",
        "label_key": None,
        "metadata_key": "metadata",
        "apply_chat_template": False,
        "apply_chat_template_kwargs": {},
        "rollout_shuffle": False,
        "rollout_seed": 42,
        "n_samples_per_prompt": 1,
        "rollout_batch_size": None,
        "rewards_normalization": True,
        "grpo_std_normalization": True,
        "over_sampling_batch_size": None,
        "dynamic_sampling_filter_path": None,
        "balance_data": False,
        "rm_type": None,
        "custom_rm_path": None,
        "group_rm": False,
        "reward_key": None,
        "rollout_num_gpus_per_engine": 1,
        "num_gpus_per_node": 8,
        "sglang_server_concurrency": 512,
        "sglang_router_request_timeout_secs": 14400,
        "rollout_backend": "auto",
        "rollout_engine_host": "127.0.0.1",
    }
    assert {k: getattr(args, k) for k in slime_defaults} == slime_defaults
    args = _parse(
        [
            "--disable-rewards-normalization",
            "--disable-grpo-std-normalization",
            "--rollout-stop",
            "a",
            "b",
            "--apply-chat-template-kwargs",
            '{"enable_thinking": false}',
        ]
    )
    assert (args.rewards_normalization, args.grpo_std_normalization) == (False, False)
    assert args.rollout_stop == ["a", "b"] and args.apply_chat_template_kwargs == {"enable_thinking": False}


def test_from_args_builds_the_configs(tiny_model_dir, math_prompts):
    config = RolloutConfig.from_args(
        _parse(
            _valid_argv(tiny_model_dir, math_prompts)
            + [
                "--n-samples-per-prompt",
                "8",
                "--disable-grpo-std-normalization",
                "--rollout-stop",
                "</answer>",
                "--sglang-mem-fraction-static",
                "0.7",
                "--sglang-cuda-graph-bs-decode",
                "1",
                "2",
                "4",
                "--sglang-disable-radix-cache",
            ]
        )
    )
    assert config.engine.backend == "builtin"  # no SGLang/GPU here
    assert config.groups.normalization == "mean" and config.groups.sampling_batch_size == 4
    assert config.sampling.to_sglang(16) == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "max_new_tokens": 16,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "spaces_between_special_tokens": False,
        "stop": ["</answer>"],
    }
    assert dict(config.engine.sglang_options) == {  # in registration order: SGLang's when mirrored
        "mem-fraction-static": 0.7,
        "cuda-graph-bs-decode": (1, 2, 4),
        "disable-radix-cache": True,
    }


def test_user_hooks_name_the_functions_that_receive_slimes_args(tiny_model_dir, math_prompts):
    """Only a rollout with user functions gets slime's namespace (the trainer sends it to the rollout worker then)."""
    plain = RolloutConfig.from_args(_parse(_valid_argv(tiny_model_dir, math_prompts)))
    assert plain.user_hooks == ()
    hooked = _valid_argv(tiny_model_dir, math_prompts)[:-2] + [
        "--custom-rm-path", "tests.rollout.hooks.reward_by_group",
        "--dynamic-sampling-filter-path", "tests.rollout.hooks.keep_even_groups",
        "--n-samples-per-prompt", "2",
    ]  # fmt: skip
    assert RolloutConfig.from_args(_parse(hooked)).user_hooks == ("--custom-rm-path", "--dynamic-sampling-filter-path")


def test_from_args_reports_every_problem_with_its_flag(tmp_path):
    argv = [
        "--rollout-temperature",
        "0",
        "--rollout-top-p",
        "1.5",
        "--n-samples-per-prompt",
        "0",
        "--rollout-backend",
        "sglang",
    ]
    with pytest.raises(ValueError) as info:
        RolloutConfig.from_args(_parse(argv))
    message = str(info.value)
    no_sglang = "--rollout-backend sglang: SGLang is not installed"
    assert (no_sglang in message) == (importlib.util.find_spec("sglang") is None), message
    for expected in (
        "--hf-checkpoint is required",
        "--rollout-max-response-len is required",
        "--prompt-data is required",
        "set --rm-type",
        "--rollout-batch-size is required",
        "--rollout-num-gpus is required",
    ):
        assert expected in message, (expected, message)


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (SamplingConfig, {"max_response_len": 8, "temperature": 0.0}, "--rollout-temperature must be > 0"),
        (SamplingConfig, {"max_response_len": 8, "top_p": 0.0}, "--rollout-top-p must be in (0, 1]"),
        (SamplingConfig, {"max_response_len": 8, "top_k": 0}, "--rollout-top-k must be -1 (off) or >= 1"),
        (SamplingConfig, {"max_response_len": 0}, "--rollout-max-response-len must be >= 1"),
        (SamplingConfig, {"max_response_len": 8, "stop": ("",)}, "--rollout-stop: stop strings must be non-empty"),
        (GroupConfig, {"rollout_batch_size": 0}, "--rollout-batch-size is required and must be >= 1"),
        (
            GroupConfig,
            {"rollout_batch_size": 2, "dynamic_sampling_filter_path": "x.y"},
            "--dynamic-sampling-filter-path 'x.y' cannot be imported",
        ),
        (GroupConfig, {"rollout_batch_size": 2, "overlong_buffer_len": -1}, "--overlong-buffer-len must be >= 0"),
        (EngineConfig, {"backend": "builtin", "hf_checkpoint": ""}, "--hf-checkpoint is required"),
        (
            EngineConfig,
            {"backend": "sglang", "hf_checkpoint": "m", "num_gpus_per_engine": 16},
            "multi-node engines are not launched",
        ),
        (
            EngineConfig,
            {"backend": "builtin", "hf_checkpoint": "m", "external_engine_addrs": ("nohost",)},
            "expected host:port",
        ),
    ],
)
def test_validation_messages(factory, kwargs, message):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    assert message in str(info.value)


def test_an_external_router_is_one_external_address(tiny_model_dir, math_prompts):
    argv = _valid_argv(tiny_model_dir, math_prompts)
    config = RolloutConfig.from_args(_parse(argv + ["--sglang-router-ip", "10.0.0.5", "--sglang-router-port", "3000"]))
    assert config.engine.external_engine_addrs == ("10.0.0.5:3000",)
    with pytest.raises(ValueError, match="--sglang-router-ip and --sglang-router-port go together"):
        RolloutConfig.from_args(_parse(argv + ["--sglang-router-ip", "10.0.0.5"]))


def test_cross_field_validation_and_context_budget(tiny_model_dir, math_prompts):
    with pytest.raises(ValueError, match="--overlong-buffer-len 16 must be < --rollout-max-response-len 16"):
        RolloutConfig.from_args(_parse(_valid_argv(tiny_model_dir, math_prompts) + ["--overlong-buffer-len", "16"]))
    sampling = SamplingConfig(max_response_len=100, max_context_len=120)
    assert [sampling.max_new_tokens(n) for n in (10, 30, 130)] == [100, 90, -10]
    args = _parse(_valid_argv(tiny_model_dir, math_prompts) + ["--num-epoch", "3"])
    assert RolloutConfig.from_args(args).data.resolve_num_rollout(8, 4) == 6


def test_backend_resolution():
    assert resolve_backend("builtin") == "builtin" and resolve_backend("sglang") == "sglang"
    assert resolve_backend("auto") == "builtin"  # CPU test machines have neither SGLang nor a GPU


def test_passthrough_from_an_sglang_style_parser():
    server = argparse.ArgumentParser(add_help=False)  # the shape of sglang's ServerArgs.add_cli_args
    server.add_argument("--model-path", type=str)
    server.add_argument("--port", type=int, default=30000)
    server.add_argument("--mem-fraction-static", type=float, default=None, help="memory")
    server.add_argument("--cuda-graph-bs", type=int, nargs="+")
    server.add_argument("--enable-memory-saver", action="store_true")
    server.add_argument("--no-thing", action="store_false", dest="thing")
    options = options_from_parser(server)
    assert [(o.name, o.kind) for o in options] == [
        ("mem-fraction-static", "value"),
        ("cuda-graph-bs", "list"),
        ("enable-memory-saver", "flag"),
        ("no-thing", "flag"),
    ]
    parser = argparse.ArgumentParser()
    register_passthrough(parser, options)
    args = parser.parse_args(
        [
            "--sglang-mem-fraction-static",
            "0.5",
            "--sglang-cuda-graph-bs",
            "1",
            "8",
            "--sglang-enable-memory-saver",
            "--sglang-no-thing",
        ]
    )
    pairs = collect_passthrough(args, options)
    assert pairs == (
        ("mem-fraction-static", 0.5),
        ("cuda-graph-bs", (1, 8)),
        ("enable-memory-saver", True),
        ("no-thing", True),
    )
    assert to_cli(pairs) == [
        "--mem-fraction-static",
        "0.5",
        "--cuda-graph-bs",
        "1",
        "8",
        "--enable-memory-saver",
        "--no-thing",
    ]
    assert collect_passthrough(parser.parse_args([]), options) == ()


def test_passthrough_list_has_the_run_script_options():
    """Curated or mirrored: the options RL runs set are there, the launcher's own and SGLang's retired ones are not
    (tests/rollout/test_sglang_contract.py checks both lists against SGLang itself)."""
    names = {o.name for o in passthrough_options()}
    assert {"mem-fraction-static", "cuda-graph-bs-decode", "cuda-graph-max-bs-decode", "enable-memory-saver"} <= names
    assert not names & {"model-path", "port", "tp-size", "host", "cuda-graph-bs", "cuda-graph-max-bs", "config"}


def test_composes_with_the_other_argument_providers(tiny_model_dir, math_prompts):
    from slime_entropy.loss.arguments import add_arguments
    from slime_entropy.megatron.arguments import add_megatron_arguments

    for order in (
        (add_arguments, add_megatron_arguments, add_rollout_arguments),
        (add_rollout_arguments, add_megatron_arguments, add_arguments),
    ):
        parser = argparse.ArgumentParser()
        for provider in order:
            parser = provider(parser)
        args, _ = parser.parse_known_args(_valid_argv(tiny_model_dir, math_prompts) + ["--rollout-temperature", "0.8"])
        assert RolloutConfig.from_args(args).sampling.temperature == 0.8
