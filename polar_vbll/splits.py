"""Which questions a run sees: the profile's slices of each split, and the OOD protocol.

A run trains on the first ``profile.train_examples`` questions of its task's train split, picks
its settings on the first ``profile.validation_examples`` of the validation split and is tested on
the first ``profile.test_examples`` of the test split. Out-of-distribution (OOD) tasks add their
test split's first ``profile.ood_examples``.

The OOD protocol of the Bayesian-LoRA literature: train on OpenBookQA, evaluate on ARC-Challenge,
ARC-Easy and MMLU subjects (:data:`OOD_PROTOCOL`).
"""

from __future__ import annotations

from polar_vbll import tasks
from polar_vbll.errors import ConfigError
from polar_vbll.profiles import Profile

OOD_PROTOCOL = ("arc_challenge", "arc_easy", "mmlu_college_chemistry", "mmlu_college_physics",
                "mmlu_high_school_physics")
PROTOCOL_TRAIN_TASK = "obqa"


def resolve_ood(task: str, ood) -> list[str]:
    """``ood`` is None, a list/comma-separated string of tasks, or "obqa"/"protocol" for the
    OBQA -> ARC, MMLU protocol (which requires ``task == "obqa"``)."""
    if not ood:
        return []
    names = [n.strip() for n in ood.split(",")] if isinstance(ood, str) else list(ood)
    if names in (["obqa"], ["protocol"]):
        if task != PROTOCOL_TRAIN_TASK:
            raise ConfigError(f"the OOD protocol trains on {PROTOCOL_TRAIN_TASK!r} but --task is "
                              f"{task!r}; use --task obqa with --ood {names[0]}, or list OOD "
                              "tasks explicitly (e.g. --ood arc_challenge,mmlu_college_physics)")
        return list(OOD_PROTOCOL)
    for name in names:
        tasks.get_task(name)
    if task in names:
        raise ConfigError(f"task {task!r} is both the training task and an OOD task")
    return names


def _limit(examples, count):
    return examples if count is None else examples[:count]


def load_splits(task: str, profile: Profile, ood: list[str]) -> dict:
    """The profile's slices of train / validation / test, plus each OOD task's test split."""
    splits = {
        "train": _limit(tasks.load_task(task, "train"), profile.train_examples),
        "validation": _limit(tasks.load_task(task, "validation"), profile.validation_examples),
        task: _limit(tasks.load_task(task, "test"), profile.test_examples),
    }
    for name in ood:
        splits[name] = _limit(tasks.load_task(name, "test"), profile.ood_examples)
    return splits


def evaluation_questions(run) -> dict:
    """{dataset: questions} that ``run`` (a :class:`polar_vbll.runs.Run`) is evaluated on, at its
    profile's sizes."""
    splits = load_splits(run.task, run.profile, list(run.ood))
    return {dataset: splits[dataset] for dataset in run.datasets}
