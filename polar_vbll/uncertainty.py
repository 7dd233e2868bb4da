"""Using uncertainty: abstain when unsure, flag questions from elsewhere, split what is unknown.

Three uses of a model's probabilities ``probs`` (N, C) (and, for methods that sample, of its
sampled probabilities ``sample_probs`` (S, N, C)), each one number or one curve:

* **Selective prediction.** Answer the questions in order of decreasing confidence
  ``max_c p_ic`` and stop at a coverage k / N. The *risk-coverage curve* is the error rate of
  the k answered questions, for k = 1 .. N::

      risk(k) = (1/k) * sum_{j <= k} [prediction_(j) is wrong]        (j-th most confident)

  AURC is its mean over k (the area under the curve, one step per question); the best possible
  ordering (every right answer before every wrong one) has the smallest AURC for the same
  accuracy, and the *excess AURC* (AURC minus that minimum) measures the ordering alone.
  Ties in confidence keep the questions' order (a stable sort), as :func:`numpy.argsort` does.

* **Out-of-distribution detection.** A score u(x) that should be higher for questions unlike
  the training data (``1 - max p``, the predictive entropy, the mutual information); the AUROC
  of in-distribution against out-of-distribution questions is the probability that a random
  OOD question scores higher than a random in-distribution one, ties counting one half::

      AUROC = P(u_out > u_in) + 0.5 P(u_out = u_in)        (Mann-Whitney U / (n_in n_out))

  0.5 is chance, 1 a perfect detector.

* **The entropy split.** With S sampled probability vectors p^(s) of a question (last-layer
  samples, dropout passes, ensemble members) and their mean p̄::

      H[p̄]            =  E_s H[p^(s)]      +  ( H[p̄] - E_s H[p^(s)] )
      total (predictive)   expected entropy      mutual information I(y; w)
                           (aleatoric: the       (epistemic: the samples
                           question itself)      disagree)

  The mutual information is >= 0 (entropy is concave) and is 0 when all samples agree.

Everything is float64 numpy; inputs may be numpy arrays, torch tensors or lists, as in
:mod:`polar_vbll.metrics`. Entropies are in nats, with 0 log 0 = 0 (absent choices).
"""

from __future__ import annotations

import math

import numpy as np

from polar_vbll.errors import DataError, ShapeError
from polar_vbll.metrics import check_predictions, to_numpy

COVERAGES = (0.5, 0.8)  # the coverages the course reports accuracy at
OOD_SCORES = ("max probability", "entropy", "mutual information")


# --------------------------------------------------------------------------- selective prediction

def _correct_by_confidence(probs, labels, confidence=None) -> np.ndarray:
    """[prediction right] for each question, most confident first, (N,) float."""
    probs, labels = check_predictions(probs, labels)
    confidence = probs.max(axis=1) if confidence is None else to_numpy(confidence, "confidence")
    if confidence.shape != labels.shape:
        raise ShapeError(f"confidence must have shape {labels.shape}; got {confidence.shape}")
    order = np.argsort(-confidence, kind="stable")
    return (probs.argmax(axis=1) == labels).astype(np.float64)[order]


def risk_coverage(probs, labels, confidence=None) -> dict[str, np.ndarray]:
    """The risk-coverage curve: answer the k most confident questions, k = 1 .. N.

    Returns ``coverage`` (k / N), ``risk`` (error rate of the k answered), ``accuracy``
    (1 - risk) and ``threshold`` (the k-th highest confidence: answer when confidence >= it),
    each (N,). ``confidence`` (N,) replaces ``max_c p_ic`` as the ordering when given.
    """
    probs_np, labels_np = check_predictions(probs, labels)
    conf = probs_np.max(axis=1) if confidence is None else to_numpy(confidence, "confidence")
    correct = _correct_by_confidence(probs_np, labels_np, conf)
    answered = np.arange(1, len(correct) + 1, dtype=np.float64)
    accuracy = np.cumsum(correct) / answered
    return {"coverage": answered / len(correct), "risk": 1.0 - accuracy, "accuracy": accuracy,
            "threshold": np.sort(conf)[::-1].copy()}


def aurc(probs, labels, confidence=None) -> float:
    """Area under the risk-coverage curve: (1/N) sum_k risk(k). Lower is better."""
    return float(risk_coverage(probs, labels, confidence)["risk"].mean())


def optimal_aurc(probs, labels) -> float:
    """The AURC of the best ordering for the same predictions: every right answer first.

    With E wrong answers of N: risk(k) = 0 for k <= N - E and (k - N + E) / k after.
    """
    probs, labels = check_predictions(probs, labels)
    n = len(labels)
    errors = int((probs.argmax(axis=1) != labels).sum())
    k = np.arange(n - errors + 1, n + 1, dtype=np.float64)
    return float(((k - (n - errors)) / k).sum() / n)


def excess_aurc(probs, labels, confidence=None) -> float:
    """AURC minus the AURC of the best ordering: how much the confidence's ordering costs."""
    return aurc(probs, labels, confidence) - optimal_aurc(probs, labels)


