"""A run on disk: the checkpoint folder of a fine-tune, found by its key, loaded, saved, indexed.

A checkpoint folder, ``<method>-<task>-<key>/`` (the key: :attr:`polar_vbll.runs.Run.key`)::

    config.json, state.json, adapters.safetensors, head.safetensors, ...   (Method.save)
    run.json                 the run, its key, metrics, fit time, provenance (command, commit,
                             date, machine)
    predictions.safetensors  per dataset: probs, labels, mask (and logits, sample_logits for the
                             in-distribution test set when the method has them); under check/,
                             the predictions on the first CHECK_QUESTIONS questions of each test
                             set made on their own, from a fresh feature cache, as the test does

The committed runs live in :data:`FOLDER`. A checkpoint made with a configuration the code no
longer produces (say a profile changed) is *stale*: :func:`find` reports it by name, with the
fields that differ, and never returns it. ``tests/test_pretrained.py`` re-evaluates every
committed checkpoint and requires the recorded metrics (accuracy exactly, ECE and NLL to 1e-6)
and that none is stale.

Why a separate check prediction: the frozen lower layers run their rows in batches (questions
sorted by length, see :mod:`polar_vbll.feature_cache`), so the hidden states of a question differ
in the last float bits (~1e-6 in a probability) depending on which other questions were batched
with it. A prefix predicted on its own is exactly reproducible; the test also requires it to be
within 1e-5 of the full run's predictions.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from polar_vbll.checkpoints import atomic_write_text, compact_json, rounded
from polar_vbll.errors import CheckpointError, ConfigError
from polar_vbll.profiles import Profile, get_profile
from polar_vbll.runs import Run
from polar_vbll.splits import evaluation_questions

FOLDER = Path(__file__).resolve().parent / "trained"
PASS_KEYS = ("backbone_passes", "sequences_per_question")  # per record, kept in run.json
CHECK_QUESTIONS = 16  # the prefix of each test set that tests/test_pretrained.py re-evaluates


# --------------------------------------------------------------------------- finding checkpoints

def committed(folder: Path | None = None) -> list[Path]:
    """Every checkpoint folder under ``folder`` (default :data:`FOLDER`), sorted."""
    folder = Path(folder or FOLDER)
    return sorted(p.parent for p in folder.glob("*/run.json"))


def read_run(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}/run.json cannot be read ({error}); run "
                              "`polar-vbll checkpoints` to rewrite it") from None


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'field: old -> new' for every field (nested ones dotted) where two configurations differ."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "<absent>"), new.get(name, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}: {a!r} -> {b!r}")
    return out


def stale_reason(path: Path) -> str | None:
    """Why the checkpoint at ``path`` no longer matches the code (None when it does)."""
    recorded = read_run(path)
    config = recorded.get("config", {})
    try:
        profile = get_profile(config.get("profile", {}).get("name"))
    except ConfigError as error:
        return str(error)
    run = Run.from_config(config, profile)
    now = json.loads(json.dumps(run.config()))  # tuples -> lists
    differences = config_differences(config, now)
    if not differences:
        return None
    return (f"checkpoint {Path(path).name} is stale: the code now gives " + "; ".join(differences)
            + ". Run `polar-vbll checkpoints` (or `make checkpoints`) to retrain it")


def find(run: Run, folder: Path | None = None) -> tuple[Path | None, list[str]]:
    """The checkpoint folder of ``run`` (or None) and messages about stale look-alikes."""
    folder = Path(folder or FOLDER)
    exact = folder / run.folder_name
    if (exact / "run.json").is_file():
        return exact, []
    prefix = run.folder_name.rsplit("-", 1)[0] + "-"
    reasons = [stale_reason(p) for p in committed(folder) if p.name.startswith(prefix)]
    return None, [reason for reason in reasons if reason]  # fresh runs of other tiers are fine


# --------------------------------------------------------------------------- a fitted run

@dataclass
class Fitted:
    """A run's result: per-dataset records and metrics, history; the method itself on demand."""

    run: Run
    records: dict
    metrics: dict
    history: list
    fit_seconds: float
    seconds_per_example: dict
    loaded_from: Path | None = None  # None: trained in this process
    _method: object = None
    check: dict = field(default_factory=dict)  # {dataset: {"probs", "labels"}} (see module doc)
    provenance: dict = field(default_factory=dict)  # who made the checkpoint (loaded runs)
    resumed_from_step: int = 0  # trained here from a checkpoint of an interrupted run

    @property
    def method(self):
        """The fitted :class:`~polar_vbll.methods.Method` (loaded from the checkpoint if needed)."""
        if self._method is None:
            from polar_vbll.methods import Method

            self._method = Method.load(self.loaded_from, progress=False)
        return self._method

    @property
    def profile(self) -> Profile:
        return self.run.profile

    def entry(self) -> dict:
        """What ``evaluation.compare`` keeps per method."""
        return {"metrics": self.metrics, "records": self.records,
                "seconds_per_example": self.seconds_per_example,
                "fit_seconds": self.fit_seconds, "history": self.history,
                "loaded_from": self.loaded_from.name if self.loaded_from else None}


def _record_tensors(records: dict, task: str) -> dict:
    tensors = {}
    for dataset, record in records.items():
        keys = ["probs", "labels", "mask"] + (["logits", "sample_logits"] if dataset == task
                                               else [])
        for key in keys:
            if isinstance(record.get(key), torch.Tensor):
                tensors[f"{dataset}/{key}"] = record[key]
    return tensors


