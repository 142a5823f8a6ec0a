"""train.py's flags and configuration without Ray: parsing, unknown flags, the default task's flags, batch arithmetic,
layouts, placement arithmetic, the run directory's resume bookkeeping, rollout dumps, plots and summaries."""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pytest

from slime_entropy.rollout_dump import DumpHeader, iter_rollout_dumps, read_rollout_dump, write_rollout_dump
from slime_entropy.trainer.arguments import build_parser, parse_args
from slime_entropy.trainer.config import (
    TrainerConfig,
    check_batch_arithmetic,
    check_cluster_resources,
    resolve_layout,
)
from slime_entropy.trainer.placement import cpu_bundle_size, slot_order
from slime_entropy.trainer.resume import Checkpointer, RunDirectory, data_state_path
from slime_entropy.trainer.session import TrainerFailure


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from slime_entropy.testing import TinyModelSpec, save_tiny_qwen3

    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny"), TinyModelSpec(seed=0))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from tests.trainer.helpers import write_prompts

    return write_prompts(tmp_path_factory.mktemp("data") / "prompts.jsonl", 8)


def _base(model_dir, prompts, *extra):
    return [
        "--hf-checkpoint", str(model_dir), "--prompt-data", str(prompts), "--input-key", "prompt",
        "--label-key", "label", "--apply-chat-template", "--rm-type", "math", "--rollout-batch-size", "4",
        "--n-samples-per-prompt", "2", "--rollout-max-response-len", "8", "--num-rollout", "2", *extra,
    ]  # fmt: skip


