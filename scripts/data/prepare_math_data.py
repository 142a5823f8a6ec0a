#!/usr/bin/env python3
"""Build the training and evaluation files of the examples/high_entropy recipes from the public math datasets.

    python scripts/data/prepare_math_data.py --out-dir /root/data                  # download from the HF Hub
    python scripts/data/prepare_math_data.py --out-dir /root/data --train guru     # the guru math set instead
    python scripts/data/prepare_math_data.py --out-dir /root/data --source-dir ~/dl  # files downloaded already

Needs network access to the Hugging Face Hub (``huggingface_hub`` is used; ``HF_TOKEN`` / ``HF_ENDPOINT`` are
honoured) unless ``--source-dir`` holds the source files under their Hub file names. Output, one JSON object per
line, with the keys the run scripts pass (``--input-key prompt --label-key label``, ``--apply-chat-template``):

==========================  ===================================================================  ==========
file                        prompt (a chat message list)                                         reward
==========================  ===================================================================  ==========
dapo-math-17k.jsonl         problem + "Please reason step by step, and put your final answer     deepscaler
                            within \\boxed{}." (the seed-style run scripts)                        or math
dapo-math-17k-answer.jsonl  DAPO's own prompt, which asks for a final line "Answer: ..." (the    dapo
                            DAPO variant, ``--rm-type dapo --reward-key score``)
guru-math.jsonl             guru's prompt as published (``--train guru``; asks for \\boxed{})     math
aime-2024.jsonl             the 30 AIME 2024 problems, boxed instruction                         deepscaler
                                                                                                 or math
math500.jsonl               the 500 MATH-500 problems, boxed instruction                         math
aime-2024-answer.jsonl,     the same problems in DAPO's "Answer: ..." template, to evaluate      dapo
math500-answer.jsonl        runs trained with the dapo reward
==========================  ===================================================================  ==========

``label`` is the reference answer as a string; ``metadata`` holds the source, the row index in the source and (for
eval files) the problem id / subject / level. DAPO-Math-17k ships every problem many times over; rows are
de-duplicated by problem text (first kept). Files are written atomically (temporary name, then rename), and
``manifest.json`` records the sources, row counts and SHA-256 of every output. Each transformation below is a pure
function of the source rows (tested on small local fixtures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


@dataclass(frozen=True)
class Source:
    """A file of a Hugging Face dataset repository."""

    repo_id: str
    filename: str


SOURCES = {
    "dapo": Source("BytedTsinghua-SIA/DAPO-Math-17k", "data/dapo-math-17k.parquet"),
    "guru": Source("LLM360/guru-RL-92k", "train/math__combined_54.4k.parquet"),
    "aime24": Source("HuggingFaceH4/aime_2024", "data/train-00000-of-00001.parquet"),
    "math500": Source("HuggingFaceH4/MATH-500", "test.jsonl"),
}


class DataError(ValueError):
    """A source row that does not have the expected shape; the message names the source and the row."""


def boxed_prompt(problem: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{problem.strip()}\n\n{BOXED_INSTRUCTION}"}]


def answer_prompt(problem: str) -> list[dict[str, str]]:
    """DAPO's template, which asks for a final line "Answer: ..." (graded by ``--rm-type dapo``)."""
    return [{"role": "user", "content": DAPO_PREFIX + problem.strip() + DAPO_SUFFIX}]


def as_answer_format(samples: list[dict]) -> list[dict]:
    """Boxed-instruction samples rewritten into DAPO's template (same problem, label and metadata)."""
    out = []
    for sample in samples:
        content = sample["prompt"][-1]["content"]
        suffix = "\n\n" + BOXED_INSTRUCTION
        assert content.endswith(suffix), "as_answer_format expects boxed_prompt() samples"
        out.append({**sample, "prompt": answer_prompt(content[: -len(suffix)])})
    return out


def split_dapo_prompt(content: str) -> str:
    """The bare problem inside DAPO's prompt template (raises DataError when the template is not there)."""
    if not (content.startswith(DAPO_PREFIX) and content.endswith(DAPO_SUFFIX)):
        raise DataError("the prompt does not follow DAPO's 'Solve the following math problem ... Answer:' template")
    problem = content[len(DAPO_PREFIX) : len(content) - len(DAPO_SUFFIX)].strip()
    if not problem:
        raise DataError("the prompt's problem is empty")
    return problem


