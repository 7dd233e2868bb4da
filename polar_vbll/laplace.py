"""Post-hoc Laplace last layers: a Gaussian posterior around a trained deterministic head.

Training gives the head's weights theta_map. The Laplace approximation puts

    q(theta) = N(theta_map, (H + tau I)^{-1})

on them, with H the generalized Gauss-Newton (GGN) Hessian of the summed softmax NLL at
theta_map and tau the precision of an isotropic prior. The logits are linear in theta, so the
GGN equals the exact Hessian, and given the features the logits are jointly Gaussian,
z ~ N(mu, J Sigma J^T): prediction is :func:`polar_vbll.vbll.logit_gaussian_predictive`, one
backbone pass and samples only in logit space.

:class:`LaplacePosterior` holds what does not depend on the head's form: choosing tau on
validation NLL, the posterior covariance, the predictive. The two forms only say how the GGN
and the logit moments are built from their features:

* :class:`LastLayerLaplace` (letter form): theta = the rows of [W | b] of a (C x d) answer head.
* :class:`ChoiceLaplace` (choice form): theta = the choice head's shared weight w (d,).

Everything is computed in float64 on the CPU; predictions come back on the caller's device
and in its dtype.
"""

from __future__ import annotations

import math

import torch

from polar_vbll import metrics
from polar_vbll.errors import ConfigError, NumericalError, ShapeError
from polar_vbll.vbll import check_features, check_labels, check_mask, logit_gaussian_predictive

PRIOR_PRECISIONS = tuple(10.0**k for k in range(-3, 6))
"""The grid of prior precisions tau that ``fit`` chooses from (the one grid: ``laplace`` uses it)."""


def _on_cpu(tensor):
    """Move a tensor to the CPU; leave anything else (None, a wrong type) for the checks to report."""
    return tensor.cpu() if isinstance(tensor, torch.Tensor) else tensor


def cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` if it is a CPU generator (or None), else a CPU one started from the same seed:
    the Laplace posteriors draw on the CPU, and a CUDA generator cannot draw CPU tensors."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(generator.initial_seed())


def _prior_precisions(taus, has_validation: bool) -> list[float]:
    """The tau grid as floats; one tau unless validation data can choose among several."""
    taus = [float(t) for t in (taus if hasattr(taus, "__len__") else [taus])]
    if len(taus) == 0 or any(not t > 0 or not math.isfinite(t) for t in taus):
        raise ConfigError(f"taus (prior precisions) must be a non-empty list of positive numbers; got {taus!r}")
    if not has_validation and len(taus) > 1:
        raise ConfigError("fit needs val_features / val_labels to choose among several taus; pass a single tau otherwise")
    return taus


class LaplacePosterior:
    """q(theta) = N(theta_map, (H + tau I)^{-1}) around a trained head, whatever its form.

    A form sets ``weight_map`` (theta_map, float64 on the CPU) and provides

    * ``ggn_hessian(features, labels, mask)``: H on the training features,
    * ``logit_mean_and_covariance(features)``: the logits' mean (B, C) and covariance (B, C, C),
    * ``_validation_inputs(features, mask)``: checked features and CPU mask for the tau search,
    * ``_caller_tensor(features)``: the tensor whose device and dtype predictions come back in.

    ``prior_precision`` (tau) is a plain attribute; ``fit`` chooses it by grid search on the
    validation NLL (:func:`polar_vbll.metrics.negative_log_likelihood`) of the predictive that is
    reported (Monte Carlo by default, with the same samples and seed as the prediction) and records
    the grid in ``prior_precision_grid`` / ``val_nll_grid``. Setting ``ggn`` (``fit``, or loading a saved posterior) clears the cached
    covariance.
    """

    def __init__(self, weight_map: torch.Tensor):
        self.weight_map = weight_map
        self.prior_precision: float | None = None
        self.ggn = None
        self.prior_precision_grid = self.val_nll_grid = None

    @property
    def ggn(self) -> torch.Tensor | None:
        """The GGN Hessian H, square in the number of parameters, float64 (None until fitted)."""
        return self._ggn

    @ggn.setter
    def ggn(self, value: torch.Tensor | None) -> None:
        self._ggn = value
        self._cached_covariance = (None, None)  # (tau, Sigma) of the last posterior_covariance() call

    def fit(self, features, labels: torch.Tensor, mask: torch.Tensor | None = None,
            val_features=None, val_labels: torch.Tensor | None = None,
            val_mask: torch.Tensor | None = None, taus=PRIOR_PRECISIONS, predictive: str = "mc",
            n_samples: int = 100, seed: int = 0) -> "LaplacePosterior":
        """Build the GGN on the training features, then pick tau from ``taus`` by the validation
        NLL of ``predictive(..., predictive, n_samples, generator seeded with seed)``: the very
        predictive a prediction with those settings reports (every tau sees the same draws).

        Without validation data, ``taus`` must hold a single value, which is used as is.
        """
        taus = _prior_precisions(taus, val_features is not None)
        self.ggn = self.ggn_hessian(features, labels, mask)
        if val_features is None:
            self.prior_precision = taus[0]
            return self
        if val_labels is None:
            raise ConfigError("val_labels is required with val_features")
        val_features, val_mask = self._validation_inputs(val_features, val_mask)
        val_labels = _on_cpu(val_labels)
        check_labels(val_labels, val_mask)
        val_nll = []
        for tau in taus:
            self.prior_precision = tau
            generator = torch.Generator().manual_seed(seed)
            probabilities = self.predictive(val_features, val_mask, predictive, n_samples,
                                            generator).cpu()  # (N_val, C)
            val_nll.append(metrics.negative_log_likelihood(probabilities, val_labels))
        self.prior_precision_grid = torch.tensor(taus, dtype=torch.float64)
        self.val_nll_grid = torch.tensor(val_nll, dtype=torch.float64)
        self.prior_precision = taus[int(torch.argmin(self.val_nll_grid))]
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the GGN's lower triangle (float64; the Cholesky factor reads
        only that half, so the round trip is exact) and tau."""
        rows, columns = torch.tril_indices(*self.ggn.shape)
        return {"ggn_lower": self.ggn[rows, columns],
                "prior_precision": torch.tensor(self.prior_precision, dtype=torch.float64)}

    def restore(self, state: dict[str, torch.Tensor]) -> "LaplacePosterior":
        """The fitted posterior again, from :meth:`state` (same head weights)."""
        if "ggn" in state:  # a full matrix, as older checkpoints stored it
            self.ggn = state["ggn"].double()
        else:
            lower = state["ggn_lower"].double()
            size = int(round(((8 * lower.numel() + 1) ** 0.5 - 1) / 2))
            ggn = torch.zeros(size, size, dtype=torch.float64)
            rows, columns = torch.tril_indices(size, size)
            ggn[rows, columns] = lower
            self.ggn = ggn + ggn.tril(-1).T
        self.prior_precision = float(state["prior_precision"])
        return self

    def posterior_covariance(self) -> torch.Tensor:
        """Sigma = (H + tau I)^{-1}, float64, from a Cholesky factor; cached per tau."""
        if self.ggn is None or self.prior_precision is None:
            raise ConfigError(f"{type(self).__name__} must be fitted first: call fit(features, labels, mask, ...)")
        tau = self.prior_precision
        if not tau > 0:
            raise ConfigError(f"prior_precision must be positive; got {tau!r}")
        if self._cached_covariance[0] != tau:
            precision = self.ggn + tau * torch.eye(self.ggn.shape[0], dtype=torch.float64)
            factor, info = torch.linalg.cholesky_ex(precision)
            if info.item() != 0:
                raise NumericalError(f"H + tau I is not positive definite in float64 (tau = {tau}); use a larger prior precision")
            self._cached_covariance = (tau, torch.cholesky_inverse(factor))
        return self._cached_covariance[1]

    def predictive(self, features, mask: torch.Tensor | None = None, method: str = "mc",
                   n_samples: int = 100, generator: torch.Generator | None = None,
                   return_samples: bool = False):
        """Predictive probabilities (B, C), logits z ~ N(mu, J Sigma J^T) sampled jointly.

        Same methods and meaning as :meth:`polar_vbll.vbll.VBLLHead.predictive` (probit uses
        only the logit variances). Computed in float64 on the CPU (a CUDA ``generator`` gives
        its seed to a CPU one, :func:`cpu_generator`); returned on the features' device and in
        their dtype.
        """
        mean, covariance = self.logit_mean_and_covariance(features)
        result = logit_gaussian_predictive(mean, covariance, _on_cpu(mask), method, n_samples,
                                           cpu_generator(generator), return_samples)
        like = self._caller_tensor(features)
        if return_samples:
            return tuple(part.to(like.device, like.dtype) for part in result)
        return result.to(like.device, like.dtype)


class LastLayerLaplace(LaplacePosterior):
    """Laplace over a (C x d) answer head [W | b]: the letter form.

    theta = the rows of [W | b] flattened class by class (index c * D + j, D = d + 1 with a bias,
    whose feature is the constant 1; D = d without). H is the FULL GGN,

        H = sum_n Lambda_n (x) phi_n phi_n^T,   Lambda_n = diag(p_n) - p_n p_n^T,

    with p_n the masked softmax at theta_map. Why full and not Kronecker-factored: for d = 576,
    C = 5 the (C*D)^2 matrix is ~66 MB in float64 and its Cholesky factor and inverse take well
    under a second each; it keeps the class correlations that KFAC or a per-class block
    approximation drop, so there is nothing to approximate. The tau search predicts on float64
    features.
    """

    chunk_size = 256  # examples per chunk when forming logit covariances

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ShapeError(f"weight must be a (num_classes, in_features) tensor; got {tuple(getattr(weight, 'shape', ()))}")
        self.num_classes, self.in_features = weight.shape
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (self.num_classes,)):
            raise ShapeError(f"bias must have shape (num_classes,) = ({self.num_classes},); got {tuple(getattr(bias, 'shape', ()))}")
        self.has_bias = bias is not None
        columns = [weight.detach().double().cpu()] + ([bias.detach().double().cpu()[:, None]] if self.has_bias else [])
        super().__init__(torch.cat(columns, dim=1))  # (C, D)

    def _float64(self, phi: torch.Tensor) -> torch.Tensor:
        check_features(phi, self.in_features)
        return phi.detach().double().cpu()  # (B, d)

    def _augmented(self, phi: torch.Tensor) -> torch.Tensor:
        phi = self._float64(phi)
        return torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1) if self.has_bias else phi  # (B, D)

    def _validation_inputs(self, phi: torch.Tensor, mask: torch.Tensor | None):
        phi = self._float64(phi)
        return phi, check_mask(_on_cpu(mask), phi.shape[0], self.num_classes)

    def _caller_tensor(self, phi: torch.Tensor) -> torch.Tensor:
        return phi

    def ggn_hessian(self, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """H = sum_n (diag(p_n) - p_n p_n^T) (x) phi_n phi_n^T, (C*D, C*D) float64. Labels do not enter the GGN."""
        phi = self._augmented(features)  # (N, D)
        mask = check_mask(_on_cpu(mask), phi.shape[0], self.num_classes)
        check_labels(_on_cpu(labels), mask)
        probabilities = torch.softmax((phi @ self.weight_map.T).masked_fill(~mask, -math.inf), dim=-1)  # (N, C)
        logit_hessian = torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]  # (N, C, C)
        size = self.num_classes * phi.shape[1]
        hessian = torch.zeros(self.num_classes, phi.shape[1], self.num_classes, phi.shape[1], dtype=torch.float64)
        for a in range(self.num_classes):
            for b in range(a, self.num_classes):
                block = (phi * logit_hessian[:, a, b, None]).T @ phi  # sum_n Lambda_n[a, b] phi_n phi_n^T, (D, D)
                hessian[a, :, b, :] = block
                hessian[b, :, a, :] = block.T
        return hessian.reshape(size, size)

    def logit_mean_and_covariance(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit mean W_map phi (+ b), (B, C), and covariance J_n Sigma J_n^T, (B, C, C), float64.

        J_n = I_C (x) phi_n^T, so block-wise: Cov(z_a, z_b) = phi_n^T Sigma[a-block, b-block] phi_n.
        """
        covariance = self.posterior_covariance()
        phi = self._augmented(phi)  # (B, D)
        blocks = covariance.reshape(self.num_classes, phi.shape[1], self.num_classes, phi.shape[1])  # (C, D, C, D)
        logit_covariance = []
        for start in range(0, phi.shape[0], self.chunk_size):
            chunk = phi[start : start + self.chunk_size]  # (b, D)
            right = torch.einsum("aibj,nj->naib", blocks, chunk)  # Sigma[a, :, b, :] phi_n, (b, C, D, C)
            logit_covariance.append(torch.einsum("naib,ni->nab", right, chunk))  # (b, C, C)
        return phi @ self.weight_map.T, torch.cat(logit_covariance)


class ChoiceLaplace(LaplacePosterior):
    """Laplace over the choice head's shared weight w (d,): the choice form.

    The logit of choice c is z_c = s_c + w^T phi_c (:mod:`polar_vbll.choice`), so with Phi_n (C, d)
    the choice features of question n,

        H = sum_n Phi_n^T (diag(p_n) - p_n p_n^T) Phi_n,   z_n ~ N(s_n + Phi_n w_map, Phi_n Sigma Phi_n^T).

    The tau search predicts on the validation features as given (their dtype).
    """

    def __init__(self, weight: torch.Tensor):
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            raise ShapeError(f"weight must be the choice head's (d,) vector; got {tuple(getattr(weight, 'shape', ()))}")
        self.in_features = weight.shape[0]
        super().__init__(weight.detach().double().cpu())  # (d,)

    def _parts(self, features, mask):
        from polar_vbll.choice import check_choice_features

        check_choice_features(features, self.in_features)
        scores, phi = features.scores.detach().double().cpu(), features.phi.detach().double().cpu()
        mask = check_mask(_on_cpu(mask), *scores.shape)
        return scores, phi, mask

    def _validation_inputs(self, features, mask):
        return features, self._parts(features, mask)[2]

    def _caller_tensor(self, features) -> torch.Tensor:
        return features.scores

    def ggn_hessian(self, features, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """H = sum_n Phi_n^T (diag(p_n) - p_n p_n^T) Phi_n, (d, d) float64."""
        scores, phi, mask = self._parts(features, mask)
        check_labels(_on_cpu(labels), mask)
        probabilities = torch.softmax((scores + phi @ self.weight_map).masked_fill(~mask, -math.inf), -1)  # (N, C)
        weighted = phi * probabilities[..., None]  # (N, C, d)
        mean_phi = weighted.sum(1)  # sum_c p_c phi_c, (N, d)
        # Phi^T (diag p - p p^T) Phi = sum_c p_c phi_c phi_c^T - (sum_c p_c phi_c)(sum_c p_c phi_c)^T
        return torch.einsum("ncd,nce->de", weighted, phi) - mean_phi.T @ mean_phi

    def logit_mean_and_covariance(self, features, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) means s + Phi w_map and (B, C, C) covariances Phi Sigma Phi^T, float64."""
        scores, phi, _ = self._parts(features, mask)
        covariance = self.posterior_covariance()
        return scores + phi @ self.weight_map, torch.einsum("bcd,de,bke->bck", phi, covariance, phi)


def posterior_around(weight: torch.Tensor, form: str) -> LaplacePosterior:
    """An unfitted Laplace posterior around a trained head's ``weight``: :class:`ChoiceLaplace`
    for the choice form (``form="choice"``), :class:`LastLayerLaplace` for the letter form."""
    return (ChoiceLaplace if form == "choice" else LastLayerLaplace)(weight.detach())
