"""Small linear-algebra tools for PoLAR: polar decomposition, stable rank, orthogonality error.

Polar decomposition: every tall matrix ``W`` (m x n, m >= n) factors as ``W = U P`` with
``U`` (m x n) having orthonormal columns (``U^T U = I``) and ``P = (W^T W)^{1/2}`` (n x n)
symmetric positive semi-definite. ``U`` is the orthonormal matrix closest to ``W`` in the
Frobenius norm, which is why it doubles as a retraction onto the Stiefel manifold.

Stable rank: ``||W||_F^2 / ||W||_2^2 = sum_i s_i^2 / s_1^2`` for singular values
``s_1 >= s_2 >= ...``. It lies between 1 (one dominant direction) and the rank, and unlike
the rank it does not count tiny singular values. LoRA updates tend to stable rank ~ 1.

Every function accepts a batch: leading dimensions are carried through (``(..., m, n)``).
"""

from __future__ import annotations

import torch

from polar_vbll.errors import ConfigError, ShapeError

POLAR_METHODS = ("svd", "newton_schulz")


def _check_matrix(W: torch.Tensor, name: str, need_tall: bool) -> None:
    """Raise a project error unless ``W`` is a floating (..., m, n) tensor, tall if asked."""
    if not isinstance(W, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if not W.is_floating_point():
        raise ConfigError(f"{name} must have a floating dtype (float32 or float64), got {W.dtype}")
    if W.dim() < 2:
        raise ShapeError(f"{name} must be a matrix (..., m, n), got shape {tuple(W.shape)}")
    if need_tall and W.shape[-2] < W.shape[-1]:
        raise ShapeError(
            f"{name} must be tall or square (m >= n rows >= columns), got shape {tuple(W.shape)}; "
            f"pass the transpose W.mT for a wide matrix"
        )


def orthogonality_error(X: torch.Tensor) -> torch.Tensor:
    """``||X^T X - I||_F`` for a tall X (..., m, n); zero exactly when the columns are orthonormal."""
    _check_matrix(X, "X", need_tall=True)
    identity = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    gram = X.mT @ X  # (..., n, n)
    return torch.linalg.matrix_norm(gram - identity, ord="fro")


def stable_rank(W: torch.Tensor) -> torch.Tensor:
    """Stable rank ``||W||_F^2 / ||W||_2^2`` of W (..., m, n); 0 for the zero matrix.

    The zero matrix has no dominant direction, so the ratio 0/0 is defined as 0 here (rather
    than NaN) so that an untrained adapter (``Delta W = 0``) reports stable rank 0.
    """
    _check_matrix(W, "W", need_tall=False)
    singular_values = torch.linalg.svdvals(W)  # (..., min(m, n)), sorted descending
    frobenius_squared = (singular_values**2).sum(dim=-1)
    spectral_squared = singular_values[..., 0] ** 2
    is_zero = spectral_squared == 0
    ratio = frobenius_squared / torch.where(is_zero, torch.ones_like(spectral_squared), spectral_squared)
    return torch.where(is_zero, torch.zeros_like(ratio), ratio)


def polar_decomposition(
    W: torch.Tensor,
    method: str = "svd",
    num_iters: int = 100,
    tol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Polar decomposition ``W = U P`` of a tall or square W (..., m, n), m >= n.

    Returns ``U`` (..., m, n) with orthonormal columns and ``P = U^T W`` (..., n, n), symmetric
    positive semi-definite.

    ``method="svd"``: with ``W = U_s diag(s) V^T``, ``U = U_s V^T`` and ``P = V diag(s) V^T``.
    Exact up to rounding; always returns orthonormal U (for a rank-deficient W the polar
    factor is not unique and SVD picks one).

    ``method="newton_schulz"``: the matrix-multiply-only iteration
    ``U_{k+1} = U_k (3 I - U_k^T U_k) / 2``, which maps every singular value ``s`` to
    ``s (3 - s^2) / 2`` and so drives all of them in (0, sqrt(3)) to 1 while keeping the
    singular vectors. Scaling: ``U_0 = W / ||W||_F``, so every singular value is <= 1.
    Stopping rule: stop when ``||U_k^T U_k - I||_F < tol`` for every matrix in the batch, or
    after ``num_iters`` iterations. Small singular values grow by a factor ~1.5 per step,
    so a condition number kappa needs about ``log(kappa * sqrt(n)) / log(1.5)`` steps
    (~40 for kappa = 1e6). Zero singular values stay zero: for a rank-deficient W,
    Newton-Schulz does not return orthonormal columns; use ``"svd"`` there.
    ``tol`` defaults to ``sqrt(n) * 1e-5`` in float32 and ``sqrt(n) * 1e-12`` in float64;
    convergence is quadratic near the end, so the last step usually lands well below tol.

    float16/bfloat16 inputs are computed in float32 and cast back.
    """
    _check_matrix(W, "W", need_tall=True)
    if method not in POLAR_METHODS:
        raise ConfigError(f"method must be one of {POLAR_METHODS}, got {method!r}")
    if num_iters < 1:
        raise ConfigError(f"num_iters must be >= 1, got {num_iters}")
    input_dtype = W.dtype
    if input_dtype in (torch.float16, torch.bfloat16):
        W = W.float()

    if method == "svd":
        left, singular_values, right_transposed = torch.linalg.svd(W, full_matrices=False)
        U = left @ right_transposed  # (..., m, n)
    else:
        U = _newton_schulz_polar_factor(W, num_iters, tol)

    P = U.mT @ W  # (..., n, n)
    P = (P + P.mT) / 2  # symmetric up to rounding; make it exactly symmetric
    return U.to(input_dtype), P.to(input_dtype)


def _newton_schulz_polar_factor(W: torch.Tensor, num_iters: int, tol: float | None) -> torch.Tensor:
    """Orthonormal polar factor of W by the scaled Newton-Schulz iteration (see polar_decomposition)."""
    n = W.shape[-1]
    if tol is None:
        tol = n**0.5 * (1e-12 if W.dtype == torch.float64 else 1e-5)
    identity = torch.eye(n, dtype=W.dtype, device=W.device)
    frobenius = torch.linalg.matrix_norm(W, ord="fro")[..., None, None]  # (..., 1, 1)
    U = W / frobenius.clamp_min(torch.finfo(W.dtype).tiny)  # all singular values <= 1
    for _ in range(num_iters):
        gram = U.mT @ U  # (..., n, n)
        if torch.linalg.matrix_norm(gram - identity, ord="fro").max() < tol:
            break
        U = U @ (3 * identity - gram) / 2
    return U