# ----- parsing -----
def test_unknown_and_abbreviated_flags_are_errors_that_name_them(capsys, model_dir, prompts):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(_base(model_dir, prompts, "--entropy-percentil", "0.2", "--not-a-flag", "3"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--entropy-percentil   (did you mean --entropy-percentile?)" in err
    assert "--not-a-flag" in err
    # argparse would accept an unambiguous prefix; a typo must never silently turn into another flag
    with pytest.raises(SystemExit):
        parse_args(_base(model_dir, prompts, "--high-entropy-token", "--entropy-perc", "0.2"))
    assert "--entropy-perc" in capsys.readouterr().err


def test_help_is_grouped_by_provider():
    text = build_parser().format_help()
    for title in (
        "trainer: cluster and placement",
        "trainer: rollout-train loop",
        "trainer: run directory, logging and plots",
        "slime_entropy: high-entropy token filter",
        "slime loss (slime-compatible flags)",
        "rollout engines",
        "rollout data",
        "megatron: parallelism",
        "slime: checkpoints",
    ):
        assert title in text, title
    assert "python train.py" in text  # the examples


def test_model_without_data_is_an_error(capsys, model_dir):
    with pytest.raises(SystemExit):
        parse_args(["--hf-checkpoint", str(model_dir)])
    assert "--prompt-data is missing" in capsys.readouterr().err


def test_the_default_task_fills_only_what_the_user_did_not_give(tmp_path):
    args = parse_args(["--embedded-cache-dir", str(tmp_path), "--num-rollout", "7", "--entropy-percentile", "0.5"])
    assert args.embedded
    assert args.num_rollout == 7 and args.entropy_percentile == 0.5  # the user's flags win
    assert args.high_entropy_token_filter and args.tensor_model_parallel_size == 1
    assert args.hf_checkpoint.startswith(str(tmp_path)) and args.prompt_data.endswith("train.jsonl")
    assert args.run_dir == "runs/embedded" and args.load == args.save == "runs/embedded/checkpoints"
    assert (
        parse_args(["--embedded-cache-dir", str(tmp_path), "--run-dir", "elsewhere"]).save == "elsewhere/checkpoints"
    )


# ----- batch arithmetic -----
def test_batch_arithmetic_resolves_and_checks():
    plan = check_batch_arithmetic(
        rollout_batch_size=16, n_samples_per_prompt=8, num_steps_per_rollout=2, global_batch_size=None, dp_size=4
    )
    assert (plan.global_batch_size, plan.num_steps_per_rollout, plan.samples_per_rank_per_step) == (64, 2, 16)
    plan = check_batch_arithmetic(
        rollout_batch_size=4, n_samples_per_prompt=2, num_steps_per_rollout=None, global_batch_size=None, dp_size=1
    )
    assert (plan.global_batch_size, plan.num_steps_per_rollout) == (8, 1)
    cases = {
        "contradicts": dict(num_steps_per_rollout=2, global_batch_size=48, dp_size=1),
        "do not split into --num-steps-per-rollout 3": dict(
            num_steps_per_rollout=3, global_batch_size=None, dp_size=1
        ),
        "not a whole number of --global-batch-size 48": dict(
            num_steps_per_rollout=None, global_batch_size=48, dp_size=1
        ),
        "does not divide over the data-parallel size 3": dict(
            num_steps_per_rollout=None, global_batch_size=None, dp_size=3
        ),
    }
    for message, kwargs in cases.items():
        with pytest.raises(ValueError, match=message):
            check_batch_arithmetic(rollout_batch_size=16, n_samples_per_prompt=8, **kwargs)
    with pytest.raises(ValueError, match="--balance-data gives each of the 4 data-parallel ranks whole prompt groups"):
        check_batch_arithmetic(
            rollout_batch_size=6, n_samples_per_prompt=4, num_steps_per_rollout=None, global_batch_size=None,
            dp_size=4, balance_data=True,
        )  # fmt: skip


# ----- layouts -----
def test_cpu_layouts():
    layout = resolve_layout(
        on_gpu=False, actor_num_nodes=1, actor_num_gpus_per_node=None, tensor_model_parallel_size=2
    )
    assert (layout.num_train_ranks, layout.dp_size, layout.backend, layout.weight_transport) == (2, 1, "gloo", "disk")
    layout = resolve_layout(
        on_gpu=False, actor_num_nodes=2, actor_num_gpus_per_node=1, update_weight_transport="broadcast"
    )
    assert (layout.dp_size, layout.weight_transport, layout.num_gpus) == (2, "broadcast", 0)
    with pytest.raises(ValueError, match="nccl needs CUDA GPUs"):
        resolve_layout(on_gpu=False, actor_num_nodes=1, actor_num_gpus_per_node=1, distributed_backend="nccl")
    with pytest.raises(ValueError, match="no single rank holds every weight"):
        resolve_layout(on_gpu=False, actor_num_nodes=1, actor_num_gpus_per_node=2, pipeline_model_parallel_size=2,
                       update_weight_transport="broadcast")  # fmt: skip


def test_gpu_layouts():
    common = dict(on_gpu=True, rollout_backend="sglang", num_gpus_per_node=8)
    colocated = resolve_layout(actor_num_nodes=1, actor_num_gpus_per_node=8, colocate=True, offload_train=False,
                               **common)  # fmt: skip
    assert (colocated.rollout_num_gpus, colocated.num_gpus, colocated.weight_transport) == (8, 8, "disk")
    assert colocated.offload_rollout and not colocated.offload_train  # colocate implies offload unless told
    split = resolve_layout(actor_num_nodes=2, actor_num_gpus_per_node=8, rollout_num_gpus=8,
                           rollout_num_gpus_per_engine=2, tensor_model_parallel_size=4, **common)  # fmt: skip
    assert (split.num_train_ranks, split.dp_size, split.num_gpus) == (16, 4, 24)
    assert (split.backend, split.weight_transport) == ("nccl", "broadcast")
    problems = {
        "--rollout-num-gpus 4 must equal the 8 training GPUs": dict(
            actor_num_nodes=1, actor_num_gpus_per_node=8, colocate=True, offload_train=False, rollout_num_gpus=4
        ),
        "disaggregated GPU runs need --rollout-num-gpus": dict(actor_num_nodes=1, actor_num_gpus_per_node=4),
        "not a multiple of --rollout-num-gpus-per-engine 4": dict(
            actor_num_nodes=1, actor_num_gpus_per_node=4, rollout_num_gpus=6, rollout_num_gpus_per_engine=4
        ),
        "--actor-num-gpus-per-node 16 exceeds --num-gpus-per-node 8": dict(
            actor_num_nodes=1, actor_num_gpus_per_node=16, rollout_num_gpus=2
        ),
        "NCCL cannot put two ranks on one GPU": dict(
            actor_num_nodes=1, actor_num_gpus_per_node=8, colocate=True, offload_train=False,
            update_weight_transport="broadcast",
        ),
    }  # fmt: skip
    for message, kwargs in problems.items():
        with pytest.raises(ValueError, match=message):
            resolve_layout(**common, **kwargs)
    with pytest.raises(ValueError, match="the job needs 24 GPUs .* but the Ray cluster has 16"):
        check_cluster_resources(split, {"GPU": 16.0, "CPU": 64.0})
    check_cluster_resources(split, {"GPU": 24.0, "CPU": 64.0})


def test_trainer_config_reports_every_provider_at_once(model_dir, prompts):
    args = parse_args(
        _base(model_dir, prompts, "--global-batch-size", "5", "--kl-coef", "0.1", "--advantage-estimator",
              "reinforce_plus_plus", "--rollout-top-p", "1.5", "--tensor-model-parallel-size", "3",
              "--eval-interval", "2", "--embedded-sft-steps", "5")  # fmt: skip
    )
    with pytest.raises(ValueError) as info:
        TrainerConfig.from_args(args, on_gpu=False)
    text = str(info.value)
    for expected in (
        "--rollout-top-p must be in (0, 1]",  # rollout
        "--tensor-model-parallel-size 3 must divide the 4 attention heads",  # megatron
        "--kl-coef 0.1",  # trainer loop
        "--advantage-estimator reinforce_plus_plus is not supported",
        "--eval-interval needs --eval-prompt-data",
        "--embedded-sft-steps only applies to the built-in default task",
    ):
        assert expected in text, (expected, text)


def test_trainer_config_resolves_a_valid_run_and_leaves_the_flags_alone(model_dir, prompts, tmp_path):
    args = parse_args(_base(model_dir, prompts, "--num-steps-per-rollout", "2", "--run-dir", str(tmp_path)))
    parsed = vars(args).copy()
    config = TrainerConfig.from_args(args, on_gpu=False)
    assert vars(args) == parsed  # the one resolver reads the namespace, never writes it
    assert config.batch.global_batch_size == 4 and config.megatron.batching.global_batch_size == 4
    assert config.layout.num_train_ranks == 1 and config.run.run_dir == tmp_path
    assert config.eval is None and config.rollout.engine.backend == "builtin"
    # what args.json records and user hooks receive: slime's args, with what slime resolves filled in, as a copy
    slime_args = config.slime_args
    assert (slime_args.global_batch_size, slime_args.rollout_backend, args.global_batch_size) == (4, "builtin", None)
    slime_args.lr = 0.5
    assert config.slime_args.lr == args.lr != 0.5
    resumed = config.resuming_from(3)
    assert resumed.megatron.checkpoint.ckpt_step == resumed.slime_args.ckpt_step == 3
    assert config.megatron.checkpoint.ckpt_step is None and args.ckpt_step is None


def test_model_and_rank_count_rules_are_reported_once(model_dir, prompts):
    """Whether the ranks form whole replicas is Megatron's rule (MegatronConfig, given the layout's rank count);
    the engines' GPU count is the rollout's (engine_gpu_count, asked by the layout): each problem appears once."""
    args = parse_args(_base(model_dir, prompts, "--actor-num-gpus-per-node", "3", "--tensor-model-parallel-size", "2"))
    with pytest.raises(ValueError) as info:
        TrainerConfig.from_args(args, on_gpu=False)
    assert str(info.value).count("3 training ranks are not a multiple of TP x PP x CP") == 1, info.value
    args = parse_args(_base(model_dir, prompts, "--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1"))
    with pytest.raises(ValueError) as info:
        TrainerConfig.from_args(args, on_gpu=True, check_environment=False)  # planned for GPUs from here
    text = str(info.value)
    assert text.count("--rollout-num-gpus is required") == 1, text
    args = parse_args(_base(model_dir, prompts, "--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1",
                            "--rollout-num-gpus", "16", "--rollout-num-gpus-per-engine", "16"))  # fmt: skip
    with pytest.raises(ValueError) as info:
        TrainerConfig.from_args(args, on_gpu=True, check_environment=False)
    text = str(info.value)
    assert text.count("exceed one node") == 1 and "multi-node engines are not launched" in text, text
    args = parse_args(_base(model_dir, prompts, "--rollout-backend", "sglang", "--actor-num-gpus-per-node", "2",
                            "--colocate", "--no-offload-train"))  # fmt: skip
    config = TrainerConfig.from_args(args, on_gpu=True, check_environment=False)
    # --colocate: the engines take the training GPUs (slime's rule), without --rollout-num-gpus
    assert (config.layout.rollout_num_gpus, config.rollout.engine.num_engines) == (2, 2)


# ----- placement arithmetic -----
def test_cpu_bundles_fit_every_node_and_slots_sort_by_address():
    assert cpu_bundle_size([2.0], 3) == 0.66
    assert cpu_bundle_size([1.0, 1.0], 3) == 0.5
    assert cpu_bundle_size([8.0], 3) == 1.0
    assert cpu_bundle_size([4.0, 0.5], 5) == 0.8
    with pytest.raises(TrainerFailure):
        cpu_bundle_size([0.0], 1)
    slots = [("10.0.0.10", "b", 1), ("10.0.0.9", "z", 3), ("10.0.0.10", "a", 7), ("10.0.0.9", "z", 0)]
    assert sorted(slots, key=lambda s: slot_order(*s)) == [
        ("10.0.0.9", "z", 0), ("10.0.0.9", "z", 3), ("10.0.0.10", "a", 7), ("10.0.0.10", "b", 1),
    ]  # fmt: skip


# ----- run directory and resume bookkeeping -----
def test_resume_refuses_other_training_flags_and_forgets_redone_work(tmp_path, model_dir, prompts):
    run = RunDirectory(tmp_path / "run")
    args = parse_args(_base(model_dir, prompts))
    run.check_flags(args, resuming=False)
    changed = parse_args(_base(model_dir, prompts, "--lr", "0.5", "--num-rollout", "9", "--log-level", "debug"))
    with pytest.raises(TrainerFailure, match=r"--lr: 1e-06 then, 0.5 now"):
        run.check_flags(changed, resuming=True)
    allowed = parse_args(_base(model_dir, prompts, "--num-rollout", "9", "--log-level", "debug"))
    run.check_flags(allowed, resuming=True)  # run length and logging may change on resume
    recorded = json.loads((run.root / "args.json").read_text())
    mirrored = {k for k, v in recorded.items() if k.startswith("sglang_") and v in (None, False)}
    without_sglang = argparse.Namespace(**{k: v for k, v in vars(allowed).items() if k not in mirrored})
    run.check_flags(without_sglang, resuming=True)  # SGLang's mirrored options, unset, vanish with SGLang
    given = argparse.Namespace(**{**vars(without_sglang), "sglang_some_option": 3})
    with pytest.raises(TrainerFailure, match=r"--sglang-some-option: None then, 3 now"):
        run.check_flags(given, resuming=True)

    lines = [{"rollout_id": i, "rollout/raw_reward": i / 10} for i in (-1, 0, 1, 2, 3)]
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"rollout_id": 4, "cut sh')
    header = DumpHeader(rollout_id=0, num_samples=0)
    for i in range(4):
        header.rollout_id = i
        write_rollout_dump(run.root, header, [])
    run.forget_after(1)
    assert [json.loads(x)["rollout_id"] for x in run.metrics_path.read_text().splitlines()] == [-1, 0, 1]
    assert [d.header.rollout_id for d in iter_rollout_dumps(run.root)] == [0, 1]
    # A crash right after checkpoint 2 committed but before its line was written: the checkpoint's copy is restored
    run.forget_after(2, checkpointed_record={"rollout/raw_reward": 0.2, "rollout_id": 2})
    records = [json.loads(x) for x in run.metrics_path.read_text().splitlines()]
    assert [r["rollout_id"] for r in records] == [-1, 0, 1, 2] and records[-1]["recovered"] is True
    run.forget_after(-1)  # from scratch: even the evaluation before training is redone
    assert run.metrics_path.read_text() == "" and not list(iter_rollout_dumps(run.root))


def test_checkpointer_follows_slimes_save_rule_and_restores_the_data_position(tmp_path):
    class FakeRollout:
        def __init__(self):
            self.loaded, self.skipped = None, None

        def state_dict(self):
            return {"data_source": {"epoch": 0, "offset": 12}}

        def load_state_dict(self, state):
            self.loaded = state

        def skip_prompts(self, n):
            self.skipped = n

    class FakeActors:
        saved: list = []

        def save(self, rollout_id):
            self.saved.append(rollout_id)

    ckpt = Checkpointer(str(tmp_path), str(tmp_path), save_interval=3)
    actors, rollout = FakeActors(), FakeRollout()
    assert [r for r in range(8) if ckpt.save(r, 8, actors, rollout)] == [2, 5, 7]  # every 3rd, and the last
    assert actors.saved == [2, 5, 7] and data_state_path(tmp_path, 5).is_file()
    ckpt.restore(6, rollout, rollout_batch_size=4)
    assert rollout.loaded == {"data_source": {"epoch": 0, "offset": 12}}
    ckpt.restore(5, rollout, rollout_batch_size=4)  # no data state for rollout 4: skip its prompts instead
    assert rollout.skipped == 20
    assert not Checkpointer(None, None, 1).due(0, 1)


# ----- rollout dumps -----
def test_rollout_dump_round_trip_is_float32_exact(tmp_path):
    rng = np.random.default_rng(0)
    entropy = rng.random(5, dtype=np.float32) * 3
    sample = {
        "index": 3, "group_index": 1, "prompt": [{"role": "user", "content": "1+2"}], "prompt_text": "p",
        "response": "3", "label": "3", "metadata": {"id": 1}, "reward": 1.0, "reward_detail": None,
        "advantage": 0.7071067811865476, "status": "completed", "weight_version": "4",
        "prompt_tokens": [1, 2, 3], "response_tokens": [4, 5, 6, 7, 8], "loss_mask": [1, 1, 1, 1, 0],
        "rollout_log_probs": (-entropy).tolist(), "log_probs": (-entropy / 2).tolist(), "entropy": entropy,
    }  # fmt: skip
    header = DumpHeader(rollout_id=4, num_samples=1, entropy_filter={"enabled": True, "keep_fraction": 0.2})
    path = write_rollout_dump(tmp_path, header, [sample])
    assert path.name == "rollout_000004.jsonl" and not list(path.parent.glob(".*tmp*"))
    dump = read_rollout_dump(path)
    (s,) = dump.samples
    assert dump.header.rollout_id == 4 and dump.header.entropy_filter["keep_fraction"] == 0.2
    assert s.entropy.dtype == np.float32 and np.array_equal(s.entropy, entropy)  # bit-exact
    assert s.response_tokens.tolist() == [4, 5, 6, 7, 8] and s.response_length == 5 and s.label == "3"
    bad = dict(sample, entropy=entropy[:3])
    with pytest.raises(ValueError, match="sample 3: entropy has 3 entries for 5 response tokens"):
        write_rollout_dump(tmp_path, header, [bad])
    path.write_text(path.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        read_rollout_dump(path)


# ----- reporting -----
def test_plots_summary_line_and_learning_summary(tmp_path):
    from slime_entropy.trainer.metrics import summary_line
    from slime_entropy.trainer.plots import plot_run
    from slime_entropy.trainer.report import learning_summary

    evaluation = {"eval/heldout": 0.3, "eval/heldout/pass@4": 0.5, "eval/time_s": 41.0,
                  "eval/num_reward_failures": 2.0}  # fmt: skip
    records = [{"rollout_id": -1, **evaluation}] + [
        {
            "rollout_id": i,
            "rollout/raw_reward": 0.3 + 0.05 * i,
            "train/entropy_token_ratio": 0.2 + 0.001 * i,
            "train/entropy_threshold": 0.5 - 0.01 * i,
            "rollout/entropy": 0.4,
            "train/entropy_kept_mean": 1.1,
        }
        for i in range(12)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = plot_run(tmp_path, keep_fraction=0.2)
    assert {p.name for p in written} == {
        "reward.png",
        "kept_ratio.png",
        "threshold.png",
        "entropy.png",
        "eval_time.png",
        "eval_reward_failures.png",
        "overview.png",
    }
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 5000 for p in written)
    summary = learning_summary(tmp_path)
    assert summary["first"] == pytest.approx(0.4) and summary["last"] == pytest.approx(0.75)
    # one quantity per axis: the reward axis holds rewards only, seconds and failure counts have their own
    import matplotlib.pyplot as plt

    from slime_entropy.trainer.plots import PANELS, _draw

    drawn = {}
    for name in PANELS:
        fig, ax = plt.subplots()
        _draw(ax, name, records, 0.2)
        drawn[name] = {line.get_label() for line in ax.get_lines()}
        plt.close(fig)
    assert drawn["reward"] == {"rollout/raw_reward", "5-rollout mean", "eval/heldout"}
    assert drawn["eval_time"] == {"eval/time_s"} and drawn["eval_reward_failures"] == {"eval/num_reward_failures"}
    line = summary_line(3, 40, {**records[4], "perf/step_time": 2.5, **evaluation, "eval/heldout": 0.61,
                                "train/pg_loss": math.nan})  # fmt: skip
    assert line.startswith("rollout 3 [4/40] | reward 0.450 | kept 0.203 tau 0.470 | H 0.400")
    assert "pg_loss -" in line and "| eval heldout 0.610 |" in line and line.endswith("2.5 s")


def test_wandb_logs_offline_without_a_key_and_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    from slime_entropy.trainer.config import WandbConfig
    from slime_entropy.trainer.metrics import MetricsLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no stored login
    config = WandbConfig(enabled=True, project="slime_entropy_test", group="unit")
    for rollout_id in (0, 1):  # two attempts of one run
        if rollout_id:
            time.sleep(1.1)  # wandb names an offline run's directory by the second it started
        metrics = MetricsLogger(tmp_path, config, {"lr": 1e-3})
        metrics.log(rollout_id, {"rollout/raw_reward": 0.5 + rollout_id, "train/pg_loss": 0.1})
        metrics.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2 and all((r / f"run-{run_id}.wandb").stat().st_size > 0 for r in runs)
    assert [json.loads(x)["rollout_id"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_the_seed_examples_command_line_parses(tmp_path):
    """slime's seed example (Qwen3-32B, as examples/high_entropy/run-qwen3-32B.sh runs it) with MODEL_ARGS, the run
    scripts' performance flags, W&B and SGLang pass-through: every flag is known (parsing only; the paths need not
    exist)."""
    model_args = [
        "--num-layers",
        "64",
        "--hidden-size",
        "5120",
        "--ffn-hidden-size",
        "25600",
        "--num-attention-heads",
        "64",
        "--group-query-attention",
        "--num-query-groups",
        "8",
        "--kv-channels",
        "128",
        "--qk-layernorm",
        "--swiglu",
        "--disable-bias-linear",
        "--normalization",
        "RMSNorm",
        "--norm-epsilon",
        "1e-6",
        "--use-rotary-position-embeddings",
        "--rotary-base",
        "1000000",
        "--vocab-size",
        "151936",
        "--untie-embeddings-and-output-weights",
    ]
    seed_example = [
        "--actor-num-nodes", "4", "--actor-num-gpus-per-node", "8", "--colocate", "--num-gpus-per-node", "8",
        "--hf-checkpoint", "/m/Qwen3-32B", "--ref-load", "/m/Qwen3-32B_torch_dist", "--load", "/m/Qwen3-32B_slime",
        "--save", "/m/Qwen3-32B_slime", "--save-interval", "20",
        "--prompt-data", "/d/dapo-math-17k.jsonl", "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--rollout-shuffle", "--rm-type", "deepscaler", "--num-rollout", "3000",
        "--rollout-batch-size", "16", "--n-samples-per-prompt", "8", "--num-steps-per-rollout", "1",
        "--global-batch-size", "128", "--rollout-max-response-len", "8192", "--rollout-temperature", "0.8",
        "--balance-data",
        "--advantage-estimator", "grpo", "--use-kl-loss", "--kl-loss-coef", "0.00", "--kl-loss-type", "low_var_kl",
        "--entropy-coef", "0.00", "--eps-clip", "0.2", "--eps-clip-high", "0.28",
        "--high-entropy-token-filter", "--entropy-percentile", "0.2",
        "--tensor-model-parallel-size", "8", "--sequence-parallel", "--pipeline-model-parallel-size", "1",
        "--context-parallel-size", "1", "--expert-model-parallel-size", "1", "--expert-tensor-parallel-size", "1",
        "--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "20480",
        "--optimizer", "adam", "--lr", "1e-6", "--lr-decay-style", "constant", "--weight-decay", "0.1",
        "--adam-beta1", "0.9", "--adam-beta2", "0.98", "--optimizer-cpu-offload", "--overlap-cpu-optimizer-d2h-h2d",
        "--use-precision-aware-optimizer", "--attention-dropout", "0.0", "--hidden-dropout", "0.0",
        "--accumulate-allreduce-grads-in-fp32", "--attention-softmax-in-fp32", "--attention-backend", "flash",
        "--use-wandb", "--wandb-project", "slime-dev", "--wandb-group", "qwen3-32B-entropy", "--wandb-key", "k",
        "--rollout-num-gpus-per-engine", "8", "--sglang-mem-fraction-static", "0.7",
    ]  # fmt: skip
    args = parse_args(model_args + seed_example)
    assert not args.embedded and args.entropy_percentile == 0.2 and args.tensor_model_parallel_size == 8
    assert args.actor_num_nodes == 4 and args.colocate and args.num_steps_per_rollout == 1
