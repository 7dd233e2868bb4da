"""Run profiles: how big a run is, in one place (``POLAR_VBLL_PROFILE`` = smoke | course | full).

A profile is a property of the *run*, not of the device: the same profile gives the same
configuration (and, up to float rounding, the same numbers) on a laptop, a Colab T4 or an H100.
Every profile runs the *same* path -- the real SmolLM2-135M, real benchmark questions, real
optimizer steps -- and only changes how many of them:

* ``smoke`` -- CI. A handful of steps and examples; a notebook finishes in a couple of minutes
  on 2 CPU cores. Numbers are not meaningful, only that everything runs.
* ``course`` -- the course's validated profile and the default everywhere: 1200 steps on 1200
  ARC-Easy questions, adapters in the top 4 decoder layers, 500 test questions. The frozen layers
  below run once per token row and are cached (:mod:`polar_vbll.feature_cache`), so the methods of
  a comparison share them. Its committed fine-tunes (:mod:`polar_vbll.pretrained`) are what the
  notebooks load; on a GPU each notebook also trains its final one live at this profile.
  How each setting was chosen on validation questions is in ``benchmarks/learning_log.md``.
* ``full`` -- paper scale, for the CLI and for researchers, never a notebook default: every
  layer adapted (no feature cache), every training question, whole test splits, 2000 steps of 8.
  It keeps the PoLAR choices the course profile's validation found (a diagonal core, PoLAR's own
  learning rate, 3x the LoRA rate as in the course profile); its learning rates were not chosen on
  validation questions at this scale.

Every profile uses the choice form (``head_form="choice"``, :mod:`polar_vbll.choice`); the letter
form stays selectable (``--head-form letter``, ``make_method(..., head_form="letter")``).

Unset, the profile is ``course`` on every device. ``cpu`` and ``gpu`` are not profiles: asking
for either is refused with a message naming the profile to use instead (:data:`RENAMED`).
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
    # 0 = off (see polar_vbll.choice.append_score_feature); 5 is the choice on ARC-Easy
    # validation questions (benchmarks/learning_log.md)
    score_feature: float = 5.0
    # weight samples at prediction for the methods that sample the adapters (tfb, blob): each
    # sample is one more pass of the adapted layers over the question's choices (with the feature
    # cache, only the top adapt_layers layers repeat); 10 as in BLoB and TFB
    adapter_samples: int = 10

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.head_form not in ("choice", "letter"):
            raise ConfigError(f"head_form must be 'choice' or 'letter', got {self.head_form!r}")
        if isinstance(self.adapter_samples, bool) or not isinstance(self.adapter_samples, int) \
                or self.adapter_samples < 1:
            raise ConfigError(f"adapter_samples (weight samples per question at prediction) must "
                              f"be an integer >= 1, got {self.adapter_samples!r}")

    def to_dict(self) -> dict:
        """The fields as a dict; those in :data:`KEYED_WHEN_CHANGED` only when they differ from
        their default (so adding such a field keeps the key of every run that leaves it at its
        default, as ``Run.set_options`` does for options)."""
        fields = asdict(self)
        return {name: value for name, value in fields.items()
                if name not in KEYED_WHEN_CHANGED or value != KEYED_WHEN_CHANGED[name]}

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some sizes changed; unknown names raise ConfigError."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise ConfigError(f"unknown profile field(s) {unknown}; known: {sorted(asdict(self))}")
        return replace(self, **changes)


# fields that enter Profile.to_dict (and a run's key) only when they differ from these defaults
KEYED_WHEN_CHANGED = {"adapter_samples": 10}

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", train_examples=16, validation_examples=8, test_examples=16,
        ood_examples=8, steps=4, batch_size=4, grad_accumulation=1, eval_batch_size=8,
        max_length=160, rank=4, alpha=8.0, learning_rate=1e-3, head_learning_rate=1e-3,
        log_every=2, posterior_steps=2, last_layer_samples=32, mc_dropout_passes=3,
        ensemble_members=2, adapt_layers=2, polar_theta="diagonal", adapter_samples=3,
    ),
    # course: chosen on ARC-Easy validation questions, never the test split; every attempt and its
    # numbers are in benchmarks/learning_log.md. In short: 1200 questions and 1200 steps make mle
    # learn and grow overconfident (the regime a Bayesian last layer is for); the top 4 layers
    # learn more than the top 2 at the same cost, since the adapted layers run each prompt once;
    # PoLAR learns at 3x the LoRA rate with a diagonal core (a full core collapses to rank one like
    # LoRA); 500 validation and test questions keep temperature scaling and the metrics' noise small.
    "course": Profile(
        name="course", train_examples=1200, validation_examples=500, test_examples=500,
        ood_examples=100, steps=1200, batch_size=4, grad_accumulation=1, eval_batch_size=16,
        max_length=192, rank=8, alpha=16.0, learning_rate=1e-3, head_learning_rate=1e-3,
        log_every=25, posterior_steps=3, last_layer_samples=100, mc_dropout_passes=10,
        ensemble_members=3, adapt_layers=4, polar_learning_rate=3e-3, polar_theta="diagonal",
    ),
    "full": Profile(
        name="full", train_examples=None, validation_examples=None, test_examples=None,
        ood_examples=None, steps=2000, batch_size=8, grad_accumulation=1, eval_batch_size=64,
        max_length=256, rank=8, alpha=16.0, learning_rate=2e-4, head_learning_rate=2e-4,
        log_every=100, posterior_steps=3, last_layer_samples=200, mc_dropout_passes=10,
        ensemble_members=3, polar_learning_rate=6e-4, polar_theta="diagonal",
    ),
}


DEFAULT = "course"
# names that are not profiles, and the profile to use instead
RENAMED = {"cpu": "'course' (the same fields: the course's validated profile, on any device)",
           "gpu": "'full' (paper scale, every layer; it is not what 'gpu' was) or 'course' "
                  "(the notebooks' profile, also on a GPU)"}


def profile_name_from_environment() -> str:
    return os.environ.get(PROFILE_ENV, "").strip() or DEFAULT


def get_profile(name: str | None = None) -> Profile:
    """The profile ``name``, or the one ``POLAR_VBLL_PROFILE`` selects (see module docstring)."""
    name = name or profile_name_from_environment()
    if name not in PROFILES:
        source = "" if name != os.environ.get(PROFILE_ENV) else f" (from {PROFILE_ENV})"
        if name in RENAMED:
            raise ConfigError(f"profile {name!r}{source} was renamed: use {RENAMED[name]}; the "
                              f"profiles are {list(PROFILES)}")
        raise ConfigError(f"unknown profile {name!r}{source}; expected one of {list(PROFILES)}")
    return PROFILES[name]


def start_notebook(name: str | None = None, seed: int = 0):
    """What every notebook runs first: ``(profile, device, generator)``.

    Prints the profile, the device with the precision it gets (:mod:`polar_vbll.devices`) and
    what happens to the notebook's final fine-tune there (trained live on a GPU, loaded from the
    committed runs on a CPU; ``POLAR_VBLL_LIVE`` chooses), seeds torch's global random number
    generator with ``seed`` and returns a ``torch.Generator`` seeded with it as well, from which
    a notebook draws every random choice it makes itself.
    """
    from polar_vbll import devices, trained_here
    from polar_vbll.models import default_device

    profile = get_profile(name)
    print(profile)
    device = default_device()
    print(f"device: {devices.name_of(device)}; {devices.policy(device)}")
    live = trained_here.LIVE_ENV
    if trained_here.retrain_requested():
        print(f"final fine-tune: every run trains here ({trained_here.RETRAIN_ENV} is set)")
    elif trained_here.live_requested(device):
        print(f"final fine-tune: trained live here at the {profile.name} profile, the others loaded "
              f"({live}=0 loads it too)")
    else:
        print(f"final fine-tune: loaded from the committed runs ({live}=1 trains it here)")
    torch.manual_seed(seed)
    return profile, device, torch.Generator().manual_seed(seed)
