"""Prompt data: load jsonl/json/parquet rows, apply the chat template, tokenize, and serve groups epoch by epoch.

    records = load_prompt_records("dapo.jsonl", input_key="prompt", label_key="label", metadata_key="metadata")
    dataset = PromptDataset(records, tokenizer, apply_chat_template=True)
    source = RolloutDataSource(dataset, n_samples_per_prompt=8, shuffle=True, seed=42)
    groups = source.next_groups(16)          # 16 lists of 8 fresh Samples (same prompt within a list)

Every data error names its origin as ``file:line`` (jsonl), ``file:item N`` (a json list) or ``file:row N``
(parquet), and the flag that fixes it. Shuffling follows slime: epoch ``e`` uses the permutation produced by
``random.Random(seed + e).shuffle``, so the prompt order equals slime's for the same seed.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slime_entropy.rollout.sample import Sample

__all__ = [
    "PromptRecord",
    "PromptItem",
    "load_prompt_records",
    "check_prompt_records",
    "check_chat_template",
    "PromptDataset",
    "RolloutDataSource",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptRecord:
    """One dataset row, validated. ``origin`` is ``file:line`` (or ``file:row N``) for error messages."""

    prompt: str | list[dict[str, Any]]
    label: Any
    metadata: dict[str, Any]
    origin: str


@dataclass(frozen=True)
class PromptItem:
    """A tokenized prompt ready for generation. ``dataset_index`` is its position in the (unshuffled) dataset."""

    dataset_index: int
    record: PromptRecord
    text: str
    token_ids: tuple[int, ...]


def _iter_rows(path: Path):
    """Yield ``(origin, row)`` pairs; a row is whatever the file holds at that position (validated later). A jsonl
    file is streamed line by line, so a check can stop early without reading the rest."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"--prompt-data {path}: reading parquet needs pyarrow (pip install pyarrow)") from None

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {i}", row
        return
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"--prompt-data {path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")
    with open(path, encoding="utf-8") as f:
        head = f.read(4096)
        f.seek(0)
        if suffix == ".json" and head.lstrip().startswith("["):
            try:
                items = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            for i, row in enumerate(items, start=1):
                yield f"{path}:item {i}", row
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); --prompt-data needs one JSON "
                    "object per line"
                ) from None
            yield f"{path}:{lineno}", row


def _check_prompt(prompt: Any, origin: str, input_key: str) -> str | list[dict[str, Any]]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        if not prompt:
            raise ValueError(f"{origin}: '{input_key}' is an empty message list")
        return prompt
    raise ValueError(
        f"{origin}: '{input_key}' must be a string or a list of {{'role': str, 'content': str}} messages, "
        f"got {type(prompt).__name__}"
    )


def _record(origin: str, row: Any, input_key: str, label_key: str | None, metadata_key: str | None) -> PromptRecord:
    """One row checked and turned into a :class:`PromptRecord` (the one place a row's rules live)."""
    if not isinstance(row, dict):
        raise ValueError(f"{origin}: expected a JSON object, got {type(row).__name__}")
    if input_key not in row:
        raise ValueError(f"{origin}: missing key '{input_key}' (set --input-key to one of {sorted(row)})")
    prompt = _check_prompt(row[input_key], origin, input_key)
    label = None
    if label_key is not None:
        if label_key not in row:
            raise ValueError(f"{origin}: missing key '{label_key}' (set --label-key to one of {sorted(row)})")
        label = row[label_key]
    metadata: Any = row.get(metadata_key) if metadata_key is not None else None
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            raise ValueError(f"{origin}: '{metadata_key}' is a string that is not a JSON object") from None
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{origin}: '{metadata_key}' must be an object, got {type(metadata).__name__} (see --metadata-key)"
        )
    return PromptRecord(prompt=prompt, label=label, metadata=metadata, origin=origin)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"--prompt-data {path}: no such file")


def load_prompt_records(
    path: str | Path, *, input_key: str, label_key: str | None, metadata_key: str | None
) -> list[PromptRecord]:
    """Read and validate every row of ``path`` (.jsonl, .json list or jsonl, .parquet)."""
    path = Path(path)
    _require_file(path)
    records = [_record(origin, row, input_key, label_key, metadata_key) for origin, row in _iter_rows(path)]
    if not records:
        raise ValueError(f"--prompt-data {path}: the file holds no rows")
    return records


def check_prompt_records(
    path: str | Path,
    *,
    input_key: str,
    label_key: str | None,
    metadata_key: str | None,
    max_rows: int | None = None,
) -> list[PromptRecord]:
    """What :func:`load_prompt_records` would raise, found in one streamed pass that keeps nothing but the first few
    records (returned, for trying the chat template on). ``max_rows`` caps the rows checked (None: every row)."""
    path = Path(path)
    _require_file(path)
    first: list[PromptRecord] = []
    num_rows = 0
    for origin, row in _iter_rows(path):
        record = _record(origin, row, input_key, label_key, metadata_key)
        if len(first) < 4:
            first.append(record)
        num_rows += 1
        if max_rows is not None and num_rows >= max_rows:
            break
    if not num_rows:
        raise ValueError(f"--prompt-data {path}: the file holds no rows")
    return first


