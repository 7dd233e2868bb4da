"""Tests for polar_vbll.widgets: controls update the figure; headless display leaves a plot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from polar_vbll import metrics, widgets
from polar_vbll.errors import ConfigError, DataError, ShapeError

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def sampled_record(seed: int, number_of_samples: int = 6, number_of_examples: int = 120, number_of_classes: int = 4):
    generator = np.random.default_rng(seed)
    sample_logits = generator.normal(scale=3.0, size=(number_of_samples, number_of_examples, number_of_classes))
    probs = widgets.probabilities_from_logits(sample_logits).mean(axis=0)
    labels = generator.integers(0, number_of_classes, size=number_of_examples)
    return {"probs": probs, "labels": labels, "sample_logits": sample_logits}


def logit_record(seed: int, number_of_examples: int = 80):
    generator = np.random.default_rng(seed)
    logits = generator.normal(scale=3.0, size=(number_of_examples, 3))
    logits[:5, 2] = -np.inf  # absent third choice
    return {"probs": widgets.probabilities_from_logits(logits), "labels": generator.integers(0, 2, size=number_of_examples),
            "logits": logits}


def results():
    return {
        "polar_vbll": {"obqa": sampled_record(0), "arc": sampled_record(1, number_of_samples=3)},
        "temperature": {"obqa": logit_record(2)},
        "mle": {"obqa": {"probs": [[0.7, 0.3], [0.2, 0.8]], "labels": [0, 0]}},
    }


def bars(figure):
    return [trace for trace in figure.data if trace.type == "bar" and not trace.meta.get("gap")][0]


def test_softmax_with_temperature_and_mask_by_hand():
    probs = widgets.probabilities_from_logits([[0.0, np.log(3.0), -np.inf]])
    np.testing.assert_allclose(probs, [[0.25, 0.75, 0.0]])
    # T = 2 halves the logits: weights 1 and sqrt(3)
    np.testing.assert_allclose(widgets.probabilities_from_logits([[0.0, np.log(3.0)]], temperature=2.0),
                               [[1 / (1 + np.sqrt(3)), np.sqrt(3) / (1 + np.sqrt(3))]])
    masked = widgets.probabilities_from_logits([[1000.0, 0.0, 5.0]], mask=[[False, True, True]])
    np.testing.assert_allclose(masked, [[0.0, 1 / (1 + np.exp(5.0)), np.exp(5.0) / (1 + np.exp(5.0))]])


def test_predictive_probabilities_uses_first_k_samples():
    record = sampled_record(3)
    probs, source = widgets.predictive_probabilities(record, number_of_samples=2)
    expected = (widgets.probabilities_from_logits(record["sample_logits"][0])
                + widgets.probabilities_from_logits(record["sample_logits"][1])) / 2
    np.testing.assert_allclose(probs, expected)
    assert "first 2 of 6" in source


def test_calibration_explorer_controls_update_figure_and_metrics():
    explorer = widgets.calibration_explorer(results())
    assert explorer.method.value == "polar_vbll" and explorer.dataset.value == "obqa"
    assert not explorer.samples.disabled and explorer.samples.max == 6 and explorer.samples.value == 6
    record = results()["polar_vbll"]["obqa"]
    floor = explorer.metrics.pop("ece_noise_floor")
    assert explorer.metrics == metrics.summarize(record["probs"], record["labels"], 15)
    assert floor == metrics.ece_noise_floor(record["probs"], 15, draws=widgets.NOISE_FLOOR_DRAWS)
    assert f"{100 * floor['mean']:.2f}%" in explorer.table.value and "noise floor" in explorer.table.value

    explorer.bins.value = 10
    assert len(bars(explorer.figure).x) == 10
    assert explorer.metrics["ece"] == pytest.approx(metrics.expected_calibration_error(record["probs"], record["labels"], 10))

    explorer.samples.value = 1
    one_sample = widgets.probabilities_from_logits(record["sample_logits"][0])
    assert explorer.metrics["nll"] == pytest.approx(metrics.negative_log_likelihood(one_sample, record["labels"]))
    np.testing.assert_allclose(np.array(bars(explorer.figure).y, dtype=float),
                               metrics.reliability_bins(one_sample, record["labels"], 10)["accuracy"], equal_nan=True)

    explorer.temperature.value = 2.0
    tempered = widgets.probabilities_from_logits(record["sample_logits"][0] / 2.0)
    assert explorer.metrics["nll"] == pytest.approx(metrics.negative_log_likelihood(tempered, record["labels"]))

    explorer.dataset.value = "arc"  # 3 samples there: slider reconfigured to all of them
    assert explorer.samples.max == 3 and explorer.samples.value == 3

    explorer.method.value = "temperature"
    assert explorer.dataset.options == ("obqa",) and explorer.samples.disabled and not explorer.temperature.disabled
    logits_record = results()["temperature"]["obqa"]
    tempered = widgets.probabilities_from_logits(logits_record["logits"] / 2.0)
    assert explorer.metrics["brier"] == pytest.approx(metrics.brier_score(tempered, logits_record["labels"]))

    explorer.method.value = "mle"  # probs only: both sliders off, temperature back to 1
    assert explorer.samples.disabled and explorer.temperature.disabled and explorer.temperature.value == 1.0
    assert explorer.metrics["accuracy"] == 0.5 and explorer.source == "stored probabilities"
    assert "mle on obqa" in explorer.figure.layout.title.text


def test_out_of_range_controls_are_clamped_by_the_widgets():
    explorer = widgets.calibration_explorer(results())
    explorer.bins.value = 0
    assert explorer.bins.value == 1 and len(bars(explorer.figure).x) == 1
    explorer.samples.value = 99
    assert explorer.samples.value == 6
    explorer.temperature.value = 0.0
    assert explorer.temperature.value == pytest.approx(widgets.MIN_TEMPERATURE)
    assert explorer.temperature.value > 0 and "T = 0.10" in explorer.source


def test_project_errors_for_bad_choices_and_inputs():
    explorer = widgets.calibration_explorer(results())
    with pytest.raises(DataError, match="'dpo'"):
        explorer.select("dpo")
    with pytest.raises(DataError, match="'mmlu'"):
        explorer.select("mle", "mmlu")
    with pytest.raises(ConfigError, match="temperature"):
        widgets.probabilities_from_logits([[0.0, 1.0]], temperature=0.0)
    with pytest.raises(ConfigError, match=r"\[1, 6\]"):
        widgets.predictive_probabilities(sampled_record(0), number_of_samples=7)
    with pytest.raises(ConfigError, match="temperature"):
        widgets.predictive_probabilities({"probs": [[1.0]], "labels": [0]}, temperature=2.0)
    with pytest.raises(DataError, match="no valid choice"):
        widgets.probabilities_from_logits([[-np.inf, -np.inf]])
    with pytest.raises(DataError, match="non-empty"):
        widgets.calibration_explorer({})
    with pytest.raises(DataError, match="results\\['mle'\\]"):
        widgets.calibration_explorer({"mle": {}})
    with pytest.raises(DataError, match="'probs'"):
        widgets.calibration_explorer({"mle": {"obqa": {"labels": [0]}}})
    bad_samples = sampled_record(0)
    bad_samples["sample_logits"] = bad_samples["sample_logits"][:, :10]
    with pytest.raises(ShapeError, match="sample_logits"):
        widgets.calibration_explorer({"mle": {"obqa": bad_samples}})
    with pytest.raises(DataError, match="n_bins"):
        widgets.calibration_explorer(results(), n_bins=0)
    with pytest.raises(DataError, match="non-empty"):
        widgets.spectrum_explorer({})
    with pytest.raises(DataError, match="k_proj"):
        widgets.spectrum_explorer(REPORT_HISTORY, module="k_proj")


REPORT_HISTORY = {
    0: {"q_proj": {"stable_rank": 3.0, "singular_values": [1.0, 1.0, 1.0]},
        "v_proj": {"stable_rank": 2.0, "singular_values": [1.0, 1.0, 0.0]}},
    100: {"q_proj": {"stable_rank": 1.1, "singular_values": [3.0, 0.9, 0.3]},
          "v_proj": {"stable_rank": 1.5, "singular_values": [2.0, 1.4, 0.1]}},
}


def test_spectrum_explorer_updates_with_module_and_step():
    explorer = widgets.spectrum_explorer(REPORT_HISTORY)
    assert explorer.step.value == 100 and explorer.module.value == "q_proj"
    assert list(explorer.figure.data[0].y) == [3.0, 0.9, 0.3] and explorer.stable_rank == 1.1
    explorer.module.value = "v_proj"
    assert list(explorer.figure.data[0].y) == [2.0, 1.4, 0.1] and explorer.stable_rank == 1.5
    explorer.step.value = 0
    assert list(explorer.figure.data[0].y) == [1.0, 1.0, 0.0] and explorer.stable_rank == 2.0
    assert "stable rank 2.00" in explorer.figure.layout.title.text


def test_display_bundle_holds_widget_and_static_figure():
    explorer = widgets.calibration_explorer(results())
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    plot = bundle["application/vnd.plotly.v1+json"]
    assert len(plot["data"]) == len(explorer.figure.data)


NOTEBOOK_CELL = """
import numpy as np
from polar_vbll import widgets
generator = np.random.default_rng(0)
sample_logits = generator.normal(size=(4, 30, 3))
record = {"probs": widgets.probabilities_from_logits(sample_logits).mean(axis=0),
          "labels": generator.integers(0, 3, size=30), "sample_logits": sample_logits}
explorer = widgets.calibration_explorer({"polar_vbll": {"obqa": record}})
explorer
"""


def test_headless_notebook_execution_leaves_a_plot_in_the_cell_outputs():
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CELL))
    client = NotebookClient(notebook, kernel_name="python3", timeout=60,
                            resources={"metadata": {"path": str(REPOSITORY_ROOT)}})
    client.execute()
    outputs = notebook.cells[0].outputs
    errors = [output for output in outputs if output.output_type == "error"]
    assert not errors, errors
    mime_types = {mime for output in outputs if "data" in output for mime in output["data"]}
    assert mime_types & {"application/vnd.plotly.v1+json", "text/html"}, mime_types
    plotted = [output["data"]["application/vnd.plotly.v1+json"] for output in outputs
               if "application/vnd.plotly.v1+json" in output.get("data", {})]
    assert plotted and any(trace.get("type") == "bar" for trace in plotted[-1]["data"])
    assert "application/vnd.jupyter.widget-view+json" in mime_types

