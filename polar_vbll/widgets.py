"""Live explorers for JupyterLab and Colab: ipywidgets controls wired to :mod:`polar_vbll.viz`.

Design choice: each explorer re-renders a static ``go.Figure`` into an ``ipywidgets.Output``
whenever a control moves, instead of using ``go.FigureWidget``. FigureWidget is an
anywidget custom widget; JupyterLab runs it, but Colab only runs custom widgets after
``google.colab.output.enable_custom_widget_manager()`` and third-party widget JavaScript
from a CDN, which breaks often. Core controls (Dropdown, IntSlider, Output) work in both
Lab and Colab, and a figure displayed inside an Output uses plotly's normal renderer for
that frontend. The cost, a full redraw per change, is small for figures of a few hundred
bars.

Without a widget frontend (a notebook executed headless for the book, nbconvert, GitHub)
the controls cannot run, so displaying an explorer emits one output whose mime bundle holds
the widget view *and* the current figure (the plotly JSON, plus text/html when plotly's
renderer produces it, e.g. ``PLOTLY_RENDERER=notebook``). A frontend shows the richest type
it can render: the live widget where a widget manager exists, otherwise the static plot.

Out-of-range control values are clamped by the widgets' own bounds (ipywidgets sliders
clamp: bins to [1, 50], samples to [1, S], temperature to [0.1, 10]); the pure functions
:func:`probabilities_from_logits` and :func:`predictive_probabilities` and the
:meth:`CalibrationExplorer.select` method raise project errors instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import ipywidgets as widgets
import numpy as np
import plotly.io as pio
from IPython import get_ipython
from IPython.display import clear_output, display

from polar_vbll import metrics, viz
from polar_vbll.errors import ConfigError, DataError, ShapeError

MAX_BINS = 50
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.1, 10.0
NOISE_FLOOR_DRAWS = 200  # label draws behind the explorer's "ECE of a calibrated model" row


def probabilities_from_logits(logits, temperature: float = 1.0, mask=None) -> np.ndarray:
    """softmax(logits / T) over the last axis; entries that are -inf or masked out get probability 0.

    ``logits``: (..., C), e.g. (N, C) or (S, N, C); ``mask``: bool (N, C), True = valid choice.
    Computed as exp(z - max z) / Σ exp(z - max z) with z = logits / T, so large logits do not
    overflow. Raises ConfigError for T <= 0 and DataError for a row with no valid choice.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a finite number > 0; got {temperature}")
    scaled = metrics.to_numpy(logits, "logits") / temperature
    if np.isnan(scaled).any() or np.isposinf(scaled).any():
        raise DataError("logits hold NaN or +inf; expected finite values (or -inf for absent choices)")
    if mask is not None:
        mask = metrics.to_numpy(mask, "mask").astype(bool)
        if mask.shape != scaled.shape[-mask.ndim:]:
            raise ShapeError(f"mask has shape {mask.shape} but logits have shape {scaled.shape}")
        scaled = np.where(mask, scaled, -np.inf)
    row_max = scaled.max(axis=-1, keepdims=True)
    if np.isneginf(row_max).any():
        raise DataError("a row of logits has no valid choice (all -inf or masked out)")
    exponentials = np.exp(scaled - row_max)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def predictive_probabilities(record, number_of_samples: int | None = None, temperature: float = 1.0):
    """Probabilities shown for a prediction record, and a sentence saying where they come from.

    * record has "sample_logits" (S, N, C): probs = (1/k) Σ_{s<k} softmax(z_s / T), the first
      k = ``number_of_samples`` (default S) last-layer samples;
    * else record has "logits" (N, C): probs = softmax(logits / T);
    * else the stored "probs" (then only the defaults k = None, T = 1 are allowed).
    "mask" (N, C), when present, removes absent choices before the softmax.
    """
    mask = record.get("mask")
    if "sample_logits" in record:
        sample_logits = metrics.to_numpy(record["sample_logits"], "sample_logits")
        if sample_logits.ndim != 3:
            raise ShapeError(f"sample_logits must have shape (S, N, C); got {sample_logits.shape}")
        available = sample_logits.shape[0]
        k = available if number_of_samples is None else number_of_samples
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
            raise ConfigError(f"number_of_samples must be an integer in [1, {available}]; got {number_of_samples!r}")
        probs = probabilities_from_logits(sample_logits[:k], temperature, mask).mean(axis=0)
        return probs, f"mean softmax of the first {k} of {available} last-layer samples, T = {temperature:.2f}"
    if number_of_samples is not None:
        raise ConfigError("number_of_samples needs a record with 'sample_logits' (S, N, C); this one has none")
    if "logits" in record:
        return probabilities_from_logits(record["logits"], temperature, mask), f"softmax(logits / T), T = {temperature:.2f}"
    if temperature != 1.0:
        raise ConfigError("temperature needs a record with 'logits' or 'sample_logits'; this one has only 'probs'")
    probs, _ = viz.prediction_arrays(record)
    return probs, "stored probabilities"