def check_chat_template(tokenizer) -> None:
    """``--apply-chat-template`` needs a tokenizer that has a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"--apply-chat-template: the tokenizer ({getattr(tokenizer, 'name_or_path', '?')}) has no chat "
            "template; drop the flag and store plain-text prompts, or use a checkpoint whose tokenizer has one"
        )


class PromptDataset(Sequence[PromptItem]):
    """Tokenized prompts. With ``apply_chat_template`` a string prompt becomes one user message.

    Prompts longer than ``max_prompt_len`` tokens are dropped (slime's ``--rollout-max-prompt-len``), with a log line
    saying how many.
    """

    def __init__(
        self,
        records: Sequence[PromptRecord],
        tokenizer,
        *,
        apply_chat_template: bool,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_prompt_len: int | None = None,
    ):
        if apply_chat_template:
            check_chat_template(tokenizer)
        texts = [self._render(r, tokenizer, apply_chat_template, chat_template_kwargs or {}) for r in records]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        items, num_dropped = [], 0
        for i, (record, text, ids) in enumerate(zip(records, texts, encoded, strict=True)):
            if max_prompt_len is not None and len(ids) > max_prompt_len:
                num_dropped += 1
                continue
            items.append(PromptItem(dataset_index=i, record=record, text=text, token_ids=tuple(ids)))
        if num_dropped:
            logger.info(
                "dropped %d of %d prompts longer than %d tokens (--rollout-max-prompt-len, or no room for a response "
                "under --rollout-max-context-len)",
                num_dropped,
                len(texts),
                max_prompt_len,
            )
        if not items:
            raise ValueError(f"no prompt left after --rollout-max-prompt-len {max_prompt_len} filtering")
        self._items = items

    @staticmethod
    def _render(record: PromptRecord, tokenizer, apply_chat_template: bool, kwargs: dict[str, Any]) -> str:
        if not apply_chat_template:
            if not isinstance(record.prompt, str):
                raise ValueError(f"{record.origin}: the prompt is a message list; pass --apply-chat-template")
            return record.prompt
        messages = [{"role": "user", "content": record.prompt}] if isinstance(record.prompt, str) else record.prompt
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]


class RolloutDataSource:
    """Serves prompt groups epoch after epoch, reshuffling each epoch, with a resumable position.

    Prompts handed back with :meth:`push_back_groups` (groups cancelled by dynamic sampling) are served again first,
    so no prompt of an epoch is skipped. Sample and group indices increase monotonically and are never reused.
    """

    def __init__(self, dataset: PromptDataset, *, n_samples_per_prompt: int, shuffle: bool, seed: int):
        self.dataset = dataset
        self.n_samples_per_prompt = n_samples_per_prompt
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self.next_sample_index = 0
        self.next_group_index = 0
        self._pushed_back: deque[int] = deque()
        self._group_positions: dict[int, int] = {}
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def _next_positions(self, num_prompts: int) -> list[int]:
        out = []
        while len(out) < num_prompts:
            if self._pushed_back:
                out.append(self._pushed_back.popleft())
                continue
            if self.offset >= len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._epoch_order(self.epoch)
            out.append(self._order[self.offset])
            self.offset += 1
        return out

    def next_prompts(self, num_prompts: int) -> list[PromptItem]:
        return [self.dataset[p] for p in self._next_positions(num_prompts)]

    def next_groups(self, num_prompts: int) -> list[list[Sample]]:
        """``num_prompts`` groups of ``n_samples_per_prompt`` fresh samples (new indices; label/metadata copied)."""
        groups = []
        for position in self._next_positions(num_prompts):
            item = self.dataset[position]
            group_index = self.next_group_index
            self.next_group_index += 1
            self._group_positions[group_index] = position
            group = []
            for _ in range(self.n_samples_per_prompt):
                group.append(
                    Sample(
                        index=self.next_sample_index,
                        group_index=group_index,
                        prompt=item.record.prompt,
                        prompt_text=item.text,
                        tokens=list(item.token_ids),
                        label=copy.deepcopy(item.record.label),
                        metadata=copy.deepcopy(item.record.metadata),
                    )
                )
                self.next_sample_index += 1
            groups.append(group)
        return groups

    def release_groups(self, group_indices: Sequence[int]) -> None:
        """Forget the bookkeeping of groups that reached the trainer (keeps memory flat over a long run)."""
        for g in group_indices:
            self._group_positions.pop(g, None)

    def push_back_groups(self, group_indices: Sequence[int]) -> None:
        """Serve the prompts of these (cancelled) groups again before any new prompt, in the given order."""
        positions = [self._group_positions.pop(g) for g in group_indices]
        self._pushed_back.extend(positions)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "next_sample_index": self.next_sample_index,
            "next_group_index": self.next_group_index,
            "pushed_back": list(self._pushed_back),
            "num_prompts": len(self.dataset),
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["num_prompts"], state["seed"], state["shuffle"]) != (len(self.dataset), self.seed, self.shuffle):
            raise ValueError(
                "rollout data state does not match this dataset: saved "
                f"(num_prompts, --rollout-seed, --rollout-shuffle) = {(state['num_prompts'], state['seed'], state['shuffle'])}, "  # noqa: E501
                f"now {(len(self.dataset), self.seed, self.shuffle)}; resume with the same --prompt-data and flags"
            )
        self.epoch = state["epoch"]
        self.offset = state["offset"]
        self.next_sample_index = state["next_sample_index"]
        self.next_group_index = state["next_group_index"]
        self._pushed_back = deque(state["pushed_back"])
        self._order = self._epoch_order(self.epoch)
