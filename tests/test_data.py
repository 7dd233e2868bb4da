"""Task loaders on the real release files (POLAR_VBLL_DATA), prompts and batching."""

import json

import pytest
import torch

from polar_vbll import data, models
from polar_vbll.errors import ConfigError, DataError

EXPECTED_SIZES = {
    "arc_easy": (2251, 570, 2376),
    "arc_challenge": (1119, 299, 1172),
    "obqa": (4957, 500, 500),
    "boolq": (2270, 500, 500),
    "winogrande_s": (576, 64, 1267),
    "winogrande_m": (2302, 256, 1267),
    "mmlu_college_chemistry": (5, 8, 100),
    "mmlu_college_physics": (5, 11, 102),
    "mmlu_high_school_physics": (5, 17, 151),
}


@pytest.fixture(scope="module")
def tokenizer():
    return models._load_smollm2_tokenizer()


@pytest.mark.parametrize("task", list(EXPECTED_SIZES))
def test_every_task_loads_with_release_sizes(task):
    sizes = tuple(len(data.load_task(task, split)) for split in data.SPLITS)
    assert sizes == EXPECTED_SIZES[task]
    for example in data.load_task(task, "test"):
        assert 0 <= example.label < example.num_choices <= data.NUM_CLASSES


def test_arc_numeric_keys_map_through_labels_not_position():
    examples = data.load_task("arc_easy", "train")
    raw = [json.loads(line) for line in open(data.data_root() / "arc_easy/ARC-Easy-Train.jsonl")]
    numeric = [(e, r) for e, r in zip(examples, raw) if r["answerKey"] in "12345"]
    assert len(numeric) == 102  # documented in the data README
    for example, row in numeric:
        labels = [c["label"] for c in row["question"]["choices"]]
        assert example.choices[example.label] == row["question"]["choices"][
            labels.index(row["answerKey"])]["text"]


def test_arc_has_three_and_five_choice_questions_and_masks(tokenizer):
    counts = {}
    for example in data.load_task("arc_easy", "test"):
        counts[example.num_choices] = counts.get(example.num_choices, 0) + 1
    assert counts == {4: 2365, 3: 7, 5: 4}
    odd = [e for e in data.load_task("arc_easy", "test") if e.num_choices != 4][:4]
    batch = data.encode_examples(tokenizer, odd)
    assert batch["choice_mask"].sum(1).tolist() == [e.num_choices for e in odd]


def test_boolq_labels_parse_strings_and_carved_splits_are_disjoint():
    splits = {s: data.load_task("boolq", s) for s in data.SPLITS}
    ids = [set(e.id for e in splits[s]) for s in data.SPLITS]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    rows = [json.loads(line) for line in open(data.data_root() / "boolq/val.jsonl")]
    truth = {str(r["idx"]): (0 if r["label"] == "true" else 1) for r in rows}
    assert all(e.label == truth[e.id] for e in splits["test"])
    assert 0 < sum(e.label for e in splits["test"]) < 500  # both answers occur


def test_winogrande_two_choices_and_mmlu_quoted_newlines():
    example = data.load_task("winogrande_s", "test")[0]
    assert example.choices == ("Sarah", "Maria") and example.label == 1
    assert "_" in example.question
    chemistry = data.load_task("mmlu_college_chemistry", "test")
    assert all(len(e.choices) == 4 for e in chemistry)
    assert [e.label for e in chemistry[:3]] == [3, 2, 3]  # answer letters D, C, D in the csv


def test_prompt_template_is_exact():
    example = data.Example("x", "What is 2+2?", ("3", "4"), 1, task="arc_easy")
    assert data.format_prompt(example) == (
        "The following is a multiple choice question about science.\n\n"
        "Question: What is 2+2?\nA) 3\nB) 4\nAnswer:")


def test_truncation_keeps_choices_and_cue(tokenizer):
    long = data.Example("x", "word " * 400, ("alpha", "beta", "gamma"), 0, passage="p " * 300,
                        task="boolq")
    batch = data.encode_examples(tokenizer, [long], max_length=64)
    text = tokenizer.decode(batch["input_ids"][0])
    assert batch["input_ids"].shape[1] == 64
    assert text.endswith("A) alpha\nB) beta\nC) gamma\nAnswer:")


def test_left_padding_puts_last_token_last(tokenizer):
    examples = data.load_task("arc_easy", "validation", limit=3)
    batch = data.encode_examples(tokenizer, examples)
    assert (batch["attention_mask"][:, -1] == 1).all()
    assert batch["attention_mask"][:, 0].sum() < 3  # at least one row is padded


def _write(tmp_path, relative, text):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_malformed_files_name_file_and_line(tmp_path):
    good = ('{"id": "a", "question": {"stem": "q", "choices": [{"text": "x", "label": "A"}, '
            '{"text": "y", "label": "B"}]}, "answerKey": "B"}\n')
    _write(tmp_path, "arc_easy/ARC-Easy-Train.jsonl", good + "{not json\n")
    with pytest.raises(DataError, match=r"ARC-Easy-Train.jsonl, line 2: not valid JSON"):
        data.load_task("arc_easy", "train", data_dir=tmp_path)
    _write(tmp_path, "arc_easy/ARC-Easy-Dev.jsonl", good.replace('"answerKey": "B"',
                                                                 '"answerKey": "E"'))
    with pytest.raises(DataError, match=r"line 1: answer key 'E' is not among the choice "
                                        r"labels \['A', 'B'\]"):
        data.load_task("arc_easy", "validation", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"ARC-Easy-Test.jsonl not found"):
        data.load_task("arc_easy", "test", data_dir=tmp_path)


def test_unknown_task_split_and_limit():
    with pytest.raises(ConfigError, match="unknown task 'arc'; known tasks: arc_easy"):
        data.load_task("arc")
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        data.load_task("arc_easy", "dev")
    with pytest.raises(ConfigError, match="limit must be a positive"):
        data.load_task("arc_easy", "test", limit=0)


def test_hub_fallback_offline_names_the_fix(monkeypatch):
    monkeypatch.delenv("POLAR_VBLL_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="POLAR_VBLL_DATA is unset and the Hugging Face hub is "
                                        "offline"):
        data.load_task("arc_easy", "test")


def test_batches_are_seeded():
    examples = data.load_task("arc_easy", "validation", limit=10)
    first = [e.id for b in data.batches(examples, 4, True, torch.Generator().manual_seed(1))
             for e in b]
    again = [e.id for b in data.batches(examples, 4, True, torch.Generator().manual_seed(1))
             for e in b]
    assert first == again and sorted(first) == sorted(e.id for e in examples)
