"""The whole loop through ``python train.py`` on CPU, broken three ways and resumed by rerunning the same command.

One run (TP2, the filter on with the step-scope threshold, the --colocate offload sequence, evaluation, dumps) is hit
by a SIGKILLed training rank, a SIGKILLed rollout worker and a Ctrl-C. Each failure must end the driver cleanly
(message, exit code, no process left, nothing half-written), each rerun must resume from the last checkpoint and redo
the rollouts after it exactly as the uninterrupted attempt did them (the same samples token for token, the same
losses, gradient norms and thresholds), and the run must end with every rollout logged once.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from slime_entropy.rollout_dump import iter_rollout_dumps
from tests.trainer.conftest import loop_argv
from tests.trainer.helpers import GATE_ENV, TrainRun, processes, read_metrics, rollout_ids, wait_gone

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

NUM_ROLLOUT = 6
SAVE_INTERVAL = 3  # checkpoints after rollouts 2 and 5: a failure after rollout 3 or 4 resumes at rollout 3
COMPARED = ("train/pg_loss", "train/loss", "train/grad_norm", "train/entropy_threshold", "train/entropy_token_ratio",
            "train/ppo_kl", "rollout/entropy", "rollout/log_probs", "rollout/raw_reward", "eval/small")  # fmt: skip


def _by_rollout(run_dir) -> dict[int, dict]:
    records = [r for r in read_metrics(run_dir) if "rollout/raw_reward" in r]
    ids = [r["rollout_id"] for r in records]
    assert ids == sorted(set(ids)), f"a rollout is missing or logged twice: {ids}"
    return {r["rollout_id"]: r for r in records}


def _snapshot(run_dir) -> dict[int, tuple[dict, list]]:
    dumps = {d.header.rollout_id: d for d in iter_rollout_dumps(run_dir)}
    return {i: (r, dumps[i].samples) for i, r in _by_rollout(run_dir).items()}


def _assert_redone_exactly(snapshot, run_dir, redone: list[int]) -> None:
    """Rollouts redone after a resume equal the first attempt's: samples token for token, losses, norms, tau."""
    now = _snapshot(run_dir)
    assert redone, "no rollout was redone: the test did not exercise a resume"
    for rollout_id in redone:
        (before, samples_before), (after, samples_after) = snapshot[rollout_id], now[rollout_id]
        for key in COMPARED:
            if key in before:
                assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-8), (rollout_id, key)
        assert [s.index for s in samples_after] == [s.index for s in samples_before]
        for a, b in zip(samples_before, samples_after, strict=True):
            assert np.array_equal(a.response_tokens, b.response_tokens), (rollout_id, a.index)
            assert np.allclose(a.entropy, b.entropy, atol=1e-5)


def _check_outputs(run_dir, output):
    records = _by_rollout(run_dir)
    assert list(records) == list(range(NUM_ROLLOUT))
    for r in records.values():
        # the first step of a rollout keeps >= rho of its tokens; the second compares the updated policy's entropies
        # with the old policy's threshold (--entropy-threshold-scope step), so the mean may fall a little below rho
        assert 0.3 <= r["train/entropy_token_ratio"] < 0.75
        assert r["train/grad_norm"] > 0 and r["train/lr"] == pytest.approx(1e-3)
        assert r["rollout/num_engine_restarts"] == 0 and r["train/step"] == 2 * (r["rollout_id"] + 1)
    evals = [r["rollout_id"] for r in read_metrics(run_dir) if "eval/small" in r]
    assert evals == [-1, 1, 3, 5]  # before training, then every 2 rollouts, each once
    assert sum(line.startswith("rollout ") and " | reward " in line for line in output.splitlines()) >= 1
    dumps = list(iter_rollout_dumps(run_dir))
    assert [d.header.rollout_id for d in dumps] == list(range(NUM_ROLLOUT))
    for dump in dumps:
        assert len(dump.samples) == 16 and dump.header.entropy_filter == {
            "enabled": True, "keep_fraction": 0.5, "threshold_scope": "step"
        }  # fmt: skip
        for s in dump.samples:
            assert s.weight_version == str(dump.header.rollout_id)
            assert s.entropy.shape == s.log_probs.shape == s.rollout_log_probs.shape == s.response_tokens.shape
            assert np.all(s.entropy >= 0) and np.all(s.log_probs <= 0)
            # engine and trainer compute the same distribution: the weights reached the engines after every step
            assert np.allclose(s.log_probs, s.rollout_log_probs, atol=2e-3)
        # the step scope: one threshold per optimizer step, the k-th largest old-policy entropy of the step's valid
        # tokens (k = ceil(rho N)); the dump holds exactly those entropies (DP = 1: step j trains samples 8j..8j+7)
        taus = []
        for step in range(2):
            samples = dump.samples[8 * step : 8 * step + 8]
            valid = np.concatenate([s.entropy[s.loss_mask.astype(bool)] for s in samples]).astype(np.float64)
            taus.append(np.sort(valid)[::-1][int(np.ceil(0.5 * valid.size)) - 1])
        assert records[dump.header.rollout_id]["train/entropy_threshold"] == pytest.approx(np.mean(taus), rel=1e-5)
    ckpt = run_dir / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(NUM_ROLLOUT - 1)
    assert sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_0000002", "iter_0000005"]
    assert {p.name for p in (run_dir / "plots").glob("*.png")} >= {"overview.png", "reward.png", "entropy.png"}


