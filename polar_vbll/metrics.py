"""Calibration metrics for multiple-choice predictions: accuracy, ECE, NLL, Brier.

Every function takes ``probs`` of shape (N, C) (one row of class probabilities per
example; a choice that does not exist for an example simply has probability 0) and
``labels`` of shape (N,) (the index of the correct choice). Both may be numpy arrays,
torch tensors or nested lists (as they come back from JSON); they are converted to
float64 numpy internally and checked (see :func:`check_predictions`).

Conventions, as in the Bayesian-LoRA literature (Laplace-LoRA, BLoB):

* The prediction is the *top label* ``argmax_c p_c`` (ties go to the lowest index) and
  its *confidence* is ``max_c p_c``.
* ECE uses ``n_bins`` equal-width bins on [0, 1] with edges ``linspace(0, 1, n_bins+1)``.
  Bins are closed on the right: bin b holds confidences in ``(edge_b, edge_{b+1}]``.
  So a confidence of exactly 1.0 goes in the last bin, and (the only exception) a
  confidence of exactly 0.0 goes in the first bin.
"""

from __future__ import annotations

import numpy as np

from polar_vbll.errors import DataError, ShapeError

ROW_SUM_TOLERANCE = 1e-4
"""How far a row of probabilities may be from summing to 1 before we reject it."""

PROBABILITY_FLOOR = 1e-12
"""NLL clips p_y below at this value, so a zero probability costs -log(1e-12) ≈ 27.6 nats."""


def to_numpy(array, name: str = "array") -> np.ndarray:
    """Convert a numpy array, torch tensor or nested list to a float64 numpy array."""
    if hasattr(array, "detach"):  # a torch tensor; no torch import needed
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name} could not be converted to a float array: {error}") from error


