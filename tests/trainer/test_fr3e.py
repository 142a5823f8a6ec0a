"""``train.py --fr3e`` end to end on CPU: the partial rollouts join the training batch, the dry run counts them, and a
resumed run redoes an FR3E rollout exactly (base and partial samples token for token, the same advantages, losses
and FR3E metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from slime_entropy.rollout_dump import iter_rollout_dumps
from tests.trainer.conftest import loop_argv
from tests.trainer.helpers import TrainRun, processes, read_metrics

FR3E = ["--fr3e", "--fr3e-num-anchors", "2", "--fr3e-rollouts-per-anchor", "2", "--global-batch-size", "16"]
# 4 prompts x (4 base + 1 x 2 x 2 partial) = 32 samples = 2 steps of 16
COMPARED = ("train/pg_loss", "train/grad_norm", "train/entropy_threshold", "rollout/raw_reward", "rollout/rewards",
            "fr3e/value_s0", "fr3e/value_s1", "fr3e/value_s2", "fr3e/modulation_mean", "fr3e/anchor_score",
            "fr3e/partial_generated_tokens", "fr3e/base_entropy")  # fmt: skip


def test_dry_run_counts_the_partial_rollouts(trainer_model, trainer_data, tmp_path, capsys):
    import train

    argv = loop_argv(trainer_model, trainer_data, tmp_path / "run", *FR3E)
    argv += ["--rollout-backend", "builtin"]  # a CPU plan
    assert train.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 prompts x 8 samples = 32 samples" in out and "2 per rollout x global batch 16" in out
    assert "FR3E             ON: 1 base trajectory(ies)/prompt x 2 anchors (entropy) x 2 partial rollouts" in out
    assert train.main([*argv, "--fr3e-rollouts-per-anchor", "0", "--dry-run"]) == 2
    assert "--fr3e-rollouts-per-anchor must be >= 1" in capsys.readouterr().err


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_resumed_fr3e_run_redoes_its_rollout_exactly(trainer_model, trainer_data, tmp_path):
    run_dir = tmp_path / "run"
    # --colocate: the entropy pass and the exploration follow the offload order, which the built-in engine enforces
    argv = loop_argv(trainer_model, trainer_data, run_dir, *FR3E, "--num-rollout", "2", "--eval-interval", "100",
                     "--colocate")  # fmt: skip
    run = TrainRun(argv, tmp_path / "1.log")
    assert run.wait(timeout=400) == 0, run.output[-5000:]
    first = {r["rollout_id"]: r for r in read_metrics(run_dir) if "rollout/raw_reward" in r}
    dumps = {d.header.rollout_id: d.samples for d in iter_rollout_dumps(run_dir)}
    assert sorted(first) == [0, 1] and all(len(s) == 32 for s in dumps.values())
    for samples in dumps.values():  # per prompt: 4 base samples, then 2 states x 2 continuations (prefix masked)
        for g in range(4):
            base, partials = samples[8 * g : 8 * g + 4], samples[8 * g + 4 : 8 * g + 8]
            assert all(s.loss_mask.all() for s in base) and not any(s.loss_mask.all() for s in partials)
            for s in partials:
                t = int((s.loss_mask == 0).sum())
                assert any(np.array_equal(s.response_tokens[:t], b.response_tokens[:t]) for b in base)
    # the commit of rollout 1 never happened (as after a crash between its checkpoint's data and its tracker file):
    # the same command resumes at rollout 1 and must redo it as the first attempt did
    (run_dir / "ckpt" / "latest_checkpointed_iteration.txt").write_text("0")
    run = TrainRun(argv, tmp_path / "2.log")
    assert run.wait(timeout=400) == 0, run.output[-5000:]
    assert processes(run_dir)["train_ranks"][0]["start_rollout_id"] == 1
    again = {r["rollout_id"]: r for r in read_metrics(run_dir) if "rollout/raw_reward" in r}
    assert sorted(again) == [0, 1]
    for key in COMPARED:
        assert again[1][key] == pytest.approx(first[1][key], rel=1e-5, abs=1e-8), key
    redone = {d.header.rollout_id: d.samples for d in iter_rollout_dumps(run_dir)}[1]
    assert [s.index for s in redone] == [s.index for s in dumps[1]]
    for a, b in zip(dumps[1], redone, strict=True):
        assert np.array_equal(a.response_tokens, b.response_tokens) and a.reward == b.reward
        assert a.advantage == pytest.approx(b.advantage, rel=1e-6, abs=1e-9)
        assert np.allclose(a.entropy, b.entropy, atol=1e-5)
