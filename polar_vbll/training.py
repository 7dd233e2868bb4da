"""One training loop for every method: adapters in the backbone, a head on phi.

The pieces a step touches::

    examples --encode--> backbone + adapters --phi (B, d)--> head --> objective
                         (LoRA A, B | PoLAR X, Theta, Y)     (AnswerHead | VBLLHead)

Optimizers, one per kind of parameter:

* ``adapter``  AdamW on the Euclidean adapter parameters (LoRA A and B, PoLAR Theta);
* ``stiefel``  PoLAR's X and Y through :func:`polar_vbll.stiefel.make_stiefel_optimizer`
  (landing by default; geoopt or an explicit retraction on request);
* ``head``     AdamW on the head (answer rows, or the VBLL mean and covariance factors; the
  covariance gets its own, larger learning rate because Adam moves a log-scale parameter by
  about one learning rate per step).

Two schedules:

* ``joint`` -- every step descends the objective in all parameters at once (mle, map, polar,
  lora_vbll).
* ``alternating`` -- PoLAR-VBLL's block-coordinate ascent of the ELBO
  L(adapters, q) = mean_i Jensen_i(phi_i(adapters), q) - KL(q || p) / N:

  1. adapter step: one step on (X, Theta, Y) through the ELBO with the posterior q fixed;
  2. posterior steps: ``posterior_steps`` steps on q's mean and covariance with the adapters
     fixed, on the *same batch's* features phi, detached. No second backbone pass: these are
     the features computed in step 1's forward pass, i.e. with the adapters as they were just
     before their update (one step stale, the price of not running the backbone twice).

  Each block step increases L for the other block held fixed, which is what makes the
  alternation converge in practice.

Every step is logged (loss and ELBO terms, learning rate); every ``log_every`` steps also the
stable rank of each Delta W and the orthogonality error of PoLAR's X and Y. A non-finite loss
term stops the run with a :class:`~polar_vbll.errors.NumericalError` naming step and term.

Under ``accelerate launch`` / ``torchrun`` each step's global batch is split over the processes
and the gradients are summed over them before any optimizer step (:mod:`polar_vbll.distributed`
says why this is exactly one process's step on the global batch).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from polar_vbll import adapters as adapter_lib
from polar_vbll import checkpoints, data, distributed, models
from polar_vbll.errors import ConfigError, NumericalError
from polar_vbll.stiefel import make_stiefel_optimizer
from polar_vbll.vbll import VBLLHead

# TrainConfig fields a resumed run may change: more steps, or the batch per process and the
# accumulation that another number of processes brings (polar_vbll.distributed)
RESUMABLE_CHANGES = ("steps", "log_every", "batch_size", "grad_accumulation")

# the terms objective() returns (and every step logs) for each objective
LOSS_TERMS = {"cross_entropy": ("loss",), "elbo": ("loss", "bound", "kl")}
OBJECTIVES = tuple(LOSS_TERMS)
SCHEDULES = ("joint", "alternating")


@dataclass
class TrainConfig:
    """How to train; the profile supplies sizes, the method supplies objective and schedule."""

    steps: int = 100
    batch_size: int = 4
    grad_accumulation: int = 1
    max_length: int = 192
    learning_rate: float = 3e-4
    head_learning_rate: float = 3e-4
    covariance_learning_rate: float = 5e-2
    weight_decay: float = 0.0
    # MAP: precision tau of a Gaussian prior N(0, I / tau) on every trained adapter and head
    # parameter; its negative log-density tau ||theta||^2 / 2, scaled by 1 / num_data like the
    # ELBO's KL, is added to the cross-entropy (0: no prior, the mle objective)
    prior_precision: float = 0.0
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 25
    objective: str = "cross_entropy"
    schedule: str = "joint"
    stiefel_method: str = "landing"
    landing_lambda: float = 1.0
    posterior_steps: int = 3

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "alternating" and self.objective != "elbo":
            raise ConfigError("schedule='alternating' alternates adapter and posterior steps of "
                              "the ELBO; it needs objective='elbo'")
        for name in ("steps", "batch_size", "grad_accumulation", "max_length", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.prior_precision < 0:
            raise ConfigError(f"prior_precision must be >= 0, got {self.prior_precision}")
        if self.posterior_steps < 0:
            raise ConfigError(f"posterior_steps must be >= 0, got {self.posterior_steps}")
        for name in ("learning_rate", "head_learning_rate", "covariance_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


class AnswerHead(nn.Module):
    """Deterministic head: logits = W phi with W (C, d) started at the LM-head rows of `` A``..`` E``.

    At initialisation ``AnswerHead(...)(phi)`` equals the backbone's own next-token logits of the
    answer letters: the zero-shot classifier.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())  # (C, d)

    def forward(self, phi: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = phi @ self.weight.T  # (B, C)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """Torch's global generator (and ``device``'s, on CUDA) as tensors, for a checkpoint."""
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`global_rng_state` returned (a CUDA state only on a CUDA device)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Dropout draws its masks from torch's global generator: fork it and seed it, so the same
    seed gives the same masks and the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def warmup_cosine(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 10% of the peak."""
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def encode(tokenizer, examples, max_length, device):
    batch = data.encode_examples(tokenizer, examples, max_length)
    return {key: value.to(device) for key, value in batch.items()}


class LetterForm:
    """The letter form bound to a backbone: one prompt per question, phi (B, d) at its last token
    (see :mod:`polar_vbll.data`); the same ``prepare`` / ``encode`` / ``features`` interface as
    :class:`polar_vbll.choice.ChoiceForm`."""

    name = "letter"

    def __init__(self, model, tokenizer, max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.device = next(model.parameters()).device

    def prepare(self, examples, progress=None) -> None:
        """Nothing to cache: the letter form always runs the full backbone."""

    def encode(self, examples) -> dict:
        return encode(self.tokenizer, examples, self.max_length, self.device)

    def features(self, batch) -> torch.Tensor:
        return features(self.model, batch)


def features(model, batch) -> torch.Tensor:
    """phi (B, d), float32; bfloat16 autocast on CUDA (or accelerate's --mixed_precision); no cuDNN
    attention (:func:`polar_vbll.models.attention_kernels`)."""
    device = batch["input_ids"].device
    with distributed.world().autocast(device), models.attention_kernels(device):
        return models.last_token_features(model, batch["input_ids"], batch["attention_mask"])


@dataclass
class TrainState:
    step: int = 0
    history: list = field(default_factory=list)  # one dict per step
    rank_history: dict = field(default_factory=dict)  # step -> adapters.rank_report(...)


class Trainer:
    """Trains the adapters inside ``model`` and ``head`` on a list of examples."""

    def __init__(self, model, tokenizer, head: nn.Module, config: TrainConfig, num_data: int,
                 form=None):
        if config.objective == "elbo" and not isinstance(head, VBLLHead):
            raise ConfigError("objective='elbo' needs a VBLLHead")
        self.model, self.tokenizer, self.head, self.config = model, tokenizer, head, config
        self.num_data = int(num_data)  # all training questions (the ELBO's N), not a shard's
        self.world = distributed.world()
        self.form = form or LetterForm(model, tokenizer, config.max_length)
        self.device = next(head.parameters()).device
        self.adapters = adapter_lib.adapters_of(model)
        stiefel_params, euclidean_params = [], []
        for adapter in self.adapters.values():
            if isinstance(adapter, adapter_lib.PoLARLinear):
                stiefel_params += adapter.stiefel_parameters()
                euclidean_params += adapter.euclidean_parameters()
            else:
                euclidean_params += [p for n, p in adapter.named_parameters()
                                     if p.requires_grad and not n.startswith("base.")]
        self.optimizers = {}
        self._resume_rng = None  # the global generator's state at a loaded checkpoint
        if euclidean_params:
            self.optimizers["adapter"] = torch.optim.AdamW(
                euclidean_params, lr=config.learning_rate, weight_decay=config.weight_decay)
        if stiefel_params:
            self.optimizers["stiefel"] = make_stiefel_optimizer(
                stiefel_params, method=config.stiefel_method, lr=config.learning_rate,
                landing_lambda=config.landing_lambda)
        means = ("weight", "weight_mean", "bias")
        head_groups = [{"params": [p for n, p in head.named_parameters() if n in means],
                        "lr": config.head_learning_rate}]
        covariance = [p for n, p in head.named_parameters() if n not in means]
        if covariance:
            head_groups.append({"params": covariance, "lr": config.covariance_learning_rate})
        self.optimizers["head"] = torch.optim.AdamW(head_groups, weight_decay=0.0)
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, config.steps, config.warmup_fraction))
            for name, optimizer in self.optimizers.items()
        }
        # float16 autocast (accelerate's --mixed_precision fp16) scales the loss, so that small
        # gradients of the backbone pass do not underflow; bfloat16 and float32 need no scaling
        # (disabled, the scaler passes the loss and the optimizer steps through unchanged)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.world.autocast_dtype(self.device) == torch.float16)
        self.state = TrainState()
        self.generator = torch.Generator().manual_seed(config.seed)

    # ------------------------------------------------------------------ objective

    def objective(self, phi, batch) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; ``loss`` is what is minimized."""
        if self.config.objective == "elbo":
            terms = self.head.jensen_elbo(phi, batch["labels"], batch["choice_mask"],
                                          num_data=self.num_data)
            return {"loss": terms.loss, "bound": terms.bound, "kl": terms.kl}
        logits = self.head(phi, batch["choice_mask"])  # (B, C)
        loss = F.cross_entropy(logits, batch["labels"])
        if self.config.prior_precision:  # MAP: - log N(theta; 0, I / tau) / N, constants dropped
            squares = sum(p.square().sum() for p in self._trainable(self.optimizers))
            loss = loss + self.config.prior_precision * squares / (2 * self.num_data)
        return {"loss": loss}

    def _check_finite(self, terms: dict, where: str) -> None:
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                raise NumericalError(
                    f"step {self.state.step + 1} ({where}): the {name!r} term is "
                    f"{value.item()}; lower the learning rate or check the features")

    # ------------------------------------------------------------------ one step

    def _trainable(self, names) -> list[torch.Tensor]:
        return [p for name in names if name in self.optimizers
                for group in self.optimizers[name].param_groups for p in group["params"]]

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def train_step(self, micro_batches: list[list[data.Example]]) -> dict:
        """One optimizer step over ``grad_accumulation`` micro-batches; returns the log entry.

        Each micro-batch is a global batch; this process trains on its slice, with its mean loss
        weighted by the slice's share, and the gradients are summed over processes (one process:
        the whole batch, weight 1).
        """
        config = self.config
        alternating = config.schedule == "alternating"
        first_block = ["adapter", "stiefel"] if alternating else list(self.optimizers)
        self.model.train()
        self._zero_grad()
        # the same names on every process, also on one whose slice is empty
        totals = dict.fromkeys(LOSS_TERMS[config.objective], 0.0)
        cached = []  # detached features for the posterior steps
        for global_batch in micro_batches:
            examples, weight = self.world.slice_of(global_batch)
            if not examples:  # a short last batch: this rank adds zero gradients
                continue
            batch = self.form.encode(examples)
            phi = self.form.features(batch)  # (B, d), or ChoiceFeatures (B, C) + (B, C, d)
            terms = self.objective(phi, batch)
            self._check_finite(terms, "adapter step" if alternating else "joint step")
            share = weight / len(micro_batches)
            self.scaler.scale(terms["loss"] * share).backward()
            for name, value in terms.items():
                totals[name] += value.item() * share
            cached.append((phi.detach(), batch, share))
        self.world.sum_gradients(self._trainable(first_block))
        totals = self.world.sum_values(totals)
        stepping = [self.optimizers[name] for name in first_block if name in self.optimizers]
        for optimizer in stepping:
            self.scaler.unscale_(optimizer)  # true gradients before clipping
        norm = torch.nn.utils.clip_grad_norm_(self._trainable(first_block), config.max_grad_norm)
        # float16: an overflow in one block makes the clipped gradients of every block non-finite,
        # so the whole step is skipped, not only the overflowing block (one host read; the
        # scaler's own per-optimizer check would be one more), and update() lowers the scale
        overflowed = self.scaler.is_enabled() and not torch.isfinite(norm).item()
        if not overflowed:
            for optimizer in stepping:
                optimizer.step()
        self.scaler.update()
        if alternating and self.config.posterior_steps:
            self._posterior_steps(cached)
        stepped = list(self.optimizers) if not alternating or self.config.posterior_steps \
            else first_block
        with warnings.catch_warnings():
            if overflowed:  # the schedule counts the skipped step too; torch would warn
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
            for name in stepped:
                if name in self.schedulers:
                    self.schedulers[name].step()
        self.state.step += 1
        entry = {"step": self.state.step, **totals,
                 "lr": self.schedulers[first_block[0]].get_last_lr()[0]}
        if self.scaler.is_enabled():  # float16: the loss scale after this step
            entry["loss_scale"] = self.scaler.get_scale()
        if self.state.step % config.log_every == 0 or self.state.step == config.steps:
            entry.update(self.geometry_log())
        self.state.history.append(entry)
        return entry

    def _posterior_steps(self, cached) -> None:
        """Alternating schedule, block 2: ascend the ELBO in q with the adapters fixed (over
        every process's features of the step: weighted slices, gradients summed)."""
        self.model.eval()
        for _ in range(self.config.posterior_steps):
            self.optimizers["head"].zero_grad(set_to_none=True)
            for phi, batch, share in cached:
                terms = self.objective(phi, batch)
                self._check_finite(terms, "posterior step")
                (terms["loss"] * share).backward()
            self.world.sum_gradients(self._trainable(["head"]))
            torch.nn.utils.clip_grad_norm_(self._trainable(["head"]), self.config.max_grad_norm)
            self.optimizers["head"].step()

    def geometry_log(self) -> dict:
        """Stable rank of every Delta W (and the PoLAR orthogonality error), for the log."""
        if not self.adapters:
            return {}
        report = adapter_lib.rank_report(self.adapters)
        self.state.rank_history[self.state.step] = report
        entry = {"stable_rank": {name: r["stable_rank"] for name, r in report.items()}}
        orthogonality = adapter_lib.orthogonality_report(self.adapters)
        if orthogonality:
            entry["orthogonality_error"] = max(max(v.values()) for v in orthogonality.values())
        return entry

    # ------------------------------------------------------------------ the loop

    def fit(self, examples: list[data.Example], progress: bool = True,
            checkpoint_dir=None, checkpoint_every: int | None = None,
            until: int | None = None) -> list[dict]:
        """Train until ``config.steps`` (continuing from ``state.step`` after :meth:`load`).

        ``until`` stops earlier, after that many steps in total (the schedule still assumes
        ``config.steps``): this is what an interrupted run looks like, used to test resuming.
        """
        from tqdm.auto import tqdm

        config = self.config
        if not examples:
            raise ConfigError("cannot train on an empty list of examples")
        self.form.prepare(examples, progress=progress)
        if self._resume_rng is not None:  # after load(): where the interrupted run was
            set_global_rng_state(self._resume_rng, self.device)
            self._resume_rng = None
        stream = self._batch_stream(examples)
        bar = tqdm(total=config.steps, initial=self.state.step, desc="fine-tuning",
                   disable=not progress or not self.world.is_main, leave=False)
        start = time.perf_counter()
        last = config.steps if until is None else min(until, config.steps)
        while self.state.step < last:
            micro = [next(stream) for _ in range(config.grad_accumulation)]
            entry = self.train_step(micro)
            entry["seconds"] = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
            if checkpoint_dir and checkpoint_every and self.state.step % checkpoint_every == 0 \
                    and self.world.is_main:  # the state is the same on every process
                self.save(checkpoint_dir)
        bar.close()
        self.model.eval()
        return self.state.history

    def _batch_stream(self, examples):
        """Endless seeded shuffles of ``examples`` in global batches (``batch_size`` questions per
        process); resumes at the right place after load()."""
        size = self.config.batch_size * self.world.size
        per_epoch = math.ceil(len(examples) / size)
        skip = self.state.step * self.config.grad_accumulation
        epoch = 0
        while True:
            generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            for batch in data.batches(examples, size, shuffle=True, generator=generator):
                if skip:
                    skip -= 1
                    continue
                yield batch
            epoch += 1
            if per_epoch == 0:
                return

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder, extra_config: dict | None = None) -> None:
        """Adapters + head + optimizer state as safetensors, config and history as JSON."""
        tensors = {"adapters": adapter_lib.adapter_state_dict(self.adapters),
                   "head": {k: v for k, v in self.head.state_dict().items()}}
        optimizer_tensors, optimizer_plain = {}, {}
        for name, optimizer in self.optimizers.items():
            values, plain = checkpoints.optimizer_to_tensors(optimizer, name)
            optimizer_tensors.update(values)
            optimizer_plain[name] = plain
        tensors["optimizers"] = optimizer_tensors
        tensors["rng"] = global_rng_state(self.device)  # dropout masks, BLoB's weight noise
        config = {"train": asdict(self.config), "num_data": self.num_data,
                  "head": type(self.head).__name__, **(extra_config or {})}
        state = {"step": self.state.step, "history": self.state.history,
                 "rank_history": {str(k): v for k, v in self.state.rank_history.items()},
                 "optimizers": optimizer_plain,
                 "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()}}
        if self.scaler.is_enabled():  # float16: the loss scale and its growth counter
            state["loss_scaler"] = self.scaler.state_dict()
        checkpoints.save_checkpoint(folder, tensors, config, state)

    def load(self, folder) -> dict:
        """Restore adapters, head and (when present) optimizer state to resume training.

        ConfigError, before anything changes, when the checkpoint was trained with another
        configuration than this trainer's: another head, number of training questions, objective,
        learning rate, seed ... Only :data:`RESUMABLE_CHANGES` may differ (training on for more
        steps, or on another number of processes)."""
        tensors, config, state = checkpoints.load_checkpoint(folder)
        ours = {"train": {k: v for k, v in json.loads(json.dumps(asdict(self.config))).items()
                          if k not in RESUMABLE_CHANGES},
                "num_data": self.num_data, "head": type(self.head).__name__}
        differences = [f"{name}: {config.get(name)!r} there, {ours[name]!r} here"
                       for name in ("num_data", "head") if config.get(name) != ours[name]]
        differences += [f"{name}: {config.get('train', {}).get(name)!r} there, {value!r} here"
                        for name, value in ours["train"].items()
                        if config.get("train", {}).get(name) != value]
        if differences:
            raise ConfigError(f"cannot resume from {folder}: it holds a checkpoint of another "
                              f"configuration ({'; '.join(differences[:4])}); nothing was "
                              "overwritten: use another folder, or delete this one")
        if self.adapters:
            adapter_lib.load_adapters(self.adapters, Path(folder) / "adapters.safetensors")
        checkpoints.load_into_module(self.head, tensors.get("head", {}), f"{folder}: head")
        for name, optimizer in self.optimizers.items():
            if name in state.get("optimizers", {}):
                checkpoints.optimizer_from_tensors(optimizer, name, tensors.get("optimizers", {}),
                                                   state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            if name in state.get("schedulers", {}):
                scheduler.load_state_dict(state["schedulers"][name])
        if self.scaler.is_enabled() and "loss_scaler" in state:
            self.scaler.load_state_dict(state["loss_scaler"])
        # fit() restores it: methods seed the global generator just before they call fit()
        self._resume_rng = tensors.get("rng")
        self.state = TrainState(step=int(state.get("step", 0)),
                                history=list(state.get("history", [])),
                                rank_history={int(k): v for k, v in
                                              state.get("rank_history", {}).items()})
        return config
