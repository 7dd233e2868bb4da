"""Run tiers: how big a run is, in one place (``POLAR_VBLL_PROFILE`` = smoke | cpu | gpu).

Every tier runs the *same* path -- the real SmolLM2-135M, real benchmark questions, real
optimizer steps -- and only changes how many of them:

* ``smoke`` -- CI. A handful of steps and examples; a notebook finishes in a couple of minutes
  on 2 CPU cores. Numbers are not meaningful, only that everything runs.
* ``cpu`` -- a laptop. One method on ARC-Easy trains in about 5 minutes on 2 cores (1200 steps,
  adapters in the top 4 layers), plus a few minutes for the frozen-layer pass of its questions,
  once (``make demo`` runs three methods), and gives numbers worth looking at (500 test
  questions). Only the top ``adapt_layers`` decoder layers are adapted; the frozen ones below run
  once per token row and are cached (:mod:`polar_vbll.feature_cache`), so the methods of a
  comparison share them.
* ``gpu`` -- Colab and up: full test sets and step counts in the range of the Bayesian-LoRA
  literature (thousands of steps at batch 4-8 on 7B models), scaled to a 135M model; adapters in
  every layer (``adapt_layers=None``), no feature cache.

Every tier uses the choice form (``head_form="choice"``, :mod:`polar_vbll.choice`); the letter
form stays selectable (``--head-form letter``, ``make_method(..., head_form="letter")``).

Unset, the profile is ``gpu`` when CUDA is available and ``cpu`` otherwise.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

import torch

from polar_vbll.errors import ConfigError

PROFILE_ENV = "POLAR_VBLL_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes of one tier. ``None`` for a number of examples means the whole split."""

    name: str
    train_examples: int | None  # questions drawn from the train split
    validation_examples: int | None  # for temperature scaling, Laplace's prior, early checks
    test_examples: int | None  # in-distribution test questions
    ood_examples: int | None  # questions per out-of-distribution task
    steps: int  # optimizer steps (each = batch_size * grad_accumulation questions)
    batch_size: int
    grad_accumulation: int
    eval_batch_size: int
    max_length: int  # tokens per prompt; longer passages are cut from the start
    rank: int  # adapter rank r
    alpha: float  # adapter scale alpha (Delta W is multiplied by alpha / r)
    learning_rate: float  # adapters (LoRA A, B; PoLAR Theta and X, Y)
    head_learning_rate: float  # deterministic head rows / VBLL mean and covariance
    log_every: int  # stable rank and orthogonality are logged every this many steps
    posterior_steps: int  # polar_vbll: posterior steps per adapter step
    last_layer_samples: int  # Monte Carlo samples of the last layer at prediction time
    mc_dropout_passes: int
    ensemble_members: int
    # How the classifier reads the model (see polar_vbll.choice): "choice" scores every
    # (question, choice) pair (starts at the zero-shot cloze classifier); "letter" reads the
    # answer-letter logits of one lettered prompt (the paper's protocol for larger models).
    head_form: str = "choice"
    # Adapters only in the top adapt_layers decoder layers; the frozen layers below run once per
    # token row and are cached (polar_vbll.feature_cache). None = every layer, no cache.
    adapt_layers: int | None = None
    target_modules: tuple = ("q_proj", "v_proj")
    polar_learning_rate: float | None = None  # PoLAR's X, Y, Theta; None = learning_rate
    polar_theta: str = "full"  # PoLAR's core Theta: "full" (r x r) or "diagonal" (r,)
    # choice form: kappa of the score feature, phi_c -> [phi_c, kappa (s_c - mean_c s_c)], so the
    # head also learns (and VBLL/Laplace are uncertain about) how far to trust the cloze score;
    # 0 = off (see polar_vbll.choice.append_score_feature). 5 was chosen on 500 ARC-Easy
    # validation questions (README, tuning table): polar_vbll ECE 12.7% -> 8.8%, NLL 1.30 -> 1.20;
    # mle NLL 1.25 -> 1.20 at the same accuracy
    score_feature: float = 5.0

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.head_form not in ("choice", "letter"):
            raise ConfigError(f"head_form must be 'choice' or 'letter', got {self.head_form!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some sizes changed; unknown names raise ConfigError."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise ConfigError(f"unknown profile field(s) {unknown}; known: {sorted(asdict(self))}")
        return replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", train_examples=16, validation_examples=8, test_examples=16,
        ood_examples=8, steps=4, batch_size=4, grad_accumulation=1, eval_batch_size=8,
        max_length=160, rank=4, alpha=8.0, learning_rate=1e-3, head_learning_rate=1e-3,
        log_every=2, posterior_steps=2, last_layer_samples=32, mc_dropout_passes=3,
        ensemble_members=2, adapt_layers=2, polar_theta="diagonal",
    ),
    # cpu: chosen on ARC-Easy *validation* questions (never test); every attempt, with its numbers,
    # is in benchmarks/learning_log.md (validation rounds 1-9). In short:
    # - 1200 training questions, 1200 steps of 4 (rounds 2 and 5, three seeds each): mle learned
    #   most (55.0-57.4% on 500 validation questions against 52.6-53.8% with 600 questions and 250
    #   steps) and, run this long on a small training set, grows overconfident -- the regime a
    #   Bayesian last layer is for.
    # - Adapters in the top 4 layers, not 2 (rounds 8-9, seeds 0-2): +4.5 validation points for mle,
    #   +5.1 for polar_vbll. Since the adapted layers run each question's prompt once, a fine-tune at
    #   4 layers takes what one at 2 took before (9.0 min with an empty cache, 2 cores); fewer steps
    #   to pay for the depth lost all of target 2 (round 9). The frozen layers below run once per
    #   question (~0.16 s on 2 cores) and are cached (polar_vbll.feature_cache).
    # - Learning rates 1e-3 (3e-4 barely moved the choice head in 250 steps); PoLAR at 3e-3, as its
    #   authors use a higher rate for PoLAR than for LoRA; a diagonal Theta, because a full one
    #   collapsed to rank one like LoRA (stable rank 1.05 full, 2.67 diagonal, LoRA 1.01).
    # - 500 test questions, not 300 (the standard error of an accuracy on 300 is ~2.9 points, too
    #   close to the 5-point gains measured); 500 validation questions, not 100 (temperature scaling
    #   fitted on 100 chose T = 1.50 and made mle less calibrated).
    # - Kept after round 6 (two validation sets): KL weight x0.3 or x3, a dense covariance, the
    #   probit predictive and all 2251 training questions each did no better on both sets.
    "cpu": Profile(
        name="cpu", train_examples=1200, validation_examples=500, test_examples=500,
        ood_examples=100, steps=1200, batch_size=4, grad_accumulation=1, eval_batch_size=16,
        max_length=192, rank=8, alpha=16.0, learning_rate=1e-3, head_learning_rate=1e-3,
        log_every=25, posterior_steps=3, last_layer_samples=100, mc_dropout_passes=10,
        ensemble_members=3, adapt_layers=4, polar_learning_rate=3e-3, polar_theta="diagonal",
    ),
    "gpu": Profile(
        name="gpu", train_examples=None, validation_examples=None, test_examples=None,
        ood_examples=None, steps=2000, batch_size=8, grad_accumulation=1, eval_batch_size=64,
        max_length=256, rank=8, alpha=16.0, learning_rate=2e-4, head_learning_rate=2e-4,
        log_every=100, posterior_steps=3, last_layer_samples=200, mc_dropout_passes=10,
        ensemble_members=3,
    ),
}


def profile_name_from_environment() -> str:
    value = os.environ.get(PROFILE_ENV, "").strip()
    if value:
        return value
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None) -> Profile:
    """The profile ``name``, or the one ``POLAR_VBLL_PROFILE`` selects (see module docstring)."""
    name = name or profile_name_from_environment()
    if name not in PROFILES:
        source = "" if name != os.environ.get(PROFILE_ENV) else f" (from {PROFILE_ENV})"
        raise ConfigError(f"unknown profile {name!r}{source}; expected one of {list(PROFILES)}")
    return PROFILES[name]


def start_notebook(name: str | None = None, seed: int = 0):
    """What every notebook runs first: ``(profile, device, generator)``.

    Prints the profile and the device (CUDA when present), seeds torch's global random number
    generator with ``seed`` and returns a ``torch.Generator`` seeded with it as well, from which
    a notebook draws every random choice it makes itself.
    """
    from polar_vbll.models import default_device

    profile = get_profile(name)
    print(profile)
    device = default_device()
    print("device:", device)
    torch.manual_seed(seed)
    return profile, device, torch.Generator().manual_seed(seed)