def _user_content(messages: Any, where: str) -> str:
    if not isinstance(messages, list | tuple) or not messages:
        raise DataError(f"{where}: 'prompt' must be a non-empty message list, got {type(messages).__name__}")
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or not isinstance(users[0], str) or not users[0].strip():
        raise DataError(f"{where}: expected exactly one non-empty user message")
    return users[0]


def _ground_truth(row: dict[str, Any], where: str) -> str:
    reward_model = row.get("reward_model")
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if truth is None or not str(truth).strip():
        raise DataError(f"{where}: no reward_model.ground_truth")
    return str(truth).strip()


def dapo_samples(rows: Iterable[dict[str, Any]]) -> tuple[list[dict], list[dict], dict[str, int]]:
    """DAPO-Math-17k rows (verl format: ``prompt`` messages in DAPO's template, ``reward_model.ground_truth``) ->
    (boxed-instruction samples, DAPO-template samples, counts). Duplicated problems are kept once."""
    boxed, answer, seen = [], [], set()
    counts = {"rows": 0, "duplicates": 0}
    for index, row in enumerate(rows):
        counts["rows"] += 1
        where = f"DAPO-Math-17k row {index}"
        content = _user_content(row.get("prompt"), where)
        try:
            problem = split_dapo_prompt(content)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        if problem in seen:
            counts["duplicates"] += 1
            continue
        seen.add(problem)
        label = _ground_truth(row, where)
        metadata = {"source": "dapo-math-17k", "row": index}
        boxed.append({"prompt": boxed_prompt(problem), "label": label, "metadata": metadata})
        answer.append({"prompt": [{"role": "user", "content": content}], "label": label, "metadata": metadata})
    counts["problems"] = len(boxed)
    return boxed, answer, counts


def guru_samples(rows: Iterable[dict[str, Any]]) -> tuple[list[dict], dict[str, int]]:
    """guru math rows (verl format) -> samples with guru's own messages and its ground truth."""
    samples = []
    for index, row in enumerate(rows):
        where = f"guru math row {index}"
        messages = row.get("prompt")
        _user_content(messages, where)  # validates the shape
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        metadata = {"source": str(row.get("data_source") or "guru-math"), "row": index}
        samples.append({"prompt": prompt, "label": _ground_truth(row, where), "metadata": metadata})
    return samples, {"rows": len(samples), "problems": len(samples)}


def _problem_answer(row: dict[str, Any], where: str) -> tuple[str, str]:
    problem, answer = row.get("problem"), row.get("answer")
    if not isinstance(problem, str) or not problem.strip():
        raise DataError(f"{where}: no 'problem' text")
    if answer is None or not str(answer).strip():
        raise DataError(f"{where}: no 'answer'")
    return problem, str(answer).strip()


def aime_samples(rows: Iterable[dict[str, Any]]) -> tuple[list[dict], dict[str, int]]:
    """AIME 2024 rows (``problem``, ``answer``, ``id``) -> boxed-instruction samples; the answers are integers."""
    samples = []
    for index, row in enumerate(rows):
        where = f"AIME 2024 row {index}"
        problem, answer = _problem_answer(row, where)
        if not answer.isdigit():
            raise DataError(f"{where}: an AIME answer is an integer, got {answer!r}")
        answer = str(int(answer))
        metadata = {"source": "aime-2024", "row": index, "id": row.get("id")}
        samples.append({"prompt": boxed_prompt(problem), "label": answer, "metadata": metadata})
    return samples, {"rows": len(samples), "problems": len(samples)}


def math500_samples(rows: Iterable[dict[str, Any]]) -> tuple[list[dict], dict[str, int]]:
    """MATH-500 rows (``problem``, ``answer``, ``subject``, ``level``, ``unique_id``) -> boxed-instruction samples."""
    samples = []
    for index, row in enumerate(rows):
        problem, answer = _problem_answer(row, f"MATH-500 row {index}")
        metadata = {
            "source": "math500", "row": index, "id": row.get("unique_id"), "subject": row.get("subject"),
            "level": row.get("level"),
        }  # fmt: skip
        samples.append({"prompt": boxed_prompt(problem), "label": answer, "metadata": metadata})
    return samples, {"rows": len(samples), "problems": len(samples)}


