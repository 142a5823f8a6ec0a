"""``python -m slime_entropy.analysis`` end to end: saved responses without a model, and prompts -> built-in engine ->
transformers scoring, compared with the trainer's Megatron model on a torch_dist copy of the same weights."""

import json
import subprocess
import sys

import pytest

from slime_entropy.analysis.cli import main
from tests.analysis.conftest import make_rollout_rows
from tests.analysis.test_statistics import direct_k, direct_population


def test_saved_responses_without_model(rollout_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--responses", str(rollout_file), "--out-dir", str(out), "--rho", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "| share of tokens with H < 0.01 |" in printed and f"html: {out / 'report.html'}" in printed
    summary = json.loads((out / "summary.json").read_text())["summary"]
    values = direct_population(make_rollout_rows())
    tau = sorted(values, reverse=True)[direct_k(len(values), 0.2) - 1]
    assert summary["threshold"] == tau and summary["num_tokens"] == len(values)
    assert summary["frac_below_low"] == sum(v < 0.01 for v in values) / len(values)
    assert summary["num_kept"] == sum(v >= tau for v in values)
    for name in ("report.html", "entropy_histogram.png", "token_cloud.png", "report.md", "tokens_top.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "exactly one input"),
        (["--responses", "a.jsonl", "--prompt-data", "p.jsonl"], "exactly one input"),
        (["--prompt-data", "p.jsonl"], "needs a model"),
        (["--responses", "missing.jsonl"], "no such file"),
    ],
)
def test_refusals(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_unscored_input_needs_a_model(tmp_path, capsys):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"tokens": [1, 2, 3, 4], "response_length": 2}) + "\n")
    with pytest.raises(SystemExit):
        main(["--responses", str(path), "--out-dir", str(tmp_path / "o")])
    assert "no per-token entropies" in capsys.readouterr().err


def test_prompts_generated_scored_and_compared_with_megatron(tiny_hf, tiny_torch_dist, tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + {i}?", "label": str(2 * i)}) + "\n" for i in range(3))
    )
    argv = [
        sys.executable, "-m", "slime_entropy.analysis", "--prompt-data", str(prompts), "--input-key", "prompt",
        "--label-key", "label", "--apply-chat-template", "--rm-type", "math", "--hf-checkpoint", str(tiny_hf),
        "--n-samples-per-prompt", "2", "--rollout-max-response-len", "16", "--rollout-temperature", "0.8",
        "--compare-checkpoints", f"megatron={tiny_torch_dist}", "--megatron-args",
        "--make-vocab-size-divisible-by 1", "--save-scored", "--out-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "summary.json").read_text())
    summary = result["summary"]
    assert summary["num_responses"] == 6 and 6 <= summary["num_tokens"] <= 6 * 16
    (row,) = result["overlaps"]["vs_reference"]  # transformers vs Megatron on identical weights
    assert (row["reference"], row["other"]) == (tiny_hf.name, "megatron")
    assert row["overlap"] >= 0.95 and row["entropy_pearson"] > 0.99999
    assert abs(row["reference_entropy_mean"] - row["other_entropy_mean"]) < 1e-4
    assert "vs_previous" not in result["overlaps"]
    assert (out / "overlap.csv").is_file() and (out / "report.html").stat().st_size > 0

    # The scored file re-analyses without a model and gives the same numbers.
    again = tmp_path / "again"
    assert main(["--responses", str(out / "scored_responses.jsonl.gz"), "--out-dir", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text())["summary"] == summary
