"""The methods we compare, one registry and one interface.

>>> method = make_method("polar_vbll", profile=get_profile("smoke"))
>>> method.fit(train_examples, validation_examples)
>>> record = method.predict(test_examples)      # {"probs": (N, C), "labels": (N,), ...}

=============  ========  =========  =========================================================
name           adapters  head       training / prediction
=============  ========  =========  =========================================================
zero_shot      --        answer     nothing: the cloze classifier (choice form) or the letter logits
mle            LoRA      answer     cross-entropy
map            LoRA      answer     cross-entropy + (tau / 2N) ||theta||^2: a Gaussian prior (MAP)
polar          PoLAR     answer     cross-entropy; X, Y by landing (or geoopt / retraction)
lora_vbll      LoRA      VBLL       Jensen ELBO, all parameters jointly
polar_vbll     PoLAR     VBLL       Jensen ELBO, alternating adapter / posterior steps
mc_dropout     LoRA      answer     dropout on the adapter input; N stochastic passes at test
ensemble       LoRA      answer     M independently seeded members, probabilities averaged
temperature    LoRA      answer     mle, then one temperature fitted on validation NLL
laplace        LoRA      answer     mle (or polar), then a last-layer Laplace posterior
tfb            LoRA      answer     mle, then an isotropic posterior on Delta W; N sampled passes
blob           LoRA      answer     BLoB: Gaussian q(A), KL / N, flipout; N sampled passes at test
polar_blob     PoLAR     answer     BLoB's posterior on PoLAR's core Theta (polar_vbll.blob)
=============  ========  =========  =========================================================

The "answer" head depends on the profile's ``head_form`` (or ``head_form=...``):

* ``"choice"`` (default): :class:`~polar_vbll.choice.ChoiceHead`, z_c = s_c + w^T phi_c over
  one sequence per (question, choice); w starts at 0, so zero_shot is the cloze classifier.
  VBLL is :class:`~polar_vbll.vbll.ChoiceVBLLHead` (q(w) = N(m, S)), Laplace
  :class:`~polar_vbll.laplace.ChoiceLaplace`.
* ``"letter"``: :class:`~polar_vbll.training.AnswerHead`, the LM-head rows of `` A`` ... `` E``
  after one lettered prompt; VBLL is :class:`~polar_vbll.vbll.VBLLHead`, Laplace
  :class:`~polar_vbll.laplace.LastLayerLaplace`.

Either way every method starts from the same zero-shot model, and the Bayesian heads (VBLL,
Laplace) sample only the last layer: one backbone pass per question (in the choice form, one
batched pass over the question's choices). tfb samples the adapters: one pass per weight draw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from polar_vbll import adapters as adapter_lib
from polar_vbll import blob
from polar_vbll import checkpoints, data, distributed, models
from polar_vbll import tfb as tfb_lib
from polar_vbll.choice import ChoiceFeatures, ChoiceForm, ChoiceHead
from polar_vbll.errors import ConfigError
from polar_vbll.laplace import LaplacePosterior, posterior_around
from polar_vbll.profiles import Profile, get_profile
from polar_vbll.temperature import fit_temperature
from polar_vbll.training import AnswerHead, LetterForm, Trainer, TrainConfig, seeded_global_rng
from polar_vbll.vbll import VBLLHead, head_at_zero_shot


@dataclass(frozen=True)
class MethodSpec:
    adapter: str | None = "lora"  # "lora" | "polar" | None
    head: str = "answer"  # "answer" | "vbll"
    objective: str = "cross_entropy"
    schedule: str = "joint"
    prior_precision: float = 0.0  # MAP's Gaussian prior (TrainConfig.prior_precision)
    dropout: float = 0.0
    members: int = 1  # > 1 only for the ensemble; 0 = as many as the profile's ensemble_members
    post_hoc: str | None = None  # "temperature" | "laplace" | "tfb"
    adapter_posterior: bool = False  # BLoB: a Gaussian posterior on the adapters (blob.py)
    description: str = ""


# map's prior precision tau: N(0, I / tau) on every adapter and head parameter, its log-density
# scaled by 1 / N (N training questions) like the ELBO's KL; stated, not searched
MAP_PRIOR_PRECISION = 1.0

METHODS: dict[str, MethodSpec] = {
    "zero_shot": MethodSpec(adapter=None, description="answer-letter logits, no training"),
    "mle": MethodSpec(description="LoRA + answer head, cross-entropy"),
    "map": MethodSpec(prior_precision=MAP_PRIOR_PRECISION,
                      description="mle + Gaussian prior on adapters and head (MAP)"),
    "polar": MethodSpec(adapter="polar", description="PoLAR + answer head, landing"),
    "lora_vbll": MethodSpec(head="vbll", objective="elbo", description="LoRA + VBLL, joint ELBO"),
    "polar_vbll": MethodSpec(adapter="polar", head="vbll", objective="elbo",
                             schedule="alternating",
                             description="PoLAR + VBLL, alternating ELBO steps"),
    "mc_dropout": MethodSpec(dropout=0.1, description="LoRA with dropout, N passes at test"),
    "ensemble": MethodSpec(members=0, description="M seeded LoRA members"),
    "temperature": MethodSpec(post_hoc="temperature", description="mle + temperature scaling"),
    "laplace": MethodSpec(post_hoc="laplace", description="mle + last-layer Laplace"),
    "tfb": MethodSpec(post_hoc="tfb", description="mle + training-free Bayesianization (tfb.py)"),
    "blob": MethodSpec(adapter_posterior=True,
                       description="BLoB: Gaussian posterior on LoRA's A, N sampled passes"),
    "polar_blob": MethodSpec(adapter="polar", adapter_posterior=True,
                             description="BLoB's posterior on PoLAR's core, N sampled passes"),
}

PREDICTIVES = ("mc", "probit", "mean")


def method_names() -> list[str]:
    return list(METHODS)


def get_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


class Method:
    """A backbone with (optional) adapters and a head; ``fit`` then ``predict``."""

    def __init__(self, name: str, profile: Profile | str | None = None,
                 model_name: str = models.SMOLLM2, seed: int = 0, device=None,
                 progress: bool = True, stiefel_method: str = "landing",
                 predictive: str = "mc", laplace_base: str = "mle",
                 covariance: str = "diagonal", head_form: str | None = None):
        self.name, self.spec = name, get_spec(name)
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile)
        if predictive not in PREDICTIVES:
            raise ConfigError(f"predictive must be one of {PREDICTIVES}, got {predictive!r}")
        head_form = head_form or self.profile.head_form
        if head_form not in ("choice", "letter"):
            raise ConfigError(f"head_form must be 'choice' or 'letter', got {head_form!r}")
        if laplace_base not in ("mle", "polar"):
            raise ConfigError(f"laplace_base must be 'mle' or 'polar', got {laplace_base!r}")
        self.options = {"stiefel_method": stiefel_method, "predictive": predictive,
                        "laplace_base": laplace_base, "covariance": covariance,
                        "head_form": head_form}
        if self.spec.post_hoc == "laplace" and laplace_base == "polar":
            self.spec = replace(self.spec, adapter="polar")
        if self.spec.members == 0:
            self.spec = replace(self.spec, members=self.profile.ensemble_members)
        self.model_name, self.seed, self.progress = model_name, seed, progress
        self.model, self.tokenizer = models.load_backbone(model_name, device=device)
        self.device = next(self.model.parameters()).device
        if head_form == "choice":
            self.form = ChoiceForm(self.model, self.tokenizer, self.profile.max_length,
                                   adapt_layers=self.profile.adapt_layers, model_name=model_name,
                                   progress=progress, batch_size=self.profile.eval_batch_size,
                                   score_feature=self.profile.score_feature)
        else:
            self.form = LetterForm(self.model, self.tokenizer, self.profile.max_length)
        self.adapters, self.head, self.trainer, self.temperature = {}, None, None, 1.0
        self.laplace: LaplacePosterior | None = None
        self.tfb: tfb_lib.TFBPosterior | None = None
        self.members: list[dict] = []  # ensemble: per-member adapter + head tensors
        self.history: list[dict] = []  # one entry per training step (the last member's)
        self.rank_history: dict = {}  # step -> adapters.rank_report (every profile.log_every)
        self.prior_scale: float | None = None
        self._build(seed)

    # ------------------------------------------------------------------ construction

    def _build(self, seed: int) -> None:
        """Fresh adapters (seeded) and a head at the zero-shot classifier (cloze scores for the
        choice form, the answer-letter rows for the letter form)."""
        spec, profile = self.spec, self.profile
        top = getattr(self.form, "top_layers", None)
        if spec.adapter and not adapter_lib.adapters_of(self.model):
            self.adapters = adapter_lib.add_adapters(
                self.model, kind=spec.adapter, rank=profile.rank, alpha=profile.alpha,
                target_modules=adapter_lib.resolve_target_modules(self.model,
                                                                  profile.target_modules),
                dropout=spec.dropout, seed=seed,
                theta=profile.polar_theta,
                layers=top.layer_indices() if top is not None else None)
            if spec.adapter_posterior:  # BLoB: the same adapters, plus a posterior std
                self.adapters = blob.make_variational(self.model, self.adapters, seed=seed)
        elif spec.adapter:
            self.adapters = adapter_lib.adapters_of(self.model)
            adapter_lib.reset_adapters(self.adapters, seed)
        if spec.head == "vbll":
            self._build_vbll_head()
        elif self.form.name == "choice":
            self.head = ChoiceHead(self.form.feature_width).to(self.device)
        else:
            weight = models.answer_head_weight(self.model, self.tokenizer, data.NUM_CLASSES)
            self.head = AnswerHead(weight).to(self.device)

    def train_config(self, seed: int) -> TrainConfig:
        p, s = self.profile, self.spec
        rate = p.polar_learning_rate if s.adapter == "polar" and p.polar_learning_rate else \
            p.learning_rate
        # accelerate's ACCELERATE_GRADIENT_ACCUMULATION_STEPS overrides the profile's
        accumulation = distributed.world().gradient_accumulation or p.grad_accumulation
        return TrainConfig(
            steps=p.steps, batch_size=p.batch_size, grad_accumulation=accumulation,
            max_length=p.max_length, learning_rate=rate,
            head_learning_rate=p.head_learning_rate, prior_precision=s.prior_precision, seed=seed,
            log_every=p.log_every, objective=s.objective, schedule=s.schedule,
            stiefel_method=self.options["stiefel_method"], posterior_steps=p.posterior_steps)

    # ------------------------------------------------------------------ training

    def fit(self, train_examples, validation_examples=None, checkpoint_dir=None,
            resume: bool = False, fitted_base: dict | None = None) -> "Method":
        """Train (all members), then the post-hoc step. ``resume`` continues from checkpoint_dir.

        ``fitted_base`` (post-hoc methods only): ``base.fitted_state()`` of the method this one
        starts from (``mle``, or ``polar`` for a PoLAR Laplace), fitted on the same questions with
        the same profile and seed. Training is deterministic, so its adapters and head are what
        training again would give; only the post-hoc step runs (``evaluation.compare`` uses this).
        """
        if self.spec.adapter is None:
            return self
        if not train_examples:
            raise ConfigError(f"method {self.name!r}: no training examples")
        if self.spec.post_hoc and not validation_examples:
            raise ConfigError(f"method {self.name!r} fits its {self.spec.post_hoc} step on "
                              "validation examples; pass validation_examples")
        if self.spec.head == "vbll":
            self._set_prior_scale(train_examples)
        if fitted_base is not None:
            if not self.spec.post_hoc:
                raise ConfigError(f"method {self.name!r} has no post-hoc step; fitted_base is only "
                                  "for the post-hoc methods")
            self._load_member(fitted_base)
            self.history = list(fitted_base.get("history", []))
        for member in range(max(1, self.spec.members) if fitted_base is None else 0):
            seed = self.seed + 1000 * member
            if member:
                self._build(seed)
            trainer = blob.BLoBTrainer if self.spec.adapter_posterior else Trainer
            self.trainer = trainer(self.model, self.tokenizer, self.head,
                                   self.train_config(seed), num_data=len(train_examples),
                                   form=self.form)
            if resume and checkpoint_dir and (Path(checkpoint_dir) / "config.json").is_file():
                self.trainer.load(checkpoint_dir)
            with seeded_global_rng(seed, self.device):  # dropout masks (mc_dropout)
                self.trainer.fit(train_examples, progress=self.progress,
                                 checkpoint_dir=checkpoint_dir if self.spec.members <= 1 else None,
                                 checkpoint_every=self.profile.log_every)
            if self.spec.members > 1:
                self.members.append(self._member_tensors())
            self.history = self.trainer.state.history
            self.rank_history = self.trainer.state.rank_history
        if self.spec.post_hoc == "temperature":
            logits, labels, _ = self._logits(validation_examples)
            self.temperature = fit_temperature(logits, labels)
        elif self.spec.post_hoc == "laplace":
            self._fit_laplace(train_examples, validation_examples)
        elif self.spec.post_hoc == "tfb":
            self.form.prepare(validation_examples)
            self.tfb = tfb_lib.TFBPosterior(self.adapters).fit(
                self._batch_probs, tfb_lib.anchor_batches(validation_examples,
                                                          self.profile.eval_batch_size),
                self.profile.adapter_samples, seed=self.seed)
        return self

    def _set_prior_scale(self, examples) -> None:
        """Prior variance s = 1 / mean ||phi||^2 on a first batch, so prior logits have std ~1
        (choice form: phi_c is centred over the question's choices, so prior *differences*
        between the choices' logits have std ~1)."""
        with torch.no_grad():
            first = examples[: self.profile.eval_batch_size]
            self.form.prepare(first)
            batch = self.form.encode(first)
            phi = self.form.features(batch)
        if isinstance(phi, ChoiceFeatures):  # centred over each question's choices
            phi = phi.phi[batch["choice_mask"]]  # (present choices, d)
        self.prior_scale = float(1.0 / phi.square().sum(-1).mean())
        self._build_vbll_head()

    def _build_vbll_head(self) -> None:
        """VBLL head at the zero-shot classifier, prior N(., s I) (:func:`vbll.head_at_zero_shot`)."""
        rows = None if self.form.name == "choice" else models.answer_head_weight(
            self.model, self.tokenizer, data.NUM_CLASSES)
        self.head = head_at_zero_shot(self.form.feature_width, self.options["covariance"],
                                      self.prior_scale or 1.0, rows).to(self.device)

    def _fit_laplace(self, train_examples, validation_examples) -> None:
        phi, labels, mask = self.extract_features(train_examples)
        val_phi, val_labels, val_mask = self.extract_features(validation_examples)
        self.laplace = posterior_around(self.head.weight, self.form.name).fit(
            phi, labels, mask, val_phi, val_labels, val_mask,
            predictive=self.options["predictive"], n_samples=self.profile.last_layer_samples,
            seed=self.seed)

    def fitted_state(self) -> dict:
        """Adapters, head and training history after ``fit``: what ``fit(fitted_base=...)`` of a
        post-hoc method starts from."""
        return {**self._member_tensors(), "history": list(self.history)}

    def _member_tensors(self) -> dict:
        return {"adapters": adapter_lib.adapter_state_dict(self.adapters),
                "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}}

    def _load_member(self, member: dict) -> None:
        adapter_lib.load_adapter_state(self.adapters, member["adapters"], source="ensemble member")
        self.head.load_state_dict(member["head"])

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def extract_features(self, examples, dropout: bool = False, progress: bool = False,
                         shard: bool = True):
        """phi (N, d) -- or ChoiceFeatures (N, C) + (N, C, d) in the choice form --, labels (N,),
        choice mask (N, C), in batches; dropout only for MC-dropout.

        Under a launcher (and ``shard``), each process runs a contiguous block of the eval
        batches and the results are gathered in order: every process returns all N rows, equal
        to what one process computes (see :mod:`polar_vbll.distributed`).
        """
        from tqdm.auto import tqdm

        if not examples:
            raise ConfigError(f"method {self.name!r}: no examples to predict")
        self.model.eval()
        self.form.prepare(examples)
        world = distributed.world()
        chunks = list(data.batches(examples, self.profile.eval_batch_size))
        mine = world.block_of(len(chunks)) if shard else range(len(chunks))
        for adapter in self.adapters.values():
            adapter.dropout.train(dropout)
        phis, labels, masks = [], [], []
        for index in tqdm(mine, desc="predicting", disable=not progress or not world.is_main,
                          leave=False):
            batch = self.form.encode(chunks[index])
            phis.append(self.form.features(batch))
            labels.append(batch["labels"])
            masks.append(batch["choice_mask"])
        for adapter in self.adapters.values():
            adapter.dropout.train(False)
        parts = list(zip(phis, labels, masks))
        if shard and world.distributed:
            mine_on_cpu = [tuple(x.to("cpu") for x in part) for part in parts]
            parts = [part for rank_parts in world.gather(mine_on_cpu) for part in rank_parts]
            parts = [tuple(x.to(self.device) for x in part) for part in parts]
        phis, labels, masks = zip(*parts)
        phi = ChoiceFeatures.cat(phis) if isinstance(phis[0], ChoiceFeatures) else torch.cat(phis)
        return phi, torch.cat(labels), torch.cat(masks)

    @torch.no_grad()
    def _logits(self, examples):
        phi, labels, mask = self.extract_features(examples)
        return self.head(phi, mask), labels, mask

    @torch.no_grad()
    def predict(self, examples, generator: torch.Generator | None = None,
                progress: bool = False) -> dict:
        """A prediction record: probs (N, C), labels, mask, logits, and for Bayesian heads the
        last-layer samples; plus ``seconds_per_example`` measured around the whole prediction."""
        generator = generator or torch.Generator(device=self.device).manual_seed(self.seed)
        start = time.perf_counter()
        self._progress = progress
        with seeded_global_rng(self.seed, self.device):  # the N dropout passes of mc_dropout
            record = self._predict(examples, generator)
        record["seconds_per_example"] = (time.perf_counter() - start) / len(examples)
        record["backbone_passes"] = (self.dropout_passes or self.weight_samples
                                     or max(1, self.spec.members))
        # a pass of the choice form runs one sequence per (question, choice) pair
        per_pass = (sum(e.num_choices for e in examples) / len(examples)
                    if self.form.name == "choice" else 1.0)
        record["sequences_per_question"] = record["backbone_passes"] * per_pass
        return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in record.items()}

    @property
    def dropout_passes(self) -> int:
        """Stochastic passes per question at test time when the adapters have dropout, else 0."""
        if self.spec.adapter_posterior:  # BLoB: one weight sample per pass
            return self.profile.adapter_samples
        return self.profile.mc_dropout_passes if self.spec.dropout > 0 else 0

    def _last_layer_posterior(self):
        """What the Bayesian predictive samples: the fitted Laplace posterior, else a VBLL head;
        None for a point-estimate head."""
        if self.laplace is not None:
            return self.laplace
        return self.head if isinstance(self.head, VBLLHead) else None

    def _predict(self, examples, generator) -> dict:
        """Chosen by what the method has: dropout passes, ensemble members, a last-layer
        posterior, or else one head (divided by its temperature, 1 unless one was fitted)."""
        if self.dropout_passes:
            return self._predict_with_dropout(examples)
        if self.weight_samples:  # tfb
            self.form.prepare(examples)
            return self.tfb.predict(self._batch_probs, examples, self.profile.eval_batch_size,
                                    self.weight_samples, self.seed)
        if self.members:
            return self._predict_members(examples)
        phi, labels, mask = self.extract_features(examples, progress=self._progress)
        posterior, extra = self._last_layer_posterior(), {}
        if posterior is None:
            logits = self.head(phi, mask) / self.temperature
            probs = torch.softmax(logits, -1)
        else:
            logits = self.head(phi, mask)
            samples, how = self.profile.last_layer_samples, self.options["predictive"]
            if how == "mc":
                probs, extra["sample_logits"] = posterior.predictive(
                    phi, mask, "mc", samples, generator, return_samples=True)
            else:
                probs = posterior.predictive(phi, mask, how, samples, generator)
        return {"probs": probs, "labels": labels, "mask": mask, "logits": logits, **extra}

    def _predict_with_dropout(self, examples) -> dict:
        """The mean softmax over ``dropout_passes`` stochastic passes.

        All passes over one batch before the next: a question's dropout masks depend only on
        its batch's place, so the first questions of a test set get the same masks whether or
        not the rest follows (tests re-check a prefix of recorded predictions).
        """
        self.form.prepare(examples)
        probs, labels, mask = [], [], []
        for chunk in data.batches(examples, self.profile.eval_batch_size):
            chunk_probs = 0
            for _ in range(self.dropout_passes):  # every process runs them all
                blob.draw_posterior_sample(self.adapters)  # BLoB: this pass's weights
                phi, chunk_labels, chunk_mask = self.extract_features(chunk, dropout=True,
                                                                      shard=False)
                chunk_probs = chunk_probs + torch.softmax(self.head(phi, chunk_mask), -1)
            blob.clear_posterior_sample(self.adapters)
            probs.append(chunk_probs / self.dropout_passes)
            labels.append(chunk_labels)
            mask.append(chunk_mask)
        return {"probs": torch.cat(probs), "labels": torch.cat(labels), "mask": torch.cat(mask)}

    @property
    def weight_samples(self) -> int:
        """Adapter weight draws per question at test time (tfb: ``profile.adapter_samples``), else 0."""
        return self.profile.adapter_samples if self.tfb is not None else 0

    @torch.no_grad()
    def _batch_probs(self, chunk) -> torch.Tensor:
        """softmax of the head on one batch of questions (this process runs it whole), (B, C)."""
        phi, _, mask = self.extract_features(chunk, shard=False)
        return torch.softmax(self.head(phi, mask), -1)

    def _predict_members(self, examples) -> dict:
        """The mean softmax of the ensemble members (each loaded in turn)."""
        probs = 0
        for member in self.members:
            self._load_member(member)
            logits, labels, mask = self._logits(examples)
            probs = probs + torch.softmax(logits, -1)
        return {"probs": probs / len(self.members), "labels": labels, "mask": mask}

    # ------------------------------------------------------------------ checkpoints

    def config(self) -> dict:
        return {"method": self.name, "model": self.model_name, "seed": self.seed,
                "profile": self.profile.to_dict(), "options": self.options,
                "temperature": self.temperature, "prior_scale": self.prior_scale,
                **({"tfb_scale": self.tfb.scale, "tfb_search": self.tfb.trace}
                   if self.tfb is not None else {})}

    def save(self, folder) -> Path:
        """Adapters + head (+ members, Laplace posterior) as safetensors, config as JSON."""
        tensors = {"adapters": adapter_lib.adapter_state_dict(self.adapters),
                   "head": dict(self.head.state_dict())}
        for index, member in enumerate(self.members):
            tensors[f"member{index}_adapters"] = member["adapters"]
            tensors[f"member{index}_head"] = member["head"]
        if self.laplace is not None:
            tensors["laplace"] = self.laplace.state()
        state = checkpoints.rounded({"history": self.history, "members": len(self.members), "rank_history":
                                     {str(step): report for step, report in self.rank_history.items()}})
        return checkpoints.save_checkpoint(folder, tensors, self.config(), state)

    @classmethod
    def load(cls, folder, device=None, progress: bool = True) -> "Method":
        """Rebuild a method from :meth:`save`'s folder; predictions are identical."""
        tensors, config, state = checkpoints.load_checkpoint(folder)
        profile = checkpoints.method_profile(config, folder)
        method = cls(config["method"], profile=profile, model_name=config["model"],
                     seed=config["seed"], device=device, progress=progress, **config["options"])
        method.temperature = config.get("temperature", 1.0)
        method.history = list(state.get("history", []))
        method.rank_history = {int(step): report
                               for step, report in state.get("rank_history", {}).items()}
        method.prior_scale = config.get("prior_scale")
        if method.spec.head == "vbll":
            method._build_vbll_head()
        if method.adapters:
            adapter_lib.load_adapters(method.adapters, Path(folder) / "adapters.safetensors")
        if "tfb_scale" in config:  # U from the loaded B, the scale from the search
            method.tfb = tfb_lib.TFBPosterior(method.adapters, config["tfb_scale"])
            method.tfb.trace = [tuple(step) for step in config.get("tfb_search", [])]
        checkpoints.load_into_module(method.head, tensors.get("head", {}), f"{folder}: head")
        method.members = [{"adapters": tensors[f"member{i}_adapters"],
                           "head": tensors[f"member{i}_head"]}
                          for i in range(int(state.get("members", 0)))]
        if "laplace" in tensors:
            method.laplace = posterior_around(method.head.weight, method.form.name).restore(
                tensors["laplace"])
        return method


def make_method(name: str, profile: Profile | str | None = None, **options) -> Method:
    """The method ``name`` (see the table above) at the given profile's sizes."""
    return Method(name, profile=profile, **options)


__all__ = ["METHODS", "Method", "MethodSpec", "fit_temperature", "get_spec", "make_method",
           "method_names"]