def _figure_bundle(figure) -> dict:
    """Mime bundle of a static figure: plotly JSON always, plus what plotly's renderer adds."""
    bundle = {"application/vnd.plotly.v1+json": json.loads(pio.to_json(figure, validate=False))}
    bundle.update(figure._repr_mimebundle_(validate=False) or {})
    return bundle


class _Explorer:
    """Shared display logic: the live container, with the current figure as a static fallback."""

    container: widgets.Widget
    output: widgets.Output
    figure = None

    def _show(self, figure) -> None:
        """Keep ``figure`` and redraw it in the Output (only inside IPython: plain Python has no display)."""
        self.figure = figure
        if get_ipython() is None:
            return
        with self.output:
            clear_output(wait=True)
            display(figure)

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = _figure_bundle(self.figure)
        bundle.update(self.container._repr_mimebundle_() or {})  # widget view + text/plain
        return bundle


def _check_nested_results(results) -> None:
    if not isinstance(results, Mapping) or not results:
        raise DataError("results must be a non-empty dict {method: {dataset: prediction record}}")
    for method, by_dataset in results.items():
        if not isinstance(by_dataset, Mapping) or not by_dataset:
            raise DataError(f"results[{method!r}] must be a non-empty dict {{dataset: prediction record}}")
        for dataset, record in by_dataset.items():
            name = f"results[{method!r}][{dataset!r}]"
            probs, _ = viz.prediction_arrays(record, name)
            for key, shape in (("logits", probs.shape), ("mask", probs.shape)):
                if key in record and metrics.to_numpy(record[key], key).shape != shape:
                    raise ShapeError(f"{name}[{key!r}] must have shape {shape} like 'probs'")
            if "sample_logits" in record:
                sample_shape = metrics.to_numpy(record["sample_logits"], "sample_logits").shape
                if len(sample_shape) != 3 or sample_shape[1:] != probs.shape or sample_shape[0] < 1:
                    raise ShapeError(f"{name}['sample_logits'] must have shape (S, {probs.shape[0]}, {probs.shape[1]}); "
                                     f"got {sample_shape}")


class CalibrationExplorer(_Explorer):
    """Reliability diagram and metrics of one (method, dataset), with live controls.

    Attributes: ``method``, ``dataset`` (Dropdowns), ``bins``, ``samples`` (IntSliders),
    ``temperature`` (FloatLogSlider), ``figure`` (current go.Figure), ``metrics`` (current
    :func:`polar_vbll.metrics.summarize` dict), ``source`` (where the probabilities come
    from), ``container`` (the VBox that is displayed).
    """

    def __init__(self, results, method: str | None = None, dataset: str | None = None, n_bins: int = 15):
        _check_nested_results(results)
        n_bins = metrics.check_number_of_bins(n_bins)
        if n_bins > MAX_BINS:
            raise ConfigError(f"n_bins must be at most {MAX_BINS} in the explorer; got {n_bins}")
        self.results = results
        self._quiet = True  # no redraw while controls are being reconfigured
        self.method = widgets.Dropdown(options=list(results), description="method")
        self.dataset = widgets.Dropdown(options=[], description="dataset")
        self.bins = widgets.IntSlider(value=n_bins, min=1, max=MAX_BINS, description="bins")
        self.samples = widgets.IntSlider(value=1, min=1, max=1, description="samples", disabled=True)
        self.temperature = widgets.FloatLogSlider(value=1.0, base=10, min=np.log10(MIN_TEMPERATURE),
                                                  max=np.log10(MAX_TEMPERATURE), step=0.02, description="temperature",
                                                  readout_format=".2f", disabled=True)
        self.output = widgets.Output()
        self.table = widgets.HTML()
        self.container = widgets.VBox([widgets.HBox([self.method, self.dataset]),
                                       widgets.HBox([self.bins, self.samples, self.temperature]),
                                       self.output, self.table])
        self.method.observe(self._on_method, names="value")
        for control in (self.dataset, self.bins, self.samples, self.temperature):
            control.observe(self._on_change, names="value")
        self.select(method if method is not None else list(results)[0], dataset)

    def select(self, method: str, dataset: str | None = None) -> None:
        """Show ``method`` on ``dataset`` (default: its first dataset); DataError names the options."""
        if method not in self.results:
            raise DataError(f"method {method!r} is not in the results; available: {list(self.results)}")
        datasets = list(self.results[method])
        if dataset is not None and dataset not in datasets:
            raise DataError(f"dataset {dataset!r} has no results for method {method!r}; available: {datasets}")
        self._quiet = True
        self.method.value = method
        self._configure(dataset)
        self._quiet = False
        self.update()

    def _on_method(self, change) -> None:
        if self._quiet:
            return
        self._quiet = True
        self._configure(self.dataset.value)
        self._quiet = False
        self.update()

    def _on_change(self, change) -> None:
        if change["name"] == "value" and change["owner"] is self.dataset and not self._quiet:
            self._quiet = True
            self._configure(self.dataset.value)
            self._quiet = False
        if not self._quiet:
            self.update()

    def _configure(self, dataset: str | None) -> None:
        """Dataset options of the method, and which sliders apply to the chosen record."""
        datasets = list(self.results[self.method.value])
        self.dataset.options = datasets
        self.dataset.value = dataset if dataset in datasets else datasets[0]
        record = self.record
        if "sample_logits" in record:
            available = len(record["sample_logits"])
            self.samples.max = available
            self.samples.value = available
            self.samples.disabled = False
        else:
            self.samples.max, self.samples.value, self.samples.disabled = 1, 1, True
        has_logits = "logits" in record or "sample_logits" in record
        self.temperature.disabled = not has_logits
        if not has_logits:
            self.temperature.value = 1.0

    @property
    def record(self) -> Mapping:
        return self.results[self.method.value][self.dataset.value]

    def update(self) -> None:
        """Recompute probabilities, metrics and the figure from the current control values."""
        record = self.record
        number_of_samples = None if self.samples.disabled else self.samples.value
        temperature = 1.0 if self.temperature.disabled else float(self.temperature.value)
        probs, self.source = predictive_probabilities(record, number_of_samples, temperature)
        labels = record["labels"]
        self.metrics = metrics.summarize(probs, labels, self.bins.value)
        # what a perfectly calibrated model with these confidences would score on these questions
        self.metrics["ece_noise_floor"] = metrics.ece_noise_floor(probs, self.bins.value,
                                                                  draws=NOISE_FLOOR_DRAWS)
        floor = self.metrics["ece_noise_floor"]
        figure = viz.reliability_diagram({self.method.value: {"probs": probs, "labels": labels}}, self.bins.value)
        figure.update_layout(title_text=f"{self.method.value} on {self.dataset.value} ({self.bins.value} bins)")
        self.table.value = (
            "<table style='font-size:15px'>"
            f"<tr><td>accuracy</td><td>{100 * self.metrics['accuracy']:.1f}%</td></tr>"
            f"<tr><td>ECE ({self.bins.value} bins)</td><td>{100 * self.metrics['ece']:.2f}%</td></tr>"
            f"<tr><td>ECE of a calibrated model, same questions (noise floor)</td>"
            f"<td>{100 * floor['mean']:.2f}% (90% of draws {100 * floor['p05']:.1f}-"
            f"{100 * floor['p95']:.1f}%)</td></tr>"
            f"<tr><td>NLL</td><td>{self.metrics['nll']:.4f} nats</td></tr>"
            f"<tr><td>Brier</td><td>{self.metrics['brier']:.4f}</td></tr>"
            f"<tr><td>examples</td><td>{self.metrics['n']}</td></tr>"
            f"<tr><td>probabilities</td><td>{self.source}</td></tr></table>"
        )
        self._show(figure)


