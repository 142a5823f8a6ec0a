"""Faults and bad inputs as a user meets them: what ``train.py`` says, and that nothing is lost.

The input checks run ``train.main`` in this process: each must stop with exit status 2 and a message naming the file
(and line) and the fix, before Ray or any other process starts. The checkpoint checks build checkpoint directories
by hand (the manifest is written by the same function the save uses). One end-to-end run (``--save`` without
``--load``) is SIGKILLed as a whole driver (its Ray instance must go with it), its newest checkpoint is then damaged,
and the same command must say so, fall back to the previous checkpoint, and finish with every rollout once and the
redone rollout equal to the first attempt's.

The other faults (a SIGKILLed training rank or rollout worker, Ctrl-C, each resumed exactly) are
``tests/trainer/test_loop.py``; an engine's death with its parent is ``tests/rollout/test_engine_process.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import loop_argv
from tests.trainer.helpers import GATE_ENV, TrainRun, read_metrics, rollout_ids, wait_gone


def _argv(model, data, run_dir, *extra, evaluation: bool = True) -> list[str]:
    argv = loop_argv(model, data, run_dir, *extra)
    i = argv.index("--load")
    argv = argv[:i] + argv[i + 2 :]  # every test here resumes from --save alone
    if not evaluation:
        i = argv.index("--eval-interval")
        argv = argv[:i] + argv[i + 5 :]  # --eval-interval N --eval-prompt-data NAME PATH
    return argv


def _main(argv, capsys) -> tuple[int, str]:
    import ray

    import train

    started = time.monotonic()
    code = train.main(argv)
    out = capsys.readouterr()
    assert not ray.is_initialized(), "Ray was started before the inputs were checked"
    assert time.monotonic() - started < 60
    return code, out.out + out.err


# ----- inputs, checked before anything starts -----
BAD_DATA = {
    "malformed line": ('{"prompt": "a", "label": "1"}\n{"prompt": "b", \n', "bad.jsonl:2: not valid JSON"),
    "empty file": ("", "the file holds no rows"),
    "missing label": ('{"prompt": "a", "label": "1"}\n{"prompt": "b"}\n', "bad.jsonl:2: missing key 'label'"),
    "missing input": ('{"question": "a", "label": "1"}\n', "bad.jsonl:1: missing key 'prompt' (set --input-key"),
    "not an object": ('["a", "1"]\n', "bad.jsonl:1: expected a JSON object"),
    "bad metadata": ('{"prompt": "a", "label": "1", "metadata": 3}\n', "'metadata' must be an object"),
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_bad_prompt_data_stops_before_anything_starts(kind, trainer_model, trainer_data, tmp_path, capsys):
    text, expected = BAD_DATA[kind]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    argv = _argv(trainer_model, trainer_data, tmp_path / "run", "--prompt-data", str(bad))
    code, out = _main(argv, capsys)
    assert code == 2 and expected in out and "Traceback" not in out and "rerun" not in out, out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_bad_eval_data_missing_data_and_missing_model(trainer_model, trainer_data, tmp_path, capsys):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    argv = _argv(trainer_model, trainer_data, tmp_path / "run", "--eval-prompt-data", "small", str(bad))
    code, out = _main(argv, capsys)
    assert code == 2 and "--eval-prompt-data small" in out and "eval.jsonl:1: missing key 'label'" in out, out

    argv = _argv(trainer_model, trainer_data, tmp_path / "run", "--prompt-data", str(tmp_path / "nowhere.jsonl"))
    code, out = _main(argv, capsys)
    assert code == 2 and "nowhere.jsonl: no such file" in out, out

    argv = _argv(trainer_model, trainer_data, tmp_path / "run", "--hf-checkpoint", str(tmp_path / "no-model"))
    code, out = _main(argv, capsys)
    assert code == 2 and "no-model" in out and "Traceback" not in out, out


def test_apply_chat_template_on_a_tokenizer_without_one(trainer_model, trainer_data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(trainer_model, model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    code, out = _main(_argv(model, trainer_data, tmp_path / "run", "--hf-checkpoint", str(model)), capsys)
    assert code == 2 and "--apply-chat-template: the tokenizer" in out and "has no chat template" in out, out


def test_dependent_flags_and_the_default_tasks_batch_flags(tmp_path, capsys):
    from slime_entropy.trainer.arguments import parse_args
    from slime_entropy.trainer.config import TrainerConfig, check_batch_arithmetic
    from slime_entropy.trainer.default_task import planning_assets

    argv = ["--embedded-cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run")]
    # --global-batch-size on the default task: the task itself must not pin the steps per rollout
    args = parse_args([*argv, "--global-batch-size", "64"])
    with planning_assets(args) as planned:
        config = TrainerConfig.from_args(planned, on_gpu=False)
    assert (config.batch.global_batch_size, config.batch.num_steps_per_rollout) == (64, 2)
    # both given and contradicting: say which to drop, not "give one of" two flags the user gave
    with pytest.raises(ValueError, match="drop --num-steps-per-rollout") as e:
        check_batch_arithmetic(rollout_batch_size=16, n_samples_per_prompt=8, num_steps_per_rollout=1,
                               global_batch_size=64, dp_size=1)  # fmt: skip
    assert "give one of" not in str(e.value)
    # a KL loss flag without the KL loss does nothing: refused
    args = parse_args([*argv, "--kl-loss-type", "low_var_kl"])
    with planning_assets(args) as planned:
        with pytest.raises(ValueError, match="--kl-loss-type has no effect without --use-kl-loss"):
            TrainerConfig.from_args(planned, on_gpu=False)


def test_config_dumps_do_not_precede_an_error(trainer_model, trainer_data, tmp_path, capsys):
    import logging

    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        code, out = _main(_argv(trainer_model, trainer_data, tmp_path / "run", "--kl-loss-coef", "0.1"), capsys)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert code == 2 and "--kl-loss-coef has no effect" in out
    assert "resolved loss configuration" not in out and "megatron settings" not in out, out
    assert len(out) < 1000, out


# ----- where a run resumes -----
def test_save_without_load_resumes_from_save_on_every_task(trainer_model, trainer_data, tmp_path, capsys):
    from slime_entropy.trainer.arguments import parse_args
    from slime_entropy.trainer.default_task import default_task_argv

    save = str(tmp_path / "mine")
    embedded = parse_args(["--save", save, "--embedded-cache-dir", str(tmp_path / "cache")])
    assert embedded.embedded and embedded.save == embedded.load == embedded.run_dir == save
    assert "--load" not in default_task_argv(embedded) and "--num-steps-per-rollout" not in default_task_argv(embedded)
    other = parse_args(_argv(trainer_model, trainer_data, tmp_path / "run", "--save", save))
    assert other.load == save

    # a finished run in --save: "nothing to do" is read from there
    _fake_checkpoint(Path(save), 3)
    code, out = _main(_argv(trainer_model, trainer_data, tmp_path / "run", "--save", save), capsys)
    assert code == 0 and f"nothing to do: {save} holds the checkpoint of the last rollout" in out, out


def _fake_checkpoint(ckpt: Path, step: int, *, manifest: bool = True, data_state: bool = True) -> Path:
    """A checkpoint directory with the files a torch_dist save writes (contents do not matter to the checks)."""
    from slime_entropy.megatron.checkpoint import _write_manifest
    from slime_entropy.trainer.resume import data_state_path, write_json_atomic

    path = ckpt / f"iter_{step:07d}"
    path.mkdir(parents=True)
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (path / "common.pt").write_bytes(b"c" * 100)
    (path / "__0_0.distcp").write_bytes(b"x" * 4000)
    (path / ".metadata").write_bytes(b"m" * 300)
    if manifest:
        _write_manifest(path)
    if data_state:
        write_json_atomic(data_state_path(ckpt, step), {"rollout_id": step, "metrics": {"m": 1.0}, "epoch": 0})
    (ckpt / "latest_checkpointed_iteration.txt").write_text(f"{step}\n")
    return path


def _plan(load, ckpt_step=None):
    from slime_entropy.megatron.config import CheckpointConfig
    from slime_entropy.trainer.preflight import resume_plan

    return resume_plan(CheckpointConfig(hf_checkpoint="", load=str(load), ckpt_step=ckpt_step))


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_complete_one(tmp_path):
    from slime_entropy.megatron.checkpoint import verify_checkpoint
    from slime_entropy.trainer.resume import data_state_path

    ckpt = tmp_path / "ckpt"
    _fake_checkpoint(ckpt, 0, manifest=False)  # saved before manifests existed: still complete, still loadable
    _fake_checkpoint(ckpt, 1)
    newest = _fake_checkpoint(ckpt, 2)
    assert verify_checkpoint(ckpt / "iter_0000000") is None and verify_checkpoint(newest) is None
    plan = _plan(ckpt)
    assert (plan.step, plan.start, plan.fallback, plan.problems) == (2, 3, False, [])

    with open(newest / "__0_0.distcp", "r+b") as f:  # a shard cut short
        f.truncate(1000)
    plan = _plan(ckpt)
    assert (plan.step, plan.start, plan.fallback, plan.problems) == (1, 2, True, [])
    assert "__0_0.distcp has 1000 bytes, the checkpoint's manifest says 4000" in plan.notes[0]
    assert "Resuming from step 1, the newest complete one" in plan.notes[0]
    assert plan.notes[1].startswith("resume: starting at rollout 2, after the checkpoint of rollout 1")
    # a small file changed in place (same size): its hash says so
    common = ckpt / "iter_0000001" / "common.pt"
    common.write_bytes(b"d" * 100)
    assert verify_checkpoint(ckpt / "iter_0000001") == f"{common} differs from the checkpoint's manifest (SHA-256)"
    common.write_bytes(b"c" * 100)
    # asked for by --ckpt-step: stop, naming the damaged step and the one to use
    plan = _plan(ckpt, ckpt_step=2)
    assert plan.problems and "--ckpt-step 2: the checkpoint is damaged" in plan.problems[0]
    assert "pass --ckpt-step 1 (complete: [0, 1])" in plan.problems[0]

    # a truncated data position makes its checkpoint damaged too; a missing file as well
    path = data_state_path(ckpt, 1)
    path.write_text(path.read_text()[:20])
    plan = _plan(ckpt, ckpt_step=1)
    assert "data_state_0000001.json is damaged (not valid JSON" in plan.problems[0], plan.problems
    assert "pass --ckpt-step 0 (complete: [0])" in plan.problems[0]
    assert _plan(ckpt).step == 0
    (ckpt / "iter_0000000" / "common.pt").unlink()
    plan = _plan(ckpt)
    assert (
        plan.problems
        and "(step 2) is damaged" in plan.problems[0]
        and "no older complete checkpoint" in (plan.problems[0])
    )


def test_a_truncated_data_state_is_a_message_not_a_json_error(tmp_path):
    from slime_entropy.trainer.resume import Checkpointer, data_state_path
    from slime_entropy.trainer.session import TrainerFailure

    ckpt = tmp_path / "ckpt"
    _fake_checkpoint(ckpt, 4)
    path = data_state_path(ckpt, 4)
    path.write_text(path.read_text()[:15])
    with pytest.raises(TrainerFailure, match=r"data_state_0000004.json is damaged .*--ckpt-step N \(N < 4\)"):
        Checkpointer(str(ckpt), str(ckpt), 1).checkpointed_metrics(4)


def test_a_run_directory_of_another_checkpoint_is_refused_and_the_dry_run_warns(
    trainer_model, trainer_data, tmp_path, capsys
):
    run_dir, theirs, mine = tmp_path / "run", tmp_path / "theirs", tmp_path / "mine"
    _fake_checkpoint(theirs, 1)
    run_dir.mkdir()
    (run_dir / "args.json").write_text(json.dumps({"save": str(theirs), "load": str(theirs)}))
    argv = _argv(trainer_model, trainer_data, run_dir, "--save", str(mine))
    code, out = _main(argv, capsys)
    assert code == 2 and f"saved its checkpoints to {theirs} (up to step 1)" in out, out
    assert f"Pass --save {theirs}" in out
    code, out = _main([*argv, "--dry-run", "--colocate"], capsys)  # planned for GPUs
    assert code == 0 and "warning: a real start would stop here" in out and str(theirs) in out, out


# ----- an error raised inside a Ray actor -----
class _Broken:
    def __init__(self, fail_in_init: bool):
        if fail_in_init:
            raise ValueError("data.jsonl:7: missing key 'label'\n(set --label-key)")

    def start(self):
        raise ValueError("data.jsonl:3: not valid JSON")

    def crash(self):
        raise RuntimeError("a bug")


@pytest.mark.multiprocess
def test_an_error_inside_a_ray_actor_reaches_the_driver_with_its_own_message():
    """Every time, whether the actor raises in its constructor or in a method, and without the advice to rerun."""
    import ray

    from slime_entropy.trainer.handles import wait_all
    from slime_entropy.trainer.session import TrainerFailure

    ray.init(address="local", include_dashboard=False, num_cpus=1, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=0)(_Broken)
        for attempt in range(3):
            for fail_in_init, method, expected in (
                (True, "start", "failed to start: ValueError: data.jsonl:7: missing key 'label'\n(set --label-key)"),
                (False, "start", "failed: ValueError: data.jsonl:3: not valid JSON"),
                (False, "crash", "failed: RuntimeError: a bug"),
            ):
                actor = remote.options(max_restarts=0).remote(fail_in_init)
                with pytest.raises(TrainerFailure) as e:
                    wait_all([getattr(actor, method).remote()], ["the worker"], what="starting", timeout_s=60)
                assert expected in str(e.value) and not e.value.rerun_helps, (attempt, str(e.value))
                ray.kill(actor)
    finally:
        ray.shutdown()


# ----- the whole driver SIGKILLed, then a damaged checkpoint -----
def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


COMPARED = ("train/pg_loss", "train/grad_norm", "train/entropy_threshold", "rollout/entropy", "rollout/raw_reward")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_killed_driver_takes_ray_along_and_a_damaged_checkpoint_is_passed_over(
    trainer_model, trainer_data, tmp_path
):
    run_dir, save, gate = tmp_path / "run", tmp_path / "ckpt", tmp_path / "gate"
    argv = _argv(
        trainer_model, trainer_data, run_dir, "--save", str(save), "--num-rollout", "3",
        "--custom-rm-path", "tests.trainer.helpers.gated_reward", "--reward-timeout", "600", evaluation=False,
    )  # fmt: skip
    gate.write_text("2")  # rollout 2 waits in its rewards: the run is known to be there when the driver dies
    run = TrainRun(argv, tmp_path / "1.log", env={GATE_ENV: str(gate)})
    run.wait_until(lambda: 1 in rollout_ids(run_dir), 400, "rollout 1")
    first = {r["rollout_id"]: r for r in read_metrics(run_dir) if "rollout/raw_reward" in r}
    ray_processes = _descendants(run.proc.pid)
    assert len(ray_processes) >= 5  # GCS, raylet, agents, the training rank, the rollout worker, the engine
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(timeout=30)
    assert wait_gone(ray_processes, timeout=30) == [], "Ray's processes outlived the SIGKILLed driver"
    run.kill()

    # the newest checkpoint (rollout 1) damaged: a shard cut short
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert (save / "iter_0000001" / "manifest.json").is_file()
    shard = next((save / "iter_0000001").glob("*.distcp"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    gate.unlink()
    run = TrainRun(argv, tmp_path / "2.log")
    assert run.wait(timeout=400) == 0, run.output[-5000:]
    assert "(step 1) is damaged" in run.output and "Resuming from step 0, the newest complete one" in run.output
    assert "Traceback" not in run.output
    records = [r for r in read_metrics(run_dir) if "rollout/raw_reward" in r]
    assert [r["rollout_id"] for r in records] == [0, 1, 2]  # each once: rollout 1 redone, its first line dropped
    for key in COMPARED:
        assert records[1][key] == pytest.approx(first[1][key], rel=1e-5, abs=1e-8), key
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    from slime_entropy.megatron.checkpoint import verify_checkpoint

    assert all(verify_checkpoint(save / f"iter_{i:07d}") is None for i in range(3))
