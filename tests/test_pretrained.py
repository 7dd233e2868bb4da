"""Load-or-train (polar_vbll.pretrained, .runs, .run_store): keys, save/load, staleness, and the
committed checkpoints.

The last test re-evaluates every committed ``course``-profile checkpoint with the real
SmolLM2-135M on the first ``run_store.CHECK_QUESTIONS`` (16, one evaluation batch) questions of
each of its test sets, predicted on their own as ``polar-vbll checkpoints`` recorded them: the
metrics must equal the recorded ones (accuracy exactly, ECE and NLL to 1e-5), and those
predictions must be within 1e-5 of the recorded check predictions and of the same questions'
predictions in the full run.
"""

import json

import pytest
import torch

from polar_vbll import metrics, models, pretrained, run_store, runs, splits, trained_here
from polar_vbll.errors import CheckpointError
from polar_vbll.methods import Method
from polar_vbll.profiles import get_profile

SMOKE = get_profile("smoke")
TINY_RUN = pretrained.Run("mle", "arc_easy", SMOKE, seed=0, model=models.TINY)


def test_the_key_follows_every_part_of_the_configuration():
    keys = {TINY_RUN.key}
    changed = [TINY_RUN.replace(method="polar"), TINY_RUN.replace(task="obqa"),
               TINY_RUN.replace(seed=1), TINY_RUN.replace(model=models.SMOLLM2),
               TINY_RUN.replace(options={"stiefel_method": "geoopt"}),
               TINY_RUN.replace(ood=("arc_challenge",)),
               TINY_RUN.replace(profile=SMOKE.with_overrides(steps=5)),
               TINY_RUN.replace(profile=SMOKE.with_overrides(score_feature=0.0))]
    for run in changed:
        keys.add(run.key)
    assert len(keys) == len(changed) + 1
    # options left at None (e.g. --head-form not given) are not part of the configuration
    assert TINY_RUN.replace(options={"head_form": None}).key == TINY_RUN.key
    assert TINY_RUN.key == pretrained.Run("mle", "arc_easy", get_profile("smoke"), 0,
                                          models.TINY).key  # stable, not id()-based
    assert TINY_RUN.folder_name == f"mle-arc_easy-{TINY_RUN.key}"


def test_course_runs_cover_every_notebook_fine_tune_once():
    course = runs.course_runs()
    names = [run.folder_name for run in course]
    assert len(names) == len(set(names))
    assert {run.profile.name for run in course} == {"course"}
    arc = {run.label for run in course if run.task == "arc_easy"}
    assert {"zero_shot", "mle", "polar", "lora_vbll", "polar_vbll", "polar (geoopt)",
            "polar (retraction)"} <= arc
    assert all(run.ood for run in course if run.task == "obqa")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """TINY_RUN trained and saved in a temporary folder: (folder, Fitted, checkpoint path)."""
    folder = tmp_path_factory.mktemp("trained")
    fitted = pretrained.train(TINY_RUN, progress=False, say=lambda message: None)
    path = run_store.save(fitted, fitted.method, folder, command="pytest")
    return folder, fitted, path


def test_a_saved_run_loads_with_its_predictions_history_and_method(saved):
    folder, fitted, path = saved
    said = []
    loaded = pretrained.fit_or_load(TINY_RUN, say=said.append, folder=folder)
    assert loaded.loaded_from == path and "loaded the committed smoke-profile checkpoint" in said[0]
    record, original = loaded.records["arc_easy"], fitted.records["arc_easy"]
    for key in ("probs", "labels", "mask", "logits"):
        torch.testing.assert_close(record[key], original[key], atol=0, rtol=0)
    assert loaded.metrics == json.loads(json.dumps(fitted.metrics))
    for key in run_store.PASS_KEYS:  # what notebook 05's cost section plots
        assert record[key] == original[key]
    assert [h["loss"] for h in loaded.history] == pytest.approx(  # logs keep 6 digits
        [h["loss"] for h in fitted.history], rel=1e-5)
    assert loaded.method.rank_history.keys() == fitted.method.rank_history.keys()
    again = loaded.method.predict(splits.evaluation_questions(TINY_RUN)["arc_easy"])
    torch.testing.assert_close(again["probs"], original["probs"], atol=1e-6, rtol=0)
    provenance = run_store.read_run(path)["provenance"]
    assert provenance["command"] == "pytest" and provenance["date"] and provenance["machine"]