def check_predictions(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``probs`` (N, C) and ``labels`` (N,).

    Returns ``(probs, labels)`` as float64 and int64 numpy arrays. Raises ShapeError for
    wrong dimensions or mismatched lengths, DataError for empty input, NaN/inf,
    negative probabilities, rows not summing to 1 (within ``ROW_SUM_TOLERANCE``), or
    labels that are not integers in [0, C).
    """
    probs = to_numpy(probs, "probs")
    labels = to_numpy(labels, "labels")
    if probs.ndim != 2:
        raise ShapeError(f"probs must have shape (N, C); got shape {probs.shape}")
    if labels.ndim != 1:
        raise ShapeError(f"labels must have shape (N,); got shape {labels.shape}")
    number_of_examples, number_of_classes = probs.shape
    if number_of_examples == 0 or number_of_classes == 0:
        raise DataError(f"probs is empty (shape {probs.shape}); need at least one example and one class")
    if labels.shape[0] != number_of_examples:
        raise ShapeError(
            f"probs has {number_of_examples} rows but labels has {labels.shape[0]} entries; they must match"
        )
    if not np.all(np.isfinite(probs)):
        row = int(np.argwhere(~np.isfinite(probs))[0, 0])
        raise DataError(f"probs holds NaN or inf (first in row {row}: {probs[row].tolist()})")
    if np.any(probs < 0):
        row = int(np.argwhere(probs < 0)[0, 0])
        raise DataError(f"probs holds negative values (first in row {row}: {probs[row].tolist()})")
    row_sums = probs.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad_rows.size:
        row = int(bad_rows[0])
        raise DataError(
            f"each row of probs must sum to 1 (tolerance {ROW_SUM_TOLERANCE}); "
            f"row {row} sums to {row_sums[row]:.6g} ({bad_rows.size} bad rows in all)"
        )
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
        index = int(np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))[0])
        raise DataError(f"labels must be integers; labels[{index}] = {labels[index]}")
    out_of_range = np.flatnonzero((labels < 0) | (labels >= number_of_classes))
    if out_of_range.size:
        index = int(out_of_range[0])
        raise DataError(
            f"labels must lie in [0, {number_of_classes}) for {number_of_classes} classes; "
            f"labels[{index}] = {int(labels[index])}"
        )
    return probs, labels.astype(np.int64)


def check_number_of_bins(n_bins) -> int:
    """Return ``n_bins`` as an int, or raise DataError unless it is an integer >= 1."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise DataError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    return int(n_bins)


def accuracy(probs, labels) -> float:
    """Fraction of examples whose top label equals the true label: mean_i [argmax_c p_ic == y_i]."""
    probs, labels = check_predictions(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def confidence_bins(confidences: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges ``linspace(0, 1, n_bins + 1)`` and the bin index of each confidence, (N,) int.

    Bins are closed on the right (see the module docstring); ``n_bins`` must already be checked.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") returns k for edges[k-1] < c <= edges[k]; bin index is k - 1.
    return edges, np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, n_bins - 1)


def reliability_bins(probs, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Group examples by top-label confidence into ``n_bins`` equal-width bins on [0, 1].

    Bin b holds confidences in ``(edges[b], edges[b+1]]`` (a confidence of exactly 1.0
    goes in the last bin, exactly 0.0 in the first). Returns a dict of arrays:

    * ``edges`` (n_bins + 1,): the bin edges ``linspace(0, 1, n_bins + 1)``
    * ``confidence`` (n_bins,): mean top-label confidence in each bin (NaN if empty)
    * ``accuracy`` (n_bins,): fraction correct in each bin (NaN if empty)
    * ``count`` (n_bins,): number of examples in each bin (int)
    """
    probs, labels = check_predictions(probs, labels)
    n_bins = check_number_of_bins(n_bins)
    confidences = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)  # (N,)
    edges, bin_index = confidence_bins(confidences, n_bins)
    count = np.bincount(bin_index, minlength=n_bins)
    confidence_sum = np.bincount(bin_index, weights=confidences, minlength=n_bins)
    correct_sum = np.bincount(bin_index, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, confidence_sum / count, np.nan)
        bin_accuracy = np.where(count > 0, correct_sum / count, np.nan)
    return {"edges": edges, "confidence": mean_confidence, "accuracy": bin_accuracy, "count": count}


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error (top label, L1, equal-width bins).

    ECE = sum_b (n_b / N) * |acc_b - conf_b|, where n_b is the number of examples whose
    top-label confidence falls in bin b, acc_b their accuracy and conf_b their mean
    confidence. Bin convention: see :func:`reliability_bins`. Empty bins contribute 0.
    """
    return calibration_error_of_bins(reliability_bins(probs, labels, n_bins))


def calibration_error_of_bins(bins: dict[str, np.ndarray]) -> float:
    """The ECE of :func:`reliability_bins`' output, so a caller that has the bins does not bin again."""
    count = bins["count"]
    filled = count > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(count[filled] / count.sum() * gaps))


def negative_log_likelihood(probs, labels) -> float:
    """Mean negative log-likelihood of the true label: -(1/N) sum_i log max(p_{i,y_i}, 1e-12).

    The probability is clipped below at ``PROBABILITY_FLOOR`` (1e-12) so a prediction that
    gives the true label probability 0 costs a finite 27.6 nats instead of infinity.
    """
    probs, labels = check_predictions(probs, labels)
    true_label_probability = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true_label_probability, PROBABILITY_FLOOR))))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: (1/N) sum_i sum_c (p_ic - [c == y_i])^2.

    This is the *sum over classes* form (range [0, 2]), not the one divided by C and not
    the binary top-label form. Absent choices (probability 0, never the label) add 0.
    """
    probs, labels = check_predictions(probs, labels)
    one_hot = np.zeros_like(probs)
    one_hot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


def summarize(probs, labels, n_bins: int = 15) -> dict:
    """All metrics at once, as plain Python numbers (JSON-serializable).

    Returns ``{"accuracy": float, "ece": float, "nll": float, "brier": float, "n": int}``;
    accuracy and ece are fractions in [0, 1] (not percentages), nll is in nats.
    """
    probs, labels = check_predictions(probs, labels)
    return {
        "accuracy": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "n": int(len(labels)),
    }


# --------------------------------------------------------------------------- how far to trust an ECE


def ece_noise_floor(probs, n_bins: int = 15, draws: int = 400, seed: int = 0) -> dict:
    """The ECE a *perfectly calibrated* model with these probabilities shows on this many examples.

    ECE is a biased estimate: even a model whose confidences are exactly right scores above 0,
    because each bin's accuracy is a mean over few examples. Here the labels are drawn from the
    model's own probabilities, ``y_i ~ Categorical(p_i)``, so the model is calibrated by
    construction and every bit of the ECE measured on the draws is sampling noise. With 500
    multiple-choice questions at ~50% confidence this is about 5 points: an ECE near it says
    "as calibrated as we can tell", and a smaller one is luck.

    Returns ``{"mean", "p05", "p95", "draws", "n"}`` (fractions, like
    :func:`expected_calibration_error`).
    """
    probs = check_predictions(probs, np.zeros(len(to_numpy(probs, "probs")), dtype=np.int64))[0]
    n_bins = check_number_of_bins(n_bins)
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise DataError(f"draws must be an integer >= 1; got {draws!r}")
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    values = []
    for _ in range(draws):
        uniform = rng.random((len(probs), 1))
        labels = np.minimum((uniform > cumulative).sum(axis=1), probs.shape[1] - 1)
        values.append(expected_calibration_error(probs, labels, n_bins))
    return {"mean": float(np.mean(values)), "p05": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95)), "draws": int(draws), "n": int(len(probs))}


def ece_ratio(probs_a, probs_b, labels, n_bins: int = 15) -> float:
    """ECE(a) / ECE(b) on the same questions (below 1: model a is the better calibrated)."""
    return (expected_calibration_error(probs_a, labels, n_bins)
            / expected_calibration_error(probs_b, labels, n_bins))


def paired_bootstrap(statistic, probs_a, probs_b, labels, draws: int = 1000, level: float = 0.9,
                     seed: int = 0) -> dict:
    """How sure is a comparison of two models on the same questions? A paired bootstrap.

    ``statistic(probs_a, probs_b, labels) -> float`` (e.g. :func:`ece_ratio`) is
    recomputed on ``draws`` resamples of the *questions* (with replacement, the same questions
    for both models, so what they share cancels). Returns ``{"value", "low", "high", "level",
    "draws"}``: the statistic on all questions and the central ``level`` interval of the
    resampled ones.
    """
    shape_a, shape_b = to_numpy(probs_a, "probs_a").shape, to_numpy(probs_b, "probs_b").shape
    if shape_a != shape_b:
        raise ShapeError(f"paired_bootstrap needs two predictions on the same questions; got "
                         f"probs {shape_a} and {shape_b}")
    probs_a, labels = check_predictions(probs_a, labels)
    probs_b, _ = check_predictions(probs_b, labels)
    if not 0 < level < 1:
        raise DataError(f"level must be between 0 and 1; got {level!r}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(draws)):
        index = rng.integers(0, len(labels), len(labels))
        values.append(statistic(probs_a[index], probs_b[index], labels[index]))
    tail = 100 * (1 - level) / 2
    return {"value": float(statistic(probs_a, probs_b, labels)),
            "low": float(np.percentile(values, tail)), "high": float(np.percentile(values, 100 - tail)),
            "level": float(level), "draws": int(draws)}
