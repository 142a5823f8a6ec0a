"""scripts/data/prepare_math_data.py on small local fixtures shaped like the real sources (no network).

The fixtures mimic each source's schema: DAPO-Math-17k and guru (verl format, parquet with nested message lists and
a reward_model struct, DAPO's rows duplicated), AIME 2024 (parquet) and MATH-500 (jsonl). The outputs must load with
the rollout data loader under the run scripts' keys, and a correct answer in the format each recipe's reward
expects must score as correct against the written label.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from slime_entropy.rollout.data import load_prompt_records
from slime_entropy.rollout.rewards.grading import rule_based_reward
from tests.launch.helpers import REPO

spec = importlib.util.spec_from_file_location("prepare_math_data", REPO / "scripts" / "data" / "prepare_math_data.py")
prep = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = prep  # dataclasses resolve annotations through sys.modules
spec.loader.exec_module(prep)

PROBLEMS = [("What is $1+1$?", "2"), ("Compute $\\frac{6}{3}+10$.", "12"), ("Find $x$ if $2x=14$.", "7")]


def _dapo_row(problem: str, answer: str, index: int) -> dict:
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": prep.DAPO_PREFIX + problem + prep.DAPO_SUFFIX}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": str(index)},
    }


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def sources(tmp_path) -> Path:
    src = tmp_path / "src"
    dapo = [_dapo_row(p, a, i) for i, (p, a) in enumerate(PROBLEMS)] * 3  # the real file repeats every problem
    _write_parquet(src / "dapo-math-17k.parquet", dapo)
    guru = [
        {
            "data_source": "math__deepscaler",
            "prompt": [{"role": "user", "content": p + " Please output the final answer within \\boxed{}."}],
            "reward_model": {"ground_truth": a, "style": "rule"},
            "extra_info": {"index": i},
        }
        for i, (p, a) in enumerate(PROBLEMS)
    ]
    _write_parquet(src / "math__combined_54.4k.parquet", guru)
    aime = [{"id": 60 + i, "problem": f"AIME problem {i}: find $n$.", "solution": "...", "answer": str(i * 7 % 1000),
             "url": "u", "year": "2024"} for i in range(30)]  # fmt: skip
    _write_parquet(src / "train-00000-of-00001.parquet", aime)
    with (src / "test.jsonl").open("w") as f:
        for i in range(500):
            row = {"problem": f"MATH problem {i}", "solution": "...", "answer": f"\\frac{{{i}}}{{2}}",
                   "subject": "Algebra", "level": 1 + i % 5, "unique_id": f"test/algebra/{i}.json"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return src


def test_dapo_prompt_template_round_trip():
    assert prep.split_dapo_prompt(prep.DAPO_PREFIX + "  What is 2?  " + prep.DAPO_SUFFIX) == "What is 2?"
    for bad in ("What is 2?", prep.DAPO_PREFIX + "What is 2?", prep.DAPO_PREFIX + "  " + prep.DAPO_SUFFIX):
        with pytest.raises(prep.DataError):
            prep.split_dapo_prompt(bad)


def test_dapo_rows_are_deduplicated_and_keep_both_prompt_forms():
    rows = [_dapo_row(p, a, i) for i, (p, a) in enumerate(PROBLEMS)] * 2
    boxed, answer, counts = prep.dapo_samples(rows)
    assert counts == {"rows": 6, "duplicates": 3, "problems": 3}
    assert [s["label"] for s in boxed] == [a for _, a in PROBLEMS] == [s["label"] for s in answer]
    assert boxed[0]["prompt"] == [{"role": "user", "content": "What is $1+1$?\n\n" + prep.BOXED_INSTRUCTION}]
    assert answer[0]["prompt"][0]["content"] == rows[0]["prompt"][0]["content"]
    assert boxed[1]["metadata"] == {"source": "dapo-math-17k", "row": 1}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "text", "reward_model": {"ground_truth": "1"}}, "must be a non-empty message list"),
        (
            {"prompt": [{"role": "system", "content": "x"}], "reward_model": {"ground_truth": "1"}},
            "one non-empty user",
        ),
        ({"prompt": [{"role": "user", "content": "no template"}], "reward_model": {"ground_truth": "1"}}, "template"),
        ({**_dapo_row("p", "1", 0), "reward_model": {"style": "x"}}, "no reward_model.ground_truth"),
    ],
)
def test_malformed_dapo_rows_name_the_row(row, message):
    with pytest.raises(prep.DataError, match=f"row 0: .*{message}"):
        prep.dapo_samples([row])


def test_eval_rows():
    aime, _ = prep.aime_samples([{"id": 1, "problem": "P", "answer": "033"}])
    assert aime[0]["label"] == "33" and aime[0]["prompt"][0]["content"].endswith(prep.BOXED_INSTRUCTION)
    with pytest.raises(prep.DataError, match="an AIME answer is an integer"):
        prep.aime_samples([{"id": 1, "problem": "P", "answer": "1/2"}])
    with pytest.raises(prep.DataError, match="no 'answer'"):
        prep.math500_samples([{"problem": "P", "answer": ""}])


def test_prepare_writes_every_file_from_local_sources(sources, tmp_path):
    out = tmp_path / "data"
    assert prep.main(["--out-dir", str(out), "--train", "both", "--source-dir", str(sources)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    expected = {"dapo-math-17k.jsonl": 3, "dapo-math-17k-answer.jsonl": 3, "guru-math.jsonl": 3,
                "aime-2024.jsonl": 30, "math500.jsonl": 500, "aime-2024-answer.jsonl": 30,
                "math500-answer.jsonl": 500}  # fmt: skip
    assert {name: entry["problems"] for name, entry in manifest["files"].items()} == expected
    assert manifest["files"]["dapo-math-17k.jsonl"]["duplicates"] == 6
    for name in expected:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == manifest["files"][name]["sha256"]
        records = load_prompt_records(out / name, input_key="prompt", label_key="label", metadata_key="metadata")
        assert len(records) == expected[name] and all(isinstance(r.label, str) and r.label for r in records)
        assert all(isinstance(r.prompt, list) and r.prompt[-1]["role"] == "user" for r in records)
    assert not list(out.glob("*.tmp-*"))


def test_the_written_labels_grade_as_the_recipes_reward_them(sources, tmp_path):
    out = tmp_path / "data"
    assert prep.main(["--out-dir", str(out), "--train", "both", "--source-dir", str(sources)]) == 0

    def rows(name):
        return [json.loads(line) for line in (out / name).read_text().splitlines()]

    for row in rows("dapo-math-17k.jsonl"):  # seed-style scripts: --rm-type deepscaler
        good = f"<think>reasoning</think> The answer is $\\boxed{{{row['label']}}}$."
        assert rule_based_reward("deepscaler", good, row["label"]) == 1.0
        assert rule_based_reward("deepscaler", "<think>x</think> \\boxed{999}", row["label"]) == 0.0
    for row in rows("dapo-math-17k-answer.jsonl"):  # the DAPO variant: --rm-type dapo --reward-key score
        reward = rule_based_reward("dapo", f"Some work.\nAnswer: {row['label']}", row["label"])
        assert reward["score"] == 1.0
        assert "Answer:" in row["prompt"][0]["content"]
    for name in ("guru-math.jsonl", "aime-2024.jsonl", "math500.jsonl"):
        for row in rows(name)[:40]:
            assert rule_based_reward("math", f"so \\boxed{{{row['label']}}}", row["label"]) == 1.0, (name, row)
    for name in ("aime-2024-answer.jsonl", "math500-answer.jsonl"):  # evaluation of the DAPO variant
        for boxed, answer in zip(rows(name.replace("-answer", ""))[:40], rows(name)[:40], strict=True):
            assert answer["label"] == boxed["label"] and answer["metadata"] == boxed["metadata"]
            assert prep.split_dapo_prompt(answer["prompt"][0]["content"]) in boxed["prompt"][0]["content"]
            assert rule_based_reward("dapo", f"work\nAnswer: {answer['label']}", answer["label"])["score"] == 1.0


def test_missing_sources_are_reported(tmp_path, capsys):
    assert prep.main(["--out-dir", str(tmp_path / "o"), "--source-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "dapo-math-17k.parquet" in err and "BytedTsinghua-SIA/DAPO-Math-17k" in err


def test_a_short_eval_source_is_refused(sources, tmp_path):
    lines = (sources / "test.jsonl").read_text().splitlines()[:499]
    (sources / "test.jsonl").write_text("\n".join(lines) + "\n")
    assert prep.main(["--out-dir", str(tmp_path / "o"), "--train", "none", "--source-dir", str(sources)]) == 1
