"""Training-free Bayesianization (TFB, Shi et al. 2024): a posterior on a trained LoRA, no training.

**The posterior.** A trained LoRA layer has Delta W = s B A (s = alpha / r). With the thin SVD
B = U D V^T (U (out, r) with orthonormal columns, D the r singular values) move V^T into A:

    Delta W = s (U D) (V^T A) = s B' A',     B' = U D,   A' = V^T A.

TFB keeps B' fixed and puts an independent Gaussian on each entry of A',

    A'_ij ~ N(A'_ij, (sigma / (s D_i))^2),   so   Delta W = Delta W_trained + sigma U Z,

with Z (r, in) standard normal: in the coordinates U^T Delta W (r x in) that the posterior spans,
the weight noise is isotropic, covariance sigma^2 I (a low-rank isotropic Gaussian), with one
scale sigma for every adapted layer. The sampled layer computes
``base(x) + adapter(x) + sigma (x Z^T) U^T``: no weight is formed, the cost is LoRA's.
(TFB's code puts the scale on B A without the factor s; here sigma is the scale of Delta W
itself.) The sign of each column of U is fixed (its largest entry positive), so a loaded
checkpoint draws the same weights on any machine.

**Choosing sigma** (the search). TFB takes the largest sigma that leaves the deterministic
model's own answers nearly as likely. On the anchor questions (the first
:data:`ANCHOR_QUESTIONS` validation questions) with y_hat the deterministic model's answers,

    l(sigma) = mean_n -log p_sigma(y_hat_n | x_n),    p_sigma = mean of S sampled softmaxes,

and sigma is accepted when |l(sigma) - l(0)| <= epsilon l(0), epsilon = :data:`THRESHOLD` = 0.01
(TFB's default ``--th``; its code further divides this relative change by the number of anchor
questions, which makes the bound grow with the anchor set; here it does not). Every evaluation
uses the same S noise draws (common random numbers), so l is a smooth function of sigma and the
search is deterministic. :func:`search_scale` brackets the answer by factors of 4 from
:data:`INITIAL_SCALE` (up while accepted, down while not), then halves the bracket in log sigma
:data:`BISECTION_STEPS` = 3 times (a bracket ratio of 4^(1/8) = 1.19), and returns the
accepted end: the change at sigma is within the threshold and at 2 sigma beyond it. About 6-8
evaluations of S passes over the anchor questions in all (TFB: 5-10 linear bisections between
fixed bounds).

**Prediction**: the mean softmax over S = ``profile.adapter_samples`` weight draws (10, as in
TFB), all draws for one batch of questions before the next (so a prefix of a test set gets the
same draws on its own). Each draw is one more pass of the adapted layers over every choice of the
question: S backbone passes, S x choices sequences per question; with the course profile's
feature cache only the top ``adapt_layers`` layers repeat.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from polar_vbll import data
from polar_vbll.adapters import LoRALinear
from polar_vbll.errors import ConfigError

THRESHOLD = 0.01  # epsilon: the largest accepted relative change of the anchor NLL
ANCHOR_QUESTIONS = 200  # validation questions the search evaluates (its anchor set)
INITIAL_SCALE = 1e-2  # where the bracketing starts
BISECTION_STEPS = 3  # halvings of the bracket [sigma, 4 sigma] in log sigma
MAX_BRACKET_STEPS = 12  # factors of 4 tried each way before giving up (4^12 ~ 1.7e7)


def relative_nll_change(reference_probs: torch.Tensor, sampled_probs: torch.Tensor) -> float:
    """|l(sigma) - l(0)| / l(0), the NLL of the reference's own answers (its argmax) under the
    sampled predictive against the reference's; both (N, C), 0 at absent choices."""
    answers = reference_probs.argmax(-1, keepdim=True)  # (N, 1)
    reference = -reference_probs.double().gather(1, answers).log().mean()
    sampled = -sampled_probs.double().gather(1, answers).log().mean()
    return float((sampled - reference).abs() / reference)


def search_scale(change: Callable[[float], float], threshold: float = THRESHOLD,
                 initial: float = INITIAL_SCALE, steps: int = BISECTION_STEPS
                 ) -> tuple[float, list[tuple[float, float]]]:
    """The largest sigma found with ``change(sigma) <= threshold``, and the trace [(sigma, change)].

    Brackets by factors of 4 from ``initial``, then ``steps`` bisections in log sigma; returns the
    accepted end of the final bracket, whose other end (at most twice as large) is beyond the
    threshold. ``change`` should grow with sigma (it does for TFB's NLL: noise flattens the
    predictive); ConfigError when no bracket is found within 4^12 either way.
    """
    if not threshold > 0 or not initial > 0 or steps < 1:
        raise ConfigError(f"search_scale needs threshold > 0, initial > 0, steps >= 1; got "
                          f"{threshold}, {initial}, {steps}")
    trace = []

    def accepted(sigma: float) -> bool:
        trace.append((sigma, change(sigma)))
        return trace[-1][1] <= threshold

    low = high = None
    sigma = initial
    for _ in range(MAX_BRACKET_STEPS):
        if accepted(sigma):
            low = sigma
            if high is not None:
                break
            sigma *= 4
        else:
            high = sigma
            if low is not None:
                break
            sigma /= 4
    if low is None or high is None:
        raise ConfigError(f"TFB's scale search found no bracket within {INITIAL_SCALE} * 4^"
                          f"+-{MAX_BRACKET_STEPS}; trace {trace}")
    for _ in range(steps):
        middle = math.sqrt(low * high)
        if accepted(middle):
            low = middle
        else:
            high = middle
    return low, trace


