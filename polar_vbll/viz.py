"""Figure builders: data in, ``plotly.graph_objects.Figure`` out. No state, no widgets.

Every builder takes plain Python data (dicts of arrays/lists, as they come back from
JSON) and returns a static ``go.Figure``; the widgets in :mod:`polar_vbll.widgets` only
wire controls to these functions. Controls that must work without a kernel (in the
static book) are plotly ``layout.sliders``: every choice is drawn up front and the slider
only toggles which traces are visible.

A *prediction record* is ``{"probs": (N, C), "labels": (N,)}`` (optionally also
``"logits"``, ``"sample_logits"``, ``"mask"``); ``results`` maps a method name to a record.

Look: one template, ``"polar_vbll"`` (plotly_white with projector-sized fonts), registered
once at import, and a fixed colour per method name (:data:`METHOD_COLORS`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from polar_vbll import metrics
from polar_vbll.errors import ConfigError, DataError

TEMPLATE_NAME = "polar_vbll"

METHOD_COLORS = {
    "zero_shot": "#7f7f7f", "mle": "#1f77b4", "map": "#17becf", "lora": "#aec7e8", "polar": "#2ca02c",
    "lora_vbll": "#ff7f0e", "polar_vbll": "#d62728", "mc_dropout": "#9467bd", "ensemble": "#8c564b",
    "temperature": "#e377c2", "laplace": "#bcbd22", "tfb": "#6b6ecf", "blob": "#fd8d3c", "polar_blob": "#b5cf6b",
    "landing": "#d62728", "retraction": "#1f77b4", "geoopt": "#9467bd",  # notebook 03's Stiefel steps
}
"""Fixed colour per method name, so a method looks the same in every figure."""

FALLBACK_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]

GAP_COLOR, DIAGONAL_COLOR = "rgba(214, 39, 40, 0.30)", "#555555"
ORTHOGONALITY_FLOOR = 1e-16
"""Orthogonality errors at or below 0 are drawn at this value (a log axis cannot show 0)."""


def _register_template() -> None:
    """Register the "polar_vbll" template: plotly_white, large fonts, our colour cycle."""
    if TEMPLATE_NAME in pio.templates:
        return
    template = go.layout.Template(pio.templates["plotly_white"])
    template.layout.font = dict(size=16, family="Helvetica, Arial, sans-serif", color="#222222")
    template.layout.title = dict(font=dict(size=20), x=0.02, xanchor="left")
    template.layout.legend = dict(font=dict(size=14))
    template.layout.colorway = list(METHOD_COLORS.values())
    template.layout.margin = dict(l=70, r=30, t=80, b=70)
    template.layout.height = 460
    pio.templates[TEMPLATE_NAME] = template


_register_template()


def method_color(name: str) -> str:
    """Colour of a method: METHOD_COLORS (case, '-' and ' ' ignored), else a stable fallback."""
    key = str(name).lower().replace("-", "_").replace(" ", "_")
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    return FALLBACK_COLORS[zlib.crc32(key.encode()) % len(FALLBACK_COLORS)]


def prediction_arrays(record, name: str = "record") -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(probs (N, C), labels (N,))`` of a prediction record; DataError if malformed."""
    if not isinstance(record, Mapping):
        raise DataError(f"{name} must be a prediction record (a dict with 'probs' and 'labels'); got {type(record).__name__}")
    for key in ("probs", "labels"):
        if key not in record:
            raise DataError(f"{name} has no '{key}' entry; a prediction record needs 'probs' (N, C) and 'labels' (N,)")
    try:
        return metrics.check_predictions(record["probs"], record["labels"])
    except DataError as error:
        raise type(error)(f"{name}: {error}") from error


def _check_results(results, argument: str = "results") -> dict:
    """``{method: (probs, labels)}`` from a mapping of prediction records."""
    if not isinstance(results, Mapping) or len(results) == 0:
        raise DataError(f"{argument} must be a non-empty dict {{method name: prediction record}}; got {results!r:.80}")
    if "probs" in results and "labels" in results:
        raise DataError(f"{argument} looks like a single prediction record; wrap it: {{'my_method': record}}")
    return {str(name): prediction_arrays(record, f"{argument}[{name!r}]") for name, record in results.items()}