def _run_until(argv, log, run_dir, rollout_id: int, gate, timeout=300) -> TrainRun:
    """Start the command and wait until this attempt has logged ``rollout_id``; the gate then holds the next one
    in its rewards, so the run is known to be generating rollout ``rollout_id + 1`` when the test strikes."""
    gate.write_text(str(rollout_id + 1))
    run = TrainRun(argv, log, env={GATE_ENV: str(gate)})
    line = f"rollout {rollout_id} [{rollout_id + 1}/{NUM_ROLLOUT}] |"
    run.wait_until(lambda: line in run.output and rollout_id in rollout_ids(run_dir), timeout, f"rollout {rollout_id}")
    return run


def _all_pids(pids: dict) -> list[int]:
    return [p["pid"] for p in pids["train_ranks"]] + [pids["rollout_worker"], *pids["engines"]]


def test_tp2_loop_resumes_exactly_after_a_killed_rank_a_killed_rollout_worker_and_ctrl_c(
    trainer_model, trainer_data, tmp_path
):
    """TP2, the filter on with the step-scope threshold, and the offload sequence of --colocate (which the built-in
    engine enforces: generating or loading weights while released is refused)."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    argv = loop_argv(
        trainer_model, trainer_data, run_dir, "--num-rollout", str(NUM_ROLLOUT), "--save-interval", str(SAVE_INTERVAL),
        "--tensor-model-parallel-size", "2", "--colocate", "--entropy-threshold-scope", "step",
        "--custom-rm-path", "tests.trainer.helpers.gated_reward", "--reward-timeout", "600",
    )  # fmt: skip

    # 1. uninterrupted up to rollout 3 (checkpoint at 2); while rollout 4 is generated, a training rank dies
    #    (SIGKILL, as the OOM killer would): the driver, waiting on the rollout worker, notices within seconds
    run = _run_until(argv, tmp_path / "1.log", run_dir, 3, gate)
    first_attempt = _snapshot(run_dir)
    pids = processes(run_dir)
    assert [(r["tp_rank"], r["dp_size"]) for r in pids["train_ranks"]] == [(0, 1), (1, 1)]
    killed_at = time.monotonic()
    os.kill(pids["train_ranks"][1]["pid"], signal.SIGKILL)
    assert run.wait(timeout=180) == 1, run.output[-5000:]
    assert time.monotonic() - killed_at < 60
    assert "FAILED" in run.output and "training rank 1" in run.output and "rerun the same command" in run.output
    assert wait_gone(_all_pids(pids), timeout=30) == []

    # 2. the same command resumes at rollout 3 and redoes it exactly; while rollout 5 is generated, the rollout
    #    worker (and with it the engines) dies
    run = _run_until(argv, tmp_path / "2.log", run_dir, 4, gate)
    pids = processes(run_dir)
    assert pids["train_ranks"][0]["start_rollout_id"] == 3
    _assert_redone_exactly(first_attempt, run_dir, redone=[3])
    second_attempt = _snapshot(run_dir)
    os.kill(pids["rollout_worker"], signal.SIGKILL)
    assert run.wait(timeout=180) == 1, run.output[-5000:]
    assert "FAILED" in run.output and "the rollout worker" in run.output
    assert wait_gone(_all_pids(pids), timeout=30) == []

    # 3. again (resumes at 3), then Ctrl-C: exit 130 with the message, nothing half-written, nothing left running
    run = _run_until(argv, tmp_path / "3.log", run_dir, 4, gate)
    _assert_redone_exactly(second_attempt, run_dir, redone=[3, 4])
    pids = processes(run_dir)
    run.interrupt()
    assert run.wait(timeout=180) == 130, run.output[-5000:]
    assert "interrupted; nothing half-written" in run.output and "Traceback" not in run.output
    assert wait_gone(_all_pids(pids), timeout=30) == []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every line complete
    list(iter_rollout_dumps(run_dir))  # every dump complete

    # 4. to the end: every rollout once, the redone ones as before
    gate.unlink()
    run = TrainRun(argv, tmp_path / "4.log")
    assert run.wait(timeout=400) == 0, run.output[-5000:]
    assert processes(run_dir)["train_ranks"][0]["start_rollout_id"] == 3
    _assert_redone_exactly(second_attempt, run_dir, redone=[3, 4])
    _check_outputs(run_dir, run.output)
