import json
import random

import pytest

from slime_entropy.rollout.data import PromptDataset, RolloutDataSource, load_prompt_records
from tests.rollout.conftest import write_jsonl


def _load(path, **kw):
    kw = {"input_key": "prompt", "label_key": "label", "metadata_key": "metadata", **kw}
    return load_prompt_records(path, **kw)


def test_jsonl_rows_become_validated_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a", "label": 1, "metadata": {"k": 1}}\n\n'
        '{"prompt": [{"role": "user", "content": "b"}], "label": "x"}\n'
        '{"prompt": "c", "label": null, "metadata": "{\\"s\\": 2}"}\n'
    )
    records = _load(path)
    assert [r.prompt for r in records] == ["a", [{"role": "user", "content": "b"}], "c"]
    assert [r.label for r in records] == [1, "x", None]
    assert [r.metadata for r in records] == [{"k": 1}, {}, {"s": 2}]
    assert [r.origin for r in records] == [f"{path}:1", f"{path}:3", f"{path}:4"]


def test_parquet_and_json_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p0", "label": "1"}, {"prompt": "p1", "label": "2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name, origin in (("d.parquet", "row 2"), ("d.json", "item 2")):
        records = _load(tmp_path / name)
        assert [(r.prompt, r.label) for r in records] == [("p0", "1"), ("p1", "2")]
        assert records[1].origin == f"{tmp_path / name}:{origin}"


@pytest.mark.parametrize(
    "content, kwargs, message",
    [
        ('{"prompt": "a", "label": 1}\n{"prompt": "b", "label": 2\n', {}, ":2: not valid JSON"),
        (
            '{"prompt": "a", "label": 1}\n{"question": "b", "label": 2}\n',
            {},
            ":2: missing key 'prompt' (set --input-key to one of ['label', 'question'])",
        ),
        ('{"prompt": "a"}\n', {}, ":1: missing key 'label' (set --label-key"),
        ('{"prompt": 3, "label": 1}\n', {}, ":1: 'prompt' must be a string or a list of"),
        ('{"prompt": [{"role": "user"}], "label": 1}\n', {}, ":1: 'prompt' must be a string or a list of"),
        ('["a"]\n', {}, ":1: expected a JSON object, got list"),
        ('{"prompt": "a", "label": 1, "metadata": [1]}\n', {}, ":1: 'metadata' must be an object"),
        ('{"prompt": "a", "label": 1, "metadata": "not json"}\n', {}, ":1: 'metadata' is a string that is not"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        _load(path, **kwargs)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        _load(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        _load(tmp_path / "d.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no rows"):
        _load(tmp_path / "empty.jsonl")
    assert _load(write_jsonl(tmp_path / "nolabel.jsonl", [{"prompt": "a"}]), label_key=None)[0].label is None


def test_chat_template_rendering_and_tokenization(tmp_path, tokenizer):
    records = _load(
        write_jsonl(
            tmp_path / "d.jsonl",
            [
                {"prompt": "hi", "label": 1},
                {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "label": 2},
            ],
        )
    )
    dataset = PromptDataset(records, tokenizer, apply_chat_template=True)
    assert dataset[0].text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert dataset[1].text.startswith("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu")
    assert list(dataset[0].token_ids) == tokenizer(dataset[0].text, add_special_tokens=False)["input_ids"]
    plain = PromptDataset(records[:1], tokenizer, apply_chat_template=False)
    assert plain[0].text == "hi"
    with pytest.raises(ValueError, match=r"d.jsonl:2: the prompt is a message list; pass --apply-chat-template"):
        PromptDataset(records, tokenizer, apply_chat_template=False)


def test_missing_chat_template_is_a_clear_error(tmp_path, tokenizer):
    import copy

    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    records = _load(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "hi", "label": 1}]))
    with pytest.raises(ValueError, match="--apply-chat-template: the tokenizer .* has no chat template"):
        PromptDataset(records, no_template, apply_chat_template=True)


def test_max_prompt_len_drops_long_prompts(tmp_path, tokenizer):
    rows = [{"prompt": "x" * n, "label": n} for n in (1, 50, 5, 500)]
    records = _load(write_jsonl(tmp_path / "d.jsonl", rows))
    dataset = PromptDataset(records, tokenizer, apply_chat_template=False, max_prompt_len=60)
    assert [item.record.label for item in dataset] == [1, 50, 5]
    assert [item.dataset_index for item in dataset] == [0, 1, 2]
    with pytest.raises(ValueError, match="no prompt left"):
        PromptDataset(records, tokenizer, apply_chat_template=False, max_prompt_len=0)


def _source(tmp_path, tokenizer, num_prompts=5, **kw):
    rows = [{"prompt": f"p{i}", "label": i, "metadata": {"i": i}} for i in range(num_prompts)]
    dataset = PromptDataset(_load(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer, apply_chat_template=False)
    return RolloutDataSource(dataset, **{"n_samples_per_prompt": 3, "shuffle": False, "seed": 7, **kw})


def test_groups_have_fresh_indices_and_private_copies(tmp_path, tokenizer):
    source = _source(tmp_path, tokenizer)
    groups = source.next_groups(2)
    assert [[s.index for s in g] for g in groups] == [[0, 1, 2], [3, 4, 5]]
    assert [[s.group_index for s in g] for g in groups] == [[0, 0, 0], [1, 1, 1]]
    groups[0][0].metadata["i"] = 99
    assert groups[0][1].metadata == {"i": 0}
    assert groups[1][2].tokens == tokenizer("p1", add_special_tokens=False)["input_ids"]
    assert groups[1][2].label == 1 and groups[1][2].prompt == "p1"


def test_epochs_and_shuffle_follow_slime(tmp_path, tokenizer):
    source = _source(tmp_path, tokenizer, shuffle=True)
    labels = [item.record.label for item in source.next_prompts(12)]
    expected = []
    for epoch in range(3):
        order = list(range(5))
        random.seed(7 + epoch)  # slime: random.seed(seed + epoch); random.shuffle(permutation)
        random.shuffle(order)
        expected += order
    assert labels == expected[:12]
    assert (source.epoch, source.offset) == (2, 2)
    unshuffled = _source(tmp_path, tokenizer, shuffle=False)
    assert [i.record.label for i in unshuffled.next_prompts(7)] == [0, 1, 2, 3, 4, 0, 1]


def test_pushed_back_groups_are_served_first_and_state_resumes(tmp_path, tokenizer):
    source = _source(tmp_path, tokenizer, shuffle=True)
    groups = source.next_groups(3)
    source.push_back_groups([groups[2][0].group_index, groups[0][0].group_index])
    state = source.state_dict()
    follow = [g[0].label for g in source.next_groups(4)]
    assert follow[:2] == [groups[2][0].label, groups[0][0].label]
    resumed = _source(tmp_path, tokenizer, shuffle=True)
    resumed.load_state_dict(state)
    again = resumed.next_groups(4)
    assert [g[0].label for g in again] == follow
    assert again[0][0].index == 9  # indices continue, never reused
    with pytest.raises(ValueError, match="resume with the same --prompt-data"):
        _source(tmp_path, tokenizer, shuffle=False).load_state_dict(state)
