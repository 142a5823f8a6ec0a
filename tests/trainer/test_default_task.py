"""``python train.py`` with no model and no data: the built-in default task, shortened (a 40-step warm-up instead of
1000, 2 rollouts instead of 40). The full learning check is ``benchmarks/accept_embedded_learning.py``."""

from __future__ import annotations

import json

import pytest

from slime_entropy.trainer.default_task import problem_prompt, worked_solution
from tests.trainer.helpers import TrainRun, read_metrics

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_worked_solutions_and_their_noise():
    import random

    assert problem_prompt((3, 4, 2)) == "3+4+2"
    assert worked_solution((3, 4, 2)) == "3+4=7\n7+2=9\n\\boxed{9}"
    rng = random.Random(0)
    noisy = [worked_solution((9, 9, 9, 9), rng, noise=0.3) for _ in range(400)]
    wrong = sum(not s.endswith("\\boxed{36}") for s in noisy) / len(noisy)
    assert 0.5 < wrong < 0.8  # 1 - 0.7**3 = 0.66 of the 3-step chains carry an error
    for s in noisy:  # every chain stays self-consistent: the box holds the chain's own last result
        assert s.split("\n")[-2].split("=")[1] == s[s.index("{") + 1 : -1]


def test_the_default_task_runs_out_of_the_box_and_a_rerun_resumes(tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    argv = ["--embedded-cache-dir", str(cache), "--embedded-sft-steps", "40", "--num-rollout", "2",
            "--eval-interval", "1", "--run-dir", str(run_dir)]  # fmt: skip
    run = TrainRun(argv, tmp_path / "first.log")
    assert run.wait(timeout=480) == 0, run.output[-5000:]
    args = json.loads((run_dir / "args.json").read_text())
    assert args["embedded"] and args["high_entropy_token_filter"] and args["entropy_percentile"] == 0.2
    assert args["tensor_model_parallel_size"] == 1 and args["rollout_backend"] == "builtin"
    assert args["save"] == args["load"] == str(run_dir / "checkpoints") and args["save_rollouts"]
    assert "rollout backend: builtin" in run.output
    records = [r for r in read_metrics(run_dir) if "rollout/raw_reward" in r]
    assert [r["rollout_id"] for r in records] == [0, 1]
    assert all(0.2 <= r["train/entropy_token_ratio"] < 0.3 for r in records)
    assert [r["rollout_id"] for r in read_metrics(run_dir) if "eval/heldout" in r] == [-1, 0, 1]
    assert (cache.glob("embedded-*/COMPLETE").__next__()).is_file()
    assert (run_dir / "plots" / "overview.png").is_file() and len(list((run_dir / "rollouts").iterdir())) == 2

    # The same command again: the warm-up comes from the cache, and the run, finished, has nothing left to do.
    again = TrainRun(argv, tmp_path / "second.log")
    assert again.wait(timeout=300) == 0, again.output[-5000:]
    assert "warm-up" not in again.output and "rollout 1 [2/2] |" not in again.output
    assert "nothing to do" in again.output and "started a local Ray" not in again.output
    assert [r["rollout_id"] for r in read_metrics(run_dir) if "rollout/raw_reward" in r] == [0, 1]


def test_dry_run_of_the_default_task_plans_without_warming_up(tmp_path, capsys):
    """Before the first run the tiny model is not cached: the dry run plans with the untrained stand-in (same
    architecture) and neither trains nor caches anything."""
    import train

    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    argv = ["--embedded-cache-dir", str(cache), "--run-dir", str(run_dir), "--dry-run"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "slime_entropy dry run: the plan (nothing was started)" in out
    assert "entropy filter   ON: keep the top 0.2" in out and "verdict: fits" in out
    assert not cache.exists() and not run_dir.exists()
