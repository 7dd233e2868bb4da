"""The variational Bayesian last layer (VBLL), and the Gaussian-logit pieces it shares with Laplace.

A Bayesian last layer puts a Gaussian over the weights W (C x d) that turn the backbone
features phi (d,) into the C answer logits z = W phi. Because z is linear in W, the logits given
phi are Gaussian too, so prediction needs ONE backbone pass and samples (or a closed form)
only in the C-dimensional logit space:

    z | phi ~ N(mu(phi), Sigma_z(phi)).

:class:`VBLLHead` learns q(W) = prod_c N(w_c; m_c, S_c) by maximizing the Jensen lower bound
of the ELBO (Harrison et al. 2024, arXiv 2404.11599):

    E_q log p(y | phi) >= m_y^T phi - log sum_c exp(m_c^T phi + 1/2 phi^T S_c phi),

minus KL(q || prior) / N. The classes are independent, so Sigma_z is diagonal with entries
phi^T S_c phi. :class:`ChoiceVBLLHead` is the same idea over the choice head's shared weight.

The input checks and :func:`logit_gaussian_predictive` also serve the post-hoc Laplace
posteriors of :mod:`polar_vbll.laplace`, whose logits are correlated across classes.

``mask`` (B, C) marks which answer choices exist for each example (ARC has 3-5 choices,
BoolQ 2): absent choices get logit -inf, so they drop out of every sum and get
probability exactly 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from polar_vbll.errors import ConfigError, DataError, NumericalError, ShapeError

COVARIANCE_KINDS = ("dense", "diagonal", "lowrank")
PREDICTIVE_METHODS = ("mc", "probit", "mean")


# ----------------------------------------------------------------------------- input checks


def check_features(phi: torch.Tensor, in_features: int, name: str = "phi") -> None:
    """Raise ShapeError unless phi is (B, in_features), NumericalError if it holds NaN/inf."""
    if not isinstance(phi, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor of shape (batch, {in_features}); got {type(phi).__name__}")
    if phi.dim() != 2 or phi.shape[1] != in_features:
        raise ShapeError(
            f"{name} must have shape (batch, {in_features}) (one feature vector per example); "
            f"got shape {tuple(phi.shape)}"
        )
    if not torch.isfinite(phi).all():  # one cheap reduction
        raise NumericalError(f"{name} holds NaN or infinite values; the backbone features must be finite")


def check_mask(mask: torch.Tensor | None, batch_size: int, num_classes: int, device=None) -> torch.Tensor:
    """Return a boolean (B, C) mask (all True when None); every row needs one present choice."""
    if mask is None:
        return torch.ones(batch_size, num_classes, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise DataError(f"mask must be a boolean tensor (True = the choice exists); got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != (batch_size, num_classes):
        raise ShapeError(f"mask must have shape (batch, num_classes) = ({batch_size}, {num_classes}); got {tuple(mask.shape)}")
    rows_without_choice = (~mask.any(dim=1)).nonzero()
    if len(rows_without_choice) > 0:
        raise DataError(f"mask removes every choice of example {rows_without_choice[0].item()}; each example needs at least one")
    return mask


def check_labels(labels: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise unless labels is an int tensor (B,) of indices of choices that the mask keeps."""
    batch_size, num_classes = mask.shape
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be an integer tensor of class indices; got {getattr(labels, 'dtype', type(labels))}")
    if tuple(labels.shape) != (batch_size,):
        raise ShapeError(f"labels must have shape (batch,) = ({batch_size},); got {tuple(labels.shape)}")
    outside = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(outside) > 0:
        index = outside[0].item()
        raise DataError(f"labels[{index}] = {labels[index].item()} is outside the valid choices 0..{num_classes - 1}")
    label_absent = (~mask.gather(1, labels[:, None].long()).squeeze(1)).nonzero()
    if len(label_absent) > 0:
        index = label_absent[0].item()
        raise DataError(
            f"mask removes the true label of example {index} (label {labels[index].item()}); "
            "the correct answer must be one of the present choices"
        )


# ----------------------------------------------------------------------------- shared predictive


