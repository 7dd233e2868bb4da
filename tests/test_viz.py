"""Tests for polar_vbll.viz: the figures carry the right numbers, sliders toggle the right traces."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from polar_vbll import metrics, viz
from polar_vbll.errors import ConfigError, DataError, PolarVBLLError

HAND_PROBS = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [1.0, 0.0], [0.5, 0.5]]
HAND_LABELS = [0, 1, 1, 1, 0, 1]  # ECE with 4 bins = 0.25 (see tests/test_metrics.py)


def random_record(seed: int, number_of_examples: int = 300, number_of_classes: int = 4) -> dict:
    generator = np.random.default_rng(seed)
    logits = generator.normal(scale=2.0, size=(number_of_examples, number_of_classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {"probs": probs, "labels": generator.integers(0, number_of_classes, size=number_of_examples)}


def visible_traces(figure, kind=go.Bar):
    return [trace for trace in figure.data if isinstance(trace, kind) and trace.visible is not False]


def test_reliability_diagram_hand_case_numbers():
    figure = viz.reliability_diagram({"polar_vbll": {"probs": HAND_PROBS, "labels": HAND_LABELS}}, n_bins=4)
    accuracy_bars = [trace for trace in figure.data if isinstance(trace, go.Bar) and not trace.meta.get("gap")]
    gap_bars = [trace for trace in figure.data if isinstance(trace, go.Bar) and trace.meta.get("gap")]
    assert len(accuracy_bars) == 1 and len(gap_bars) == 1
    bars, gaps = accuracy_bars[0], gap_bars[0]
    assert bars.name == "polar_vbll (ECE 25.0%)"
    np.testing.assert_allclose(bars.x, [0.125, 0.375, 0.625, 0.875])
    assert bars.y[0] is None  # empty bin: no bar
    np.testing.assert_allclose(bars.y[1:], [0.0, 0.5, 2 / 3])
    # gap bar goes from accuracy (base) to mean confidence (base + height)
    np.testing.assert_allclose(np.array(gaps.base[1:]) + np.array(gaps.y[1:]), [0.5, 0.65, 0.9])
    assert [row[0] for row in bars.customdata] == [0, 1, 2, 3]  # counts in hover
    assert bars.marker.color == viz.METHOD_COLORS["polar_vbll"]
    diagonal = [trace for trace in figure.data if isinstance(trace, go.Scatter)][0]
    assert list(diagonal.x) == [0, 1] and list(diagonal.y) == [0, 1]
    assert figure.layout.template.layout.font.size == 16


def test_reliability_diagram_matches_metrics_on_random_data():
    record = random_record(0)
    figure = viz.reliability_diagram({"mle": record}, n_bins=15)
    bars = [trace for trace in figure.data if isinstance(trace, go.Bar) and not trace.meta.get("gap")][0]
    bins = metrics.reliability_bins(record["probs"], record["labels"], 15)
    np.testing.assert_allclose(np.array(bars.y, dtype=float), bins["accuracy"], equal_nan=True)
    ece = metrics.expected_calibration_error(record["probs"], record["labels"], 15)
    assert bars.name == f"mle (ECE {100 * ece:.1f}%)"
    assert bars.meta["ece"] == pytest.approx(ece)


def test_reliability_slider_switches_number_of_bins():
    results = {"mle": random_record(1), "polar_vbll": random_record(2)}
    figure = viz.reliability_diagram(results, n_bins=10, slider_bins=[5, 10, 15, 20])
    slider = figure.layout.sliders[0]
    assert [step.label for step in slider.steps] == ["5", "10", "15", "20"]
    assert slider.active == 1
    for option, step in zip([5, 10, 15, 20], slider.steps):
        visible = step.args[0]["visible"]
        assert len(visible) == len(figure.data)
        shown_bars = [trace for trace, flag in zip(figure.data, visible) if flag and isinstance(trace, go.Bar)]
        assert len(shown_bars) == 4  # 2 methods x (accuracy, gap)
        assert all(len(trace.x) == option and trace.meta["n_bins"] == option for trace in shown_bars)
        assert step.args[1]["title.text"] == f"Reliability diagram ({option} bins)"
    # the initial visibility is the active step's
    assert [trace.visible is not False for trace in figure.data] == list(slider.steps[1].args[0]["visible"])
    # side by side: the two methods sit on different x axes
    assert {trace.xaxis for trace in visible_traces(figure)} == {"x", "x2"}
    json.loads(figure.to_json())  # serializable for the static page


def test_reliability_overlay_draws_one_line_per_method():
    results = {"mle": random_record(3), "map": random_record(4)}
    figure = viz.reliability_diagram(results, n_bins=8, arrangement="overlay")
    lines = [trace for trace in figure.data if isinstance(trace, go.Scatter) and trace.meta]
    assert [trace.meta["method"] for trace in lines] == ["mle", "map"]
    bins = metrics.reliability_bins(results["map"]["probs"], results["map"]["labels"], 8)
    filled = bins["count"] > 0
    np.testing.assert_allclose(lines[1].x, bins["confidence"][filled])
    np.testing.assert_allclose(lines[1].y, bins["accuracy"][filled])


def test_confidence_histogram_counts():
    record = random_record(5)
    figure = viz.confidence_histogram({"ensemble": record}, n_bins=10)
    correct, wrong = figure.data
    total_correct = round(metrics.accuracy(record["probs"], record["labels"]) * 300)
    assert sum(correct.y) == total_correct
    assert sum(correct.y) + sum(wrong.y) == 300
    assert figure.layout.barmode == "stack"


def test_id_ood_confidence_fractions_and_means():
    in_record = random_record(6)
    out_record = {"probs": np.full((50, 4), 0.25), "labels": np.zeros(50, dtype=int)}
    figure = viz.id_ood_confidence({"obqa": in_record, "mmlu": out_record}, in_distribution="obqa",
                                   n_bins=20, method="polar_vbll")
    obqa, mmlu = figure.data
    assert obqa.meta["in_distribution"] and not mmlu.meta["in_distribution"]
    assert sum(obqa.y) == pytest.approx(1.0) and sum(mmlu.y) == pytest.approx(1.0)
    assert mmlu.y[4] == pytest.approx(1.0)  # confidence .25 lies in the bin (.2, .25]
    assert obqa.meta["mean_confidence"] == pytest.approx(in_record["probs"].max(axis=1).mean())
    assert "mean confidence 25%" in mmlu.name
    with pytest.raises(DataError, match="in_distribution='arc'"):
        viz.id_ood_confidence({"obqa": in_record}, in_distribution="arc")


SPECTRUM_REPORTS = {
    "lora": {"q_proj": {"stable_rank": 1.05, "singular_values": [0.1, 3.0, 0.5]},
             "v_proj": {"stable_rank": 1.2, "singular_values": [2.0, 0.4, 0.1]}},
    "polar": {"q_proj": {"stable_rank": 2.4, "singular_values": [1.0, 0.9, 0.6]},
              "v_proj": {"stable_rank": 2.1, "singular_values": [1.0, 0.7, 0.5]}},
}


def test_singular_value_spectrum_sorted_with_module_slider():
    figure = viz.singular_value_spectrum(SPECTRUM_REPORTS, module="v_proj")
    assert len(figure.data) == 4
    lora_q = [trace for trace in figure.data if trace.meta["label"] == "lora" and trace.meta["module"] == "q_proj"][0]
    assert list(lora_q.y) == [3.0, 0.5, 0.1]
    assert lora_q.name == "lora (stable rank 1.05)"
    assert lora_q.marker.color == viz.METHOD_COLORS["lora"]
    slider = figure.layout.sliders[0]
    assert [step.label for step in slider.steps] == ["q_proj", "v_proj"] and slider.active == 1
    shown = [trace.meta["module"] for trace, flag in zip(figure.data, slider.steps[0].args[0]["visible"]) if flag]
    assert shown == ["q_proj", "q_proj"]
    assert {trace.meta["module"] for trace in visible_traces(figure)} == {"v_proj"}
    single = viz.singular_value_spectrum(SPECTRUM_REPORTS, module="q_proj", module_slider=False)
    assert len(single.data) == 2 and not single.layout.sliders
    with pytest.raises(DataError, match="k_proj"):
        viz.singular_value_spectrum(SPECTRUM_REPORTS, module="k_proj")


def test_stable_rank_over_training_means():
    history = {"lora": [{"step": 10, "stable_rank": {"q": 1.5, "v": 2.5}}, {"step": 0, "stable_rank": {"q": 4.0, "v": 2.0}}]}
    figure = viz.stable_rank_over_training(history)
    assert list(figure.data[0].x) == [0, 10]  # sorted by step
    assert list(figure.data[0].y) == [3.0, 2.0]
    per_module = viz.stable_rank_over_training(history, per_module=True)
    assert len(per_module.data) == 3 and list(per_module.data[1].y) == [4.0, 1.5]


def test_orthogonality_over_training_log_scale_and_floor():
    history = {"landing": [{"step": 0, "orthogonality_error": 0.0}, {"step": 5, "orthogonality_error": 1e-3}],
               "geoopt": [{"step": 0, "orthogonality_error": 1e-7}]}
    figure = viz.orthogonality_over_training(history)
    assert figure.layout.yaxis.type == "log"
    assert list(figure.data[0].y) == [viz.ORTHOGONALITY_FLOOR, 1e-3]
    assert figure.data[1].line.color == viz.METHOD_COLORS["geoopt"]


def test_training_curves_panels():
    with_kl = viz.training_curves({"polar_vbll": [{"step": 0, "loss": 2.0, "bound": 2.5, "kl": 3.0},
                                                  {"step": 1, "loss": 1.5, "bound": 1.9, "kl": 2.0}]})
    names = [trace.name for trace in with_kl.data]
    assert names == ["polar_vbll: loss", "polar_vbll: bound", "polar_vbll: KL"]
    assert with_kl.data[2].xaxis == "x2" and list(with_kl.data[2].y) == [3.0, 2.0]
    plain = viz.training_curves({"mle": [{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.0}]})
    assert len(plain.data) == 1 and list(plain.data[0].y) == [2.0, 1.0]
    with pytest.raises(DataError, match="'loss'"):
        viz.training_curves({"mle": [{"step": 0}]})


def test_metric_comparison_percentages():
    table = {"mle": {"accuracy": 0.5, "ece": 0.1, "nll": 1.2, "brier": 0.6, "n": 10},
             "polar_vbll": metrics.summarize(HAND_PROBS, HAND_LABELS, n_bins=4)}
    figure = viz.metric_comparison(table)
    values = {(trace.meta["method"], trace.meta["metric"]): trace.y[0] for trace in figure.data}
    assert values[("mle", "accuracy")] == pytest.approx(50.0)
    assert values[("polar_vbll", "ece")] == pytest.approx(25.0)
    assert values[("polar_vbll", "brier")] == pytest.approx(0.45)
    assert sum(trace.showlegend is not False for trace in figure.data) == 2  # one legend entry per method
    assert "(%)" in figure.layout.yaxis.title.text
    with pytest.raises(DataError, match="brier"):
        viz.metric_comparison({"mle": {"accuracy": 0.5, "ece": 0.1, "nll": 1.2}})


def test_method_colors_fixed_and_fallback_deterministic():
    assert viz.method_color("polar_vbll") == viz.method_color("PoLAR-VBLL") == viz.METHOD_COLORS["polar_vbll"]
    assert viz.method_color("my_new_method") == viz.method_color("my_new_method")
    assert viz.method_color("my_new_method") in viz.FALLBACK_COLORS
    assert viz.TEMPLATE_NAME in pio.templates


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda: viz.reliability_diagram({}), DataError, "non-empty"),
        (lambda: viz.reliability_diagram({"mle": {"labels": [0]}}), DataError, "'probs'"),
        (lambda: viz.reliability_diagram({"probs": HAND_PROBS, "labels": HAND_LABELS}), DataError, "single prediction record"),
        (lambda: viz.reliability_diagram({"mle": {"probs": HAND_PROBS, "labels": HAND_LABELS}}, n_bins=0), DataError, "n_bins"),
        (lambda: viz.reliability_diagram({"mle": {"probs": HAND_PROBS, "labels": HAND_LABELS}}, slider_bins=[]), DataError, "slider_bins"),
        (lambda: viz.reliability_diagram({"mle": {"probs": HAND_PROBS, "labels": HAND_LABELS}}, arrangement="grid"), ConfigError, "arrangement"),
        (lambda: viz.reliability_diagram({"mle": {"probs": [[0.5, 0.6]], "labels": [0]}}), DataError, "results['mle']"),
        (lambda: viz.confidence_histogram({"mle": {"probs": HAND_PROBS, "labels": HAND_LABELS}}, n_bins=0), DataError, "n_bins"),
        (lambda: viz.singular_value_spectrum({}), DataError, "reports"),
        (lambda: viz.singular_value_spectrum({"lora": {"q": {"stable_rank": 1.0}}}), DataError, "singular_values"),
        (lambda: viz.stable_rank_over_training({"lora": []}), DataError, "non-empty list"),
        (lambda: viz.orthogonality_over_training({}), DataError, "history"),
        (lambda: viz.metric_comparison({}), DataError, "table"),
    ],
)
def test_bad_inputs_raise_project_errors(call, error, fragment):
    with pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)
    assert isinstance(raised.value, PolarVBLLError)
