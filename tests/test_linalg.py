"""Tests for polar_vbll.linalg: polar decomposition (vs scipy), stable rank, orthogonality error."""

import numpy as np
import pytest
import scipy.linalg
import torch

from polar_vbll.errors import ConfigError, ShapeError
from polar_vbll.linalg import orthogonality_error, polar_decomposition, stable_rank


def matrix_with_condition(rows, columns, condition, seed):
    """rows x columns float64 matrix with singular values log-spaced from 1 down to 1/condition."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, columns, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(columns, columns, generator=generator, dtype=torch.float64))
    singular_values = torch.logspace(0, -np.log10(condition), columns, dtype=torch.float64)
    return (left * singular_values) @ right.T


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
@pytest.mark.parametrize("condition", [10.0, 1e6])
@pytest.mark.parametrize("shape", [(12, 5), (6, 6)])
def test_polar_matches_scipy_float64(method, condition, shape):
    W = matrix_with_condition(*shape, condition, seed=1)
    U_ref, P_ref = scipy.linalg.polar(W.numpy())
    U, P = polar_decomposition(W, method=method)
    # U is sensitive to perturbations like condition * eps (~1e-10 at condition 1e6).
    u_tolerance = 1e-12 if condition < 100 else 1e-9
    np.testing.assert_allclose(U.numpy(), U_ref, atol=u_tolerance)
    np.testing.assert_allclose(P.numpy(), P_ref, atol=1e-13)
    assert orthogonality_error(U).item() < 1e-12
    assert torch.equal(P, P.mT)
    assert torch.linalg.eigvalsh(P).min().item() > -1e-13  # PSD
    torch.testing.assert_close(U @ P, W, atol=1e-13, rtol=0)


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
def test_polar_float32_tolerances(method):
    # Well conditioned (10): U within 1e-5 of scipy's float64 answer.
    W = matrix_with_condition(10, 4, 10.0, seed=2)
    U_ref, P_ref = scipy.linalg.polar(W.numpy())
    U, P = polar_decomposition(W.float(), method=method)
    assert U.dtype == torch.float32 and P.dtype == torch.float32
    np.testing.assert_allclose(U.double().numpy(), U_ref, atol=1e-5)
    np.testing.assert_allclose(P.double().numpy(), P_ref, atol=1e-5)
    # Ill conditioned (1e6): U itself is only determined to ~condition * eps32, but U stays
    # orthonormal, P matches and U P reconstructs W.
    W = matrix_with_condition(10, 4, 1e6, seed=3)
    _, P_ref = scipy.linalg.polar(W.numpy())
    U, P = polar_decomposition(W.float(), method=method)
    assert orthogonality_error(U.double()).item() < 1e-5
    np.testing.assert_allclose(P.double().numpy(), P_ref, atol=1e-6)
    assert torch.linalg.matrix_norm(U.double() @ P.double() - W).item() < 1e-5


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
def test_polar_batched_equals_loop(method):
    generator = torch.Generator().manual_seed(4)
    W = torch.randn(3, 2, 7, 4, generator=generator, dtype=torch.float64)
    U, P = polar_decomposition(W, method=method)
    assert U.shape == (3, 2, 7, 4) and P.shape == (3, 2, 4, 4)
    for i in range(3):
        for j in range(2):
            U_single, P_single = polar_decomposition(W[i, j], method=method)
            torch.testing.assert_close(U[i, j], U_single, atol=1e-12, rtol=0)
            torch.testing.assert_close(P[i, j], P_single, atol=1e-12, rtol=0)


def test_newton_schulz_stops_early_with_loose_tolerance():
    W = matrix_with_condition(8, 3, 2.0, seed=5)
    U_one, _ = polar_decomposition(W, method="newton_schulz", num_iters=1)
    U_loose, _ = polar_decomposition(W, method="newton_schulz", tol=1e-2)
    U_tight, _ = polar_decomposition(W, method="newton_schulz")
    # One step from W/||W||_F is far from orthonormal; a loose tol stops above rounding level.
    assert orthogonality_error(U_one).item() > 0.1
    assert 1e-12 < orthogonality_error(U_loose).item() < 1e-2
    assert orthogonality_error(U_tight).item() < 1e-12


def test_polar_rejects_bad_inputs():
    with pytest.raises(ShapeError, match="tall"):
        polar_decomposition(torch.randn(3, 5))
    with pytest.raises(ConfigError, match="floating"):
        polar_decomposition(torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(ConfigError, match="method"):
        polar_decomposition(torch.randn(5, 3), method="qr")
    with pytest.raises(ShapeError, match="tall"):
        orthogonality_error(torch.randn(2, 4))


def test_stable_rank_values():
    generator = torch.Generator().manual_seed(6)
    u = torch.randn(9, 1, generator=generator, dtype=torch.float64)
    v = torch.randn(1, 5, generator=generator, dtype=torch.float64)
    assert stable_rank(u @ v).item() == pytest.approx(1.0, abs=1e-12)
    orthonormal, _ = torch.linalg.qr(torch.randn(9, 4, generator=generator, dtype=torch.float64))
    assert stable_rank(orthonormal).item() == pytest.approx(4.0, abs=1e-12)
    assert stable_rank(torch.zeros(4, 3)).item() == 0.0
    # diag(3, 1): (9 + 1) / 9
    assert stable_rank(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))).item() == pytest.approx(10 / 9)


def test_stable_rank_batched():
    generator = torch.Generator().manual_seed(7)
    W = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64)
    W[2] = 0.0
    batched = stable_rank(W)
    looped = torch.stack([stable_rank(W[i]) for i in range(4)])
    torch.testing.assert_close(batched, looped)
    assert batched[2].item() == 0.0


def test_orthogonality_error_value():
    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    # X^T X - I = diag(0, 3)
    assert orthogonality_error(X).item() == pytest.approx(3.0)