def accuracy_at_coverage(probs, labels, coverage: float, confidence=None) -> float:
    """Accuracy on the ceil(coverage * N) most confident questions (coverage in (0, 1])."""
    if not isinstance(coverage, (int, float)) or not 0 < coverage <= 1:
        raise DataError(f"coverage must be a number in (0, 1]; got {coverage!r}")
    curve = risk_coverage(probs, labels, confidence)
    answered = max(1, math.ceil(coverage * len(curve["coverage"]) - 1e-9))
    return float(curve["accuracy"][answered - 1])


def selective_summary(probs, labels) -> dict:
    """AURC, excess AURC and accuracy at :data:`COVERAGES`, as plain floats."""
    summary = {"aurc": aurc(probs, labels), "excess_aurc": excess_aurc(probs, labels)}
    for coverage in COVERAGES:
        summary[f"accuracy@{round(100 * coverage)}"] = accuracy_at_coverage(probs, labels, coverage)
    return summary


# --------------------------------------------------------------------------- entropies

def _entropy(probs: np.ndarray) -> np.ndarray:
    """-sum_c p_c log p_c over the last axis, with 0 log 0 = 0."""
    safe = np.where(probs > 0, probs, 1.0)
    return -(probs * np.log(safe)).sum(axis=-1)


def _check_probability_rows(probs, name: str, ndim: int) -> np.ndarray:
    probs = to_numpy(probs, name)
    if probs.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions; got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise DataError(f"{name} must hold finite probabilities >= 0")
    if np.abs(probs.sum(-1) - 1).max() > 1e-4:
        raise DataError(f"every row of {name} must sum to 1")
    return probs


def predictive_entropy(probs) -> np.ndarray:
    """H[p] = -sum_c p_c log p_c per question, (N,), in nats."""
    return _entropy(_check_probability_rows(probs, "probs", 2))


def softmax_samples(sample_logits, mask=None) -> np.ndarray:
    """softmax over choices of (S, N, C) sampled logits; absent choices (mask False, or -inf) get 0."""
    logits = to_numpy(sample_logits, "sample_logits")
    if logits.ndim != 3:
        raise ShapeError(f"sample_logits must have shape (S, N, C); got {logits.shape}")
    if mask is not None:
        logits = np.where(to_numpy(mask, "mask").astype(bool), logits, -np.inf)
    top = logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(logits - top)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def entropy_split(sample_probs) -> dict[str, np.ndarray]:
    """Total = expected entropy + mutual information, per question, from (S, N, C) samples.

    ``total`` H[mean_s p^(s)], ``aleatoric`` mean_s H[p^(s)], ``epistemic`` their difference
    (the mutual information between the answer and the sampled weights), each (N,).
    """
    samples = _check_probability_rows(sample_probs, "sample_probs", 3)
    total = _entropy(samples.mean(axis=0))
    aleatoric = _entropy(samples).mean(axis=0)
    return {"total": total, "aleatoric": aleatoric, "epistemic": total - aleatoric}


def mutual_information(sample_probs) -> np.ndarray:
    """I(y; w) = H[mean_s p^(s)] - mean_s H[p^(s)] per question, (N,)."""
    return entropy_split(sample_probs)["epistemic"]


# --------------------------------------------------------------------------- OOD detection

def auroc(in_scores, out_scores) -> float:
    """P(u_out > u_in) + 0.5 P(u_out = u_in): the Mann-Whitney U over n_in * n_out, via average
    ranks (tied scores share the mean of their ranks), so O((n_in + n_out) log(n_in + n_out))."""
    inside, outside = to_numpy(in_scores, "in_scores").ravel(), to_numpy(out_scores, "out_scores").ravel()
    if not len(inside) or not len(outside):
        raise DataError("AUROC needs at least one in-distribution and one out-of-distribution score")
    scores = np.concatenate([inside, outside])
    if not np.isfinite(scores).all():
        raise DataError("AUROC scores must be finite")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):  # one entry per distinct score
        ranks[order[start:end]] = 0.5 * (start + 1 + end)
    n_out = len(outside)
    u = ranks[len(inside):].sum() - n_out * (n_out + 1) / 2
    return float(u / (len(inside) * n_out))


def ood_scores(probs, sample_probs=None) -> dict[str, np.ndarray]:
    """Uncertainty scores per question (higher = more likely out of distribution):
    ``max probability`` (1 - max_c p_c), ``entropy`` and, given samples, ``mutual information``."""
    probs = _check_probability_rows(probs, "probs", 2)
    scores = {"max probability": 1.0 - probs.max(axis=1), "entropy": _entropy(probs)}
    if sample_probs is not None:
        scores["mutual information"] = mutual_information(sample_probs)
    return scores


def ood_auroc(in_probs, out_probs, in_samples=None, out_samples=None) -> dict[str, float]:
    """AUROC of every score of :func:`ood_scores` (mutual information only given both samples)."""
    inside = ood_scores(in_probs, in_samples if out_samples is not None else None)
    outside = ood_scores(out_probs, out_samples if in_samples is not None else None)
    return {name: auroc(inside[name], outside[name]) for name in inside}


__all__ = ["COVERAGES", "OOD_SCORES", "accuracy_at_coverage", "aurc", "auroc", "entropy_split",
           "excess_aurc", "mutual_information", "ood_auroc", "ood_scores", "optimal_aurc",
           "predictive_entropy", "risk_coverage", "selective_summary", "softmax_samples"]
