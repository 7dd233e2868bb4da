"""Tests for polar_vbll.metrics: hand-computed cases, an independent ECE, bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from polar_vbll import metrics
from polar_vbll.errors import DataError, PolarVBLLError, ShapeError

# Six two-class examples chosen so every number below can be checked by hand.
# With 4 bins (edges 0, .25, .5, .75, 1, all exact in binary):
#   bin 1 (.25, .5]: row 5 (conf .5, tie -> predicts class 0, wrong)        acc 0,   conf .5
#   bin 2 (.5, .75]: rows 1 (wrong), 2 (right)                              acc .5,  conf .65
#   bin 3 (.75, 1]: rows 0 (right), 3 (wrong), 4 (conf exactly 1.0, right) acc 2/3, conf .9
# ECE = (1 * .5 + 2 * .15 + 3 * (.9 - 2/3)) / 6 = 1.5 / 6 = 0.25
HAND_PROBS = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [1.0, 0.0], [0.5, 0.5]]
HAND_LABELS = [0, 1, 1, 1, 0, 1]


def ece_by_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Independent ECE: walk over examples one at a time, bin b = ceil(conf * n_bins) - 1."""
    confidence_sums = [0.0] * n_bins
    correct_sums = [0.0] * n_bins
    counts = [0] * n_bins
    for row, label in zip(probs, labels):
        confidence = max(row)
        predicted = list(row).index(confidence)
        bin_index = min(max(math.ceil(confidence * n_bins) - 1, 0), n_bins - 1)
        confidence_sums[bin_index] += confidence
        correct_sums[bin_index] += float(predicted == label)
        counts[bin_index] += 1
    total = 0.0
    for confidence_sum, correct_sum, count in zip(confidence_sums, correct_sums, counts):
        if count:
            total += abs(correct_sum - confidence_sum) / len(labels)
    return total


def random_predictions(seed: int, number_of_examples: int = 500, number_of_classes: int = 4):
    generator = np.random.default_rng(seed)
    logits = generator.normal(scale=2.0, size=(number_of_examples, number_of_classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = generator.integers(0, number_of_classes, size=number_of_examples)
    return probs, labels


def test_hand_case_exact_numbers():
    assert metrics.expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.25, abs=1e-12)
    assert metrics.accuracy(HAND_PROBS, HAND_LABELS) == pytest.approx(0.5)
    # p_y = .9 .4 .7 .2 1 .5
    expected_nll = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.2) + 0.0 + math.log(0.5)) / 6
    assert metrics.negative_log_likelihood(HAND_PROBS, HAND_LABELS) == pytest.approx(expected_nll, abs=1e-12)
    # per row sum_c (p_c - onehot_c)^2 = .02 .72 .18 1.28 0 .5 -> 2.7 / 6
    assert metrics.brier_score(HAND_PROBS, HAND_LABELS) == pytest.approx(0.45, abs=1e-12)


def test_hand_case_reliability_bins():
    bins = metrics.reliability_bins(HAND_PROBS, HAND_LABELS, n_bins=4)
    np.testing.assert_allclose(bins["edges"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(bins["count"], [0, 1, 2, 3])  # 1.0 lands in the last bin
    np.testing.assert_allclose(bins["confidence"], [np.nan, 0.5, 0.65, 0.9], equal_nan=True)
    np.testing.assert_allclose(bins["accuracy"], [np.nan, 0.0, 0.5, 2 / 3], equal_nan=True)


def test_single_bin_ece_is_gap_between_mean_confidence_and_accuracy():
    # one bin: ECE = |mean confidence - accuracy| = |(.9+.6+.7+.8+1+.5)/6 - .5| = |.75 - .5|
    assert metrics.expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=1) == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 5, 15, 20])
def test_ece_matches_independent_loop(seed, n_bins):
    probs, labels = random_predictions(seed)
    assert metrics.expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        ece_by_loop(probs, labels, n_bins), abs=1e-12
    )


