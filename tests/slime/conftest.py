"""One real ``python -m slime_entropy.slime`` run per slime release, shared by the tests of this folder.

Each run launches ``stand_in_train.py`` (as ``train.py``) with the seed's command line through slime's real
``parse_args`` and Megatron's real parser (``megatron/training`` from the Megatron-LM tree, with the pip
megatron-core); only what cannot install on a CPU is stood in for (``standins.py``). The script's report holds the
seed's parsed values and the outcome of each variant in ``VARIANTS``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.slime_trees import REPO_ROOT, SLIME_RELEASES, megatron_training_tree, slime_tree

HERE = Path(__file__).resolve().parent
# slime v0.1.0's hf_validate_args reads args.norm_epsilon, which the Megatron-LM of the tree (core_v0.16.1) no
# longer defines; v0.1.0 ran with an older Megatron. Its runs leave --hf-checkpoint out (nothing else reads it
# while parsing).
RELEASES_WITH_HF_CHECK = ("v0.3.1", "head-624b824a8")
# Releases whose parse_args applies a --custom-config-path YAML to the parsed args.
RELEASES_WITH_YAML = ("v0.3.1", "head-624b824a8")
# How each run finds slime: through the script's folder (as in a checkout) or PYTHONPATH.
SLIME_ON_PYTHONPATH = ("v0.3.1",)

OURS_IN_SEED = ["--high-entropy-token-filter", "--entropy-percentile"]
TINY_QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
}


def seed_command_line(work: Path, release: str) -> list[str]:
    """The seed example's flags (slime's Qwen3 script layout) for a tiny Qwen3; TP 1 (Megatron's checks for TP > 1
    query the CUDA device)."""
    model = (
        "--swiglu --num-layers 2 --hidden-size 64 --ffn-hidden-size 128 --num-attention-heads 4 "
        "--group-query-attention --num-query-groups 2 --use-rotary-position-embeddings --disable-bias-linear "
        "--normalization RMSNorm --norm-epsilon 1e-6 --rotary-base 1000000 --vocab-size 256 --kv-channels 16 "
        "--qk-layernorm"
    ).split()
    checkpoints = ["--ref-load", str(work / "ref"), "--load", str(work / "ckpt"), "--save", str(work / "ckpt")]
    checkpoints += ["--save-interval", "20"]
    if release in RELEASES_WITH_HF_CHECK:
        checkpoints += ["--hf-checkpoint", str(work / "hf")]
    rollout = (
        f"--prompt-data {work / 'dapo-math-17k.jsonl'} --input-key prompt --label-key label --apply-chat-template "
        "--rollout-shuffle --rm-type deepscaler --num-rollout 3000 --rollout-batch-size 16 --n-samples-per-prompt 8 "
        "--num-steps-per-rollout 1 --global-batch-size 128 --rollout-max-response-len 8192 "
        "--rollout-temperature 0.8 --balance-data"
    ).split()
    grpo = (
        "--advantage-estimator grpo --use-kl-loss --kl-loss-coef 0.00 --kl-loss-type low_var_kl --entropy-coef 0.00 "
        "--eps-clip 0.2 --eps-clip-high 0.28"
    ).split()
    megatron = (
        "--tensor-model-parallel-size 1 --sequence-parallel --pipeline-model-parallel-size 1 "
        "--context-parallel-size 1 --recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
        "--use-dynamic-batch-size --max-tokens-per-gpu 9216 --optimizer adam --lr 1e-6 --lr-decay-style constant "
        "--weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.98 --attention-dropout 0.0 --hidden-dropout 0.0 "
        "--accumulate-allreduce-grads-in-fp32 --attention-softmax-in-fp32 --attention-backend flash"
    ).split()
    cluster = (
        "--actor-num-nodes 1 --actor-num-gpus-per-node 8 --rollout-num-gpus-per-engine 2 --colocate "
        "--sglang-mem-fraction-static 0.7 --sglang-cuda-graph-bs 1 2 4 8 16"
    ).split()
    ours = ["--high-entropy-token-filter", "--entropy-percentile", "0.2"]
    return model + checkpoints + rollout + grpo + megatron + cluster + ours


def variants(work: Path, release: str) -> dict[str, list]:
    """name -> [flags added, seed flags dropped, add_custom_arguments ('none', 'user', 'old_recipe'),
    parse_args ('ours': the launcher's, 'slime': slime's own)]."""
    table = {
        "rho": [["--entropy-percentile", "0.35"], ["--entropy-percentile"], "none", "ours"],
        "typo": [["--entropy-percentil", "0.5"], ["--entropy-percentile"], "none", "ours"],
        "typo_slime_alone": [["--entropy-percentil", "0.5"], ["--entropy-percentile"], "old_recipe", "slime"],
        "abbreviation": [["--entropy-perc", "0.5"], ["--entropy-percentile"], "none", "ours"],
        "underscore": [["--entropy_percentile", "0.5"], ["--entropy-percentile"], "none", "ours"],
        "switch_typo": [["--high-entropy-token-filer"], ["--high-entropy-token-filter"], "none", "ours"],
        "slime_flag_typo": [["--entropy-coeff", "0.01"], [], "none", "ours"],
        "other_unknown": [["--foo-bar", "1"], OURS_IN_SEED, "none", "ours"],
        "other_unknown_slime_alone": [["--foo-bar", "1"], OURS_IN_SEED, "none", "slime"],
        "no_ours": [[], OURS_IN_SEED, "none", "ours"],
        "no_ours_slime_alone": [[], OURS_IN_SEED, "none", "slime"],
        "shaping_only": [["--entropy-advantage-alpha", "0.1"], OURS_IN_SEED, "none", "ours"],
        "user_provider": [["--my-flag", "3"], [], "user", "ours"],
        "old_recipe": [[], [], "old_recipe", "ours"],
        "user_loss": [["--custom-loss-function-path", "my_project.losses.my_loss"], [], "none", "ours"],
        "slime_loss": [["--loss-type", "policy_loss"], [], "none", "ours"],
        "explicit_ours": [
            ["--loss-type", "custom_loss", "--custom-loss-function-path", "slime_entropy.loss.policy_loss_function"],
            [],
            "none",
            "ours",
        ],
        "needs_switch": [[], ["--high-entropy-token-filter"], "none", "ours"],
    }
    if release in RELEASES_WITH_YAML:
        (work / "typo.yaml").write_text("entropy_percentil: 0.5\n")
        (work / "switch.yaml").write_text("high_entropy_token_filter: true\n")
        table["yaml_typo"] = [["--custom-config-path", str(work / "typo.yaml")], [], "none", "ours"]
        table["yaml_switch"] = [["--custom-config-path", str(work / "switch.yaml")], OURS_IN_SEED, "none", "ours"]
    return table


@dataclass
class LaunchRun:
    release: str
    work: Path
    returncode: int
    stdout: str
    stderr: str
    report: dict

    def variant(self, name: str) -> dict:
        return self.report["variants"][name]


class _Launch:
    """One release's launcher run, started in the background (the runs are independent and mostly wait on imports)."""

    def __init__(self, release: str, work: Path):
        tree = slime_tree(release)
        self.release, self.work = release, work
        (work / "ref").mkdir()
        (work / "hf").mkdir()
        (work / "hf" / "config.json").write_text(json.dumps(TINY_QWEN3))
        shutil.copy(HERE / "stand_in_train.py", work / "train.py")
        python_path = [work / "site", REPO_ROOT, megatron_training_tree()]
        if release in SLIME_ON_PYTHONPATH:
            python_path.append(tree)
        else:
            (work / "slime").symlink_to(tree / "slime", target_is_directory=True)
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text("from tests.slime.standins import install\n\ninstall()\n")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(map(str, python_path)),
            "PYTHONWARNINGS": "ignore",
            "STAND_IN_REPORT": str(work / "report.json"),
            "STAND_IN_VARIANTS": json.dumps(variants(work, release)),
        }
        command = [sys.executable, "-m", "slime_entropy.slime", "train.py", *seed_command_line(work, release)]
        with open(work / "stdout", "w") as stdout, open(work / "stderr", "w") as stderr:
            self.process = subprocess.Popen(command, cwd=work, env=env, stdout=stdout, stderr=stderr)
        self._run: LaunchRun | None = None

    def result(self) -> LaunchRun:
        if self._run is None:
            try:
                returncode = self.process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
            stdout, stderr = (self.work / "stdout").read_text(), (self.work / "stderr").read_text()
            report_file = self.work / "report.json"
            if not report_file.exists():
                pytest.fail(f"the stand-in train.py wrote no report (exit {returncode}):\n{stderr[-4000:]}")
            self._run = LaunchRun(
                self.release, self.work, returncode, stdout, stderr, json.loads(report_file.read_text())
            )
        return self._run


@pytest.fixture(scope="session")
def _launches(tmp_path_factory):
    launches = {}
    for release in SLIME_RELEASES:
        try:
            launches[release] = _Launch(release, tmp_path_factory.mktemp(f"slime-{release}"))
        except (pytest.skip.Exception, pytest.fail.Exception) as outcome:  # a tree is missing
            launches[release] = outcome
    yield launches
    for launch in launches.values():
        if isinstance(launch, _Launch) and launch.process.poll() is None:
            launch.process.kill()
            launch.process.wait()


@pytest.fixture(scope="session", params=SLIME_RELEASES)
def launch_run(request, _launches) -> LaunchRun:
    """The launcher run on one slime release (all releases start together, once per session)."""
    launch = _launches[request.param]
    if isinstance(launch, BaseException):
        raise launch
    return launch.result()
