"""Evaluation flags: slime's names and fallbacks to the rollout flags, validation, provider order, schedule."""

import argparse

import pytest

from slime_entropy.evaluation.arguments import add_eval_arguments
from slime_entropy.evaluation.config import EvalConfig
from slime_entropy.rollout.arguments import add_rollout_arguments


def parse(argv, *, eval_first=False):
    parser = argparse.ArgumentParser()
    if eval_first:
        add_eval_arguments(parser)
        add_rollout_arguments(parser)
    else:
        add_rollout_arguments(parser)
        add_eval_arguments(parser)
    return parser.parse_args(argv)


BASE = ["--rollout-max-response-len", "64", "--rollout-temperature", "0.8", "--rollout-top-p", "0.9"]


def test_fallbacks_to_rollout_flags():
    args = parse(BASE + ["--eval-prompt-data", "aime", "a.jsonl", "--eval-interval", "5", "--input-key", "q"])
    config = EvalConfig.from_args(args)
    assert [(d.name, d.path) for d in config.datasets] == [("aime", "a.jsonl")]
    s = config.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_response_len) == (0.8, 0.9, -1, 64)
    assert config.input_key == "q" and config.n_samples_per_prompt == 1 and config.interval == 5
    assert config.reported_pass_ks == (1,)


def test_eval_overrides_and_ours():
    args = parse(
        BASE
        + ["--eval-prompt-data", "aime", "a.jsonl", "math", "m.parquet", "--eval-interval", "2"]
        + ["--n-samples-per-eval-prompt", "32", "--eval-temperature", "1.0", "--eval-top-p", "0.7"]
        + ["--eval-top-k", "20", "--eval-max-response-len", "128", "--eval-input-key", "problem"]
        + ["--eval-label-key", "answer", "--eval-pass-k", "1", "8", "32", "--eval-correct-threshold", "0.5"]
        + ["--skip-eval-before-train", "--eval-output-dir", "out"]
    )
    config = EvalConfig.from_args(args)
    assert [d.name for d in config.datasets] == ["aime", "math"]
    s = config.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_response_len) == (1.0, 0.7, 20, 128)
    assert (config.input_key, config.label_key) == ("problem", "answer")
    assert config.reported_pass_ks == (1, 8, 32) and config.correct_threshold == 0.5
    assert config.skip_before_train and config.output_dir == "out"
    args.eval_pass_k = None
    assert EvalConfig.from_args(args).reported_pass_ks == (1, 2, 4, 8, 16, 32)


def test_absent_and_refused():
    assert EvalConfig.from_args(parse(BASE)) is None
    with pytest.raises(ValueError, match="--eval-interval needs --eval-prompt-data"):
        EvalConfig.from_args(parse(BASE + ["--eval-interval", "3"]))
    cases = [
        (["--eval-prompt-data", "aime"], "NAME PATH pairs"),
        (["--eval-prompt-data", "a", "x", "a", "y", "--eval-interval", "1"], "unique"),
        (["--eval-prompt-data", "a/b", "x", "--eval-interval", "1"], "usable name"),
        (["--eval-prompt-data", "a", "x"], "never evaluates during training"),
        (["--eval-prompt-data", "a", "x", "--eval-interval", "0"], "--eval-interval must be >= 1"),
        (["--eval-prompt-data", "a", "x", "--eval-interval", "1", "--n-samples-per-eval-prompt", "4",
          "--eval-pass-k", "8"], "--eval-pass-k"),
        (["--eval-prompt-data", "a", "x", "--eval-interval", "1", "--eval-temperature", "-1"], "--eval-temperature"),
        (["--eval-prompt-data", "a", "x", "--eval-interval", "1", "--eval-temperature", "0", "--eval-top-p", "0"],
         "--eval-top-p"),
        (["--eval-prompt-data", "a", "x", "--eval-interval", "1", "--eval-top-p", "2"], "--eval-top-p"),
    ]  # fmt: skip
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            EvalConfig.from_args(parse(BASE + extra))
    no_len = parse(["--eval-prompt-data", "a", "x", "--eval-interval", "1"])
    with pytest.raises(ValueError, match="--eval-max-response-len"):
        EvalConfig.from_args(no_len)
    greedy = parse(BASE + ["--eval-prompt-data", "a", "x", "--eval-interval", "1", "--eval-temperature", "0"])
    assert EvalConfig.from_args(greedy).sampling.temperature == 0.0  # greedy evaluation is allowed
    assert EvalConfig.from_args(greedy).sampling.to_sglang(8)["temperature"] == 0.0
    # The standalone command needs no interval.
    assert EvalConfig.from_args(parse(BASE + ["--eval-prompt-data", "a", "x"]), training=False) is not None


def test_provider_order_and_one_owner():
    args = parse(BASE + ["--eval-prompt-data", "a", "x", "--eval-interval", "1"], eval_first=True)
    assert EvalConfig.from_args(args).sampling.temperature == 0.8
    # The evaluation package owns its flags: a parser that already has one (slime's own parser) is not ours to extend.
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-interval", type=int, default=1000)
    with pytest.raises(argparse.ArgumentError, match="--eval-interval"):
        add_eval_arguments(parser)


def test_schedule():
    from slime_entropy.evaluation.evaluator import Evaluator

    config = EvalConfig.from_args(parse(BASE + ["--eval-prompt-data", "a", "x", "--eval-interval", "3"]))
    evaluator = Evaluator.__new__(Evaluator)  # the schedule needs only the config (no data loading)
    evaluator.config = config
    assert evaluator.should_evaluate_before_training(0) and not evaluator.should_evaluate_before_training(5)
    assert [r for r in range(10) if evaluator.should_evaluate(r)] == [2, 5, 8]
    assert [r for r in range(10) if evaluator.should_evaluate(r, num_rollout_per_epoch=4)] == [2, 3, 5, 7, 8]
    skip = EvalConfig.from_args(
        parse(BASE + ["--eval-prompt-data", "a", "x", "--eval-interval", "3", "--skip-eval-before-train"])
    )
    evaluator.config = skip
    assert not evaluator.should_evaluate_before_training(0)