def test_reliability_bins_counts_and_weights_reproduce_ece():
    probs, labels = random_predictions(3)
    bins = metrics.reliability_bins(probs, labels, n_bins=10)
    assert bins["count"].sum() == len(labels)
    filled = bins["count"] > 0
    rebuilt = np.sum(bins["count"][filled] / len(labels) * np.abs(bins["accuracy"][filled] - bins["confidence"][filled]))
    assert rebuilt == pytest.approx(metrics.expected_calibration_error(probs, labels, 10))
    assert metrics.calibration_error_of_bins(bins) == metrics.expected_calibration_error(probs, labels, 10)
    assert np.all(np.isnan(bins["confidence"][~filled]))


def test_confidence_bins_are_closed_on_the_right():
    edges, index = metrics.confidence_bins(np.array([0.0, 0.25, 0.2500001, 0.5, 0.99, 1.0]), 4)
    np.testing.assert_allclose(edges, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(index, [0, 0, 1, 1, 3, 3])  # 0.0 goes in the first bin


def test_calibrated_synthetic_data_has_small_ece_and_miscalibrated_has_large():
    generator = np.random.default_rng(7)
    confidence = generator.uniform(0.5, 1.0, size=20000)
    probs = np.stack([confidence, 1 - confidence], axis=1)
    calibrated_labels = np.where(generator.uniform(size=20000) < confidence, 0, 1)
    assert metrics.expected_calibration_error(probs, calibrated_labels) < 0.02
    # Overconfident: the true accuracy is 0.2 below the stated confidence everywhere.
    overconfident_labels = np.where(generator.uniform(size=20000) < confidence - 0.2, 0, 1)
    assert metrics.expected_calibration_error(probs, overconfident_labels) == pytest.approx(0.2, abs=0.02)


def test_nll_zero_probability_is_finite_at_the_floor():
    value = metrics.negative_log_likelihood([[1.0, 0.0]], [1])
    assert value == pytest.approx(-math.log(metrics.PROBABILITY_FLOOR))


def test_brier_perfect_and_worst():
    assert metrics.brier_score([[0.0, 1.0, 0.0]], [1]) == 0.0
    assert metrics.brier_score([[1.0, 0.0, 0.0]], [1]) == pytest.approx(2.0)
    assert metrics.brier_score([[0.25] * 4], [2]) == pytest.approx(0.75)  # 3 * .0625 + .5625


def test_torch_numpy_and_lists_agree_and_summary_is_json():
    probs, labels = random_predictions(4, number_of_examples=50)
    from_numpy = metrics.summarize(probs, labels)
    from_torch = metrics.summarize(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels))
    from_lists = metrics.summarize(probs.tolist(), labels.tolist())
    assert from_numpy == from_lists
    for key in ("accuracy", "ece", "nll", "brier"):
        assert from_torch[key] == pytest.approx(from_numpy[key], abs=1e-6)
    assert from_numpy["n"] == 50
    assert json.loads(json.dumps(from_numpy)) == from_numpy
    assert all(type(from_numpy[key]) is float for key in ("accuracy", "ece", "nll", "brier"))


@pytest.mark.parametrize(
    "probs, labels, error, fragment",
    [
        ([[0.5, 0.4], [0.5, 0.5]], [0, 1], DataError, "row 0 sums to 0.9"),
        ([[1.2, -0.2]], [0], DataError, "negative"),
        ([[np.nan, 1.0]], [0], DataError, "NaN"),
        ([[0.5, 0.5], [0.5, 0.5]], [0, 2], DataError, "labels[1] = 2"),
        ([[0.5, 0.5]], [-1], DataError, "labels[0] = -1"),
        ([[0.5, 0.5]], [0.5], DataError, "integers"),
        (np.zeros((0, 3)), [], DataError, "empty"),
        ([[0.5, 0.5]], [0, 1], ShapeError, "labels has 2"),
        ([0.5, 0.5], [0], ShapeError, "(N, C)"),
        ([[0.5, 0.5]], [[0]], ShapeError, "(N,)"),
    ],
)
def test_bad_inputs_raise_project_errors(probs, labels, error, fragment):
    for function in (metrics.accuracy, metrics.negative_log_likelihood, metrics.brier_score, metrics.summarize):
        with pytest.raises(error) as raised:
            function(probs, labels)
        assert fragment in str(raised.value)
        assert isinstance(raised.value, PolarVBLLError)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, None, "10"])
