"""The README and the book state results only as the committed runs hold them.

* The README's headline table is what ``polar_vbll.results`` writes from the committed runs, and
  each of its numbers equals the run's recorded metric (read straight from ``run.json`` here, not
  through the module under test).
* The sentences under it make claims about the runs; each claim is checked here.
* The README is at most 10 000 bytes and every relative link in it resolves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from polar_vbll import metrics, results
from polar_vbll.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TRAINED = REPO / "polar_vbll" / "trained"
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


def recorded(method: str, task: str) -> dict | None:
    """The run.json metrics of the committed course run of ``method`` on ``task`` (no options)."""
    for path in sorted(TRAINED.glob(f"{method}-{task}-*/run.json")):
        run = json.loads(path.read_text())
        if run["config"]["options"] == {} and run["config"]["profile"]["name"] == "course":
            return run["metrics"][task]
    return None


def headline_cells() -> list[list[str]]:
    text = README.read_text()
    block = text[slice(*results.readme_block(text))]
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert rows, "the README's headline table is empty: run python -m polar_vbll.results --readme README.md"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_the_readme_is_short():
    assert len(README.read_bytes()) <= 10_000


def test_every_relative_link_in_the_readme_resolves():
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", t)]
    assert targets, "the README links to no file of the repository"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_the_headline_table_is_what_the_committed_runs_give():
    assert not results.write_readme(README, check=True), \
        "README.md's headline table differs: run python -m polar_vbll.results --readme README.md"


def test_every_number_in_the_headline_table_equals_the_runs_metrics():
    checked = 0
    for cells in headline_cells():
        method = cells[0].strip("`")
        for task, (acc, ece, nll) in zip(("arc_easy", "obqa"), (cells[1:4], cells[4:7])):
            m = recorded(method, task)
            if m is None:
                assert (acc, ece, nll) == ("-", "-", "-"), f"{method} on {task} has no committed run"
                continue
            assert float(acc) == pytest.approx(100 * m["accuracy"], abs=0.05)
            assert float(ece) == pytest.approx(100 * m["ece"], abs=0.05)
            assert float(nll) == pytest.approx(m["nll"], abs=5e-4)
            checked += 3
    assert checked >= 24  # zero_shot, mle, polar_vbll, temperature, laplace on both tasks at least


def test_the_readme_s_statements_about_the_runs_hold():
    arc = {r["method"]: r for r in results.method_rows("arc_easy", noise_draws=1)}
    obqa = {r["method"]: r for r in results.method_rows("obqa", noise_draws=1)}
    # "Every fine-tune learns over the zero-shot cloze classifier."
    assert all(r["accuracy"] > arc["zero_shot"]["accuracy"] for name, r in arc.items() if name != "zero_shot")
    # "Plain LoRA (mle) ends clearly overconfident; PoLAR adapters ... much less so."
    overconfidence = {name: r["confidence"] - r["accuracy"] for name, r in arc.items()}
    assert overconfidence["mle"] > 0.1
    assert all(overconfidence[name] < overconfidence["mle"] / 2 for name in ("polar", "polar_vbll"))
    # "On OpenBookQA PoLAR-VBLL has the lowest ECE and NLL of the fine-tunes that train the backbone."
    trained = {name: r for name, r in obqa.items() if not r["post_hoc"] and name != "zero_shot"}
    assert min(trained, key=lambda name: trained[name]["ece"]) == "polar_vbll"
    assert min(trained, key=lambda name: trained[name]["nll"]) == "polar_vbll"
    # "one temperature ... calibrates mle about as well in distribution"
    assert abs(obqa["temperature"]["ece"] - obqa["polar_vbll"]["ece"]) < obqa["polar_vbll"]["ece_floor"]


def test_method_rows_recompute_the_recorded_metrics_from_the_stored_probabilities():
    for run in results.runs_of("arc_easy"):
        probs = run.probabilities("arc_easy")
        from safetensors.torch import load_file

        labels = load_file(str(run.path / "predictions.safetensors"))["arc_easy/labels"].numpy()
        summary = metrics.summarize(probs, labels)
        for key in ("accuracy", "ece", "nll", "brier"):
            assert summary[key] == pytest.approx(run.metrics("arc_easy")[key], abs=1e-6), (run.label, key)


def test_the_uncertainty_columns_equal_independent_computations():
    from sklearn.metrics import roc_auc_score

    run = results.runs_of("arc_easy")[0]
    probs, labels = run.prediction("arc_easy")
    row = results.method_rows("arc_easy", noise_draws=1)[0]
    order = np.argsort(-probs.max(1), kind="stable")  # most confident first
    errors = (probs.argmax(1) != labels)[order]
    risks = np.cumsum(errors) / np.arange(1, len(errors) + 1)
    assert row["aurc"] == pytest.approx(risks.mean(), abs=1e-12)
    assert row["accuracy_at_80"] == pytest.approx(1 - risks[int(np.ceil(0.8 * len(errors))) - 1])
    trained_on_obqa = [r for r in results.runs_of("obqa") if r.run.ood][0]
    ood = results.ood_rows("obqa")[0]
    elsewhere = trained_on_obqa.run.ood[0]
    inside = trained_on_obqa.probabilities("obqa")
    outside = trained_on_obqa.probabilities(elsewhere)
    scores = np.concatenate([1 - inside.max(1), 1 - outside.max(1)])  # higher: more likely OOD
    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    assert ood["auroc"][elsewhere] == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
    assert ood["mean_ood_auroc"] == pytest.approx(np.mean(list(ood["auroc"].values())))


def test_the_stable_ranks_show_the_collapse_the_course_is_about():
    rows = {r["method"]: r for r in results.method_rows("arc_easy", noise_draws=1)}
    assert rows["mle"]["stable_rank"] < 1.1
    assert rows["polar_vbll"]["stable_rank"] > 2 * rows["mle"]["stable_rank"]
    assert rows["temperature"]["stable_rank"] == rows["mle"]["stable_rank"]  # post-hoc keeps mle's
    assert rows["zero_shot"]["stable_rank"] is None


def test_a_readme_without_the_markers_gets_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ConfigError, match="expected the markers"):
        results.write_readme(readme)
    assert readme.read_text() == "# no table here\n"  # nothing lost
    assert results.main(["--readme", str(readme)]) == 2


def test_check_mode_reports_a_drifted_table_and_changes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    (tmp_path / "benchmarks").mkdir()  # the times table reads the measured benchmarks beside it
    (tmp_path / "benchmarks" / "measured").symlink_to(REPO / "benchmarks" / "measured")
    text = README.read_text().replace("| `zero_shot` |", "| `zero_shot` | 99.9 |", 1)
    readme.write_text(text)
    assert results.main(["--readme", str(readme), "--check"]) == 1
    assert readme.read_text() == text
    assert results.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == README.read_text()


def test_the_noise_floor_column_is_the_metrics_noise_floor():
    row = results.method_rows("arc_easy", noise_draws=50)[0]
    run = results.runs_of("arc_easy")[0]
    floor = metrics.ece_noise_floor(run.probabilities("arc_easy"), draws=50)["mean"]
    assert row["ece_floor"] == floor
    assert np.isfinite(floor) and 0 < floor < 0.2


def test_the_book_benchmarks_table_is_every_saved_benchmark_run():
    page = REPO / results.BENCHMARKS_PAGE
    assert results.generated_files(README) == [README, page]
    assert not results.write_readme(page, check=True), \
        f"{page}'s table differs from benchmarks/measured: run python -m polar_vbll.results --readme README.md"