def load(path: Path, run: Run | None = None) -> Fitted:
    """The :class:`Fitted` stored at ``path`` (its method is loaded when first used)."""
    from safetensors.torch import load_file

    recorded = read_run(path)
    run = run or Run.from_config(recorded["config"])
    try:
        tensors = load_file(str(Path(path) / "predictions.safetensors"))
    except Exception as error:  # OSError, or safetensors' own error types
        raise CheckpointError(f"{path}/predictions.safetensors cannot be read ({error}); run "
                              "`polar-vbll checkpoints` to rewrite it") from None
    records, check = {}, {}
    for name, tensor in tensors.items():
        if name.startswith("check/"):
            _, dataset, key = name.split("/", 2)
            check.setdefault(dataset, {})[key] = tensor
            continue
        dataset, key = name.split("/", 1)
        records.setdefault(dataset, {})[key] = tensor
    missing = [d for d in run.datasets if d not in records]
    if missing:
        raise CheckpointError(f"{path}/predictions.safetensors lacks {missing}")
    for dataset, record in records.items():
        record["seconds_per_example"] = recorded["seconds_per_example"][dataset]
        record.update(recorded.get("passes", {}).get(dataset, {}))
    return Fitted(run, records, recorded["metrics"], recorded["history"],
                  recorded["fit_seconds"], recorded["seconds_per_example"], Path(path),
                  check=check, provenance=recorded["provenance"])


def save(fitted: Fitted, method, folder: Path | None = None, command: str = "") -> Path:
    """Write ``fitted`` (and its fitted ``method``) as a checkpoint folder; returns it."""
    from safetensors.torch import save_file

    from polar_vbll import metrics

    path = Path(folder or FOLDER) / fitted.run.folder_name
    method.save(path)
    check = check_predictions(method, fitted.run)
    tensors = _record_tensors(fitted.records, fitted.run.task)
    for dataset, record in check.items():
        for key in ("probs", "labels"):
            tensors[f"check/{dataset}/{key}"] = record[key]
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
              str(path / "predictions.safetensors"))
    check_metrics = {dataset: metrics.summarize(record["probs"], record["labels"])
                     for dataset, record in check.items()}
    record = {"key": fitted.run.key, "config": fitted.run.config(), "metrics": fitted.metrics,
              "check": {"questions": CHECK_QUESTIONS, "metrics": check_metrics},
              "fit_seconds": fitted.fit_seconds,
              "seconds_per_example": fitted.seconds_per_example,
              "passes": {dataset: {key: record[key] for key in PASS_KEYS if key in record}
                         for dataset, record in fitted.records.items()},
              "history": rounded(fitted.history), "provenance": provenance(command)}
    atomic_write_text(path / "run.json", compact_json(record))
    return path


def check_predictions(method, run: Run, questions: int = CHECK_QUESTIONS,
                      cache_folder: Path | None = None) -> dict:
    """{dataset: prediction record} on the first ``questions`` questions of each test set of
    ``run``, predicted on their own (module doc). The frozen layers' states of those questions
    come from ``cache_folder``, a feature-cache folder that only this function writes to
    (default: a fresh temporary one), so they are always computed the same way."""
    import tempfile

    sets = evaluation_questions(run)
    cache = getattr(method.form, "cache", None)  # None at full depth: nothing is cached
    store, folder = (cache.store, cache.folder) if cache is not None else (None, None)
    with tempfile.TemporaryDirectory() as temporary:
        if cache is not None:
            cache.store, cache.folder = {}, Path(cache_folder or temporary)
        try:
            return {dataset: method.predict(sets[dataset][:questions]) for dataset in run.datasets}
        finally:
            if cache is not None:
                cache.store, cache.folder = store, folder


def folder_size(path: Path) -> int:
    """Bytes in the files directly inside ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).glob("*") if f.is_file())


def write_index(folder: Path | None = None) -> Path:
    """``README.md`` in ``folder``: what each checkpoint is, its metrics and who made it."""
    folder = Path(folder or FOLDER)
    lines = ["# Committed fine-tunes (load-or-train)", "",
             "Written by `polar-vbll checkpoints` (`make checkpoints`); do not edit. Each folder is "
             "one run of `polar_vbll.pretrained.course_runs()`, named `<method>[-<options>]-<task>-"
             "<key>` where the key is a hash of the run's whole configuration (`Run.config()`). "
             "`run.json` holds the configuration, the metrics, the training history and the "
             "provenance below; the notebooks load these with `pretrained.fit_or_load`, and "
             "`tests/test_pretrained.py` re-evaluates each one.", "",
             "| checkpoint | profile | steps | test set | ACC % | ECE % | NLL | fit s | commit | date | machine | size |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    total = 0
    for path in committed(folder):
        record = read_run(path)
        config, made = record["config"], record["provenance"]
        summary = record["metrics"][config["task"]]
        size = folder_size(path)
        total += size
        commit = made["commit"][:10] + (" (+ changes)" if made.get("uncommitted_changes") else "")
        lines.append(
            f"| `{path.name}` | {config['profile']['name']} | {config['profile']['steps']} | "
            f"{config['task']} ({len(config['ood'])} OOD) | {100 * summary['accuracy']:.1f} | "
            f"{100 * summary['ece']:.1f} | {summary['nll']:.3f} | {record['fit_seconds']:.0f} | "
            f"{commit} | {made['date']} | {made['machine']} | {size / 1e3:.0f} kB |")
    lines += ["", f"{len(committed(folder))} checkpoints, {total / 1e6:.2f} MB in all.", ""]
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def provenance(command: str) -> dict:
    """Who made a checkpoint: command, commit, date, machine."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return {"command": command, "commit": commit or "unknown",
            "uncommitted_changes": bool(dirty.strip()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                       f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "torch": torch.__version__}