def test_bad_number_of_bins(n_bins):
    with pytest.raises(DataError, match="n_bins"):
        metrics.expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=n_bins)
    with pytest.raises(DataError, match="n_bins"):
        metrics.reliability_bins(HAND_PROBS, HAND_LABELS, n_bins=n_bins)


def test_row_sum_tolerance_accepts_float32_rounding():
    probs = np.array([[0.3333, 0.3333, 0.3334 + 5e-5]])
    assert metrics.accuracy(probs, [2]) == 1.0


# --------------------------------------------------------------------------- how far to trust an ECE


def test_ece_noise_floor_matches_the_exact_binomial_expectation():
    # every example at confidence 0.7 -> one bin; labels drawn from the model -> the number
    # correct is Binomial(n, 0.7) and the ECE is |k / n - 0.7|: its mean, summed exactly
    n, c = 40, 0.7
    exact = sum(math.comb(n, k) * c ** k * (1 - c) ** (n - k) * abs(k / n - c) for k in range(n + 1))
    probs = np.tile([c, 1 - c], (n, 1))
    floor = metrics.ece_noise_floor(probs, draws=4000, seed=1)
    spread = math.sqrt(c * (1 - c) / n)  # std of k / n, an upper bound on the std of |k/n - c|
    assert abs(floor["mean"] - exact) < 4 * spread / math.sqrt(4000)
    assert floor["p05"] <= floor["mean"] <= floor["p95"] and floor["n"] == n


def test_ece_noise_floor_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=1600)
    small = metrics.ece_noise_floor(probs[:100], draws=300)["mean"]
    large = metrics.ece_noise_floor(probs, draws=300)["mean"]
    assert 2.5 < small / large < 6  # sqrt(16) = 4, give or take the bins' own bias


def test_ece_noise_floor_rejects_bad_input():
    with pytest.raises(DataError, match="draws"):
        metrics.ece_noise_floor(np.full((3, 2), 0.5), draws=0)
    with pytest.raises(DataError, match="sum to 1"):
        metrics.ece_noise_floor(np.full((3, 2), 0.7))


def ece_ratio(a, b, y):  # written out here, as an independent check of metrics.ece_ratio
    return metrics.expected_calibration_error(a, y) / metrics.expected_calibration_error(b, y)


def test_ece_ratio_is_the_ratio_of_the_two_eces():
    rng = np.random.default_rng(3)
    a, b = rng.dirichlet(np.ones(4), size=(2, 300))
    labels = rng.integers(0, 4, 300)
    assert metrics.ece_ratio(a, b, labels) == pytest.approx(ece_ratio(a, b, labels), rel=1e-12)


def test_paired_bootstrap_of_identical_models_is_exactly_one():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, 200)
    result = metrics.paired_bootstrap(ece_ratio, probs, probs, labels, draws=200)
    assert result["value"] == result["low"] == result["high"] == 1.0


def test_paired_bootstrap_interval_covers_a_known_accuracy_gap():
    # a is right on every question, b on every other one: the gap is 0.5 on any resample
    # that keeps the mix, and the interval stays close around it
    labels = np.zeros(400, dtype=int)
    a = np.tile([0.9, 0.1], (400, 1))
    b = np.where(np.arange(400)[:, None] % 2 == 0, [0.9, 0.1], [0.1, 0.9])

    def gap(pa, pb, y):
        return metrics.accuracy(pa, y) - metrics.accuracy(pb, y)

    result = metrics.paired_bootstrap(gap, a, b, labels, draws=500, level=0.9)
    assert result["value"] == pytest.approx(0.5)
    assert 0.43 < result["low"] < 0.5 < result["high"] < 0.57  # +- 1.64 * sqrt(.25 / 400)


def test_paired_bootstrap_needs_the_same_questions():
    with pytest.raises(ShapeError, match=r"\(3, 2\).*\(4, 2\)"):
        metrics.paired_bootstrap(ece_ratio, np.full((3, 2), 0.5), np.full((4, 2), 0.5),
                                 [0, 1, 0])