def _plain(values) -> list:
    """Numbers as a plain list, NaN -> None (plotly leaves a gap)."""
    return [None if (value is None or (isinstance(value, float) and math.isnan(value))) else value
            for value in np.asarray(values, dtype=float).tolist()]


def _new_figure(title: str, rows: int = 1, cols: int = 1, **subplot_options) -> go.Figure:
    figure = make_subplots(rows=rows, cols=cols, **subplot_options)  # a grid even for 1 x 1: row/col always work
    figure.update_layout(template=TEMPLATE_NAME, title_text=title)
    return figure


def _slider(labels: list[str], visibility: list[list[bool]], active: int, prefix: str,
            titles: list[str] | None = None) -> dict:
    """A layout.sliders entry whose step i shows the traces visibility[i] (no kernel needed)."""
    steps = []
    for index, (label, visible) in enumerate(zip(labels, visibility)):
        arguments = [{"visible": visible}]
        if titles is not None:
            arguments.append({"title.text": titles[index]})
        steps.append(dict(method="update", label=label, args=arguments))
    return dict(active=active, steps=steps, currentvalue=dict(prefix=prefix), pad=dict(t=60))


# --------------------------------------------------------------------------- calibration

def reliability_diagram(results, n_bins: int = 15, slider_bins=None, arrangement: str = "side_by_side") -> go.Figure:
    """Reliability diagram: accuracy per top-label confidence bin, one panel per method.

    For each method the bars are acc_b (fraction correct among examples whose confidence
    falls in bin b, see :func:`polar_vbll.metrics.reliability_bins`); a translucent red bar
    from acc_b to conf_b shows the gap (above the bar: overconfident), and the dashed
    diagonal is perfect calibration (acc_b = conf_b). The legend names carry the ECE.

    ``arrangement``: "side_by_side" (one subplot per method, bars) or "overlay" (one panel,
    a line per method through the points (conf_b, acc_b)).
    ``slider_bins``: e.g. [5, 10, 15, 20] adds a slider switching the number of bins, drawn
    up front so it works in a static page; it starts at ``n_bins`` if listed, else the first.
    """
    predictions = _check_results(results)
    metrics.check_number_of_bins(n_bins)
    if arrangement not in ("side_by_side", "overlay"):
        raise ConfigError(f"arrangement must be 'side_by_side' or 'overlay'; got {arrangement!r}")
    if slider_bins is None:
        bin_options = [n_bins]
    else:
        bin_options = [metrics.check_number_of_bins(option) for option in slider_bins]
        if not bin_options:
            raise DataError("slider_bins must list at least one number of bins, e.g. [5, 10, 15, 20]")
    active = bin_options.index(n_bins) if n_bins in bin_options else 0

    methods = list(predictions)
    side_by_side = arrangement == "side_by_side" and len(methods) > 1
    if side_by_side:
        figure = _new_figure("Reliability diagram", 1, len(methods), shared_yaxes=True,
                             subplot_titles=methods, horizontal_spacing=0.04)
    else:
        figure = _new_figure("Reliability diagram")
    trace_bins = []  # number of bins each trace belongs to; None = always visible

    panels = range(len(methods)) if side_by_side else [0]
    for panel in panels:
        position = dict(row=1, col=panel + 1) if side_by_side else {}
        figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                    line=dict(color=DIAGONAL_COLOR, dash="dash", width=2),
                                    legendgroup="diagonal", showlegend=panel == 0, hoverinfo="skip"), **position)
        trace_bins.append(None)

    for option in bin_options:
        for index, method in enumerate(methods):
            probs, labels = predictions[method]
            bins = metrics.reliability_bins(probs, labels, option)
            ece = metrics.calibration_error_of_bins(bins)
            name = f"{method} (ECE {100 * ece:.1f}%)"
            centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
            hover_data = np.stack([bins["count"], bins["confidence"], bins["accuracy"]], axis=1)
            hover = ("bin %{x:.2f}<br>mean confidence %{customdata[1]:.3f}<br>accuracy %{customdata[2]:.3f}"
                     "<br>%{customdata[0]} examples<extra>" + method + "</extra>")
            color = method_color(method)
            if side_by_side or arrangement == "side_by_side":
                position = dict(row=1, col=index + 1) if side_by_side else {}
                figure.add_trace(go.Bar(x=centers.tolist(), y=_plain(bins["accuracy"]), width=1.0 / option, name=name,
                                        marker=dict(color=color, line=dict(color="white", width=1)),
                                        # how many questions each bin holds, at the foot of its bar
                                        text=[str(int(count)) if count else "" for count in bins["count"]],
                                        textposition="inside", insidetextanchor="start", textangle=0,
                                        customdata=hover_data.tolist(), hovertemplate=hover,
                                        meta=dict(method=method, n_bins=option, ece=ece)), **position)
                figure.add_trace(go.Bar(x=centers.tolist(), y=_plain(bins["confidence"] - bins["accuracy"]),
                                        base=_plain(bins["accuracy"]), width=1.0 / option, name="gap to confidence",
                                        marker=dict(color=GAP_COLOR, line=dict(color="rgba(214,39,40,0.8)", width=1)),
                                        legendgroup="gap", showlegend=index == 0, hoverinfo="skip",
                                        meta=dict(method=method, n_bins=option, gap=True)), **position)
                trace_bins += [option, option]
            else:
                filled = bins["count"] > 0
                figure.add_trace(go.Scatter(x=bins["confidence"][filled].tolist(), y=bins["accuracy"][filled].tolist(),
                                            mode="lines+markers", name=name, line=dict(color=color, width=3),
                                            marker=dict(size=9), customdata=hover_data[filled].tolist(),
                                            hovertemplate=hover, meta=dict(method=method, n_bins=option, ece=ece)))
                trace_bins.append(option)

    visibility = [[bins_of_trace is None or bins_of_trace == option for bins_of_trace in trace_bins]
                  for option in bin_options]
    for trace, visible in zip(figure.data, visibility[active]):
        trace.visible = visible
    figure.update_layout(barmode="overlay", bargap=0, title_text=f"Reliability diagram ({bin_options[active]} bins)")
    figure.update_xaxes(range=[0, 1], title_text="confidence (top-label probability)")
    figure.update_yaxes(range=[0, 1], tickformat=".0%")
    figure.update_yaxes(title_text="accuracy in bin", row=1, col=1)
    if len(bin_options) > 1:
        titles = [f"Reliability diagram ({option} bins)" for option in bin_options]
        figure.update_layout(sliders=[_slider([str(option) for option in bin_options], visibility, active,
                                              "bins: ", titles)])
    return figure