def calibration_explorer(results, method: str | None = None, dataset: str | None = None,
                         n_bins: int = 15) -> CalibrationExplorer:
    """Live reliability diagram + metrics for ``results = {method: {dataset: record}}``."""
    return CalibrationExplorer(results, method, dataset, n_bins)


class SpectrumExplorer(_Explorer):
    """Singular values of ΔW for a chosen module and training step.

    Attributes: ``module`` (Dropdown), ``step`` (SelectionSlider over the recorded steps),
    ``figure``, ``stable_rank`` (of the shown module and step), ``container``.
    """

    def __init__(self, report_history, module: str | None = None):
        if not isinstance(report_history, Mapping) or not report_history:
            raise DataError("report_history must be a non-empty dict {step: {module name: {'stable_rank', 'singular_values'}}}")
        try:
            steps = sorted(report_history, key=float)
        except (TypeError, ValueError) as error:
            raise DataError(f"report_history keys must be training steps (numbers); got {list(report_history)}") from error
        for step in steps:
            if not isinstance(report_history[step], Mapping) or not report_history[step]:
                raise DataError(f"report_history[{step!r}] must be a non-empty dict {{module name: {{...}}}}")
        modules = viz._modules_of(report_history)
        if module is not None and module not in modules:
            raise DataError(f"module {module!r} is not in the report history; available modules: {modules}")
        self.report_history = report_history
        self.module = widgets.Dropdown(options=modules, value=module or modules[0], description="module")
        self.step = widgets.SelectionSlider(options=[(str(step), step) for step in steps], value=steps[-1],
                                            description="step")
        self.output = widgets.Output()
        self.container = widgets.VBox([widgets.HBox([self.module, self.step]), self.output])
        self.module.observe(lambda change: self.update(), names="value")
        self.step.observe(lambda change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        report = self.report_history[self.step.value]
        if self.module.value not in report:
            raise DataError(f"step {self.step.value!r} has no report for module {self.module.value!r}; "
                            f"available: {list(report)}")
        self.stable_rank = float(report[self.module.value]["stable_rank"])
        figure = viz.singular_value_spectrum({f"step {self.step.value}": report}, module=self.module.value,
                                             module_slider=False)
        figure.update_layout(title_text=f"{self.module.value} at step {self.step.value}: "
                                        f"stable rank {self.stable_rank:.2f}")
        self._show(figure)


def spectrum_explorer(report_history, module: str | None = None) -> SpectrumExplorer:
    """Live singular-value spectrum for ``report_history = {step: {module: {"stable_rank", "singular_values"}}}``."""
    return SpectrumExplorer(report_history, module)
