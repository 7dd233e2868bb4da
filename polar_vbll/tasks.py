"""Tasks: multiple-choice questions from the official release files (or the Hugging Face hub).

Every task becomes a list of :class:`Example` (question, choice texts, label index); how an
example becomes the model's input is :mod:`polar_vbll.data`. A question has 2 to
:data:`NUM_CLASSES` = 5 choices (ARC has 3-5, BoolQ and WinoGrande 2), named by :data:`LETTERS`.

Where the files come from (``POLAR_VBLL_DATA``, layout of the official releases):

========================  ===========================================  =========================
task                      train / validation / test                    notes
========================  ===========================================  =========================
arc_easy, arc_challenge   ARC-*-Train / -Dev / -Test.jsonl             keys may be "1".."4"
obqa                      openbookqa/train / dev / test.tsv            OpenBookQA Main
boolq                     carved from boolq/val.jsonl (seed 0):        no labelled train/test
                          2270 / 500 / 500                             in the release folder
winogrande_s, _m          train_s|m.jsonl minus a seeded 10% for       test = dev.jsonl (the
                          validation / the 10% / dev.jsonl             test split has no labels)
mmlu_<subject>            mmlu/dev / val / test csv                    out-of-distribution only
========================  ===========================================  =========================

Without ``POLAR_VBLL_DATA`` the same examples come from the Hugging Face hub through the
``datasets`` package (BoolQ and WinoGrande are carved from the hub's validation / train splits
exactly as above, so both sources agree).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from polar_vbll.errors import ConfigError, DataError

NUM_CLASSES = 5
LETTERS = "ABCDE"
SPLITS = ("train", "validation", "test")
DATA_ENV = "POLAR_VBLL_DATA"


@dataclass(frozen=True)
class Example:
    """One multiple-choice question. ``label`` indexes ``choices``."""

    id: str
    question: str
    choices: tuple[str, ...]
    label: int
    passage: str | None = None
    task: str = ""

    @property
    def num_choices(self) -> int:
        return len(self.choices)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    loader: str  # name of the release-file loader below
    files: dict = field(default_factory=dict)  # split -> path relative to POLAR_VBLL_DATA
    hub: tuple = ()  # (dataset id, config) for the hub fallback
    topic: str = "science"  # fills "a multiple choice question about <topic>"


def _mmlu(subject: str) -> TaskSpec:
    return TaskSpec(
        name=f"mmlu_{subject}",
        description=f"MMLU {subject.replace('_', ' ')} (out-of-distribution evaluation)",
        loader="mmlu",
        files={s: f"mmlu/{d}/{subject}_{d}.csv" for s, d in zip(SPLITS, ("dev", "val", "test"))},
        hub=("cais/mmlu", subject),
        topic=subject.replace("_", " "),
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "arc_easy", "ARC-Easy grade-school science", "arc",
            {s: f"arc_easy/ARC-Easy-{f}.jsonl" for s, f in zip(SPLITS, ("Train", "Dev", "Test"))},
            ("allenai/ai2_arc", "ARC-Easy"),
        ),
        TaskSpec(
            "arc_challenge", "ARC-Challenge grade-school science", "arc",
            {s: f"arc_challenge/ARC-Challenge-{f}.jsonl"
             for s, f in zip(SPLITS, ("Train", "Dev", "Test"))},
            ("allenai/ai2_arc", "ARC-Challenge"),
        ),
        TaskSpec(
            "obqa", "OpenBookQA (Main) elementary science", "obqa",
            {s: f"openbookqa/{f}.tsv" for s, f in zip(SPLITS, ("train", "dev", "test"))},
            ("allenai/openbookqa", "main"),
        ),
        TaskSpec(
            "boolq", "BoolQ yes/no questions about a passage", "boolq",
            {s: "boolq/val.jsonl" for s in SPLITS}, ("google/boolq", None), "a passage",
        ),
        TaskSpec(
            "winogrande_s", "WinoGrande 1.1 (train size S) pronoun resolution", "winogrande",
            {"train": "winogrande/train_s.jsonl", "validation": "winogrande/train_s.jsonl",
             "test": "winogrande/dev.jsonl"}, ("allenai/winogrande", "winogrande_s"),
            "common sense",
        ),
        TaskSpec(
            "winogrande_m", "WinoGrande 1.1 (train size M) pronoun resolution", "winogrande",
            {"train": "winogrande/train_m.jsonl", "validation": "winogrande/train_m.jsonl",
             "test": "winogrande/dev.jsonl"}, ("allenai/winogrande", "winogrande_m"),
            "common sense",
        ),
        _mmlu("college_chemistry"),
        _mmlu("college_physics"),
        _mmlu("high_school_physics"),
    ]
}

BOOLQ_SIZES = {"validation": 500, "test": 500}  # the rest of val.jsonl is train
WINOGRANDE_VALIDATION_FRACTION = 0.1
CARVE_SEED = 0


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------- file readers


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line; a bad line names file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {row!r:.60}")
            rows.append((number, row))
    return rows


def _field(row: dict, key: str, path: Path, line: int):
    if key not in row:
        raise DataError(f"{path}, line {line}: missing field {key!r} (fields: {sorted(row)})")
    return row[key]


def _label_index(key: str, labels: list[str], path, line, unit: str = "line") -> int:
    """Map an answer key through the choice labels, never by position."""
    if key not in labels:
        raise DataError(
            f"{path}, {unit} {line}: answer key {key!r} is not among the choice labels {labels}"
        )
    return labels.index(key)


def _check_choices(choices, path, line):
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise DataError(f"{path}, line {line}: 'choices' must be a list of {{label, text}} "
                        f"objects, got {choices!r:.60}")
    if not 2 <= len(choices) <= NUM_CLASSES:
        raise DataError(
            f"{path}, line {line}: {len(choices)} choices; expected between 2 and {NUM_CLASSES}"
        )


def _arc_example(row: dict, path, line, task) -> Example:
    question = _field(row, "question", path, line)
    if not isinstance(question, dict):
        raise DataError(f"{path}, line {line}: 'question' must be an object with stem and choices")
    stem = _field(question, "stem", path, line)
    choices = _field(question, "choices", path, line)
    _check_choices(choices, path, line)
    labels = [str(_field(c, "label", path, line)) for c in choices]
    texts = tuple(str(_field(c, "text", path, line)) for c in choices)
    label = _label_index(str(_field(row, "answerKey", path, line)), labels, path, line)
    return Example(str(row.get("id", f"{task}-{line}")), stem, texts, label, task=task)


def _load_arc(path: Path, task: str) -> list[Example]:
    return [_arc_example(row, path, line, task) for line, row in _read_jsonl(path)]


def _parse_obqa_choices(text: str, path, line) -> tuple[list[str], list[str]]:
    """``(A) foo (B) bar ...`` -> labels, texts."""
    labels, texts = [], []
    rest = text.strip()
    for letter in LETTERS:
        marker = f"({letter}) "
        if not rest.startswith(marker):
            break
        rest = rest[len(marker):]
        following = LETTERS[LETTERS.index(letter) + 1] if letter != LETTERS[-1] else None
        cut = rest.find(f" ({following}) ") if following else -1
        texts.append((rest if cut < 0 else rest[:cut]).strip())
        labels.append(letter)
        rest = "" if cut < 0 else rest[cut + 1:]
    if rest or len(labels) < 2:
        raise DataError(f"{path}, line {line}: cannot parse choices {text[:80]!r}; expected "
                        "'(A) ... (B) ...'")
    return labels, texts


def _load_obqa(path: Path, task: str) -> list[Example]:
    examples = []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        expected = ["ID", "Question Stem", "Choices", "Complete Question", "Answer Key"]
        if header != expected:
            raise DataError(f"{path}, line 1: header {header} is not the OpenBookQA header "
                            f"{expected}")
        for line, raw in enumerate(handle, start=2):
            if not raw.strip():
                continue
            fields = raw.rstrip("\r\n").split("\t")
            if len(fields) != len(expected):
                raise DataError(f"{path}, line {line}: {len(fields)} tab-separated fields, "
                                f"expected {len(expected)}")
            labels, texts = _parse_obqa_choices(fields[2], path, line)
            label = _label_index(fields[4].strip(), labels, path, line)
            examples.append(Example(fields[0], fields[1], tuple(texts), label, task=task))
    return examples


def _boolq_label(value, path, line) -> int:
    """0 = "yes" (A), 1 = "no" (B). The release stores "true"/"false" strings."""
    if value in (True, "true", "True", 1):
        return 0
    if value in (False, "false", "False", 0):
        return 1
    raise DataError(f"{path}, line {line}: BoolQ label {value!r}; expected 'true' or 'false'")


def _boolq_example(row, path, line, task) -> Example:
    label_key = "label" if "label" in row else "answer"
    return Example(
        str(row.get("idx", line)),
        str(_field(row, "question", path, line)).strip().rstrip("?") + "?",
        ("yes", "no"),
        _boolq_label(_field(row, label_key, path, line), path, line),
        passage=str(_field(row, "passage", path, line)),
        task=task,
    )


def _load_boolq(path: Path, task: str) -> list[Example]:
    return [_boolq_example(row, path, line, task) for line, row in _read_jsonl(path)]


def _winogrande_example(row, path, line, task, answer=None) -> Example:
    sentence = str(_field(row, "sentence", path, line))
    options = (str(_field(row, "option1", path, line)), str(_field(row, "option2", path, line)))
    answer = str(answer if answer is not None else _field(row, "answer", path, line)).strip()
    label = _label_index(answer, ["1", "2"], path, line)
    question = f"{sentence}\nWhich option correctly fills the blank (_)?"
    return Example(str(row.get("qID", line)), question, options, label, task=task)


def _load_winogrande(path: Path, task: str) -> list[Example]:
    rows = _read_jsonl(path)
    labels_path = path.with_name(path.stem + "-labels.lst")
    examples = [_winogrande_example(row, path, line, task) for line, row in rows]
    if labels_path.is_file():  # the release ships labels twice; they must agree
        labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
        if len(labels) != len(examples):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(examples)} questions "
                            f"in {path}")
        for (line, _), example, label in zip(rows, examples, labels):
            if label not in ("1", "2") or example.label != int(label) - 1:
                raise DataError(f"{labels_path}, line {line}: label {label} disagrees with "
                                f"the answer in {path}")
    return examples


def _load_mmlu(path: Path, task: str) -> list[Example]:
    examples = []
    text = path.read_text(encoding="utf-8")
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row:
            continue
        if len(row) != 6:
            raise DataError(f"{path}, row {number}: {len(row)} fields; expected 6 "
                            "(question, A, B, C, D, answer letter)")
        label = _label_index(row[5].strip(), list("ABCD"), path, number, unit="row")
        examples.append(Example(f"{task}-{number}", row[0], tuple(row[1:5]), label, task=task))
    return examples


_LOADERS = {
    "arc": _load_arc,
    "obqa": _load_obqa,
    "boolq": _load_boolq,
    "winogrande": _load_winogrande,
    "mmlu": _load_mmlu,
}


# ----------------------------------------------------------------------------- carving splits


def _carve(examples: list[Example], spec: TaskSpec, split: str) -> list[Example]:
    """Seeded splits for releases without a labelled train/validation/test (see module doc)."""
    if spec.loader == "boolq":
        order = list(range(len(examples)))
        random.Random(CARVE_SEED).shuffle(order)
        n_val, n_test = BOOLQ_SIZES["validation"], BOOLQ_SIZES["test"]
        parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        return [examples[i] for i in sorted(parts[split])]
    if spec.loader == "winogrande" and split != "test":
        order = list(range(len(examples)))
        random.Random(CARVE_SEED).shuffle(order)
        n_val = max(1, round(WINOGRANDE_VALIDATION_FRACTION * len(examples)))
        chosen = order[:n_val] if split == "validation" else order[n_val:]
        return [examples[i] for i in sorted(chosen)]
    return examples


# ----------------------------------------------------------------------------- public loaders


def data_root() -> Path | None:
    value = os.environ.get(DATA_ENV)
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{DATA_ENV}={value!r} is not a folder; point it at a folder with the "
                          "release files (layout of shared/data: arc_easy/, openbookqa/, ...)")
    return root


def load_task(name: str, split: str = "test", limit: int | None = None,
              data_dir: str | Path | None = None) -> list[Example]:
    """Examples of task ``name``'s ``split`` (train / validation / test), optionally the first ``limit``."""
    spec = get_task(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for task {name!r}; expected one of {SPLITS}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of examples, got {limit}")
    root = Path(data_dir) if data_dir is not None else data_root()
    if root is None:
        examples = _load_from_hub(spec, split)
    else:
        path = root / spec.files[split]
        if not path.is_file():
            raise DataError(f"task {name!r} split {split!r}: file {path} not found; expected the "
                            f"official release file {spec.files[split]} under {root}")
        examples = _carve(_LOADERS[spec.loader](path, name), spec, split)
    if not examples:
        raise DataError(f"task {name!r} split {split!r} has no examples")
    return examples[:limit] if limit else examples


def _load_from_hub(spec: TaskSpec, split: str) -> list[Example]:
    """The same examples from the Hugging Face hub (needs network and the ``datasets`` package)."""
    hint = (f"set {DATA_ENV} to a folder with the official release files (e.g. the course's "
            "shared/data) or go online and `pip install datasets`")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DataError(f"task {spec.name!r}: {DATA_ENV} is unset and the Hugging Face hub is "
                        f"offline (HF_HUB_OFFLINE is set); {hint}")
    try:
        import datasets
    except ImportError:
        raise DataError(f"task {spec.name!r}: {DATA_ENV} is unset and the package 'datasets' "
                        f"is missing; {hint}") from None
    hub_split = {"train": "train", "validation": "validation", "test": "test"}[split]
    if spec.loader == "boolq":
        hub_split = "validation"
    elif spec.loader == "winogrande":
        hub_split = "validation" if split == "test" else "train"
    elif spec.loader == "mmlu":
        hub_split = {"train": "dev", "validation": "validation", "test": "test"}[split]
    dataset_id, config = spec.hub
    try:
        rows = datasets.load_dataset(dataset_id, config, split=hub_split)
    except Exception as error:  # network, missing config ...: one clear message
        raise DataError(f"task {spec.name!r}: could not load {dataset_id} ({config}) split "
                        f"{hub_split!r} from the hub: {error}; {hint}") from None
    source = f"hub:{dataset_id}/{config}/{hub_split}"
    examples = [_hub_example(spec, dict(row), source, i + 1) for i, row in enumerate(rows)]
    return _carve(examples, spec, split)


def _hub_example(spec: TaskSpec, row: dict, source: str, line: int) -> Example:
    if spec.loader in ("arc", "obqa"):
        stem = row["question"] if spec.loader == "arc" else row["question_stem"]
        choices = row["choices"]
        arc_row = {"id": row["id"], "answerKey": row["answerKey"],
                   "question": {"stem": stem, "choices": [
                       {"text": t, "label": lab} for t, lab in zip(choices["text"],
                                                                     choices["label"])]}}
        return _arc_example(arc_row, source, line, spec.name)
    if spec.loader == "boolq":
        return _boolq_example(row, source, line, spec.name)
    if spec.loader == "winogrande":
        return _winogrande_example(row, source, line, spec.name)
    answer = LETTERS[int(row["answer"])]
    label = _label_index(answer, list("ABCD"), source, line)
    return Example(f"{spec.name}-{line}", row["question"], tuple(row["choices"]), label,
                   task=spec.name)