def confidence_histogram(results, n_bins: int = 20) -> go.Figure:
    """Histogram of top-label confidence, correct and wrong predictions stacked, one panel per method.

    Counts are computed here (same right-closed bins as the ECE), so hovering a bar gives
    the exact number of examples. A well-calibrated model puts its wrong answers at low
    confidence; an overconfident one has wrong answers near 1.
    """
    predictions = _check_results(results)
    n_bins = metrics.check_number_of_bins(n_bins)
    methods = list(predictions)
    figure = _new_figure("Confidence of correct and wrong answers", 1, len(methods), shared_yaxes=True,
                         subplot_titles=methods, horizontal_spacing=0.04)
    for index, method in enumerate(methods):
        probs, labels = predictions[method]
        edges, bin_index = metrics.confidence_bins(probs.max(axis=1), n_bins)
        centers = ((edges[:-1] + edges[1:]) / 2).tolist()
        correct = probs.argmax(axis=1) == labels
        for is_correct, label, color in ((True, "correct", method_color(method)), (False, "wrong", GAP_COLOR)):
            counts = np.bincount(bin_index[correct == is_correct], minlength=n_bins)
            figure.add_trace(go.Bar(x=centers, y=counts.tolist(), width=1.0 / n_bins, name=f"{method}: {label}",
                                    marker=dict(color=color, line=dict(color="white", width=1)),
                                    hovertemplate="confidence %{x:.2f}<br>%{y} examples<extra>" + f"{method}: {label}</extra>"),
                             row=1, col=index + 1)
    figure.update_layout(barmode="stack", bargap=0)
    figure.update_xaxes(range=[0, 1], title_text="confidence (top-label probability)")
    figure.update_yaxes(title_text="number of examples", row=1, col=1)
    return figure