class TFBPosterior:
    """The isotropic posterior sigma U Z on each LoRA layer's Delta W (module docstring)."""

    def __init__(self, adapters: dict, scale: float = 0.0):
        self.layers = {}
        for name, adapter in adapters.items():
            if not isinstance(adapter, LoRALinear):
                raise ConfigError(f"TFB bayesianizes LoRA adapters; {name} is "
                                  f"{type(adapter).__name__}")
            self.layers[name] = (adapter, left_singular_vectors(adapter.lora_B))
        self.scale = float(scale)
        self.trace: list[tuple[float, float]] = []  # the search: (sigma, relative NLL change)

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One weight draw: Z (r, in) per layer, standard normal, drawn on the CPU in layer order."""
        return {name: torch.randn(adapter.rank, adapter.in_features, generator=generator)
                .to(adapter.lora_B.device) for name, (adapter, _) in self.layers.items()}

    @contextlib.contextmanager
    def sampled(self, noise: dict[str, torch.Tensor], scale: float | None = None):
        """Within the block every layer computes base(x) + adapter(x) + scale (x Z^T) U^T."""
        scale = self.scale if scale is None else scale
        handles = []
        for name, (adapter, left) in self.layers.items():
            def add_noise(module, inputs, output, z=noise[name], left=left):
                update = (inputs[0].to(torch.float32) @ z.T) @ left.T  # (..., r) -> (..., out)
                return output + (scale * update).to(output.dtype)
            handles.append(adapter.register_forward_hook(add_noise))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def mean_probs(self, probs_of: Callable, chunk, samples: int, generator: torch.Generator,
                   scale: float | None = None) -> torch.Tensor:
        """The mean over ``samples`` weight draws of ``probs_of(chunk)`` (probabilities (B, C))."""
        total = 0
        for _ in range(samples):
            with self.sampled(self.draw(generator), scale):
                total = total + probs_of(chunk)
        return total / samples

    def predict(self, probs_of: Callable, examples, batch_size: int, samples: int,
                seed: int = 0) -> dict:
        """The prediction record (probs, labels, mask): per batch of ``batch_size`` questions
        the mean over ``samples`` weight draws, all draws for one batch before the next, from one
        generator seeded ``seed`` (so a prefix of a test set gets the same draws on its own)."""
        generator = torch.Generator().manual_seed(seed)
        probs, labels, mask = [], [], []
        for chunk in data.batches(examples, batch_size):
            probs.append(self.mean_probs(probs_of, chunk, samples, generator))
            labels.append(torch.tensor([example.label for example in chunk]))
            mask.append(torch.arange(data.NUM_CLASSES) < torch.tensor(
                [[example.num_choices] for example in chunk]))  # (B, C)
        return {"probs": torch.cat(probs), "labels": torch.cat(labels), "mask": torch.cat(mask)}

    def fit(self, probs_of: Callable, chunks: list, samples: int, seed: int = 0,
            threshold: float = THRESHOLD) -> "TFBPosterior":
        """Choose ``scale`` by :func:`search_scale` on the anchor questions in ``chunks``."""
        reference = torch.cat([probs_of(chunk) for chunk in chunks])
        self.scale, self.trace = search_scale(
            lambda sigma: self.nll_change(probs_of, chunks, samples, seed, sigma, reference),
            threshold)
        return self

    def nll_change(self, probs_of: Callable, chunks: list, samples: int, seed: int, scale: float,
                   reference: torch.Tensor | None = None) -> float:
        """:func:`relative_nll_change` at ``scale``, with the draws of a generator seeded ``seed``."""
        if reference is None:
            reference = torch.cat([probs_of(chunk) for chunk in chunks])
        generator = torch.Generator().manual_seed(seed)  # the same draws for every scale
        sampled = torch.cat([self.mean_probs(probs_of, chunk, samples, generator, scale)
                             for chunk in chunks])
        return relative_nll_change(reference, sampled)


def anchor_batches(validation_examples, batch_size: int) -> list:
    """The anchor questions of the search (the first :data:`ANCHOR_QUESTIONS` validation
    questions) in batches of ``batch_size``."""
    return list(data.batches(validation_examples[:ANCHOR_QUESTIONS], batch_size))


def left_singular_vectors(weight: torch.Tensor) -> torch.Tensor:
    """U (out, r) of the thin SVD of B, float32, each column's largest-magnitude entry positive."""
    left, _, _ = torch.linalg.svd(weight.detach().double(), full_matrices=False)  # (out, r)
    signs = torch.sign(left.gather(0, left.abs().argmax(0, keepdim=True)))  # (1, r)
    signs[signs == 0] = 1.0
    return (left * signs).to(weight.dtype)


__all__ = ["ANCHOR_QUESTIONS", "BISECTION_STEPS", "INITIAL_SCALE", "THRESHOLD", "TFBPosterior",
           "anchor_batches", "left_singular_vectors", "relative_nll_change", "search_scale"]
