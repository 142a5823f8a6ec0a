"""torch_dist checkpoints: exact resume in a new process, atomic saves, --ref-load semantics, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.distributed import run_world
from tests.megatron.helpers import make_samples, save_tiny_model

pytestmark = pytest.mark.multiprocess

COMMON = [
    "--global-batch-size", "4", "--make-vocab-size-divisible-by", "1", "--logprob-entropy-backend", "eager",
    "--lr", "1e-3", "--lr-decay-style", "cosine", "--lr-warmup-iters", "1", "--lr-decay-iters", "4",
    "--min-lr", "1e-4", "--weight-decay", "0.1", "--clip-grad", "0.5", "--high-entropy-token-filter",
]  # fmt: skip


def _rollout(actor, rollout_id):
    from slime_entropy.megatron.hf_bridge import iter_hf_weights

    samples = make_samples(4, seed=100 + rollout_id)
    rank, size = actor.groups.dp_cp_rank, actor.groups.dp_cp_size
    mine = samples[rank * 4 // size : (rank + 1) * 4 // size]
    actor.compute_log_probs(mine)
    metrics = actor.train(rollout_id, mine)[0]
    return metrics, dict(iter_hf_weights(actor.model, actor.megatron.arch))


def _uninterrupted(rank, world_size, hf_dir, save_dir, hf_out):
    from tests.megatron.helpers import build_actor, make_args

    args = make_args(
        ["--hf-checkpoint", hf_dir, "--save", save_dir, "--save-interval", "1", "--save-hf", hf_out] + COMMON
    )
    actor = build_actor(args, num_total_steps=4)
    assert actor.start_rollout_id == 0
    first, _ = _rollout(actor, 0)
    actor.maybe_save(0)
    second, weights = _rollout(actor, 1)
    return {"first": first, "second": second, "weights": weights}


def _resumed(rank, world_size, hf_dir, save_dir):
    from tests.megatron.helpers import build_actor, make_args

    args = make_args(["--hf-checkpoint", hf_dir, "--load", save_dir] + COMMON)
    actor = build_actor(args, num_total_steps=4)
    second, weights = _rollout(actor, actor.start_rollout_id)
    return {"start": actor.start_rollout_id, "second": second, "weights": weights}


def test_resume_in_a_new_process_continues_exactly(tmp_path):
    hf_dir = str(save_tiny_model("qwen3", tmp_path / "hf", seed=2))
    save_dir, hf_out = str(tmp_path / "ckpt"), str(tmp_path / "hf_out_{rollout_id}")
    # DP=2 with the distributed optimizer: each rank holds half of the Adam state.
    straight = run_world(_uninterrupted, 2, args=(hf_dir, save_dir, hf_out), timeout=300)
    assert (Path(save_dir) / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert (Path(save_dir) / "iter_0000000" / "metadata.json").is_file()
    assert (tmp_path / "hf_out_0" / "model.safetensors").is_file()  # --save-hf on the save of rollout 0
    resumed = run_world(_resumed, 2, args=(hf_dir, save_dir), timeout=300)
    for before, after in zip(straight, resumed, strict=True):
        assert after["start"] == 1
        for key in ("loss", "pg_loss", "grad_norm", "lr", "entropy_threshold"):
            assert after["second"][key] == before["second"][key], (key, after["second"][key], before["second"][key])
        assert before["first"]["lr"] != before["second"]["lr"]  # the schedule moved, and it was restored
        for name, tensor in before["weights"].items():
            assert torch.equal(after["weights"][name], tensor), name


def _ref_and_errors(rank, world_size, hf_dir, tmp):
    from slime_entropy.megatron.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from slime_entropy.megatron.convert import hf_to_torch_dist
    from tests.megatron.helpers import build_actor, make_args

    out = {}
    convert_args = make_args(
        ["--hf-checkpoint", hf_dir, "--save", f"{tmp}/ref", "--make-vocab-size-divisible-by", "1"]
    )
    hf_to_torch_dist(convert_args)
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()

    os.makedirs(f"{tmp}/empty_load", exist_ok=True)  # --load without a tracker: start from --ref-load
    args = make_args(["--hf-checkpoint", hf_dir, "--ref-load", f"{tmp}/ref", "--load", f"{tmp}/empty_load",
                      "--use-kl-loss", "--kl-loss-coef", "0.1", "--save", f"{tmp}/run"] + COMMON)  # fmt: skip
    actor = build_actor(args, num_total_steps=4)
    out["start"] = actor.start_rollout_id
    samples = make_samples(4, seed=3)
    actor.compute_log_probs(samples)
    out["ref_equals_old"] = all(torch.equal(s.fields["ref_log_probs"], s.fields["log_probs"]) for s in samples)
    metrics = actor.train(0, samples)[0]
    out["kl_loss_step0"] = metrics["kl_loss"]
    actor.train(1, samples)  # the warmup gives step 0 a zero learning rate; step 1 moves the weights
    actor.compute_log_probs(samples)  # now the actor differs from the reference
    out["ref_differs_after"] = any(not torch.equal(s.fields["ref_log_probs"], s.fields["log_probs"]) for s in samples)
    saved = save_checkpoint(f"{tmp}/run", 0, actor.model, actor.optimizer, actor.scheduler, groups=actor.groups)

    def error_of(fn) -> str:
        try:
            fn()
        except CheckpointError as err:
            return str(err)
        return "no error"

    shard = next(saved.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated shard
    out["corrupt"] = error_of(lambda: load_checkpoint(saved, actor.model, actor.optimizer, actor.scheduler))
    (saved / "metadata.json").unlink()
    out["incomplete"] = error_of(lambda: load_checkpoint(saved, actor.model))
    parallel_state.destroy_model_parallel()

    try:
        build_actor(
            make_args(["--hf-checkpoint", hf_dir, "--ref-load", f"{tmp}/empty_load"] + COMMON), num_total_steps=1
        )
        out["ref_without_tracker"] = "no error"
    except ValueError as err:
        out["ref_without_tracker"] = str(err)
    return out


def test_ref_load_initialises_weights_and_bad_checkpoints_fail_clearly(tmp_path):
    from slime_entropy.megatron.checkpoint import CheckpointError, checkpoint_path

    hf_dir = str(save_tiny_model("qwen3_tied", tmp_path / "hf", seed=4))
    out = run_world(_ref_and_errors, 1, args=(hf_dir, str(tmp_path)), timeout=300)[0]
    assert out["start"] == 0
    assert out["ref_equals_old"] and out["ref_differs_after"]
    assert abs(out["kl_loss_step0"]) < 1e-7
    assert "could not load torch_dist checkpoint" in out["corrupt"] and "iter_0000000" in out["corrupt"]
    assert "not a complete torch_dist checkpoint" in out["incomplete"]
    assert "latest_checkpointed_iteration.txt" in out["ref_without_tracker"]

    (tmp_path / "dangling").mkdir()
    (tmp_path / "dangling" / "latest_checkpointed_iteration.txt").write_text("7\n")
    with pytest.raises(CheckpointError, match=r"iter_0000007, which does not exist"):
        checkpoint_path(tmp_path / "dangling")
    (tmp_path / "dangling" / "latest_checkpointed_iteration.txt").write_text("seven\n")
    with pytest.raises(CheckpointError, match="expected an iteration number"):
        checkpoint_path(tmp_path / "dangling")
    assert checkpoint_path(tmp_path / "nothing_here") is None


def _load_after_crash(rank, world_size, hf_dir, save_dir):
    from tests.megatron.helpers import build_actor, make_args


    args = make_args(["--hf-checkpoint", hf_dir, "--load", save_dir, "--save", save_dir, "--global-batch-size", "2",
                      "--make-vocab-size-divisible-by", "1", "--logprob-entropy-backend", "eager"])  # fmt: skip
    actor = build_actor(args, num_total_steps=2)
    actor.save(1)
    return actor.start_rollout_id


def test_a_save_killed_half_way_keeps_the_previous_checkpoint(tmp_path):
    hf_dir = str(save_tiny_model("qwen3", tmp_path / "hf", seed=5))
    save_dir = tmp_path / "ckpt"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.megatron._save_crash_child", hf_dir, str(save_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).parents[2],
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        seen = []
        for line in child.stdout:
            seen.append(line.strip())
            if line.startswith("SHARDS_WRITTEN") or time.monotonic() > deadline:
                break
        assert seen[-2:] == ["SAVED0", "SHARDS_WRITTEN"], seen
        tmp_dirs = [p for p in save_dir.iterdir() if p.name.startswith("iter_0000001.tmp-")]
        assert len(tmp_dirs) == 1 and any(tmp_dirs[0].glob("*.distcp"))  # shards of iteration 1 exist...
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # ...and the process dies before finalising
        child.wait(timeout=30)
    assert (save_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert not (save_dir / "iter_0000001").exists()
    start = run_world(_load_after_crash, 1, args=(hf_dir, str(save_dir)), timeout=300)[0]
    assert start == 1  # resumed from iteration 0
    assert (save_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert not [p for p in save_dir.iterdir() if ".tmp-" in p.name]  # the crashed save's leftovers are gone