def id_ood_confidence(records_by_dataset, in_distribution: str, n_bins: int = 20, method: str | None = None) -> go.Figure:
    """Top-label confidence on in-distribution vs out-of-distribution data, for one method.

    ``records_by_dataset``: ``{dataset name: prediction record}``. Each dataset is drawn as
    the fraction of its examples per confidence bin (so datasets of different sizes
    compare), the in-distribution one filled. A method that knows what it does not know
    moves the out-of-distribution curves to lower confidence. Mean confidence in the legend.
    """
    predictions = _check_results(records_by_dataset, "records_by_dataset")
    n_bins = metrics.check_number_of_bins(n_bins)
    if in_distribution not in predictions:
        raise DataError(f"in_distribution={in_distribution!r} is not one of the datasets {list(predictions)}")
    title = "Confidence in and out of distribution" + (f": {method}" if method else "")
    figure = _new_figure(title)
    ordered = [in_distribution] + [name for name in predictions if name != in_distribution]
    for position, dataset in enumerate(ordered):
        probs, _ = predictions[dataset]
        confidences = probs.max(axis=1)
        edges, bin_index = metrics.confidence_bins(confidences, n_bins)
        centers = ((edges[:-1] + edges[1:]) / 2).tolist()
        fractions = np.bincount(bin_index, minlength=n_bins) / len(confidences)
        is_in = dataset == in_distribution
        kind = "in-distribution" if is_in else "out-of-distribution"
        if is_in:
            color = method_color(method) if method else DIAGONAL_COLOR
        else:
            color = FALLBACK_COLORS[position % len(FALLBACK_COLORS)]
        figure.add_trace(go.Scatter(x=centers, y=fractions.tolist(), mode="lines", line_shape="hvh",
                                    name=f"{dataset} ({kind}, mean confidence {100 * confidences.mean():.0f}%)",
                                    line=dict(color=color, width=3, dash="solid" if is_in else "dot"),
                                    fill="tozeroy" if is_in else None,
                                    meta=dict(dataset=dataset, in_distribution=is_in,
                                              mean_confidence=float(confidences.mean()))))
    figure.update_xaxes(range=[0, 1], title_text="confidence (top-label probability)")
    figure.update_yaxes(title_text="fraction of examples", tickformat=".0%")
    return figure


# --------------------------------------------------------------------------- adapters

def _modules_of(reports: Mapping) -> list[str]:
    modules: list[str] = []
    for report in reports.values():
        for module in report:
            if module not in modules:
                modules.append(module)
    return modules


