"""examples/fr3e: the Qwen2.5-Math-7B FR3E run script passes the dry-run planner against the model's config facts, and
carries the released setting (n = 16, 4 anchors, clip 0.2 / 0.3, lr 2e-6, 3072-token responses)."""

from __future__ import annotations

from pathlib import Path

from slime_entropy.launch.plan import plan_from_args
from tests.launch.helpers import REPO, parse_train_args, recorded_argv

SCRIPT = REPO / "examples" / "fr3e" / "run-qwen2.5-math-7B.sh"


def _value(argv: list[str], flag: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def test_the_fr3e_example_passes_the_dry_run_planner(tmp_path):
    argv = recorded_argv(SCRIPT, tmp_path)
    args = parse_train_args(argv)
    # what a real machine has: the converted reference and the data
    Path(args.ref_load).mkdir(parents=True, exist_ok=True)
    (Path(args.ref_load) / "latest_checkpointed_iteration.txt").write_text("release\n")
    for path in [args.prompt_data, *args.eval_prompt_data[1::2]]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text('{"prompt": "p", "label": "1"}\n')
    plan = plan_from_args(args)
    text = plan.render()
    assert plan.fits and "verdict: fits" in text and "MODEL_ARGS match config.json" in text, text
    assert all("torch_memory_saver" in w for w in plan.warnings), text
    assert plan.on_gpu and plan.cluster.num_train_ranks == 8 and plan.cluster.colocate
    # 32 prompts x (16 base + 2 explored x 4 anchors x 16 continuations) in one optimizer step
    assert plan.batch.samples_per_rollout == 32 * 144 and plan.batch.num_steps_per_rollout == 1
    assert "FR3E             ON: 2 base trajectory(ies)/prompt x 4 anchors (entropy) x 16 partial rollouts" in text
    expected = {"--n-samples-per-prompt": "16", "--fr3e-num-anchors": "4", "--eps-clip": "0.2",
                "--eps-clip-high": "0.3", "--lr": "2e-6", "--rollout-max-response-len": "3072",
                "--rotary-base": "10000"}  # fmt: skip
    for flag, value in expected.items():
        assert _value(argv, flag) == value, flag
    assert args.rollout_max_prompt_len + args.rollout_max_response_len <= 4096  # the model's context
