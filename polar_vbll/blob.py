"""BLoB: Bayesian LoRA by backpropagation (Wang et al. 2024), and its PoLAR twin.

BLoB keeps LoRA's ``Delta W = s B A`` and puts a mean-field Gaussian variational posterior on
``A`` only; ``B`` stays a point estimate::

    q(A) = prod_ij N(A_ij; M_ij, sigma_ij^2),   sigma = rho^2   (BLoB's parameterization)
    p(A) = prod_ij N(A_ij; 0, beta^2),          beta = 0.2
    rho_ij ~ U(eps / sqrt 2, eps) at the start, eps = 0.05, so sigma starts in [0.00125, 0.0025]

(as in BLoB's reference code, ``modelwrappers/blob.py`` of Wang-ML-Lab/bayesian-peft, with its
defaults ``--bayes-eps 0.05 --bayes-beta 0.2``; that code takes ``sigma = rho^2`` for eps > 0
and a softplus of rho only for eps < 0). The mean ``M``
starts at LoRA's Kaiming-uniform ``A`` (the same draw as ``mle`` with the same seed) and
``B = 0``, so the untrained model is the zero-shot model in every sample.

**Objective** (one weight sample per step): the cross-entropy of the choice head (the course's
head, unchanged) on a batch, plus the closed-form

    KL(q || p) = sum_ij [ log(beta / sigma_ij) + (sigma_ij^2 + M_ij^2) / (2 beta^2) - 1/2 ]

weighted by 1 / N over the N training questions: the ELBO per question, the KL charged once per
pass over the training set in equal parts per step (the same 1 / N as the VBLL head's KL, so the
two Bayesian methods trade data fit against prior alike). BLoB's code also offers Blundell et
al.'s reweighting, ``pi_i = 2^i / (2^(M+1) - 1)`` over the M batches of an epoch, with the KL
stepped by a separate SGD optimizer; its weights also sum to one KL per epoch, but they are
~2^-M for most steps and 1/2 at an epoch's last, which under the one AdamW (and gradient clipping)
of :class:`polar_vbll.training.Trainer` would be a few KL-only steps per epoch.

**Sampling.** Training uses *flipout* (Wen et al. 2018), as BLoB does: one draw
``E ~ N(0, 1)`` per adapter call and random signs per token, ``x -> s * (((x o r) (sigma o E)^T)
o s') B^T`` with ``r``, ``s'`` in {-1, 1}: every token sees a perturbation of A with the
posterior's marginal law (``tests/test_blob.py`` checks its mean and variance), and the tokens
of a batch see decorrelated ones. The alternative, ``BLoBTrainer(sampling="reparameterization")``,
draws one ``A = M + sigma o E`` per step for the whole batch: the exact one-sample estimate of
E_q[loss], with every token of a sequence under the same weights. Flipout buys its lower gradient
variance across the examples of a batch; with the course's 4 questions a step there is little to
buy: ``benchmarks/bench_blob_sampling.py`` found no measurable difference in the gradient's
variance (``benchmarks/measured/blob_sampling_cpu_course.json``) while the signs cost time. The
committed runs use flipout, BLoB's choice. Prediction draws one ``A = M + sigma o E`` per pass,
used by every token of every question in that pass, and averages the N passes' softmax
(N = ``profile.adapter_samples``, 10 as in BLoB). With the course profile's feature cache only
the top ``adapt_layers`` layers repeat per sample: a prediction records N backbone passes and
N x (choices) sequences per question, as MC-dropout does. Outside training and prediction's
draws (``model.eval()`` with no sample drawn) an adapter runs its mean ``M``.

**PoLAR-BLoB** (``polar_blob``): the same treatment on PoLAR's core. ``Delta W = s X Theta Y^T``
with ``X``, ``Y`` on Stiefel manifolds (point estimates, trained by landing as in ``polar``)
and ``q(Theta) = N(M, diag sigma^2)``, ``sigma = rho^2``, prior ``N(0, beta^2)``, the same KL
weighting and sampling. It is well defined because Theta is the one Euclidean factor of PoLAR: a
Gaussian on it is a Gaussian on Delta W restricted to the fixed singular directions X, Y. It is
a much smaller posterior than BLoB's: r numbers per layer with the course profile's diagonal
core (r^2 with a full one), against r x d_in for BLoB's A, so it can express uncertainty in the
size of each direction of Delta W, never in the directions themselves.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from polar_vbll import adapters as adapter_lib
from polar_vbll.errors import ConfigError
from polar_vbll.training import Trainer

PRIOR_STD = 0.2  # beta: p(A) = N(0, beta^2), BLoB's --bayes-beta
INIT_EPSILON = 0.05  # rho ~ U(eps / sqrt 2, eps) at the start, BLoB's --bayes-eps
SAMPLINGS = ("flipout", "reparameterization")
RHO_SEED_OFFSET = 1_000_003  # rho's generator: seeded with this + the method's seed


def random_signs(shape, like: torch.Tensor) -> torch.Tensor:
    """Independent +-1 entries (torch's global generator), float32 on ``like``'s device."""
    return torch.randint(0, 2, shape, device=like.device).to(torch.float32).mul_(2).sub_(1)


def flipout(x: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
    """``((x o r) P^T) o s``: x (..., in) times a perturbation P (out, in) whose sign pattern is
    flipped independently for every row of x (r (..., in), s (..., out) random signs). Each row
    sees ``P o (s r^T)``, which has P's law when P's entries are independent and symmetric."""
    signs_in = random_signs(x.shape, x)  # (..., in)
    signs_out = random_signs((*x.shape[:-1], perturbation.shape[0]), x)  # (..., out)
    return ((x * signs_in) @ perturbation.T) * signs_out  # (..., out)


def gaussian_kl(mean: torch.Tensor, rho: torch.Tensor, prior_std: float) -> torch.Tensor:
    """sum KL(N(mean, sigma^2) || N(0, prior_std^2)) over entries, sigma = rho^2 (closed form)."""
    sigma_squared = rho.pow(4)
    log_sigma = 2 * torch.log(rho.abs())
    return (math.log(prior_std) - log_sigma
            + (sigma_squared + mean.square()) / (2 * prior_std**2) - 0.5).sum()


def _initial_rho(shape, epsilon: float, generator, device) -> nn.Parameter:
    rho = torch.empty(shape, dtype=torch.float32).uniform_(epsilon / math.sqrt(2), epsilon,
                                                          generator=generator)
    return nn.Parameter(rho.to(device))


class _Variational:
    """What BLoB adds to an adapter: a posterior std ``rho^2`` on one factor, its KL to the prior,
    and a fixed standard-normal draw ``noise`` (a posterior sample for every token) or none."""

    prior_std: float
    noise: torch.Tensor | None

    def _start_posterior(self, mean: torch.Tensor, prior_std: float, init_epsilon: float,
                         generator) -> nn.Parameter:
        """Set the prior and no fixed draw; returns rho ~ U(eps / sqrt 2, eps) like ``mean``."""
        _check_prior(prior_std, init_epsilon)
        self.prior_std, self.noise = float(prior_std), None
        return _initial_rho(mean.shape, init_epsilon, generator, mean.device)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", prior_std={self.prior_std}"

    def variational_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, rho) of the factor that carries the posterior."""
        raise NotImplementedError

    def sigma(self) -> torch.Tensor:
        return self.variational_parameters()[1].square()

    def kl_divergence(self) -> torch.Tensor:
        mean, rho = self.variational_parameters()
        return gaussian_kl(mean, rho, self.prior_std)

    def draw(self) -> None:
        """Fix one posterior sample (standard-normal noise from torch's global generator)."""
        self.noise = torch.randn_like(self.variational_parameters()[1])

    def perturbation(self) -> torch.Tensor:
        """sigma o E for the fixed draw E, or for a fresh one when none is fixed."""
        noise = self.noise if self.noise is not None else \
            torch.randn_like(self.variational_parameters()[1])
        return self.sigma() * noise


class BLoBLinear(_Variational, adapter_lib.LoRALinear):
    """LoRA with q(A) = N(lora_A, diag(lora_A_rho^4)) and a point-estimate B (see module doc)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None, prior_std: float = PRIOR_STD,
                 init_epsilon: float = INIT_EPSILON):
        super().__init__(base, rank, alpha, dropout=dropout, generator=generator)
        self.lora_A_rho = self._start_posterior(self.lora_A, prior_std, init_epsilon, generator)

    def variational_parameters(self):
        return self.lora_A, self.lora_A_rho

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        mean = super().adapter_output(x)  # s (x M^T) B^T, (..., out)
        if self.noise is not None:  # one posterior sample for every token
            return mean + self.scaling * ((x @ self.perturbation().T) @ self.lora_B.T)
        if not self.training:
            return mean
        return mean + self.scaling * (flipout(x, self.perturbation()) @ self.lora_B.T)


class PoLARBLoBLinear(_Variational, adapter_lib.PoLARLinear):
    """PoLAR with q(Theta) = N(Theta, diag(Theta_rho^4)); X, Y point estimates (see module doc)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, theta: str = "full",
                 generator: torch.Generator | None = None, dropout: float = 0.0,
                 prior_std: float = PRIOR_STD, init_epsilon: float = INIT_EPSILON):
        super().__init__(base, rank, alpha, theta=theta, generator=generator, dropout=dropout)
        self.Theta_rho = self._start_posterior(self.Theta, prior_std, init_epsilon, generator)

    def variational_parameters(self):
        return self.Theta, self.Theta_rho

    def euclidean_parameters(self) -> list[nn.Parameter]:
        """[Theta, Theta_rho]: the core's posterior mean and std parameter."""
        return [self.Theta, self.Theta_rho]

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        mean = super().adapter_output(x)  # s ((x Y) Theta^T) X^T, (..., out)
        if self.noise is None and not self.training:
            return mean
        delta = self.perturbation()
        delta = delta if self.theta_kind == "full" else torch.diag(delta)  # (r, r)
        projected = x @ self.Y  # (..., r)
        noisy = projected @ delta.T if self.noise is not None else flipout(projected, delta)
        return mean + self.scaling * (noisy @ self.X.T)