def singular_value_spectrum(reports, module: str | None = None, module_slider: bool = True) -> go.Figure:
    """Sorted singular values of each adapter update ΔW, per module, for several runs.

    ``reports``: ``{label: {module name: {"stable_rank": float, "singular_values": [...]}}}``
    (labels such as "lora" and "polar"). Bars σ_1 ≥ σ_2 ≥ … per label; the legend shows the
    stable rank ‖ΔW‖_F² / ‖ΔW‖_2² = Σσ_i² / σ_1². A slider chooses the module (drawn up
    front, works without a kernel); ``module`` picks the one shown first.
    """
    if not isinstance(reports, Mapping) or not reports:
        raise DataError("reports must be a non-empty dict {label: {module name: {'stable_rank', 'singular_values'}}}")
    for label, report in reports.items():
        if not isinstance(report, Mapping) or not report:
            raise DataError(f"reports[{label!r}] must be a non-empty dict "
                            "{module name: {'stable_rank', 'singular_values'}}")
    modules = _modules_of(reports)
    if module is None:
        module = modules[0]
    if module not in modules:
        raise DataError(f"module {module!r} is not in the reports; available modules: {modules}")
    shown_modules = modules if module_slider else [module]

    figure = _new_figure("")
    trace_module = []
    for shown in shown_modules:
        for label, report in reports.items():
            if shown not in report:
                continue
            entry = report[shown]
            for key in ("stable_rank", "singular_values"):
                if key not in entry:
                    raise DataError(f"reports[{label!r}][{shown!r}] has no {key!r} entry")
            values = np.sort(metrics.to_numpy(entry["singular_values"], "singular_values").ravel())[::-1]
            figure.add_trace(go.Bar(x=list(range(1, len(values) + 1)), y=values.tolist(),
                                    name=f"{label} (stable rank {float(entry['stable_rank']):.2f})",
                                    marker=dict(color=method_color(label)),
                                    hovertemplate="σ_%{x} = %{y:.4g}<extra>" + label + "</extra>",
                                    meta=dict(label=label, module=shown, stable_rank=float(entry["stable_rank"]))))
            trace_module.append(shown)
    active = shown_modules.index(module)
    visibility = [[owner == shown for owner in trace_module] for shown in shown_modules]
    for trace, visible in zip(figure.data, visibility[active]):
        trace.visible = visible
    titles = [f"Singular values of ΔW: {shown}" for shown in shown_modules]
    figure.update_layout(barmode="group", title_text=titles[active])
    figure.update_xaxes(title_text="index i (sorted, largest first)", dtick=1)
    figure.update_yaxes(title_text="singular value σ_i")
    if len(shown_modules) > 1:
        figure.update_layout(sliders=[_slider(shown_modules, visibility, active, "module: ", titles)])
    return figure


def _check_history(history, argument: str, required: tuple[str, ...]) -> dict:
    if not isinstance(history, Mapping) or not history:
        raise DataError(f"{argument} must be a non-empty dict {{label: list of {{'step', ...}}}}")
    for label, entries in history.items():
        if isinstance(entries, (str, bytes)) or not hasattr(entries, "__len__") or len(entries) == 0:
            raise DataError(f"{argument}[{label!r}] must be a non-empty list of dicts with keys {list(required)}")
        for position, entry in enumerate(entries):
            for key in required:
                if not isinstance(entry, Mapping) or key not in entry:
                    raise DataError(f"{argument}[{label!r}][{position}] has no {key!r} entry (needs {list(required)})")
    return {str(label): sorted(entries, key=lambda entry: entry["step"]) for label, entries in history.items()}


def stable_rank_over_training(history, per_module: bool = False) -> go.Figure:
    """Mean stable rank of the adapter updates over training steps, one line per label.

    ``history``: ``{label: [{"step": int, "stable_rank": {module: float}}, ...]}``. The
    line is the mean over modules at each step; ``per_module=True`` adds a thin dotted
    line per module in the same colour. LoRA typically collapses towards 1; PoLAR does not.
    """
    history = _check_history(history, "history", ("step", "stable_rank"))
    figure = _new_figure("Stable rank over training")
    for label, entries in history.items():
        steps = [int(entry["step"]) for entry in entries]
        for position, entry in enumerate(entries):
            if not isinstance(entry["stable_rank"], Mapping) or not entry["stable_rank"]:
                raise DataError(f"history[{label!r}][{position}]['stable_rank'] must be a non-empty dict {{module: float}}")
        means = [float(np.mean(list(entry["stable_rank"].values()))) for entry in entries]
        color = method_color(label)
        figure.add_trace(go.Scatter(x=steps, y=means, mode="lines+markers", name=f"{label} (mean over modules)",
                                    line=dict(color=color, width=3), legendgroup=label))
        if per_module:
            for module in _modules_of({step: entry["stable_rank"] for step, entry in enumerate(entries)}):
                figure.add_trace(go.Scatter(x=steps, y=[entry["stable_rank"].get(module) for entry in entries],
                                            mode="lines", name=f"{label}: {module}", legendgroup=label,
                                            line=dict(color=color, width=1, dash="dot"), opacity=0.6))
    figure.update_xaxes(title_text="training step")
    figure.update_yaxes(title_text="stable rank ‖ΔW‖_F² / ‖ΔW‖_2²", rangemode="tozero")
    return figure