def test_retrain_and_a_changed_profile_train_instead_of_loading(saved, monkeypatch):
    folder, _, _ = saved
    said = []
    monkeypatch.setenv(trained_here.RETRAIN_ENV, "1")
    assert pretrained.choose(TINY_RUN, said.append, folder) == (TINY_RUN, None)
    assert trained_here.RETRAIN_ENV in said[0]
    monkeypatch.delenv(trained_here.RETRAIN_ENV)
    other = TINY_RUN.replace(profile=SMOKE.with_overrides(steps=3))
    assert pretrained.choose(other, said.append, folder) == (other, None)


def test_a_stale_checkpoint_is_reported_and_never_used(saved, tmp_path):
    _, _, path = saved
    import shutil

    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    record = json.loads((copy / "run.json").read_text())
    record["config"]["profile"]["steps"] = 99  # as if the smoke profile had changed since
    (copy / "run.json").write_text(json.dumps(record))
    reason = run_store.stale_reason(copy)
    assert "stale" in reason and "profile.steps: 99 -> 4" in reason and "polar-vbll checkpoints" in reason
    stale_run = TINY_RUN.replace(profile=SMOKE.with_overrides(steps=99))
    (copy).rename(tmp_path / stale_run.folder_name)
    said = []
    assert pretrained.choose(TINY_RUN, said.append, tmp_path) == (TINY_RUN, None)
    assert any("is stale" in message for message in said)


