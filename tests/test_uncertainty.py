"""Selective prediction, OOD detection and the entropy split, on the committed runs' predictions.

Every number is checked against an independent computation: scikit-learn's ``roc_auc_score``
for the AUROC, a loop over the sorted predictions for the AURC, the definitions for the split.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from polar_vbll import evaluation, metrics, pretrained, uncertainty
from polar_vbll.errors import DataError, ShapeError
from polar_vbll.profiles import get_profile


def committed(method: str, task: str = "arc_easy") -> pretrained.Fitted:
    ood = evaluation.OOD_PROTOCOL if task == "obqa" else ()
    path, reasons = pretrained.find(pretrained.Run(method, task, get_profile("course"), ood=ood))
    assert path is not None, reasons
    return pretrained.load(path)


@pytest.fixture(scope="module")
def arc_vbll():
    return committed("polar_vbll").records["arc_easy"]


@pytest.fixture(scope="module")
def obqa_runs():
    return {name: committed(name, "obqa").records for name in ("zero_shot", "mle", "polar_vbll")}


def direct_aurc(probs, labels):
    """The area, question by question: sort by confidence (stable), risk after each answer."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    order = sorted(range(len(labels)), key=lambda i: -probs[i].max())  # sorted() is stable
    errors, area = 0, 0.0
    for k, i in enumerate(order, start=1):
        errors += int(probs[i].argmax() != labels[i])
        area += errors / k
    return area / len(labels)


@pytest.mark.parametrize("name", ["zero_shot", "mle", "polar_vbll"])
def test_auroc_equals_scikit_learn_on_every_ood_set(obqa_runs, name):
    records = obqa_runs[name]
    for dataset in evaluation.OOD_PROTOCOL:
        inside, outside = records["obqa"]["probs"], records[dataset]["probs"]
        ours = uncertainty.ood_auroc(inside, outside)
        for score in ("max probability", "entropy"):
            u_in = uncertainty.ood_scores(inside)[score]
            u_out = uncertainty.ood_scores(outside)[score]
            truth = np.r_[np.zeros(len(u_in)), np.ones(len(u_out))]
            peer = roc_auc_score(truth, np.r_[u_in, u_out])
            assert abs(ours[score] - peer) < 1e-9, (name, dataset, score)
            assert 0.2 < ours[score] < 0.9  # a real detector on real questions, not a constant


def test_auroc_counts_ties_as_one_half_like_scikit_learn(obqa_runs):
    """Scores rounded to 1 decimal: many ties between and within the two groups."""
    u_in = np.round(1 - obqa_runs["mle"]["obqa"]["probs"].numpy().max(1), 1)
    u_out = np.round(1 - obqa_runs["mle"]["arc_challenge"]["probs"].numpy().max(1), 1)
    assert len(np.unique(np.r_[u_in, u_out])) < 10
    truth = np.r_[np.zeros(len(u_in)), np.ones(len(u_out))]
    assert abs(uncertainty.auroc(u_in, u_out) - roc_auc_score(truth, np.r_[u_in, u_out])) < 1e-9
    assert uncertainty.auroc([0.0, 0.0], [0.0]) == 0.5
    assert uncertainty.auroc([0.1, 0.2], [0.3]) == 1.0


@pytest.mark.parametrize("name", ["zero_shot", "mle", "polar_vbll"])
def test_aurc_equals_the_area_from_sorted_predictions(obqa_runs, name):
    record = obqa_runs[name]["obqa"]
    probs, labels = record["probs"].numpy(), record["labels"].numpy()
    assert abs(uncertainty.aurc(probs, labels) - direct_aurc(probs, labels)) < 1e-12
    correct = (probs.argmax(1) == labels).astype(float)
    best = uncertainty.aurc(probs, labels, confidence=correct + 1e-3 * np.arange(len(labels)) / len(labels))
    assert abs(best - uncertainty.optimal_aurc(probs, labels)) < 1e-12
    assert uncertainty.excess_aurc(probs, labels) > 0
    # at full coverage the selective accuracy is the accuracy
    assert abs(uncertainty.accuracy_at_coverage(probs, labels, 1.0) - metrics.accuracy(probs, labels)) < 1e-12
    curve = uncertainty.risk_coverage(probs, labels)
    assert curve["coverage"][-1] == 1.0 and np.all(np.diff(curve["threshold"]) <= 0)


def test_accuracy_at_coverage_counts_questions():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, wrong; confidences .9 .8 .7 .6
    assert uncertainty.accuracy_at_coverage(probs, labels, 0.5) == 0.5
    assert uncertainty.accuracy_at_coverage(probs, labels, 0.25) == 1.0
    assert uncertainty.aurc(probs, labels) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert uncertainty.optimal_aurc(probs, labels) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    with pytest.raises(DataError, match="coverage"):
        uncertainty.accuracy_at_coverage(probs, labels, 0)


def test_entropy_split_sums_to_the_total_on_vbll_samples(arc_vbll):
    samples = uncertainty.softmax_samples(arc_vbll["sample_logits"], arc_vbll["mask"])  # (S, N, C)
    assert samples.shape == (100, 500, 5)
    split = uncertainty.entropy_split(samples)
    assert np.abs(split["aleatoric"] + split["epistemic"] - split["total"]).max() < 1e-6
    assert split["epistemic"].min() > -1e-12  # mutual information >= 0 (Jensen)
    # the total is the entropy of the stored predictive (the mean of these samples)
    recorded = uncertainty.predictive_entropy(arc_vbll["probs"])
    assert np.abs(split["total"] - recorded).max() < 1e-5
    assert 0 < split["epistemic"].mean() < split["aleatoric"].mean()
    # samples that all agree carry no mutual information
    same = np.repeat(samples[:1], 4, axis=0)
    assert np.abs(uncertainty.mutual_information(same)).max() < 1e-12