def orthogonality_over_training(history) -> go.Figure:
    """Distance of the Stiefel factors from orthonormality over training, log scale.

    ``history``: ``{label: [{"step": int, "orthogonality_error": float}, ...]}`` with labels
    such as "landing", "retraction", "geoopt"; the error is ‖XᵀX − I‖_F. Values ≤ 0 are
    drawn at ``ORTHOGONALITY_FLOOR`` (1e-16) since a log axis cannot show 0.
    """
    history = _check_history(history, "history", ("step", "orthogonality_error"))
    figure = _new_figure("Orthogonality error over training")
    for label, entries in history.items():
        errors = [max(float(entry["orthogonality_error"]), ORTHOGONALITY_FLOOR) for entry in entries]
        figure.add_trace(go.Scatter(x=[int(entry["step"]) for entry in entries], y=errors, mode="lines+markers",
                                    name=label, line=dict(color=method_color(label), width=3)))
    figure.update_xaxes(title_text="training step")
    figure.update_yaxes(type="log", title_text="orthogonality error ‖XᵀX − I‖_F", exponentformat="power")
    return figure


def training_curves(history) -> go.Figure:
    """Training loss (and the ELBO bound, dashed, when logged) over steps; KL in a second panel.

    ``history``: ``{label: [{"step": int, "loss": float, "bound": float?, "kl": float?}, ...]}``.
    The KL panel appears only when some entry has "kl". Loss and bound are in nats per example.
    """
    history = _check_history(history, "history", ("step", "loss"))
    has_kl = any("kl" in entry for entries in history.values() for entry in entries)
    if has_kl:
        figure = _new_figure("Training curves", 1, 2, subplot_titles=["loss", "KL(q ‖ p)"], horizontal_spacing=0.1)
    else:
        figure = _new_figure("Training curves")
    panel = dict(row=1, col=1) if has_kl else {}
    for label, entries in history.items():
        color = method_color(label)
        steps = [int(entry["step"]) for entry in entries]
        figure.add_trace(go.Scatter(x=steps, y=[float(entry["loss"]) for entry in entries], mode="lines",
                                    name=f"{label}: loss", line=dict(color=color, width=3), legendgroup=label), **panel)
        with_bound = [entry for entry in entries if "bound" in entry]
        if with_bound:
            figure.add_trace(go.Scatter(x=[int(entry["step"]) for entry in with_bound],
                                        y=[float(entry["bound"]) for entry in with_bound], mode="lines",
                                        name=f"{label}: bound", line=dict(color=color, width=2, dash="dash"),
                                        legendgroup=label), **panel)
        with_kl = [entry for entry in entries if "kl" in entry]
        if with_kl:
            figure.add_trace(go.Scatter(x=[int(entry["step"]) for entry in with_kl],
                                        y=[float(entry["kl"]) for entry in with_kl], mode="lines",
                                        name=f"{label}: KL", line=dict(color=color, width=2, dash="dot"),
                                        legendgroup=label), row=1, col=2)
    figure.update_xaxes(title_text="training step")
    figure.update_yaxes(title_text="loss (nats per example)", row=1, col=1)
    if has_kl:
        figure.update_yaxes(title_text="KL (nats)", row=1, col=2)
    return figure