def test_the_smoke_profile_shows_the_committed_course_run_when_there_is_one(saved, tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv(trained_here.LIVE_ENV, raising=False)
    _, fitted, _ = saved
    course_run = TINY_RUN.at(get_profile("course"))
    as_if_course = run_store.Fitted(course_run, fitted.records, fitted.metrics, fitted.history,
                                  fitted.fit_seconds, fitted.seconds_per_example)
    run_store.save(as_if_course, fitted.method, tmp_path, command="pytest")
    shown, path = pretrained.choose(TINY_RUN, print, tmp_path)
    assert shown == course_run and path == tmp_path / course_run.folder_name
    # with live fine-tunes on, a notebook's runs all stay at the smoke profile (comparable)
    monkeypatch.setenv(trained_here.LIVE_ENV, "1")
    assert pretrained.choose(TINY_RUN, print, tmp_path) == (TINY_RUN, None)


def test_a_damaged_checkpoint_is_a_clear_error(saved, tmp_path):
    _, _, path = saved
    import shutil

    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    (copy / "predictions.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="predictions.safetensors cannot be read"):
        run_store.load(copy)
    (copy / "run.json").write_text("{")
    with pytest.raises(CheckpointError, match="run.json cannot be read"):
        run_store.read_run(copy)


COMMITTED = run_store.committed()


def test_the_committed_checkpoints_are_fresh_and_small():
    assert COMMITTED, f"no committed checkpoints in {run_store.FOLDER}; run `make checkpoints`"
    expected = {run.folder_name for run in runs.course_runs()}
    assert {path.name for path in COMMITTED} == expected, "run `make checkpoints`"
    for path in COMMITTED:
        assert run_store.stale_reason(path) is None, run_store.stale_reason(path)
    total = sum(f.stat().st_size for f in run_store.FOLDER.rglob("*") if f.is_file())
    # each run.json keeps one history entry per step; the aim stays a small repository
    assert total < 25e6, f"the committed checkpoints take {total / 1e6:.1f} MB (aim: <= 25 MB)"


@pytest.mark.parametrize("path", COMMITTED, ids=[path.name for path in COMMITTED])
def test_a_committed_checkpoint_reloads_to_its_recorded_metrics(path):
    fitted = run_store.load(path)
    recorded = run_store.read_run(path)
    for dataset, summary in fitted.metrics.items():  # the record is self-consistent ...
        record = fitted.records[dataset]
        recomputed = metrics.summarize(record["probs"], record["labels"])
        assert recomputed["accuracy"] == summary["accuracy"]
        assert abs(recomputed["ece"] - summary["ece"]) < 1e-6
        assert abs(recomputed["nll"] - summary["nll"]) < 1e-6
    questions = recorded["check"]["questions"]
    method = Method.load(path, progress=False)
    # ... and reproduced (the check questions' frozen-layer states are shared by every checkpoint
    # through a folder that only check_predictions uses, so they are computed once per test run)
    again = run_store.check_predictions(method, fitted.run, questions,
                                         cache_folder=models.cache_dir() / "check_features")
    for dataset in fitted.run.datasets:
        check, full = fitted.check[dataset], fitted.records[dataset]
        mine = metrics.summarize(again[dataset]["probs"], again[dataset]["labels"])
        theirs = recorded["check"]["metrics"][dataset]
        assert torch.equal(again[dataset]["labels"], check["labels"])
        assert torch.equal(check["labels"], full["labels"][:questions])
        # ECE, NLL and probabilities to 1e-5, not exactly: the tests run torch with one thread and
        # `make checkpoints` with two, and another CPU's kernels sum in another order (measured:
        # probabilities up to 1.5e-6 apart; NLL of 16 questions up to 1.8e-6 on a second machine)
        assert mine["accuracy"] == theirs["accuracy"], (dataset, mine, theirs)
        assert abs(mine["ece"] - theirs["ece"]) < 1e-5, (dataset, mine, theirs)
        assert abs(mine["nll"] - theirs["nll"]) < 1e-5, (dataset, mine, theirs)
        torch.testing.assert_close(again[dataset]["probs"], check["probs"], atol=1e-5, rtol=0)
        # the prefix alone, against the same questions inside the full recorded run
        torch.testing.assert_close(check["probs"], full["probs"][:questions], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- live fine-tunes

@pytest.mark.parametrize("value, device, expected", [
    (None, "cuda", True), (None, "cpu", False), ("auto", "cuda", True),
    ("1", "cpu", True), ("0", "cuda", False)])
def test_a_notebooks_final_fine_tune_is_live_on_a_gpu(value, device, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv(trained_here.LIVE_ENV, raising=False)
    else:
        monkeypatch.setenv(trained_here.LIVE_ENV, value)
    assert trained_here.live_requested(device) is expected


def test_an_unknown_live_value_is_one_clear_line(monkeypatch):
    from polar_vbll.errors import ConfigError

    monkeypatch.setenv(trained_here.LIVE_ENV, "sometimes")
    with pytest.raises(ConfigError, match=r"POLAR_VBLL_LIVE='sometimes': expected auto, 1 or 0"):
        trained_here.live_requested("cpu")


def test_a_live_run_resumes_after_an_interruption_and_compares(saved, tmp_path, monkeypatch):
    """Interrupted after its checkpoint at step 2 (as a Colab disconnect would), the live run
    continues from there when called again and ends where an uninterrupted run ends."""
    from polar_vbll import training

    folder, fitted, _ = saved  # TINY_RUN trained straight through, saved as if committed
    monkeypatch.setenv(trained_here.LIVE_ENV, "1")
    real_step = training.Trainer.train_step

    def disconnect_after_step_2(self, micro):
        if self.state.step == 3:
            raise KeyboardInterrupt
        return real_step(self, micro)

    monkeypatch.setattr(training.Trainer, "train_step", disconnect_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        pretrained.fit_or_load(TINY_RUN, progress=False, folder=folder, live=True,
                               resume_folder=tmp_path / "live")
    monkeypatch.setattr(training.Trainer, "train_step", real_step)
    said = []
    live = pretrained.fit_or_load(TINY_RUN, progress=False, say=said.append, folder=folder,
                                  live=True, resume_folder=tmp_path / "live")
    assert live.loaded_from is None and live.resumed_from_step == 2
    assert "trained here on the CPU" in said[0] and "resumed at step 2" in said[0]
    assert "ACC +0.0 points, ECE +0.0 points, NLL +0.000" in said[0]
    assert [h["step"] for h in live.history] == [1, 2, 3, 4]
    torch.testing.assert_close(live.records["arc_easy"]["probs"],
                               fitted.records["arc_easy"]["probs"], atol=1e-5, rtol=0)
    # without a committed run of the configuration, the line says so
    assert "No committed run" in pretrained.difference_from_committed(live, tmp_path / "none")


def test_a_resume_folder_of_another_configuration_is_refused(tmp_path, monkeypatch):
    from polar_vbll.errors import ConfigError

    other = TINY_RUN.replace(seed=1)
    folder = tmp_path / TINY_RUN.folder_name
    folder.mkdir()
    marker = json.dumps({"key": other.key, "config": other.config()})
    (folder / "run.json").write_text(marker)
    monkeypatch.setenv(trained_here.LIVE_ENV, "1")
    with pytest.raises(ConfigError, match=r"holds a checkpoint of another configuration \(seed: 1 "
                                          r"-> 0\); nothing was overwritten"):
        pretrained.fit_or_load(TINY_RUN, progress=False, live=True, resume_folder=tmp_path)
    assert (folder / "run.json").read_text() == marker and len(list(folder.iterdir())) == 1


def test_live_is_ignored_on_the_cpu_by_default(saved, monkeypatch):
    folder, _, path = saved
    monkeypatch.delenv(trained_here.LIVE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = pretrained.fit_or_load(TINY_RUN, say=lambda _: None, folder=folder, live=True)
    assert loaded.loaded_from == path
