"""Figures and explorers for using uncertainty (:mod:`polar_vbll.uncertainty`).

Pure figures (``go.Figure``, shown static in the book) and the explorers that wire controls to
them in JupyterLab and Colab (the same live-widget-plus-static-fallback display as
:mod:`polar_vbll.widgets`):

* :func:`risk_coverage_figure` and :class:`RiskCoverageExplorer` -- every method's risk-coverage
  curve; the explorer's coverage slider reads off each method's accuracy, confidence threshold
  and how many questions it answers;
* :func:`ood_score_histograms` -- an uncertainty score in and out of distribution, with the AUROC;
* :func:`parse_question`, :func:`ask` and :class:`QuestionExplorer` -- "ask your own question":
  each loaded fine-tune's probabilities for a question and choices you type, with the spread of
  its last-layer samples. Bad input (an empty question, fewer than two or more than five
  choices, a value that is not text) gives a message in the widget, never a traceback.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from polar_vbll import data, uncertainty, viz
from polar_vbll.errors import DataError, PolarVBLLError
from polar_vbll.widgets import _Explorer

MARKED_COVERAGES = uncertainty.COVERAGES


# --------------------------------------------------------------------------- selective prediction

def risk_coverage_figure(results, coverage: float | None = None, title: str | None = None) -> go.Figure:
    """Risk (error rate of the answered questions) against coverage, one line per method.

    ``results``: ``{method: prediction record}``. The legend gives each method's AURC; a dashed
    vertical line marks ``coverage`` when given, dots the coverages of :data:`MARKED_COVERAGES`.
    """
    predictions = viz._check_results(results)
    figure = viz._new_figure(title or "Risk-coverage: answer the most confident questions first")
    for name, (probs, labels) in predictions.items():
        curve = uncertainty.risk_coverage(probs, labels)
        area = float(curve["risk"].mean())
        color = viz.method_color(name)
        figure.add_trace(go.Scatter(x=curve["coverage"].tolist(), y=curve["risk"].tolist(), mode="lines",
                                    name=f"{name} (AURC {area:.3f})", line=dict(color=color, width=2),
                                    meta=dict(method=name, aurc=area)))
        marks = [max(1, math.ceil(c * len(labels) - 1e-9)) - 1 for c in MARKED_COVERAGES]
        figure.add_trace(go.Scatter(x=curve["coverage"][marks].tolist(), y=curve["risk"][marks].tolist(),
                                    mode="markers", marker=dict(color=color, size=8), showlegend=False,
                                    hovertemplate="coverage %{x:.0%}: risk %{y:.1%}<extra>" + name + "</extra>"))
    if coverage is not None:
        figure.add_vline(x=coverage, line_dash="dash", line_color=viz.DIAGONAL_COLOR)
    figure.update_xaxes(range=[0, 1.01], title_text="coverage (fraction of questions answered)", tickformat=".0%")
    figure.update_yaxes(rangemode="tozero", title_text="risk (error rate of the answered)", tickformat=".0%")
    return figure


def coverage_table(results, coverage: float) -> list[dict]:
    """Per method at ``coverage``: questions answered, confidence threshold, accuracy of those."""
    rows = []
    for name, (probs, labels) in viz._check_results(results).items():
        curve = uncertainty.risk_coverage(probs, labels)
        answered = max(1, math.ceil(coverage * len(labels) - 1e-9))
        rows.append({"method": name, "answered": answered, "of": len(labels),
                     "threshold": float(curve["threshold"][answered - 1]),
                     "accuracy": float(curve["accuracy"][answered - 1]),
                     "accuracy at 100%": float(curve["accuracy"][-1])})
    return rows


class RiskCoverageExplorer(_Explorer):
    """The risk-coverage curves with a coverage slider and a table read off at that coverage."""

    def __init__(self, results, coverage: float = 0.8):
        viz._check_results(results)
        self.results = results
        self.coverage = widgets.FloatSlider(value=coverage, min=0.05, max=1.0, step=0.05,
                                            description="coverage", readout_format=".0%")
        self.table = widgets.HTML()
        self.output = widgets.Output()
        self.container = widgets.VBox([self.coverage, self.table, self.output])
        self.coverage.observe(lambda change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        self.rows = coverage_table(self.results, self.coverage.value)
        cells = "".join(f"<tr><td>{r['method']}</td><td>{r['answered']} of {r['of']}</td>"
                        f"<td>{r['threshold']:.2f}</td><td>{100 * r['accuracy']:.1f}%</td>"
                        f"<td>{100 * r['accuracy at 100%']:.1f}%</td></tr>" for r in self.rows)
        self.table.value = ("<table><tr><th>method</th><th>answered</th><th>answer when confidence &ge;</th>"
                            "<th>accuracy of the answered</th><th>accuracy answering all</th></tr>"
                            f"{cells}</table>")
        self._show(risk_coverage_figure(self.results, self.coverage.value))


def risk_coverage_explorer(results, coverage: float = 0.8) -> RiskCoverageExplorer:
    return RiskCoverageExplorer(results, coverage)


# --------------------------------------------------------------------------- OOD detection

def ood_score_histograms(scores_by_dataset: Mapping, in_distribution: str, score: str = "entropy",
                         method: str | None = None, n_bins: int = 20) -> go.Figure:
    """Histograms of one uncertainty score per dataset (fraction of its questions per bin); the
    legend gives each OOD dataset's AUROC against ``in_distribution``.

    ``scores_by_dataset``: ``{dataset: (N,) scores}`` (higher = more uncertain).
    """
    if in_distribution not in scores_by_dataset:
        raise DataError(f"in_distribution={in_distribution!r} is not one of {list(scores_by_dataset)}")
    arrays = {name: np.asarray(values, dtype=float) for name, values in scores_by_dataset.items()}
    top = max(float(values.max()) for values in arrays.values())
    edges = np.linspace(0.0, top if top > 0 else 1.0, n_bins + 1)
    centers = ((edges[:-1] + edges[1:]) / 2).tolist()
    figure = viz._new_figure(f"{score} in and out of distribution" + (f": {method}" if method else ""))
    ordered = [in_distribution] + [name for name in arrays if name != in_distribution]
    for position, dataset in enumerate(ordered):
        values = arrays[dataset]
        counts = np.histogram(values, bins=edges)[0] / len(values)
        is_in = dataset == in_distribution
        label = f"{dataset} (in distribution)" if is_in else \
            f"{dataset} (AUROC {uncertainty.auroc(arrays[in_distribution], values):.2f})"
        color = (viz.method_color(method) if method else viz.DIAGONAL_COLOR) if is_in else \
            viz.FALLBACK_COLORS[position % len(viz.FALLBACK_COLORS)]
        figure.add_trace(go.Scatter(x=centers, y=counts.tolist(), mode="lines", line_shape="hvh", name=label,
                                    line=dict(color=color, width=3, dash="solid" if is_in else "dot"),
                                    fill="tozeroy" if is_in else None))
    figure.update_xaxes(title_text=f"{score} (higher = less sure)")
    figure.update_yaxes(title_text="fraction of questions", tickformat=".0%")
    return figure


# --------------------------------------------------------------------------- ask your own question

def parse_question(question, choices) -> data.Example:
    """An :class:`~polar_vbll.data.Example` from typed text, or DataError saying what is wrong.

    ``choices``: a list of strings, or one string with one choice per line.
    """
    if not isinstance(question, str):
        raise DataError(f"the question must be text; got {type(question).__name__}")
    if not question.strip():
        raise DataError("the question is empty: type a question")
    if isinstance(choices, str):
        choices = choices.splitlines()
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise DataError("the choices must be text, one choice per line")
    choices = tuple(c.strip() for c in choices if c.strip())
    if len(choices) < 2:
        raise DataError(f"{len(choices)} choice(s): give at least 2, one per line")
    if len(choices) > data.NUM_CLASSES:
        raise DataError(f"{len(choices)} choices: give at most {data.NUM_CLASSES}, one per line")
    return data.Example("your question", question.strip(), choices, label=0, task="yours")


def ask(methods: Mapping, question, choices) -> dict:
    """Each method's probabilities for one typed question: ``{name: {"probs" (C,), "spread" (C,)
    or None, "low", "high" (C,) or None}}``. The spread is the standard deviation of each choice's
    probability over the method's last-layer samples (5th and 95th percentiles in low/high);
    None for a method without samples. ``methods``: ``{name: fitted Method}``."""
    example = parse_question(question, choices)
    answers = {}
    for name, method in methods.items():
        record = method.predict([example])
        probs = record["probs"][0, : example.num_choices].double().numpy()
        answer = {"choices": example.choices, "probs": probs, "spread": None, "low": None, "high": None}
        if "sample_logits" in record:
            samples = uncertainty.softmax_samples(record["sample_logits"], record["mask"])[:, 0, : example.num_choices]
            answer.update(spread=samples.std(axis=0), low=np.percentile(samples, 5, axis=0),
                          high=np.percentile(samples, 95, axis=0))
        answers[name] = answer
    return answers


def answers_figure(answers: Mapping, question: str = "") -> go.Figure:
    """Grouped bars: each method's probability per choice, whiskers from the 5th to the 95th
    percentile of its samples where it has them."""
    figure = viz._new_figure(f"Q: {question}" if question else "Your question")
    for name, answer in answers.items():
        error = None
        if answer["low"] is not None:
            error = dict(type="data", symmetric=False, array=(answer["high"] - answer["probs"]).clip(0).tolist(),
                         arrayminus=(answer["probs"] - answer["low"]).clip(0).tolist())
        figure.add_trace(go.Bar(x=list(answer["choices"]), y=answer["probs"].tolist(), name=name,
                                marker_color=viz.method_color(name), error_y=error))
    figure.update_layout(barmode="group")
    figure.update_yaxes(range=[0, 1], title_text="probability", tickformat=".0%")
    return figure


class QuestionExplorer(_Explorer):
    """Text boxes for a question and its choices, a button, each method's answer with its spread."""

    def __init__(self, methods: Mapping, question: str = "", choices: str = ""):
        if not isinstance(methods, Mapping) or not methods:
            raise DataError("methods must be a non-empty dict {name: fitted Method}")
        self.methods = methods
        self.question = widgets.Text(value=question, description="question", layout=dict(width="90%"))
        self.choices = widgets.Textarea(value=choices, description="choices", placeholder="one choice per line",
                                        layout=dict(width="90%", height="110px"))
        self.button = widgets.Button(description="ask")
        self.message = widgets.HTML()
        self.output = widgets.Output()
        self.container = widgets.VBox([self.question, self.choices, self.button, self.message, self.output])
        self.button.on_click(lambda _: self.update())
        self.answers = None
        self.figure = answers_figure({}, "type a question and its choices, then press ask")
        if question or choices:
            self.update()

    def update(self) -> None:
        self.submit(self.question.value, self.choices.value)

    def submit(self, question, choices) -> str:
        """Answer ``question`` / ``choices`` (text, or anything a caller passes) as the button
        does; returns the message the widget shows ("" when the answers were drawn)."""
        try:
            self.answers = ask(self.methods, question, choices)
        except PolarVBLLError as error:  # bad input: say so in the widget
            self.message.value = f"<b style='color:#b00'>{html.escape(str(error))}</b>"
            return str(error)
        self.message.value = ""
        self._show(answers_figure(self.answers, question))
        return ""


def question_explorer(methods: Mapping, question: str = "", choices: str = "") -> QuestionExplorer:
    return QuestionExplorer(methods, question, choices)


__all__ = ["QuestionExplorer", "RiskCoverageExplorer", "answers_figure", "ask", "coverage_table",
           "ood_score_histograms", "parse_question", "question_explorer", "risk_coverage_explorer",
           "risk_coverage_figure"]