METRIC_AXES = {
    "accuracy": ("accuracy (%) ↑", 100.0),
    "ece": ("ECE (%) ↓", 100.0),
    "nll": ("NLL (nats) ↓", 1.0),
    "brier": ("Brier score ↓", 1.0),
}
"""Metric key -> (axis title with unit and better direction, scale factor for display)."""


def metric_comparison(table) -> go.Figure:
    """Bars per method for accuracy, ECE, NLL and Brier, one subplot per metric.

    ``table``: ``{method: {"accuracy", "ece", "nll", "brier"}}`` as from
    :func:`polar_vbll.metrics.summarize` (accuracy and ece as fractions; they are drawn
    in percent). Each method keeps its colour across the four panels.
    """
    if not isinstance(table, Mapping) or not table:
        raise DataError("table must be a non-empty dict {method: {'accuracy', 'ece', 'nll', 'brier'}}")
    for method, row in table.items():
        missing = [key for key in METRIC_AXES if not isinstance(row, Mapping) or key not in row]
        if missing:
            raise DataError(f"table[{method!r}] is missing {missing}; each method needs {list(METRIC_AXES)}")
    methods = [str(method) for method in table]
    figure = _new_figure("Comparison of methods", 1, len(METRIC_AXES),
                         subplot_titles=[title for title, _ in METRIC_AXES.values()], horizontal_spacing=0.07)
    for column, (key, (_, scale)) in enumerate(METRIC_AXES.items(), start=1):
        for method, row in table.items():
            value = scale * float(row[key])
            figure.add_trace(go.Bar(x=[str(method)], y=[value], name=str(method), legendgroup=str(method),
                                    showlegend=column == 1, marker=dict(color=method_color(method)),
                                    text=[f"{value:.1f}" if scale == 100.0 else f"{value:.3f}"], textposition="outside",
                                    hovertemplate=f"{method}: %{{y:.4g}}<extra>{key}</extra>",
                                    meta=dict(method=str(method), metric=key)),
                             row=1, col=column)
        figure.update_yaxes(title_text=METRIC_AXES[key][0], row=1, col=column, rangemode="tozero")
    figure.update_xaxes(showticklabels=False)
    figure.update_layout(height=480, width=max(900, 180 * len(METRIC_AXES) + 60 * len(methods)))
    return figure


def accuracy_vs_ece(rows_by_task) -> go.Figure:
    """One panel per task: each method's accuracy against its ECE, with the ECE noise-floor band.

    ``rows_by_task``: ``{task: [{"method", "accuracy", "ece", "ece_floor"}, ...]}`` as from
    :func:`polar_vbll.results.method_rows` (fractions; drawn in percent).
    """
    if not isinstance(rows_by_task, Mapping) or not all(rows_by_task.values()):
        raise DataError("rows_by_task must be a non-empty dict {task: [row, ...]} with rows for every task")
    figure = _new_figure("Accuracy against calibration error", 1, len(rows_by_task),
                         subplot_titles=list(rows_by_task), horizontal_spacing=0.08)
    for column, rows in enumerate(rows_by_task.values(), start=1):
        floors = [100 * row["ece_floor"] for row in rows]
        figure.add_vrect(x0=np.percentile(floors, 5), x1=np.percentile(floors, 95), fillcolor="#bbbbbb",
                         opacity=0.3, line_width=0, row=1, col=column)
        for row in rows:
            method = str(row["method"])
            figure.add_trace(go.Scatter(
                x=[100 * row["ece"]], y=[100 * row["accuracy"]], mode="markers+text", text=[method],
                textposition="top center", textfont=dict(size=11), name=method, showlegend=False,
                marker=dict(size=11, color=method_color(method.split(" ")[0])),
                hovertemplate=f"{method}: ECE %{{x:.1f}}%, ACC %{{y:.1f}}%<extra></extra>"), row=1, col=column)
        figure.update_xaxes(title_text="ECE (%)", rangemode="tozero", row=1, col=column)
        figure.update_yaxes(title_text="accuracy (%)", row=1, col=column)
    figure.update_layout(height=520)
    return figure
