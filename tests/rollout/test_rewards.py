"""Reward extraction and grading: a table of tricky answers, the rm-type semantics, time limits and failures."""

import asyncio
import time
from argparse import Namespace

import pytest

from slime_entropy.rollout.config import RewardConfig
from slime_entropy.rollout.rewards.answers import dapo_answer, deepscaler_region, last_boxed
from slime_entropy.rollout.rewards.compute import RewardComputer, scalar_reward
from slime_entropy.rollout.rewards.grading import answers_equivalent, parse_rm_type, rule_based_reward
from slime_entropy.rollout.rewards.pool import GradingError, GradingPool, GradingTimeout
from slime_entropy.rollout.sample import Sample

BOXED_CASES = [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # the last box wins
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{\\boxed{3}}", "3"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count as groups
    ("\\boxed{ 7 }", "7"),
    ("\\boxed 5 is it", "5"),  # brace-less form
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed{2} and then \\boxed{3", None),  # the last box never closes
    ("no box here", None),
    ("\\boxedfoo{3}", None),  # another macro
    ("\\boxed{}", ""),
]


@pytest.mark.parametrize("text, expected", BOXED_CASES)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_deepscaler_region_and_dapo_answer():
    assert deepscaler_region("think \\boxed{1}</think> final \\boxed{2}") == " final \\boxed{2}"
    assert deepscaler_region("a</think>b</think>c") == "c"
    assert deepscaler_region("###Response the end") == " the end"
    assert deepscaler_region("\\boxed{2}") is None
    assert dapo_answer("work...\nAnswer: 17\nmore\nanswer: $18$") == "18"
    assert dapo_answer("Answer: 17" + "x" * 300) is None  # only the last 300 characters count
    assert dapo_answer("Answer:   \n") is None


# (answer as extracted, label, equivalent?) -- graded by math-verify.
EQUIVALENCE_TABLE = [
    ("\\frac{1}{2}", "1/2", True),
    ("0.5", "\\frac12", True),
    ("\\dfrac{1}{2}", "0.5", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{1}{2}\\text{ cm}", "1/2", True),  # units in \text
    ("5 \\text{ apples}", "5", True),
    ("50\\%", "50", True),
    ("90^\\circ", "90", True),
    ("\\$5", "5", True),
    ("1,000", "1000", True),
    ("x=3", "3", True),
    ("\\left(1, 2\\right)", "(1,2)", True),
    ("[1,2)", "[1,2)", True),
    ("(1,2]", "[1,2)", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2", True),
    ("3\\sqrt{3}", "\\sqrt{27}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\infty", "\\infty", True),
    ("34", 34, True),  # integer labels
    ("0.33", "\\frac13", False),
    ("2", "3", False),
    ("\\pi", "3.14", False),
    ("", "5", False),
    ("\\frac{1}{2", "1/2", True),  # math-verify closes a dangling brace
    ("}{\\frac{", "1/2", False),  # garbage LaTeX does not crash
    ("The solution is \\boxed{7}", "\\boxed{7}", True),  # MATH-style labels carry their answer in a box
]


@pytest.mark.parametrize("answer, label, expected", EQUIVALENCE_TABLE)
def test_equivalence_table(answer, label, expected):
    assert answers_equivalent(answer, label) is expected


def test_model_output_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"exec(\"open('{marker}','w')\")",
        f"Answer: __import__('pathlib').Path('{marker}').touch()",
    ]
    for text in payloads:
        for rm_type in ("math", "boxed_math", "dapo", "deepscaler"):
            rule_based_reward(rm_type, f"</think>{text}", "0")
        answers_equivalent(text, "0")
    assert not marker.exists()


RM_TABLE = [
    # deepscaler: needs </think> (or ###Response); grades the last box after it
    ("deepscaler", "<think>\\boxed{3}</think> The answer is \\boxed{4}.", "4", 1.0),
    ("deepscaler", "<think>\\boxed{4}</think> The answer is \\boxed{3}.", "4", 0.0),
    ("deepscaler", "The answer is \\boxed{4}.", "4", 0.0),  # no marker -> 0 (slime's semantics)
    ("deepscaler", "###Response The answer is \\boxed{4}.", "4", 1.0),
    ("deepscaler", "<think>x</think> The answer is 4.", "4", 0.0),  # no box after the marker
    # math: last box anywhere
    ("math", "The answer is \\boxed{\\frac{4}{2}}", "2", 1.0),
    ("math", "\\boxed{2} no wait \\boxed{3}", "2", 0.0),
    ("math", "The answer is 2", "2", 0.0),
    # boxed_: the box content is the answer, then the base type's scoring rule
    ("boxed_math", "so \\boxed{0.5}", "1/2", 1.0),
    ("boxed_deepscaler", "no marker but \\boxed{6}", "6", 1.0),
    ("boxed_deepscaler", "nothing boxed", "6", 0.0),
]


@pytest.mark.parametrize("rm_type, response, label, expected", RM_TABLE)
def test_rule_based_rewards(rm_type, response, label, expected):
    assert rule_based_reward(rm_type, response, label) == expected


def test_dapo_scores_plus_minus_one_with_a_dict():
    assert rule_based_reward("dapo", "blah\nAnswer: 12", "12") == {"score": 1.0, "acc": True, "pred": "12"}
    assert rule_based_reward("dapo", "Answer: \\frac{24}{2}", 12) == {
        "score": 1.0,
        "acc": True,
        "pred": "\\frac{24}{2}",
    }
    assert rule_based_reward("dapo", "Answer: 13", "12") == {"score": -1.0, "acc": False, "pred": "13"}
    assert rule_based_reward("dapo", "\\boxed{12}", "12") == {"score": -1.0, "acc": False, "pred": "[INVALID]"}
    assert rule_based_reward("boxed_dapo", "\\boxed{12}", "12") == {"score": 1.0, "acc": True, "pred": "12"}


def test_unknown_rm_type_lists_choices():
    with pytest.raises(ValueError, match="--rm-type 'f2'.*deepscaler, math, dapo, boxed_deepscaler"):
        parse_rm_type("f2")
    assert parse_rm_type("boxed_dapo") == (True, "dapo")


def test_scalar_reward_and_reward_key():
    s = Sample(index=3, group_index=0, prompt="p", reward={"score": -1.0, "acc": False})
    assert scalar_reward(s, "score") == -1.0
    with pytest.raises(ValueError, match="pass --reward-key"):
        scalar_reward(s, None)
    with pytest.raises(ValueError, match="--reward-key 'acc2' is not in the reward dict"):
        scalar_reward(s, "acc2")
    assert scalar_reward(Sample(index=0, group_index=0, prompt="p", reward=1), "score") == 1.0


def test_grading_pool_enforces_time_limits_and_survives_crashes():
    with GradingPool(num_workers=1, kill_grace_seconds=0.5) as pool:
        assert pool.run("tests.rollout.hooks.sleep_then_return", (0.0, 7), timeout=5) == 7
        pid_before = pool._idle.queue[0].process.pid
        started = time.monotonic()
        with pytest.raises(GradingTimeout):
            pool.run("tests.rollout.hooks.sleep_then_return", (60, 1), timeout=0.5)
        assert time.monotonic() - started < 10
        assert pool.num_killed == 1 and pool._idle.queue[0].process.pid != pid_before
        with pytest.raises(GradingError, match="ValueError: bad input"):
            pool.run("tests.rollout.hooks.raise_value_error", ("bad input",), timeout=5)
        with pytest.raises(GradingError, match="died"):
            pool.run("tests.rollout.hooks.exit_hard", (3,), timeout=5)
        assert pool.run("tests.rollout.hooks.sleep_then_return", (0.0, "still works"), timeout=5) == "still works"


def _group(n, response="The answer is \\boxed{4}", label="4", start=0):
    return [Sample(index=start + i, group_index=0, prompt="p", response=response, label=label) for i in range(n)]


def test_reward_computer_rule_based_with_failures_and_time_limit():
    rewards = RewardComputer(RewardConfig(rm_type="math", timeout=1.0, num_workers=2))
    try:
        ok = _group(2)
        hard = _group(1, response="\\boxed{10^{10^{10^{10}}}}", label="1", start=10)  # sympy would hang
        bad_label = _group(1, label=None, start=20)
        per_sample_type = _group(1, response="</think> \\boxed{4}", start=30)
        per_sample_type[0].metadata["rm_type"] = "deepscaler"
        started = time.monotonic()
        asyncio.run(rewards.score_group(ok + hard + bad_label + per_sample_type))
        assert time.monotonic() - started < 30
        assert [s.reward for s in ok] == [1.0, 1.0] and per_sample_type[0].reward == 1.0
        assert hard[0].reward == 0.0 and bad_label[0].reward == 0.0
        assert "label must be a number or a string" in bad_label[0].metadata["reward_error"]
        assert rewards.num_failures == 1 + ("reward_error" in hard[0].metadata)
    finally:
        rewards.close()


def test_custom_rewards_sync_async_group_and_failures():
    args = Namespace(tag="hook-args")

    def run(config, group):
        computer = RewardComputer(config, hook_args=args)
        asyncio.run(computer.score_group(group))
        return computer

    group = _group(3)
    for s, n in zip(group, (5, 6, 7), strict=True):
        s.response_length = n
    run(RewardConfig(custom_rm_path="tests.rollout.hooks.async_reward_len"), group)
    assert [s.reward for s in group] == [
        {"score": 5.0, "acc": True},
        {"score": 6.0, "acc": True},
        {"score": 7.0, "acc": True},
    ]
    run(RewardConfig(custom_rm_path="tests.rollout.hooks.group_reward", group_rm=True), group)
    assert [s.reward for s in group] == [0.0, 1.0, 2.0]
    computer = run(RewardConfig(custom_rm_path="tests.rollout.hooks.group_reward_wrong_length", group_rm=True), group)
    assert [s.reward for s in group] == [0.0, 0.0, 0.0] and computer.num_failures == 3
    computer = run(RewardConfig(custom_rm_path="tests.rollout.hooks.reward_raises"), group)
    assert [s.reward for s in group] == [1.0, 0.0, 1.0] and computer.num_failures == 1
    assert "RuntimeError in tests.rollout.hooks.reward_raises: boom" in group[1].metadata["reward_error"]
    started = time.monotonic()
    computer = run(RewardConfig(custom_rm_path="tests.rollout.hooks.async_reward_sleeps", timeout=0.2), group)
    assert [s.reward for s in group] == [0.0, 0.0, 0.0] and computer.num_failures == 3
    assert time.monotonic() - started < 5


def test_reward_config_validation():
    with pytest.raises(ValueError, match="set --rm-type .* or --custom-rm-path"):
        RewardConfig()
    with pytest.raises(ValueError, match="--group-rm needs --custom-rm-path"):
        RewardConfig(rm_type="math", group_rm=True)
    with pytest.raises(ValueError, match="--custom-rm-path 'nope.missing' cannot be imported"):
        RewardConfig(custom_rm_path="nope.missing")
    with pytest.raises(ValueError, match="--reward-timeout must be > 0"):
        RewardConfig(rm_type="math", timeout=0)


def test_bundled_example_data_is_gradable():
    from pathlib import Path

    from slime_entropy.rollout.data import load_prompt_records

    path = Path(__file__).resolve().parents[2] / "examples" / "data" / "math_prompts.jsonl"
    records = load_prompt_records(path, input_key="prompt", label_key="label", metadata_key="metadata")
    assert len(records) == 16
    for record in records:
        assert rule_based_reward("math", f"so \\boxed{{{record.label}}}", record.label) == 1.0
        assert rule_based_reward("math", "so \\boxed{-1}", record.label) == 0.0