def logit_gaussian_predictive(
    logit_mean: torch.Tensor,
    logit_covariance: torch.Tensor,
    mask: torch.Tensor | None = None,
    method: str = "mc",
    n_samples: int = 100,
    generator: torch.Generator | None = None,
    return_samples: bool = False,
):
    """Class probabilities (B, C) when the logits are Gaussian, z ~ N(logit_mean, logit_covariance).

    ``logit_covariance`` is either (B, C): the variances of independent logits (VBLL), or
    (B, C, C): a full covariance (Laplace with a full GGN), then sampled jointly.

    * ``"mc"``:     p = 1/S sum_s softmax(z_s), z_s ~ N(mu, Sigma_z) drawn with ``generator``.
    * ``"probit"``: p = softmax(mu_c / sqrt(1 + pi/8 * var_c)), the generalized probit
      ("mean-field") approximation (Lu et al. 2020); it uses only the variances var_c and
      ignores correlations between logits.
    * ``"mean"``:   p = softmax(mu), the plug-in prediction that ignores the uncertainty.

    Absent choices get logit -inf, hence probability 0. With ``return_samples=True`` (mc only)
    also returns the sampled logits (S, B, C), -inf at absent choices, so a caller can
    average the softmax of the first k samples.
    """
    if method not in PREDICTIVE_METHODS:
        raise ConfigError(f"method must be one of {PREDICTIVE_METHODS}; got {method!r}")
    if return_samples and method != "mc":
        raise ConfigError(f"return_samples=True needs method='mc' (only mc draws samples); got method={method!r}")
    batch_size, num_classes = logit_mean.shape
    mask = check_mask(mask, batch_size, num_classes, device=logit_mean.device)
    full_covariance = logit_covariance.dim() == 3
    variance = torch.diagonal(logit_covariance, dim1=-2, dim2=-1) if full_covariance else logit_covariance

    if method == "mean":
        return torch.softmax(logit_mean.masked_fill(~mask, -math.inf), dim=-1)
    if method == "probit":
        scaled = logit_mean / torch.sqrt(1.0 + math.pi / 8.0 * variance)  # (B, C)
        return torch.softmax(scaled.masked_fill(~mask, -math.inf), dim=-1)

    if not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer; got {n_samples!r}")
    # drawn question by question ((B, S, C), then viewed as (S, B, C)): the first k questions get
    # the same draws whether or not more questions follow, so a prefix of a prediction can be
    # checked on its own (tests/test_pretrained.py re-evaluates committed runs on a prefix)
    noise = torch.randn(
        (batch_size, n_samples, num_classes), generator=generator, dtype=logit_mean.dtype, device=logit_mean.device
    ).transpose(0, 1)  # (S, B, C)
    if full_covariance:
        # A square root R with R R^T = Sigma_z from its eigendecomposition (robust when Sigma_z is
        # near-singular, unlike a Cholesky factor); computed in float64 for accuracy.
        eigenvalues, eigenvectors = torch.linalg.eigh(logit_covariance.double())  # (B, C), (B, C, C)
        root = (eigenvectors * eigenvalues.clamp_min(0.0).sqrt()[:, None, :]).to(logit_mean.dtype)  # (B, C, C)
        samples = logit_mean + torch.einsum("bce,sbe->sbc", root, noise)  # (S, B, C)
    else:
        samples = logit_mean + variance.clamp_min(0.0).sqrt() * noise  # (S, B, C)
    samples = samples.masked_fill(~mask, -math.inf)
    probabilities = torch.softmax(samples, dim=-1).mean(dim=0)  # (B, C)
    return (probabilities, samples) if return_samples else probabilities


# ----------------------------------------------------------------------------- KL


