"""Load-or-train: the course's fine-tunes, trained once at the ``course`` profile and committed.

Every notebook ends with a real fine-tune. Trained at the ``course`` profile it takes minutes on
a CPU; the ``smoke`` profile (CI, the published book) can only afford a few optimizer steps,
which show nothing. So ``polar-vbll checkpoints`` trains every fine-tune that the notebooks end
with (:func:`polar_vbll.runs.course_runs`), at the ``course`` profile, and writes one small folder
per run into :data:`polar_vbll.run_store.FOLDER` (committed with the package). A notebook then
asks :func:`fit_or_load` for its run:

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

The modules below this one hold the parts: :mod:`polar_vbll.runs` (a run, its key, the course's
catalogue), :mod:`polar_vbll.run_store` (a run's checkpoint folder: find, load, save, index),
:mod:`polar_vbll.splits` (the questions a run sees) and :mod:`polar_vbll.trained_here` (the
retrain and live switches). Their public names are importable from here too, so that
``pretrained.Run`` and ``pretrained.fit_or_load`` sit side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from polar_vbll.checkpoints import atomic_write_text, ensure_writable_folder
from polar_vbll.errors import ConfigError
from polar_vbll.profiles import get_profile
from polar_vbll.run_store import (
    CHECK_QUESTIONS,
    FOLDER,
    PASS_KEYS,
    Fitted,
    check_predictions,
    committed,
    config_differences,
    find,
    folder_size,
    load,
    provenance,
    read_run,
    save,
    stale_reason,
    write_index,
)
from polar_vbll.runs import (
    ARC,
    COMMITTED_TIER,
    FORMAT_VERSION,
    ARC_METHODS,
    OBQA,
    OOD_METHODS,
    Run,
    course_runs,
)
from polar_vbll.splits import evaluation_questions, load_splits
from polar_vbll.trained_here import LIVE_ENV, RETRAIN_ENV, live_requested, retrain_requested


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

    ``splits``: the profile's splits when the caller already has them (:func:`load_splits`);
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
    from polar_vbll import devices, metrics
    from polar_vbll.methods import make_method

    if checkpoint_dir is not None:
        check_resume_folder(run, checkpoint_dir)
    if splits is None:
        splits = load_splits(run.task, run.profile, list(run.ood))
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
            differences = config_differences(recorded.get("config", {}),
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


__all__ = ["ARC", "ARC_METHODS", "CHECK_QUESTIONS", "COMMITTED_TIER", "FOLDER", "FORMAT_VERSION", "Fitted",
           "LIVE_ENV", "OBQA", "OOD_METHODS", "PASS_KEYS", "RETRAIN_ENV", "Run",
           "check_predictions", "check_resume_folder", "choose", "committed", "config_differences",
           "course_runs", "difference_from_committed", "evaluation_questions", "find",
           "fit_or_load", "folder_size", "live_requested", "load", "load_and_say", "load_splits",
           "provenance", "read_run", "retrain_requested", "save", "stale_reason", "train",
           "train_live", "write_index"]