def _check_prior(prior_std: float, init_epsilon: float) -> None:
    if not prior_std > 0:
        raise ConfigError(f"BLoB's prior std must be > 0, got {prior_std!r}")
    if not init_epsilon > 0:
        raise ConfigError(f"BLoB's init_epsilon must be > 0, got {init_epsilon!r}")


def variational_adapters(adapters: dict) -> dict:
    """The adapters of ``adapters`` that carry a BLoB posterior."""
    return {name: a for name, a in adapters.items() if isinstance(a, _Variational)}


def make_variational(model: nn.Module, adapters: dict, seed: int = 0,
                     prior_std: float = PRIOR_STD, init_epsilon: float = INIT_EPSILON) -> dict:
    """Replace every LoRA / PoLAR adapter of ``adapters`` (inside ``model``) by its BLoB twin,
    in place: the same base layer and the same A, B (or X, Theta, Y) values, plus rho drawn from
    a generator seeded with ``RHO_SEED_OFFSET + seed``. Returns {name: adapter} like
    ``add_adapters``."""
    # not ``seed`` itself: add_adapters drew A's uniforms from that stream, and rho drawn from
    # the same stream would be an increasing function of A
    generator = torch.Generator().manual_seed(RHO_SEED_OFFSET + seed)
    out = {}
    for name, adapter in adapters.items():
        if isinstance(adapter, _Variational):
            out[name] = adapter
            continue
        options = {"dropout": adapter.dropout.p, "prior_std": prior_std,
                   "init_epsilon": init_epsilon}
        if isinstance(adapter, adapter_lib.PoLARLinear):
            twin = PoLARBLoBLinear(adapter.base, adapter.rank, adapter.alpha,
                                   theta=adapter.theta_kind, **options)
        elif isinstance(adapter, adapter_lib.LoRALinear):
            twin = BLoBLinear(adapter.base, adapter.rank, adapter.alpha, **options)
        else:
            raise ConfigError(f"{name}: expected a LoRA or PoLAR adapter, got "
                              f"{type(adapter).__name__}")
        with torch.no_grad():
            for parameter_name, parameter in adapter.named_parameters():
                if not parameter_name.startswith("base."):
                    getattr(twin, parameter_name).copy_(parameter)
            rho = twin.variational_parameters()[1]
            rho.copy_(_initial_rho(rho.shape, init_epsilon, generator, rho.device))
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, twin)
        out[name] = twin
    return out


