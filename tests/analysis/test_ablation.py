"""The rho-ablation runner: orchestration, resume, failures and the table/plot numbers (fast, with a stand-in
trainer), and a real grid of two very short train.py runs on the built-in task (slow)."""

import json
import math
import statistics
from pathlib import Path

import pytest

from slime_entropy.analysis.ablation import main, mean_and_halfwidth, t_quantile_975
from tests.analysis.test_report import check_png

FAKE = str(Path(__file__).with_name("fake_train.py"))
REPO = Path(__file__).resolve().parents[2]


def fake_reward(rho, seed, t):
    return 0.2 + 0.05 * t * rho + 0.01 * seed


def test_statistics_helpers():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(100) == 1.96
    mean, half = mean_and_halfwidth([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and half == pytest.approx(4.303 * statistics.stdev([1, 2, 4]) / math.sqrt(3))
    assert mean_and_halfwidth([5.0])[0] == 5.0 and math.isnan(mean_and_halfwidth([5.0])[1])


def test_grid_with_stand_in_trainer(tmp_path, capsys):
    out = tmp_path / "abl"
    argv = ["--out-dir", str(out), "--rhos", "0.2", "1.0", "0.5", "--seeds", "1", "2", "3", "--train-script", FAKE]
    argv += ["--window", "3", "--smooth", "2", "--", "--num-rollout", "8", "--fail-rho", "0.5"]
    assert main(argv) == 1  # rho 0.5 fails on every seed: reported, the others complete
    captured = capsys.readouterr()
    assert "FAILED rho=0.5 seed=1: exit 3" in captured.err and "simulated failure" in captured.err
    result = json.loads((out / "ablation.json").read_text())
    rows = {row["rho"]: row for row in result["rows"]}
    assert sorted(rows) == [0.2, 0.5, 1.0] and rows[0.5]["num_seeds"] == 0 and rows[0.5]["num_failed"] == 3
    for rho in (0.2, 1.0):
        row = rows[rho]
        assert row["num_seeds"] == 3 and row["num_rollouts"] == 8 and row["kept_ratio"] == pytest.approx(rho)
        last = [statistics.mean(fake_reward(rho, s, t) for t in range(5, 8)) for s in (1, 2, 3)]
        first = [statistics.mean(fake_reward(rho, s, t) for t in range(3)) for s in (1, 2, 3)]
        assert row["reward_last"] == pytest.approx(statistics.mean(last))
        assert row["reward_last_ci95"] == pytest.approx(4.303 * statistics.stdev(last) / math.sqrt(3))
        assert row["reward_gain"] == pytest.approx(statistics.mean(a - b for a, b in zip(last, first, strict=True)))
        evals = [0.3 + rho * 8 * 0.01 + 0.02 * s for s in (1, 2, 3)]  # the last evaluation, after rollout 7
        assert row["eval_last"] == pytest.approx(statistics.mean(evals)) and row["eval_key"] == "eval/heldout"
        assert row["entropy_last"] == pytest.approx(1.0 - 0.7 * rho)
    table = (out / "ablation.md").read_text()
    assert "| 0.2 | 3 | 8 |" in table and "| 0.5 | 0 (3 failed) |" in table and "--fail-rho 0.5" in table
    check_png(out / "ablation.png")

    # Rerun: finished runs are skipped, failed ones are tried again.
    assert main(argv) == 1
    invocations = {p.parent.parent.name + "/" + p.parent.name: p.read_text().count("run")
                   for p in out.glob("rho*/seed*/invocations.txt")}  # fmt: skip
    assert invocations["rho0.2/seed1"] == 1 and invocations["rho1/seed2"] == 1 and invocations["rho0.5/seed3"] == 2


def test_refusals(tmp_path, capsys):
    base = ["--out-dir", str(tmp_path), "--train-script", FAKE, "--rhos", "0.2"]
    for extra, message in (
        (["--", "--entropy-percentile", "0.3"], "sets these per run"),
        (["--", "--save=/x"], "sets these per run"),
        (["--rhos", "1.5"], "must lie in (0, 1]"),
        (["--seeds", "1", "1"], "must not repeat"),
    ):
        with pytest.raises(SystemExit):
            main(base + extra)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out-dir", str(tmp_path), "--train-script", str(tmp_path / "missing.py")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_real_grid_filtered_and_unfiltered(tmp_path, monkeypatch):
    """train.py's built-in task, rho in {0.2, 1.0} x one seed, 2 rollouts each: the runner drives the real trainer
    and reads its real metrics (about 1.5 minutes on 2 cores). The aggregation over seeds (means, t-intervals,
    bands, failures, reruns) is checked exactly by the stand-in grid above; a second real seed would only repeat
    these two runs. The task's warm-up is shortened (40 steps) and cached in tmp_path, as in
    tests/trainer/test_default_task.py, so the test neither reads nor fills the user's cache."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "abl"
    argv = ["--out-dir", str(out), "--rhos", "0.2", "1.0", "--seeds", "1", "--run-timeout", "900", "--window", "1"]
    task = ["--embedded-cache-dir", str(tmp_path / "cache"), "--embedded-sft-steps", "40", "--num-rollout", "2"]
    assert main([*argv, "--", *task]) == 0, out / "rho0.2/seed1/train.log"
    rows = {row["rho"]: row for row in json.loads((out / "ablation.json").read_text())["rows"]}
    for rho in (0.2, 1.0):
        row = rows[rho]
        assert row["num_seeds"] == 1 and row["num_rollouts"] == 2 and row["num_failed"] == 0
        assert 0 <= row["reward_last"] <= 1 and row["eval_key"] is not None
    assert rows[1.0]["kept_ratio"] == pytest.approx(1.0)  # rho = 1 keeps every token
    assert 0.2 <= rows[0.2]["kept_ratio"] < 0.3  # ties kept: at least rho
    runs = json.loads((out / "ablation.json").read_text())["runs"]
    assert len(runs) == 2 and all(r["returncode"] == 0 for r in runs)
    check_png(out / "ablation.png")