def test_bad_inputs_raise_project_errors():
    with pytest.raises(DataError):
        uncertainty.auroc([], [0.1])
    with pytest.raises(DataError):
        uncertainty.auroc([np.nan], [0.1])
    with pytest.raises(ShapeError):
        uncertainty.entropy_split(np.ones((3, 2)) / 2)
    with pytest.raises(DataError):
        uncertainty.predictive_entropy([[0.5, 0.6]])


# --------------------------------------------------------------------------- figures and widgets

def test_risk_coverage_figure_and_table_read_the_library(obqa_runs):
    from polar_vbll import uncertainty_viz

    records = {name: records["obqa"] for name, records in obqa_runs.items()}
    figure = uncertainty_viz.risk_coverage_figure(records, coverage=0.8)
    lines = [trace for trace in figure.data if trace.meta]
    assert [trace.meta["method"] for trace in lines] == list(records)
    for trace in lines:
        record = records[trace.meta["method"]]
        assert abs(trace.meta["aurc"] - uncertainty.aurc(record["probs"], record["labels"])) < 1e-12
        assert len(trace.x) == 500 and trace.x[-1] == 1.0
    for row in uncertainty_viz.coverage_table(records, 0.8):
        record = records[row["method"]]
        assert row["answered"] == 400 and row["of"] == 500
        assert row["accuracy"] == uncertainty.accuracy_at_coverage(record["probs"], record["labels"], 0.8)
        confidence = record["probs"].double().max(-1).values
        assert int((confidence >= row["threshold"]).sum()) >= 400


def test_ood_histograms_carry_the_auroc(obqa_runs):
    from polar_vbll import uncertainty_viz

    records = obqa_runs["mle"]
    scores = {d: uncertainty.predictive_entropy(r["probs"]) for d, r in records.items()}
    figure = uncertainty_viz.ood_score_histograms(scores, "obqa", method="mle")
    expected = uncertainty.auroc(scores["obqa"], scores["arc_challenge"])
    names = [trace.name for trace in figure.data]
    assert f"arc_challenge (AUROC {expected:.2f})" in names
    for trace in figure.data:
        assert abs(sum(trace.y) - 1) < 1e-9  # fractions of each set's questions


@pytest.mark.parametrize("question, choices, message", [
    ("", "a\nb", "question is empty"),
    ("   ", "a\nb", "question is empty"),
    ("Why?", "only one", "1 choice(s)"),
    ("Why?", "a\nb\nc\nd\ne\nf", "6 choices"),
    ("Why?", 42, "must be text"),
    (None, "a\nb", "must be text"),
    ("Why?", ["a", 3], "must be text"),
])
def test_question_explorer_says_what_is_wrong_with_bad_input(question, choices, message):
    from polar_vbll import uncertainty_viz

    # bad input is refused before any fine-tune is asked, so no model is needed here
    explorer = uncertainty_viz.question_explorer({"unused": None})
    shown = explorer.submit(question, choices)
    assert message in shown and message in explorer.message.value
    assert explorer.answers is None
    example = uncertainty_viz.parse_question("Why?", "  first \n\nsecond\n")
    assert example.choices == ("first", "second") and example.question == "Why?"


def test_compare_report_holds_the_uncertainty_metrics_and_the_risk_coverage_figure(tmp_path):
    fitted = {name: committed(name, "obqa") for name in ("mle", "polar_vbll")}
    results = {"task": "obqa", "ood": list(evaluation.OOD_PROTOCOL), "profile": {"name": "course"},
               "methods": {name: run.entry() for name, run in fitted.items()}}
    paths = evaluation.write_results(results, tmp_path)
    saved = __import__("json").loads(paths["json"].read_text())["uncertainty"]
    for name, run in fitted.items():
        record, outside = run.records["obqa"], run.records["mmlu_college_physics"]
        assert saved[name]["obqa"]["aurc"] == pytest.approx(uncertainty.aurc(record["probs"], record["labels"]), abs=1e-12)
        expected = uncertainty.ood_auroc(record["probs"], outside["probs"])["entropy"]
        assert saved[name]["mmlu_college_physics"]["auroc (entropy)"] == pytest.approx(expected, abs=1e-12)
    report = paths["report"].read_text()
    assert "Risk-coverage on obqa" in report and "AUROC entropy" in report
    assert f"{saved['polar_vbll']['obqa']['aurc']:.4f}" in report


def test_reliability_bars_show_how_many_questions_each_bin_holds(obqa_runs):
    from polar_vbll import viz

    record = obqa_runs["mle"]["obqa"]
    figure = viz.reliability_diagram({"mle": record}, n_bins=10)
    bars = [trace for trace in figure.data if trace.type == "bar" and not trace.meta.get("gap")]
    counts = metrics.reliability_bins(record["probs"], record["labels"], 10)["count"]
    assert list(bars[0].text) == [str(int(c)) if c else "" for c in counts]
    assert sum(int(t) for t in bars[0].text if t) == 500