def posterior_kl(adapters: dict) -> torch.Tensor:
    """KL(q || p) summed over every BLoB adapter (0 when there is none)."""
    terms = [a.kl_divergence() for a in variational_adapters(adapters).values()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def draw_posterior_sample(adapters: dict) -> None:
    """Fix one posterior sample in every BLoB adapter (no-op for the others)."""
    for adapter in variational_adapters(adapters).values():
        adapter.draw()


def clear_posterior_sample(adapters: dict) -> None:
    """Back to the mean in eval mode and flipout in training."""
    for adapter in variational_adapters(adapters).values():
        adapter.noise = None


@contextlib.contextmanager
def mean_weights(adapters: dict):
    """Run the posterior means, also in training mode: sigma -> 0 without changing a parameter."""
    saved = {name: a.noise for name, a in variational_adapters(adapters).items()}
    for adapter in variational_adapters(adapters).values():
        adapter.noise = torch.zeros_like(adapter.variational_parameters()[1])
    try:
        yield
    finally:
        for name, adapter in variational_adapters(adapters).items():
            adapter.noise = saved[name]


class BLoBTrainer(Trainer):
    """:class:`~polar_vbll.training.Trainer` with BLoB's KL / N added to each batch's loss and
    one weight sample per step (flipout, or one shared reparameterized draw); logs the KL term
    (``kl``, already divided by N) and the mean posterior std (``posterior_std``)."""

    def __init__(self, *args, sampling: str = "flipout", **kwargs):
        if sampling not in SAMPLINGS:
            raise ConfigError(f"BLoB's sampling must be one of {SAMPLINGS}, got {sampling!r}")
        super().__init__(*args, **kwargs)
        if not variational_adapters(self.adapters):
            raise ConfigError("BLoBTrainer needs BLoB adapters (blob.make_variational)")
        self.sampling = sampling
        self._kl = 0.0

    def objective(self, phi, batch) -> dict[str, torch.Tensor]:
        terms = super().objective(phi, batch)
        kl = posterior_kl(self.adapters) / self.num_data
        self._kl = float(kl.detach())
        return {**terms, "loss": terms["loss"] + kl}

    def train_step(self, micro_batches) -> dict:
        if self.sampling == "reparameterization":
            draw_posterior_sample(self.adapters)
        try:
            entry = super().train_step(micro_batches)
        finally:
            clear_posterior_sample(self.adapters)
        sigmas = [a.sigma().detach() for a in variational_adapters(self.adapters).values()]
        entry["kl"] = self._kl  # entry is the dict kept in the history
        entry["posterior_std"] = float(torch.cat([s.flatten() for s in sigmas]).mean())
        return entry


__all__ = ["BLoBLinear", "BLoBTrainer", "INIT_EPSILON", "PRIOR_STD", "PoLARBLoBLinear",
           "SAMPLINGS", "clear_posterior_sample", "draw_posterior_sample", "flipout",
           "gaussian_kl", "make_variational", "mean_weights", "posterior_kl", "random_signs",
           "variational_adapters"]