def gaussian_kl_to_isotropic_prior(
    mean: torch.Tensor,
    covariance_trace: torch.Tensor,
    covariance_logdet: torch.Tensor,
    prior_variance: float,
    prior_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_c KL(N(m_c, S_c) || N(m0_c, s I)) in closed form, from tr(S_c) and log det(S_c).

        KL_c = 1/2 [ tr(S_c)/s + ||m_c - m0_c||^2 / s - d + d log s - log det S_c ]

    mean (C, d); covariance_trace, covariance_logdet (C,); s = prior_variance; m0 = 0 if None.
    """
    dimension = mean.shape[-1]
    difference = mean if prior_mean is None else mean - prior_mean
    per_class = 0.5 * (
        covariance_trace / prior_variance
        + (difference**2).sum(-1) / prior_variance
        - dimension
        + dimension * math.log(prior_variance)
        - covariance_logdet
    )  # (C,)
    return per_class.sum()


# ----------------------------------------------------------------------------- VBLL head


class ELBOTerms(NamedTuple):
    """Pieces of the VBLL training objective (all scalars)."""

    bound: torch.Tensor  # mean over the batch of the Jensen bound on E_q log p(y | phi)
    kl: torch.Tensor  # KL(q || prior), summed over classes
    loss: torch.Tensor  # -(bound - kl / num_data), what the optimizer minimizes


class VBLLHead(nn.Module):
    """Variational Bayesian last layer: q(W) = prod_c N(w_c; m_c, S_c), logits z = W phi.

    Covariance parameterizations (one d x d covariance per class):

    * ``"dense"``:    S_c = L_c L_c^T, L_c lower triangular with diagonal exp(raw) > 0.
    * ``"diagonal"``: S_c = diag(v_c), v_c = exp(log_variance_c).
    * ``"lowrank"``:  S_c = F_c F_c^T + diag(v_c), F_c (d x rank).

    Prior: p(w_c) = N(prior_mean_c, prior_scale * I); ``prior_scale`` is the VARIANCE (not the
    standard deviation) and ``prior_mean`` defaults to 0. ``init_mean`` (C, d) starts the mean at
    e.g. the LM-head rows of the answer tokens, so the head starts as the zero-shot model.
    ``init_scale`` is the starting posterior standard deviation of each weight, S_c ~ init_scale^2 I:
    the logit variance is init_scale^2 ||phi||^2, i.e. 1e-4 at the default 1e-4 and ||phi|| = 100,
    small enough that every predictive starts within ~1e-4 of the zero-shot softmax
    (tests/test_vbll.py measures it).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        covariance: str = "dense",
        rank: int | None = None,
        prior_scale: float = 1.0,
        init_mean: torch.Tensor | None = None,
        init_scale: float = 1e-4,
        prior_mean: torch.Tensor | None = None,
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if covariance not in COVARIANCE_KINDS:
            raise ConfigError(f"covariance must be one of {COVARIANCE_KINDS}; got {covariance!r}")
        if covariance == "lowrank":
            if not isinstance(rank, int) or not 1 <= rank <= in_features:
                raise ConfigError(f"covariance='lowrank' needs an integer rank in 1..{in_features}; got rank={rank!r}")
        elif rank is not None:
            raise ConfigError(f"rank is only used with covariance='lowrank'; got rank={rank!r} with covariance={covariance!r}")
        if not prior_scale > 0 or not math.isfinite(prior_scale):
            raise ConfigError(f"prior_scale (the prior variance) must be a positive finite number; got {prior_scale!r}")
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ConfigError(f"init_scale (starting posterior standard deviation) must be positive and finite; got {init_scale!r}")
        self.in_features, self.num_classes = in_features, num_classes
        self.covariance_kind, self.rank, self.prior_scale = covariance, rank, float(prior_scale)
        shape = (num_classes, in_features)

        def as_class_by_feature(tensor, name):
            if tensor is None:
                return torch.zeros(shape)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = tuple(getattr(tensor, "shape", ()))
                raise ShapeError(f"{name} must be a tensor of shape (num_classes, in_features) = {shape}; got {got}")
            if not torch.isfinite(tensor).all():
                raise NumericalError(f"{name} holds NaN or infinite values")
            return tensor.detach().clone().to(torch.get_default_dtype())

        self.weight_mean = nn.Parameter(as_class_by_feature(init_mean, "init_mean"))  # (C, d)
        self.register_buffer("prior_mean", as_class_by_feature(prior_mean, "prior_mean"))  # (C, d)
        log_variance = torch.full(shape, 2.0 * math.log(init_scale))
        if covariance == "dense":
            self.cholesky_offdiagonal = nn.Parameter(torch.zeros(num_classes, in_features, in_features))  # strict lower part used
            self.log_cholesky_diagonal = nn.Parameter(0.5 * log_variance)  # diag(L_c) = exp(.)
        else:
            self.log_variance = nn.Parameter(log_variance)  # v_c = exp(.)
        if covariance == "lowrank":
            # F = 0 is a stationary point (no gradient reaches it), so start it small but non-zero:
            # S_c ~ init_scale^2 (I + 0.01 * noise).
            self.covariance_factor = nn.Parameter(0.1 * init_scale * torch.randn(num_classes, in_features, rank) / math.sqrt(rank))

    # --------------------------------------------------------------- the posterior

    @property
    def mean(self) -> torch.Tensor:
        """Posterior means m_c stacked, (C, d)."""
        return self.weight_mean

    def cholesky_factor(self) -> torch.Tensor:
        """Dense case: L_c (C, d, d), lower triangular with positive diagonal, S_c = L_c L_c^T."""
        if self.covariance_kind != "dense":
            raise ConfigError(f"cholesky_factor() exists only for covariance='dense'; this head is {self.covariance_kind!r}")
        return torch.tril(self.cholesky_offdiagonal, diagonal=-1) + torch.diag_embed(self.log_cholesky_diagonal.exp())

    def covariance(self) -> torch.Tensor:
        """S_c stacked, (C, d, d). Forms the dense matrices: for checks and small d only."""
        if self.covariance_kind == "dense":
            factor = self.cholesky_factor()
            return factor @ factor.transpose(-1, -2)
        covariance = torch.diag_embed(self.log_variance.exp())
        if self.covariance_kind == "lowrank":
            covariance = covariance + self.covariance_factor @ self.covariance_factor.transpose(-1, -2)
        return covariance

    def logit_variance(self, phi: torch.Tensor) -> torch.Tensor:
        """The quadratic form phi^T S_c phi for every example and class, (B, C), without forming S_c.

        dense: ||L_c^T phi||^2;  diagonal: sum_j v_cj phi_j^2;  lowrank: ||F_c^T phi||^2 + sum_j v_cj phi_j^2.
        """
        if self.covariance_kind == "dense":
            projected = torch.einsum("cij,bi->bcj", self.cholesky_factor(), phi)  # L_c^T phi, (B, C, d)
            return (projected**2).sum(-1)
        variance = phi.square() @ self.log_variance.exp().T  # (B, C)
        if self.covariance_kind == "lowrank":
            projected = torch.einsum("cir,bi->bcr", self.covariance_factor, phi)  # F_c^T phi, (B, C, rank)
            variance = variance + (projected**2).sum(-1)
        return variance

    def forward(self, phi: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean logits m_c^T phi, (B, C); -inf at absent choices when a mask is given."""
        check_features(phi, self.in_features)
        logits = phi @ self.weight_mean.T  # (B, C)
        return logits if mask is None else logits.masked_fill(~check_mask(mask, *logits.shape), -math.inf)

    # --------------------------------------------------------------- training objective

    def kl_divergence(self) -> torch.Tensor:
        """KL(q || prior) = sum_c KL(N(m_c, S_c) || N(prior_mean_c, prior_scale I)), a scalar."""
        if self.covariance_kind == "dense":
            factor = self.cholesky_factor()
            trace = (factor**2).sum((-1, -2))  # tr(L L^T) = ||L||_F^2
            logdet = 2.0 * self.log_cholesky_diagonal.sum(-1)
        else:
            variance = self.log_variance.exp()
            trace = variance.sum(-1)
            logdet = self.log_variance.sum(-1)
        if self.covariance_kind == "lowrank":
            factor = self.covariance_factor  # (C, d, r)
            trace = trace + (factor**2).sum((-1, -2))
            # matrix determinant lemma: det(F F^T + V) = det(V) det(I_r + F^T V^{-1} F)
            capacitance = torch.eye(self.rank, dtype=factor.dtype, device=factor.device) + factor.transpose(-1, -2) @ (
                factor / variance[..., None]
            )  # (C, r, r)
            logdet = logdet + 2.0 * torch.log(torch.diagonal(torch.linalg.cholesky(capacitance), dim1=-2, dim2=-1)).sum(-1)
        return gaussian_kl_to_isotropic_prior(self.weight_mean, trace, logdet, self.prior_scale, self.prior_mean)

    def jensen_bound(self, phi: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example Jensen bound on E_q log p(y | phi), (B,):

            m_y^T phi - log sum_{c present} exp(m_c^T phi + 1/2 phi^T S_c phi).
        """
        check_features(phi, self.in_features)
        mask = check_mask(mask, phi.shape[0], self.num_classes, device=phi.device)
        check_labels(labels, mask)
        mean_logits = phi @ self.weight_mean.T  # (B, C)
        inflated = (mean_logits + 0.5 * self.logit_variance(phi)).masked_fill(~mask, -math.inf)  # (B, C)
        true_logit = mean_logits.gather(1, labels[:, None].long()).squeeze(1)  # (B,)
        return true_logit - torch.logsumexp(inflated, dim=-1)

    def jensen_elbo(
        self, phi: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, num_data: int
    ) -> ELBOTerms:
        """Minibatch ELBO with the Jensen bound: loss = -(mean_b bound_b - KL(q || prior) / num_data).

        ``num_data`` is the size N of the training set, so that the KL is counted once per epoch.
        """
        if not isinstance(num_data, int) or num_data < 1:
            raise ConfigError(f"num_data (training-set size) must be a positive integer; got {num_data!r}")
        bound = self.jensen_bound(phi, labels, mask).mean()
        kl = self.kl_divergence()
        return ELBOTerms(bound=bound, kl=kl, loss=-(bound - kl / num_data))

    # --------------------------------------------------------------- prediction

    def sample_weights(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws W_s ~ q, (S, C, d): m_c + L_c eps (dense), m_c + sqrt(v_c) * eps (diagonal),
        m_c + F_c eps' + sqrt(v_c) * eps (lowrank)."""
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer; got {n_samples!r}")
        mean = self.weight_mean
        noise = torch.randn((n_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device)
        if self.covariance_kind == "dense":
            return mean + torch.einsum("cij,scj->sci", self.cholesky_factor(), noise)
        samples = mean + (0.5 * self.log_variance).exp() * noise
        if self.covariance_kind == "lowrank":
            low = torch.randn((n_samples, self.num_classes, self.rank), generator=generator, dtype=mean.dtype, device=mean.device)
            samples = samples + torch.einsum("cir,scr->sci", self.covariance_factor, low)
        return samples  # (S, C, d)

    def predictive(
        self,
        phi: torch.Tensor,
        mask: torch.Tensor | None = None,
        method: str = "mc",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
        return_samples: bool = False,
    ):
        """Predictive probabilities (B, C) with logits z_c ~ N(m_c^T phi, phi^T S_c phi), independent per class.

        ``"mc"`` averages softmax over ``n_samples`` logit draws (sampled in logit space: one
        backbone pass, samples only in the head); ``"probit"`` is softmax(mu / sqrt(1 + pi/8 var));
        ``"mean"`` is softmax(mu). See :func:`logit_gaussian_predictive`.
        """
        check_features(phi, self.in_features)
        return logit_gaussian_predictive(
            phi @ self.weight_mean.T, self.logit_variance(phi), mask, method, n_samples, generator, return_samples
        )


# ----------------------------------------------------------------------------- the choice form


class ChoiceVBLLHead(VBLLHead):
    """VBLL over the choice head's shared weight: q(w) = N(m, S), w in R^d, prior N(0, s I).

    The logit of choice c is z_c = s_c + w^T phi_c (:mod:`polar_vbll.choice`), so given the
    features the logits are jointly Gaussian with mean s_c + m^T phi_c and covariance
    phi_c^T S phi_c' -- correlated across choices, because they share w. The ELBO still has a
    closed-form Jensen bound, and it needs no independence between the choices:

        E_q log softmax(z)_y = E_q z_y - E_q log sum_c exp(z_c)
                             >= z̄_y - log sum_c E_q exp(z_c)          (Jensen: log is concave)
                             =  z̄_y - log sum_c exp(z̄_c + 1/2 phi_c^T S phi_c)

    using only that each z_c alone is Gaussian (E exp(z) = exp(mean + var / 2)). Minus
    KL(q || p) / N gives the training loss, as for :class:`VBLLHead`. The covariance
    parameterizations (dense / diagonal / lowrank) and the KL are those of a one-class
    :class:`VBLLHead` (``weight_mean`` is (1, d)). Predictive: ``"mc"`` samples w itself (so the
    correlations are kept), ``"probit"`` uses the per-choice variances, ``"mean"`` is softmax(z̄).
    """

    def __init__(self, in_features: int, covariance: str = "diagonal", rank: int | None = None,
                 prior_scale: float = 1.0, init_scale: float = 1e-4):
        super().__init__(in_features, 1, covariance=covariance, rank=rank,
                         prior_scale=prior_scale, init_scale=init_scale)

    def _check(self, features):
        from polar_vbll.choice import check_choice_features

        check_choice_features(features, self.in_features)
        if not torch.isfinite(features.phi).all():
            raise NumericalError("phi holds NaN or infinite values; the backbone features must be finite")

    def choice_means(self, features) -> torch.Tensor:
        """Logit means s_c + m^T phi_c, (B, C)."""
        self._check(features)
        return features.scores + features.phi @ self.weight_mean[0]

    def choice_moments(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit means s_c + m^T phi_c and variances phi_c^T S phi_c, both (B, C)."""
        mean = self.choice_means(features)
        batch, choices, width = features.phi.shape
        variance = self.logit_variance(features.phi.reshape(-1, width)).reshape(batch, choices)
        return mean, variance

    def forward(self, features, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean logits s_c + m^T phi_c, (B, C); -inf at absent choices when a mask is given."""
        mean = self.choice_means(features)
        return mean if mask is None else mean.masked_fill(~check_mask(mask, *mean.shape), -math.inf)

    def jensen_bound(self, features, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-question bound z̄_y - log sum_{c present} exp(z̄_c + 1/2 phi_c^T S phi_c), (B,)."""
        mean, variance = self.choice_moments(features)
        mask = check_mask(mask, *mean.shape, device=mean.device)
        check_labels(labels, mask)
        inflated = (mean + 0.5 * variance).masked_fill(~mask, -math.inf)
        return mean.gather(1, labels[:, None].long()).squeeze(1) - torch.logsumexp(inflated, dim=-1)

    def predictive(self, features, mask: torch.Tensor | None = None, method: str = "mc",
                   n_samples: int = 100, generator: torch.Generator | None = None,
                   return_samples: bool = False):
        """Predictive probabilities (B, C); ``"mc"`` averages softmax(s + phi w_s) over w_s ~ q."""
        if method != "mc":
            mean, variance = self.choice_moments(features)
            return logit_gaussian_predictive(mean, variance, mask, method, n_samples, generator, return_samples)
        self._check(features)
        mask = check_mask(mask, *features.scores.shape, device=features.scores.device)
        weights = self.sample_weights(n_samples, generator)[:, 0]  # (S, d)
        samples = features.scores + torch.einsum("bcd,sd->sbc", features.phi, weights)  # (S, B, C)
        samples = samples.masked_fill(~mask, -math.inf)
        probabilities = torch.softmax(samples, dim=-1).mean(dim=0)
        return (probabilities, samples) if return_samples else probabilities


def head_at_zero_shot(in_features: int, covariance: str, prior_scale: float,
                      zero_shot_rows: torch.Tensor | None = None) -> VBLLHead:
    """A VBLL head whose mean is the zero-shot classifier, prior N(mean, s I) with s = ``prior_scale``.

    Choice form (``zero_shot_rows`` None): :class:`ChoiceVBLLHead`, q(w) = N(0, 0.1 s I), the
    cloze classifier. Letter form: :class:`VBLLHead` at (and with its prior around) the
    answer-letter rows (C, d). q starts at 10% of the prior's variance (logit variance ~0.1 at
    s = 1 / ||phi||^2, so the first predictive is within ~1e-2 of the zero-shot one) and a KL of
    d * C * (ln 10 - 0.9) / 2 ~ 2000 nats that the covariance learning rate removes within a few
    dozen head steps.
    """
    init_scale = (0.1 * prior_scale) ** 0.5
    if zero_shot_rows is None:
        return ChoiceVBLLHead(in_features, covariance=covariance, prior_scale=prior_scale,
                              init_scale=init_scale)
    return VBLLHead(zero_shot_rows.shape[1], zero_shot_rows.shape[0], covariance=covariance,
                    prior_scale=prior_scale, init_mean=zero_shot_rows,
                    prior_mean=zero_shot_rows, init_scale=init_scale)
