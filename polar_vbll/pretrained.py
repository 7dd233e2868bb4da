"""Load-or-train: the course's fine-tunes, trained once at the ``course`` profile and committed.

Every notebook ends with a real fine-tune. Trained at the ``course`` profile it takes minutes on
a CPU; the ``smoke`` profile (CI, the published book) can only afford a few optimizer steps,
which show nothing. So ``polar-vbll checkpoints`` trains every fine-tune that the notebooks end
with, at the ``course`` profile, and writes one small folder per run into :data:`FOLDER`
(committed with the package). A notebook then asks :func:`fit_or_load` for its run:

* a committed checkpoint whose configuration equals the run's (its **key**, a hash of that
  configuration: method, options, task, OOD tasks, model, seed, every profile field) is
  *loaded*: adapters, head, training history and the recorded predictions;
* otherwise the run is *trained* here, at the notebook's profile, and nothing is written;
* ``POLAR_VBLL_RETRAIN=1`` always trains;
* in the ``smoke`` profile the committed ``course`` run is shown when there is one, so that a
  smoke-profile notebook (and the book) shows a fine-tune worth looking at (not when live
  fine-tunes are on: a notebook's runs then all stay at the smoke profile, comparable);
* **live**: each notebook marks its final fine-tune ``live=True``. On a GPU (or with
  ``POLAR_VBLL_LIVE=1``; ``0`` turns it off) that run is trained here, at the notebook's
  profile, and the line it prints gives the device, the seconds and how far its ACC / ECE / NLL
  are from the committed run of the same configuration. A live run writes a checkpoint every
  ``log_every`` steps into a resume folder the notebook names, so a run interrupted by a
  disconnect continues from there when the cell runs again.

A checkpoint made with a configuration the code no longer produces (say a profile changed) is
*stale*: it is reported by name, with the fields that differ, and never used.
``tests/test_pretrained.py`` re-evaluates every committed checkpoint and requires the recorded
metrics (accuracy exactly, ECE and NLL to 1e-6) and that none is stale.

A checkpoint folder, ``<method>-<task>-<key>/``::

    config.json, state.json, adapters.safetensors, head.safetensors, ...   (Method.save)
    run.json                 the run, its key, metrics, fit time, provenance (command, commit,
                             date, machine)
    predictions.safetensors  per dataset: probs, labels, mask (and logits, sample_logits for the
                             in-distribution test set when the method has them); under check/,
                             the predictions on the first CHECK_QUESTIONS questions of each test
                             set made on their own, from a fresh feature cache, as the test does

Why a separate check prediction: the frozen lower layers run their rows in batches (questions
sorted by length, see :mod:`polar_vbll.feature_cache`), so the hidden states of a question differ
in the last float bits (~1e-6 in a probability) depending on which other questions were batched
with it. A prefix predicted on its own is exactly reproducible; the test also requires it to be
within 1e-5 of the full run's predictions.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from polar_vbll import models
from polar_vbll.checkpoints import atomic_write_text, ensure_writable_folder
from polar_vbll.errors import CheckpointError, ConfigError
from polar_vbll.profiles import Profile, get_profile

FOLDER = Path(__file__).resolve().parent / "trained"
RETRAIN_ENV = "POLAR_VBLL_RETRAIN"
LIVE_ENV = "POLAR_VBLL_LIVE"  # auto (default: on a GPU) | 1 | 0
COMMITTED_TIER = "course"  # the profile whose runs are committed
PASS_KEYS = ("backbone_passes", "sequences_per_question")  # per record, kept in run.json
CHECK_QUESTIONS = 16  # the prefix of each test set that tests/test_pretrained.py re-evaluates
FORMAT_VERSION = 1  # bump when what a checkpoint holds, or how a run is trained, changes


@dataclass(frozen=True)
class Run:
    """One fine-tune: a method trained on ``task`` and evaluated on its test split (and ``ood``)."""

    method: str
    task: str
    profile: Profile
    seed: int = 0
    model: str = models.SMOLLM2
    options: dict = field(default_factory=dict)  # make_method options, e.g. stiefel_method
    ood: tuple = ()

    @property
    def set_options(self) -> dict:
        """The options that are set (None means the method's default), sorted by name."""
        return {k: v for k, v in sorted(self.options.items()) if v is not None}

    @classmethod
    def from_config(cls, config: dict, profile: Profile | None = None) -> "Run":
        """The run a recorded :meth:`config` describes (its own profile, or ``profile``)."""
        return cls(config["method"], config["task"], profile or Profile(**config["profile"]),
                   config["seed"], config["model"], config.get("options", {}),
                   tuple(config.get("ood", ())))

    @property
    def datasets(self) -> list[str]:
        return [self.task, *self.ood]

    def config(self) -> dict:
        """Everything the result depends on, as JSON: the key is a hash of it."""
        return {"format": FORMAT_VERSION, "method": self.method, "task": self.task,
                "ood": list(self.ood), "model": self.model, "seed": self.seed,
                "options": self.set_options,
                "profile": self.profile.to_dict()}

    @property
    def key(self) -> str:
        text = json.dumps(self.config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """A readable name: the method and its non-default options, e.g. 'polar (geoopt)'."""
        extra = ", ".join(str(v) for v in self.set_options.values())
        return f"{self.method} ({extra})" if extra else self.method

    @property
    def folder_name(self) -> str:
        options = "".join(f"-{v}" for v in self.set_options.values())
        return f"{self.method}{options}-{self.task}-{self.key}"

    def at(self, profile: Profile) -> "Run":
        return self.replace(profile=profile)

    def replace(self, **changes) -> "Run":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- the course's runs

ARC, OBQA = "arc_easy", "obqa"
NINE_METHODS = ("mle", "map", "polar", "lora_vbll", "polar_vbll", "mc_dropout", "ensemble",
                "temperature", "laplace")
OOD_METHODS = ("zero_shot", "mle", "lora_vbll", "polar_vbll", "temperature", "laplace")


def course_runs(profile: Profile | str = COMMITTED_TIER, seed: int = 0) -> list[Run]:
    """Every fine-tune the notebooks end with (what ``polar-vbll checkpoints`` trains).

    00, 01: mle. 02: mle, polar. 03: polar trained three ways. 04: lora_vbll. 05: zero_shot and
    the nine methods on ARC-Easy; six of them trained on OpenBookQA and tested out of
    distribution. Runs that two notebooks share (mle, polar) are one checkpoint.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    runs = [Run(name, ARC, profile, seed) for name in ("zero_shot", *NINE_METHODS)]
    runs += [Run("polar", ARC, profile, seed, options={"stiefel_method": how})
             for how in ("geoopt", "retraction")]
    from polar_vbll.evaluation import OOD_PROTOCOL

    runs += [Run(name, OBQA, profile, seed, ood=OOD_PROTOCOL) for name in OOD_METHODS]
    return runs


# --------------------------------------------------------------------------- finding checkpoints

def retrain_requested() -> bool:
    return os.environ.get(RETRAIN_ENV, "").strip() not in ("", "0", "false", "False")


def live_requested(device: torch.device | str | None = None) -> bool:
    """Whether a notebook's final fine-tune trains here: ``POLAR_VBLL_LIVE`` = 1 or 0, or unset /
    ``auto``: on a GPU (``device``, default :func:`polar_vbll.models.default_device`)."""
    value = os.environ.get(LIVE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return torch.device(device or models.default_device()).type == "cuda"
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{LIVE_ENV}={value!r}: expected auto, 1 or 0")


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


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "<absent>"), new.get(name, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{name}.")
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
    differences = _differences(config, json.loads(json.dumps(run.config())))  # tuples -> lists
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
              "history": fitted.history, "provenance": provenance(command)}
    atomic_write_text(path / "run.json", json.dumps(record, indent=1))
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


def evaluation_questions(run: Run) -> dict:
    """{dataset: questions} that ``run`` is evaluated on, at its profile's sizes."""
    from polar_vbll import evaluation

    splits = evaluation.load_splits(run.task, run.profile, list(run.ood))
    return {dataset: splits[dataset] for dataset in run.datasets}


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


# --------------------------------------------------------------------------- load or train

def choose(run: Run, say=print, folder: Path | None = None) -> tuple[Run, Path | None]:
    """Which run to show and where its checkpoint is (None: train ``run`` here)."""
    if retrain_requested():
        say(f"{run.label}: {RETRAIN_ENV} is set, training at the {run.profile.name} profile")
        return run, None
    candidates = [run]
    # the smoke profile shows the committed course run, unless a notebook's final fine-tune is
    # live: then every run of the notebook stays at the smoke profile, so that they compare
    if run.profile.name == "smoke" and not live_requested():
        candidates.insert(0, run.at(get_profile(COMMITTED_TIER)))
    messages = []
    for candidate in candidates:
        path, stale = find(candidate, folder)
        messages += stale
        if path is not None:
            return candidate, path
    for message in messages:
        say(f"{run.label}: {message}")
    return run, None


def fit_or_load(run: Run, splits: dict | None = None, fitted_base: dict | None = None,
                progress: bool = True, say=print, folder: Path | None = None,
                live: bool = False, resume_folder: str | Path | None = None) -> Fitted:
    """Load the committed checkpoint of ``run`` if there is one (see the module docstring),
    else :func:`train` it here.

    ``splits``: the profile's splits when the caller already has them (``evaluation.load_splits``);
    ``fitted_base``: for temperature and laplace, the fitted state of the mle (or polar) they
    start from (see ``Method.fit``). ``live``: this is a notebook's final fine-tune, trained here
    when :func:`live_requested` (and not :func:`retrain_requested`, which trains every run) and
    compared with its committed run; it resumes from, and checkpoints into,
    ``resume_folder/<run folder>`` when ``resume_folder`` is given.
    """
    if live and live_requested() and not retrain_requested():
        return train_live(run, splits, fitted_base, progress, say, folder, resume_folder)
    shown, path = choose(run, say, folder)
    if path is not None:
        return load_and_say(shown, path, say)
    return train(run, splits, fitted_base, progress, say)


def train_live(run: Run, splits: dict | None = None, fitted_base: dict | None = None,
               progress: bool = True, say=print, folder: Path | None = None,
               resume_folder: str | Path | None = None) -> Fitted:
    """:func:`train` ``run`` here, resuming from ``resume_folder`` (see :func:`fit_or_load`), and
    say where, how long, and how far its metrics are from the committed run's."""
    from polar_vbll import devices

    checkpoint = Path(resume_folder) / run.folder_name if resume_folder else None
    fitted = train(run, splits, fitted_base, progress, say=lambda _: None,
                   checkpoint_dir=checkpoint)
    device = fitted.method.device
    resumed = fitted.resumed_from_step
    where = (f" (resumed at step {resumed} from {checkpoint})" if resumed else
             f" (checkpoints in {checkpoint})" if checkpoint else "")
    done = ("evaluated here (nothing to train)" if run.method == "zero_shot" else "trained here")
    say(f"{run.label}: {done} on {devices.name_of(device)} in {fitted.fit_seconds:.0f} s at "
        f"the {run.profile.name} profile, {run.profile.steps} steps{where}. "
        f"{difference_from_committed(fitted, folder)}")
    return fitted


def difference_from_committed(fitted: Fitted, folder: Path | None = None) -> str:
    """How far ``fitted``'s in-distribution ACC / ECE / NLL are from the committed run of the same
    configuration (a sentence; says so when there is none)."""
    path, _ = find(fitted.run, folder)
    if path is None:
        return "No committed run of this configuration to compare with."
    task = fitted.run.task
    recorded = read_run(path)
    ours, theirs = fitted.metrics[task], recorded["metrics"][task]
    return (f"Against the committed run ({recorded['provenance']['machine']}): "
            f"ACC {100 * (ours['accuracy'] - theirs['accuracy']):+.1f} points, "
            f"ECE {100 * (ours['ece'] - theirs['ece']):+.1f} points, "
            f"NLL {ours['nll'] - theirs['nll']:+.3f}.")


def load_and_say(run: Run, path: Path, say=print) -> Fitted:
    """:func:`load`, and say what was loaded and how to train it instead."""
    fitted = load(path, run)
    made = fitted.provenance
    say(f"{run.label}: loaded the committed {run.profile.name}-profile checkpoint {path.name} "
        f"({run.profile.steps} steps on {run.profile.train_examples} {run.task} questions; made "
        f"{made['date'][:10]} by `{made['command']}` at commit {made['commit'][:10]}). "
        f"{RETRAIN_ENV}=1 trains it here instead.")
    return fitted


def train(run: Run, splits: dict | None = None, fitted_base: dict | None = None,
          progress: bool = True, say=print, checkpoint_dir: str | Path | None = None) -> Fitted:
    """Fit ``run`` on its train split and predict its test split and OOD sets. Nothing is saved,
    except training checkpoints in ``checkpoint_dir`` when given, from which an interrupted run
    resumes: ``checkpoint_dir/run.json`` names the configuration, ``checkpoint_dir/training`` holds
    the trainer's checkpoint (the folder must hold this run's configuration, or nothing)."""
    from polar_vbll import devices, evaluation, metrics
    from polar_vbll.methods import make_method

    if checkpoint_dir is not None:
        check_resume_folder(run, checkpoint_dir)
    if splits is None:
        splits = evaluation.load_splits(run.task, run.profile, list(run.ood))
    start = time.perf_counter()
    method = make_method(run.method, profile=run.profile, model_name=run.model, seed=run.seed,
                         progress=progress, **run.options)
    if method.spec.adapter is not None:
        devices.check_memory(run.profile, method.model.config, method.device)
    training = Path(checkpoint_dir) / "training" if checkpoint_dir is not None else None
    resumed = _checkpoint_step(training)
    if checkpoint_dir is not None:
        ensure_writable_folder(checkpoint_dir)  # run.json: which configuration trains here
        atomic_write_text(Path(checkpoint_dir) / "run.json",
                          json.dumps({"key": run.key, "config": run.config()}, indent=1))
    method.fit(splits["train"], splits["validation"], fitted_base=fitted_base,
               checkpoint_dir=training, resume=training is not None)
    fit_seconds = time.perf_counter() - start
    records, summaries, seconds = {}, {}, {}
    for dataset in run.datasets:
        record = method.predict(splits[dataset])
        records[dataset] = record
        summaries[dataset] = metrics.summarize(record["probs"], record["labels"])
        seconds[dataset] = record["seconds_per_example"]
    if method.spec.adapter is None:  # zero_shot: nothing to train
        say(f"{run.label}: evaluated here, no training ({fit_seconds:.0f} s)")
    else:
        say(f"{run.label}: trained here at the {run.profile.name} profile ({run.profile.steps} "
            f"steps on {len(splits['train'])} {run.task} questions, {fit_seconds:.0f} s)")
    return Fitted(run, records, summaries, list(method.history), fit_seconds, seconds,
                  None, method, resumed_from_step=resumed)


def check_resume_folder(run: Run, path: str | Path) -> None:
    """ConfigError, before anything is written, when ``path`` holds a checkpoint of another
    configuration than ``run``'s (a folder with no checkpoint is fine: the run starts there)."""
    path = Path(path)
    marker = path / "run.json"
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"resume folder {path}: {marker.name} cannot be read ({error}); "
                              "delete the folder or choose another") from None
        if recorded.get("key") != run.key:
            differences = _differences(recorded.get("config", {}),
                                       json.loads(json.dumps(run.config())))
            raise ConfigError(f"resume folder {path} holds a checkpoint of another configuration "
                              f"({'; '.join(differences[:4]) or recorded.get('key')}); nothing "
                              "was overwritten: choose another folder, or delete this one")
    elif (path / "training" / "config.json").is_file():
        raise ConfigError(f"resume folder {path} holds a training checkpoint without run.json, so "
                          "its configuration is unknown; nothing was overwritten: choose another "
                          "folder, or delete this one")


def _checkpoint_step(path: str | Path | None) -> int:
    """The step of the training checkpoint in ``path`` (0 when there is none)."""
    state = Path(path) / "state.json" if path is not None else None
    if state is None or not state.is_file():
        return 0
    try:
        return int(json.loads(state.read_text()).get("step", 0))
    except (OSError, ValueError, json.JSONDecodeError):
        return 0


__all__ = ["COMMITTED_TIER", "FOLDER", "Fitted", "LIVE_ENV", "RETRAIN_ENV", "Run", "choose",
           "check_predictions", "check_resume_folder", "committed", "course_runs",
           "difference_from_committed", "evaluation_questions", "find", "fit_or_load",
           "folder_size", "live_requested", "load", "load_and_say", "provenance", "read_run",
           "retrain_requested", "save", "stale_reason", "train", "train_live", "write_index"]
