"""examples/high_entropy: every run script's arguments pass the dry-run planner against the fixture HF configs, the
baselines differ from their runs only in the filter flags, and the recipes carry the seed / paper values."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slime_entropy.launch.plan import Plan, plan_from_args
from tests.launch.helpers import HF_FIXTURES, REPO, parse_train_args, recorded_argv

EXAMPLES = REPO / "examples" / "high_entropy"
RUNS = {  # run script -> (baseline script, default node count, training nodes, colocated)
    "run-qwen3-4B.sh": ("run-qwen3-4B-baseline.sh", 1, 1, True),
    "run-qwen3-8B.sh": ("run-qwen3-8B-baseline.sh", 1, 1, True),
    "run-qwen3-14B.sh": ("run-qwen3-14B-baseline.sh", 2, 1, False),
    "run-qwen3-32B.sh": ("run-qwen3-32B-baseline.sh", 3, 2, False),
    "run-qwen3-14B-dapo.sh": ("run-qwen3-14B-dapo-baseline.sh", 3, 2, False),
}
BASELINES = {v[0]: k for k, v in RUNS.items()}
FILTER_FLAGS = ["--high-entropy-token-filter", "--entropy-percentile", "0.2"]
TORCH_MEMORY_SAVER = "needs torch_memory_saver on the GPU nodes"


def _argv(tmp_path: Path, script: str, env: dict | None = None, args=()) -> list[str]:
    return recorded_argv(EXAMPLES / script, tmp_path, env, args)


def _plan(argv: list[str]) -> tuple[argparse.Namespace, Plan]:
    args = parse_train_args(argv)
    return args, plan_from_args(args)


def _prepare_machine(args: argparse.Namespace) -> None:
    """What a real machine has before a run: the converted reference, the training and evaluation data."""
    Path(args.ref_load).mkdir(parents=True, exist_ok=True)
    (Path(args.ref_load) / "latest_checkpointed_iteration.txt").write_text("release\n")
    for path in [args.prompt_data, *args.eval_prompt_data[1::2]]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text('{"prompt": "p", "label": "1"}\n')


def test_every_run_script_is_listed():
    scripts = {p.name for p in EXAMPLES.glob("run-*.sh")}
    assert scripts == set(RUNS) | set(BASELINES)


@pytest.mark.parametrize("script", sorted(RUNS) + sorted(BASELINES))
def test_each_example_passes_the_dry_run_planner(tmp_path, script):
    _, nodes, train_nodes, colocated = RUNS[BASELINES.get(script, script)]
    args, plan = _plan(_argv(tmp_path, script))
    assert plan.fits, plan.render()
    # only what this machine lacks is reported: no converted reference, no evaluation data, no torch_memory_saver
    for warning in plan.warnings:
        assert any(
            known in warning for known in ("convert first", "does not exist (on this machine)", TORCH_MEMORY_SAVER)
        ), warning
    _prepare_machine(args)
    plan = plan_from_args(args)
    assert all(TORCH_MEMORY_SAVER in w for w in plan.warnings), plan.render()
    text = plan.render()
    assert "verdict: fits" in text and "MODEL_ARGS match config.json" in text
    assert plan.on_gpu and plan.cluster.num_gpus_per_node == 8 and plan.cluster.colocate == colocated
    assert plan.num_nodes == nodes and plan.cluster.num_train_ranks == 8 * train_nodes
    if not colocated:  # the engines take one node of their own, and get the weights over NCCL
        assert plan.cluster.rollout_num_gpus == 8 and plan.cluster.weight_transport == "broadcast"
        assert plan.warnings == ()


@pytest.mark.parametrize("script", sorted(RUNS))
def test_the_baseline_differs_only_in_the_filter_flags(tmp_path, script):
    baseline_script = RUNS[script][0]
    run = _argv(tmp_path, script)
    baseline = _argv(tmp_path, baseline_script)
    i = run.index(FILTER_FLAGS[0])
    assert run[i : i + 3] == FILTER_FLAGS
    assert FILTER_FLAGS[0] not in baseline and "--entropy-percentile" not in baseline
    without_filter = run[:i] + run[i + 3 :]
    assert len(without_filter) == len(baseline)
    differing = {
        without_filter[j - 1] for j, (a, b) in enumerate(zip(without_filter, baseline, strict=True)) if a != b
    }
    assert differing == {"--load", "--save"}, differing  # each run keeps its own checkpoints
    run_args, base_args = (parse_train_args(a) for a in (run, baseline))
    changed = {k for k in vars(run_args) if getattr(run_args, k) != getattr(base_args, k)}
    assert changed == {"high_entropy_token_filter", "entropy_percentile", "load", "save"}
    assert run_args.high_entropy_token_filter and run_args.entropy_percentile == 0.2
    assert run_args.load != base_args.load and "top20" in run_args.load and "all-tokens" in base_args.load


@pytest.mark.parametrize("script", ["run-qwen3-4B.sh", "run-qwen3-8B.sh", "run-qwen3-14B.sh", "run-qwen3-32B.sh"])
def test_the_size_scripts_use_the_seed_examples_arguments(tmp_path, script):
    args = parse_train_args(_argv(tmp_path, script))
    seed = dict(
        input_key="prompt", label_key="label", apply_chat_template=True, rollout_shuffle=True, rm_type="deepscaler",
        num_rollout=3000, rollout_batch_size=16, n_samples_per_prompt=8, num_steps_per_rollout=1,
        global_batch_size=128, rollout_max_response_len=8192, rollout_temperature=0.8, balance_data=True,
        advantage_estimator="grpo", use_kl_loss=True, kl_loss_coef=0.0, kl_loss_type="low_var_kl", entropy_coef=0.0,
        eps_clip=0.2, eps_clip_high=0.28, high_entropy_token_filter=True, entropy_percentile=0.2, save_interval=20,
        lr=1e-6, lr_decay_style="constant", weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.98,
        recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1, use_dynamic_batch_size=True,
    )  # fmt: skip
    for key, value in seed.items():
        assert getattr(args, key) == value, key
    assert args.prompt_data.endswith("/dapo-math-17k.jsonl")
    assert args.ref_load.endswith("_torch_dist") and args.load == args.save


def test_the_dapo_variant_has_the_papers_hyperparameters(tmp_path):
    args = parse_train_args(_argv(tmp_path, "run-qwen3-14B-dapo.sh"))
    paper = dict(
        advantage_estimator="grpo", use_kl_loss=False, kl_loss_coef=0.0, entropy_coef=0.0, eps_clip=0.2,
        eps_clip_high=0.28, dual_clip_c=10.0, calculate_per_token_loss=True, lr=1e-6, lr_warmup_iters=10,
        lr_decay_style="constant", weight_decay=0.1, clip_grad=1.0, rollout_temperature=1.0, rollout_top_p=1.0,
        rollout_top_k=-1, rollout_batch_size=512, n_samples_per_prompt=16, global_batch_size=512,
        over_sampling_batch_size=1536, dynamic_sampling_max_rounds=10,
        dynamic_sampling_filter_path="slime_entropy.rollout.filters.check_reward_nonzero_std",
        overlong_buffer_len=4096, overlong_penalty_factor=1.0, rollout_max_prompt_len=2048,
        rollout_max_response_len=20480, max_tokens_per_gpu=22528, rm_type="dapo", reward_key="score", num_epoch=30,
        high_entropy_token_filter=True, entropy_percentile=0.2,
    )  # fmt: skip
    for key, value in paper.items():
        assert getattr(args, key) == value, key
    assert args.hf_checkpoint.endswith("/Qwen3-14B-Base")
    plan = plan_from_args(args)
    assert plan.batch.num_steps_per_rollout == 16  # 512 prompts x 16 responses in mini-batches of 32 prompts


def test_the_dapo_schedule_counts_the_prepared_prompts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dapo-math-17k-answer.jsonl").write_text('{"prompt": "p", "label": "1"}\n' * 1030)
    _, plan = _plan(_argv(tmp_path, "run-qwen3-14B-dapo.sh"))
    assert plan.num_rollout == 30 * 1030 // 512 and plan.num_optimizer_steps == plan.num_rollout * 16


@pytest.mark.parametrize(
    "script, train_nodes",
    [("run-qwen3-14B.sh", n) for n in (2, 4, 8)]
    + [("run-qwen3-32B.sh", n) for n in (1, 4, 8, 16)]
    + [("run-qwen3-14B-dapo.sh", n) for n in (1, 4, 8, 16)],
)
def test_the_multi_node_scripts_fit_other_node_counts(tmp_path, script, train_nodes):
    args, plan = _plan(_argv(tmp_path, script, {"NUM_NODES": str(train_nodes + 1)}))
    assert plan.fits, plan.render()
    assert plan.cluster.num_train_ranks == 8 * train_nodes and plan.num_nodes == train_nodes + 1
    if script == "run-qwen3-32B.sh":
        assert args.optimizer_cpu_offload == (train_nodes == 1)
        if train_nodes == 1:
            assert plan.training.optimizer == 0 and plan.training.host_optimizer_per_gpu > 40 * 2**30


def test_a_node_count_that_breaks_the_batch_arithmetic_is_refused(tmp_path):
    argv = _argv(tmp_path, "run-qwen3-14B.sh", {"NUM_NODES": "4"})  # DP 6: 128 samples and 16 groups do not split
    with pytest.raises(ValueError) as err:
        _plan(argv)
    message = str(err.value)
    assert "the global batch of 128 samples does not divide over the data-parallel size 6" in message
    assert "--balance-data" in message and "--rollout-batch-size 16 is not a multiple of 6" in message


def test_the_multi_node_scripts_need_an_engine_node(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as err:
        _argv(tmp_path, "run-qwen3-14B.sh", {"NUM_NODES": "1"})
    assert err.value.returncode == 2 and b"needs NUM_NODES >= 2" in err.value.stderr


def test_the_wrong_checkpoint_for_the_model_args_is_refused(tmp_path):
    argv = _argv(tmp_path, "run-qwen3-8B.sh", {"HF_MODEL": "Qwen3-14B"})  # 8B MODEL_ARGS, 14B config.json
    with pytest.raises(ValueError) as err:
        _plan(argv)
    message = str(err.value)
    assert "--num-layers 36 but" in message and "has 40: pass --num-layers 40" in message
    assert "--hidden-size 4096 but" in message


def test_arguments_after_the_script_override_it(tmp_path):
    argv = _argv(tmp_path, "run-qwen3-4B.sh", args=["--num-rollout", "2", "--tensor-model-parallel-size", "1"])
    args, plan = _plan(argv)
    assert args.num_rollout == 2 and plan.num_rollout == 2 and plan.layout.data_parallel_size == 8
    # the rule is Megatron's (MegatronConfig, through the trainer's resolver), whichever way it words the count
    with pytest.raises(ValueError, match=r"--tensor-model-parallel-size 3 must divide the (32 )?attention heads"):
        _plan(_argv(tmp_path, "run-qwen3-4B.sh", args=["--tensor-model-parallel-size", "3"]))


def test_a_smaller_gpu_does_not_fit_and_says_why(tmp_path):
    _, plan = _plan(_argv(tmp_path, "run-qwen3-8B.sh", args=["--plan-gpu-memory-gib", "40"]))
    assert not plan.fits
    assert any("more than the 40 GiB GPU" in w for w in plan.warnings), plan.warnings
    assert "DOES NOT FIT" in plan.render()


def test_the_plan_shows_layout_batches_and_memory(tmp_path):
    _, plan = _plan(_argv(tmp_path, "run-qwen3-32B.sh"))
    text = plan.render()
    for expected in (
        "nodes            3 x 8 GPUs (24 GPUs used)",
        "TP 8 x PP 1 x CP 1 x DP 2, sequence parallel on, nccl",
        "2 engine(s) x 4 GPUs, on GPUs of their own",
        "weight updates   broadcast",
        "node 0: training ranks 0-7; node 1: training ranks 8-15; node 2: 2 engine(s)",
        "16 prompts x 8 samples = 128 samples",
        "1 per rollout x global batch 128 samples = 64 per DP rank",
        "longest sample   9216 tokens",
        "3000 rollouts = 3000 optimizer steps",
        "ON: keep the top 0.2 of valid tokens by entropy",
        "Adam states",
        "KV cache",
    ):
        assert expected in text, f"{expected!r} missing from\n{text}"


def _dry_run(tmp_path: Path, script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real thing: the run script with train.py and --dry-run."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MODELS_DIR": str(HF_FIXTURES),
        "DATA_DIR": str(tmp_path / "data"),
        "CKPT_DIR": str(tmp_path / "ckpt"),
        "PYTHON": sys.executable,
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(EXAMPLES / script), "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not (REPO / "train.py").is_file(), reason="train.py is not in the repository")
def test_train_py_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    result = _dry_run(tmp_path, "run-qwen3-14B-dapo.sh")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "slime_entropy dry run: the plan (nothing was started)" in out
    assert "training ranks 0-7; node 1: training ranks 8-15; node 2: 4 engine(s)" in out
    assert "16 per rollout x global batch 512 samples = 128 per DP rank" in out
    assert "verdict: fits (3 node(s) x 8 GPUs of 80 GiB" in out
    assert not (tmp_path / "ckpt").exists()  # no conversion, no checkpoint directory, nothing written

    refused = _dry_run(tmp_path, "run-qwen3-8B.sh", {"HF_MODEL": "Qwen3-14B"})
    assert refused.returncode != 0
    assert "--num-layers 36 but" in refused.stderr + refused.stdout


def test_a_cpu_run_is_planned_for_the_cpu(tmp_path):
    """--rollout-backend builtin (as train.py's built-in default task): CPU processes, no GPU memory table."""
    from slime_entropy.testing.tiny_models import save_tiny_qwen3

    model = save_tiny_qwen3(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1", "label": "2"}\n' * 64)
    args = parse_train_args(
        ["--hf-checkpoint", str(model), "--prompt-data", str(data), "--input-key", "prompt", "--label-key", "label",
         "--rm-type", "math", "--rollout-backend", "builtin", "--rollout-batch-size", "8", "--n-samples-per-prompt",
         "4", "--rollout-max-response-len", "32", "--rollout-max-prompt-len", "32", "--num-epoch", "2",
         "--use-dynamic-batch-size", "--max-tokens-per-gpu", "1024", "--tensor-model-parallel-size", "2"]
    )  # fmt: skip
    plan = plan_from_args(args)
    text = plan.render()
    assert not plan.on_gpu and plan.rollout is None and plan.fits and not plan.bf16
    assert plan.cluster.num_train_ranks == 2 and plan.cluster.backend == "gloo"  # one replica of TP 2
    assert plan.num_rollout == 2 * 64 // 8
    assert "CPU run" in text and "the built-in engine (CPU)" in text and "memory per training process" in text
    assert "KV cache" not in text and "verdict: fits (CPU, 2 training process(es)" in text


def test_the_planners_own_flags_are_checked_with_the_runs(tmp_path):
    """A GPU size that cannot be and a layout the model refuses are reported together, each naming its flag."""
    argv = _argv(tmp_path, "run-qwen3-4B.sh", args=["--plan-gpu-memory-gib", "0", "--tensor-model-parallel-size", "3"])
    with pytest.raises(ValueError) as err:
        _plan(argv)
    assert "--plan-gpu-memory-gib must be > 0, got 0" in str(err.value)
    assert "--tensor-model-parallel-size 3 must divide" in str(err.value)
