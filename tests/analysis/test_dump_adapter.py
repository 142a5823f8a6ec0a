"""The trainer's rollout dumps (written with ``slime_entropy.rollout_dump``) read by the analysis: records, groups
per rollout, the command on a run directory."""

import json

import numpy as np
import pytest

from slime_entropy.analysis.cli import main
from slime_entropy.analysis.dump_adapter import DumpInfo, load_rollout_dumps
from slime_entropy.rollout_dump import DumpHeader, write_rollout_dump
from tests.analysis.conftest import make_rollout_rows
from tests.analysis.test_statistics import direct_k, direct_population


def write_run(run_dir, rows_per_rollout, temperature=0.8):
    for rollout_id, rows in rows_per_rollout.items():
        samples = []
        for i, r in enumerate(rows):
            prompt_len = len(r["tokens"]) - r["response_length"]
            samples.append(
                {
                    "index": 100 * rollout_id + i, "group_index": i // 2, "prompt": r["prompt_text"],
                    "prompt_text": r["prompt_text"], "response": "", "label": "1", "reward": r["reward"],
                    "advantage": 0.5, "status": "completed", "prompt_tokens": r["tokens"][:prompt_len],
                    "response_tokens": r["tokens"][prompt_len:], "loss_mask": r["loss_mask"],
                    "rollout_log_probs": r["log_probs"], "log_probs": r["log_probs"], "entropy": r["entropy"],
                }
            )  # fmt: skip
        header = DumpHeader(rollout_id=rollout_id, num_samples=len(samples), temperature=temperature)
        write_rollout_dump(run_dir, header, samples)


def test_records_and_groups(tmp_path):
    rows = make_rollout_rows()
    write_run(tmp_path / "run", {3: rows[:5], 10: rows[5:]})
    info = DumpInfo()
    samples = load_rollout_dumps([tmp_path / "run"], info)
    assert info.rollout_ids == [3, 10] and info.temperatures == {0.8}
    assert [s.group for s in samples] == ["rollout 3"] * 5 + ["rollout 10"] * (len(rows) - 5)
    assert samples[0].sample_id == "rollout 3/300" and samples[5].sample_id == "rollout 10/1000"
    for s, r in zip(samples, rows, strict=True):
        assert s.tokens.tolist() == r["tokens"] and s.response_length == r["response_length"]
        assert s.response_mask.tolist() == [bool(m) for m in r["loss_mask"]] and s.reward == r["reward"]
        np.testing.assert_array_equal(s.entropy, np.asarray(r["entropy"], np.float32))
        np.testing.assert_array_equal(s.log_probs, np.asarray(r["log_probs"], np.float32))
    # A single file and a rollouts/ directory are accepted too; a rollout given twice is refused.
    single = load_rollout_dumps([tmp_path / "run" / "rollouts" / "rollout_000010.jsonl"])
    assert [s.sample_id for s in single] == [s.sample_id for s in samples[5:]]
    with pytest.raises(ValueError, match="rollout 3 is given twice"):
        load_rollout_dumps([tmp_path / "run", tmp_path / "run" / "rollouts" / "rollout_000003.jsonl"])
    with pytest.raises(ValueError, match="no rollout_<id>.jsonl"):
        load_rollout_dumps([tmp_path])


def test_command_on_a_run_directory(tmp_path):
    rows = make_rollout_rows()
    write_run(tmp_path / "run", {0: rows[:6], 1: rows[6:]})
    out = tmp_path / "out"
    assert main(["--rollout-dump", str(tmp_path / "run"), "--out-dir", str(out)]) == 0
    result = json.loads((out / "summary.json").read_text())
    values = direct_population(rows)
    assert result["summary"]["threshold"] == sorted(values, reverse=True)[direct_k(len(values), 0.2) - 1]
    assert list(result["groups"]) == ["rollout 0", "rollout 1"]
    for name, part in (("rollout 0", rows[:6]), ("rollout 1", rows[6:])):
        group_values = direct_population(part)
        tau = sorted(group_values, reverse=True)[direct_k(len(group_values), 0.2) - 1]
        assert result["groups"][name]["threshold"] == tau
        assert result["groups"][name]["num_tokens"] == len(group_values)
    assert "trainer entropies (rollout dumps)" in (out / "report.md").read_text()
    from tests.analysis.test_report import check_png

    check_png(out / "entropy_by_group.png")
    assert (out / "report.html").read_text().count('src="data:image/png;base64,') == 3
