"""From question to model input: the prompt, its tokens, left padding, batches.

Every :class:`~polar_vbll.tasks.Example` becomes the same kind of prompt::

    The following is a multiple choice question about <topic>.
    (blank line)
    Passage: <passage>            (BoolQ only)
    Question: <question>
    A) <choice 1>
    B) <choice 2>
    ...
    Answer:

The zero-shot classifier is the model's next-token logits for `` A``, `` B``, ... at the last
position. (SmolLM2-135M is at chance in this letter format; :mod:`polar_vbll.cloze` scores the
same questions in *cloze* form, with the choice texts as continuations of
:func:`format_cloze_context`, the way small models are usually evaluated.) Heads always have
:data:`NUM_CLASSES` = 5 outputs; a boolean ``choice_mask`` marks which letters exist for a
question (ARC has 3-5 choices, BoolQ and WinoGrande 2).

The questions themselves come from :mod:`polar_vbll.tasks`; its public names are importable from
here too, so that ``data.load_task`` and ``data.encode_examples`` sit side by side.
"""

from __future__ import annotations

import torch

from polar_vbll.errors import ConfigError, DataError
from polar_vbll.tasks import (
    DATA_ENV,
    LETTERS,
    NUM_CLASSES,
    SPLITS,
    TASKS,
    Example,
    TaskSpec,
    data_root,
    get_task,
    load_task,
    task_names,
)

MIN_QUESTION_TOKENS = 32  # kept from the question even when the choices fill max_length


# ----------------------------------------------------------------------------- prompts


def format_prompt(example: Example) -> str:
    """The exact text the model reads (see the module docstring)."""
    return _prompt_head(example) + _prompt_tail(example)


def _prompt_head(example: Example) -> str:
    topic = TASKS[example.task].topic if example.task in TASKS else "general knowledge"
    passage = f"Passage: {example.passage}\n" if example.passage else ""
    return (f"The following is a multiple choice question about {topic}.\n\n"
            f"{passage}Question: {example.question}\n")


def format_cloze_context(example: Example) -> str:
    """The context of cloze scoring: the letter prompt's head (topic line, passage, question)
    and ``Answer:``, without the lettered choices. Each choice is scored as the continuation
    ``" " + choice`` (see :mod:`polar_vbll.cloze`)."""
    return _prompt_head(example) + "Answer:"


def _prompt_tail(example: Example) -> str:
    lines = [f"{LETTERS[i]}) {text}" for i, text in enumerate(example.choices)]
    return "\n".join(lines) + "\nAnswer:"


def check_examples(examples: list[Example]) -> None:
    """Raise DataError for an example whose choices or label would not fit the (B, 5) mask."""
    for example in examples:
        if not 2 <= example.num_choices <= NUM_CLASSES:
            raise DataError(f"example {example.id!r} has {example.num_choices} choices; expected "
                            f"between 2 and {NUM_CLASSES}")
        if not 0 <= example.label < example.num_choices:
            raise DataError(f"example {example.id!r}: label {example.label} is outside its "
                            f"{example.num_choices} choices (expected 0..{example.num_choices - 1})")


def encode_examples(tokenizer, examples: list[Example], max_length: int = 256) -> dict:
    """Tokenize and left-pad a batch.

    Returns ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B,) and ``choice_mask``
    (B, 5). A prompt longer than ``max_length`` loses tokens from the *start* of its
    passage/question part; the choices and the ``Answer:`` cue are never cut (if they alone are
    longer than ``max_length``, the row keeps them plus the last ``MIN_QUESTION_TOKENS``
    tokens of the question and is longer than ``max_length``).
    """
    if not examples:
        raise DataError("cannot encode an empty list of examples")
    if max_length < 1:
        raise ConfigError(f"max_length must be a positive number of tokens, got {max_length}")
    check_examples(examples)
    rows = []
    for example in examples:
        head = tokenizer.encode(_prompt_head(example), add_special_tokens=False)
        tail = tokenizer.encode(_prompt_tail(example), add_special_tokens=False)
        # The choices and the cue are never cut: when they alone exceed max_length, the row
        # grows beyond it and keeps the last MIN_QUESTION_TOKENS of the question.
        room = max(max_length - len(tail), MIN_QUESTION_TOKENS)
        rows.append(head[-room:] + tail)
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    choice_mask = torch.zeros((len(rows), NUM_CLASSES), dtype=torch.bool)
    for i, example in enumerate(examples):
        choice_mask[i, : example.num_choices] = True
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "choice_mask": choice_mask}


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths -> ``input_ids`` and ``attention_mask`` (B, T), padded on
    the left so that every row's last token sits in the last column."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


def batches(examples: list[Example], batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None):
    """Yield lists of examples; with ``shuffle`` the order comes from ``generator`` (seeded)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    order = (torch.randperm(len(examples), generator=generator).tolist() if shuffle
             else list(range(len(examples))))
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start:start + batch_size]]

__all__ = ["DATA_ENV", "LETTERS", "MIN_QUESTION_TOKENS", "NUM_CLASSES", "SPLITS", "TASKS",
           "Example", "TaskSpec", "batches", "check_examples", "data_root", "encode_examples",
           "format_cloze_context", "format_prompt", "get_task", "left_pad", "load_task",
           "task_names"]