def _plain(value: Any) -> Any:
    """numpy arrays / pyarrow scalars -> lists and Python scalars (parquet list columns read as arrays)."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a .parquet, .jsonl or .json (list) file as plain dicts."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield _plain(row)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{number}: not JSON ({err})") from None
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        yield from data
    else:
        raise DataError(f"{path}: unsupported file type (parquet, jsonl or json)")


def write_jsonl(path: Path, samples: list[dict]) -> str:
    """Write atomically; return the SHA-256 of the file."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("w", encoding="utf-8") as f:
        for sample in samples:
            line = json.dumps(sample, ensure_ascii=False) + "\n"
            digest.update(line.encode("utf-8"))
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return digest.hexdigest()


def fetch(source: Source, source_dir: Path | None, cache_dir: Path | None) -> Path:
    """The local path of ``source``: ``source_dir/<filename>`` (or its base name) if given, else a Hub download."""
    if source_dir is not None:
        for candidate in (source_dir / source.filename, source_dir / Path(source.filename).name):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"--source-dir {source_dir}: neither {source.filename} nor {Path(source.filename).name} is there "
            f"(download it from https://huggingface.co/datasets/{source.repo_id})"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source.repo_id, source.filename, repo_type="dataset", cache_dir=cache_dir))
    except Exception as err:  # noqa: BLE001 - report which file and how to get it by hand
        raise RuntimeError(
            f"cannot download {source.filename} from the dataset {source.repo_id} ({type(err).__name__}: {err}). "
            "Without network access, download it elsewhere and pass --source-dir"
        ) from err


def prepare(out_dir: Path, train: str, with_eval: bool, source_dir: Path | None, cache_dir: Path | None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"files": {}}

    def emit(name: str, samples: list[dict], source: Source, counts: dict[str, int]) -> None:
        sha = write_jsonl(out_dir / name, samples)
        manifest["files"][name] = {"source": f"{source.repo_id}/{source.filename}", "sha256": sha, **counts}
        print(f"wrote {out_dir / name}: {len(samples)} samples ({counts})", flush=True)

    if train in ("dapo", "both"):
        path = fetch(SOURCES["dapo"], source_dir, cache_dir)
        boxed, answer, counts = dapo_samples(read_rows(path))
        emit("dapo-math-17k.jsonl", boxed, SOURCES["dapo"], counts)
        emit("dapo-math-17k-answer.jsonl", answer, SOURCES["dapo"], counts)
    if train in ("guru", "both"):
        samples, counts = guru_samples(read_rows(fetch(SOURCES["guru"], source_dir, cache_dir)))
        emit("guru-math.jsonl", samples, SOURCES["guru"], counts)
    if with_eval:
        samples, counts = aime_samples(read_rows(fetch(SOURCES["aime24"], source_dir, cache_dir)))
        if len(samples) != 30:
            raise DataError(f"AIME 2024 has 30 problems; the source gave {len(samples)}")
        emit("aime-2024.jsonl", samples, SOURCES["aime24"], counts)
        emit("aime-2024-answer.jsonl", as_answer_format(samples), SOURCES["aime24"], counts)
        samples, counts = math500_samples(read_rows(fetch(SOURCES["math500"], source_dir, cache_dir)))
        if len(samples) != 500:
            raise DataError(f"MATH-500 has 500 problems; the source gave {len(samples)}")
        emit("math500.jsonl", samples, SOURCES["math500"], counts)
        emit("math500-answer.jsonl", as_answer_format(samples), SOURCES["math500"], counts)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, required=True, help="where the jsonl files go (the run scripts' DATA_DIR)"
    )
    parser.add_argument(
        "--train", choices=("dapo", "guru", "both", "none"), default="dapo", help="training set(s) to build"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the AIME 2024 and MATH-500 files")
    parser.add_argument("--source-dir", type=Path, default=None, help="read the source files from here, no download")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Hugging Face download cache")
    args = parser.parse_args(argv)
    try:
        prepare(args.out_dir, args.train, not args.no_eval, args.source_dir, args.cache_dir)
    except (DataError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
