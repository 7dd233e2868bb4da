"""Numbers for the post-hoc Laplace last layer (letter form; the choice form is in test_choice.py).

Every test compares against an independent computation: torch.autograd's Hessian, a dense
Jacobian formula, or the public predictive recomputed by hand. Small sizes and float64 keep
the file to a few seconds on two CPU cores.
"""

import math

import pytest
import torch

from polar_vbll.errors import ConfigError, ShapeError
from polar_vbll.laplace import LastLayerLaplace, cpu_generator


def laplace_problem(seed=0, num_train=40, num_val=30, in_features=5, num_classes=3):
    """A small synthetic MCQ problem: labels from a noisy linear teacher, some choices absent."""
    generator = torch.Generator().manual_seed(seed)
    teacher = 2 * torch.randn(num_classes, in_features, generator=generator, dtype=torch.float64)

    def split(count):
        phi = torch.randn(count, in_features, generator=generator, dtype=torch.float64)
        mask = torch.rand(count, num_classes, generator=generator) < 0.8
        mask[:, 0] = True
        noisy_logits = (phi @ teacher.T + 1.5 * torch.randn(count, num_classes, generator=generator)).masked_fill(~mask, -math.inf)
        return phi, noisy_logits.argmax(-1), mask

    train, val = split(num_train), split(num_val)
    weight = teacher + 0.5 * torch.randn(num_classes, in_features, generator=generator, dtype=torch.float64)
    bias = 0.3 * torch.randn(num_classes, generator=generator, dtype=torch.float64)
    return weight, bias, train, val


def test_ggn_equals_autograd_hessian_of_the_summed_nll():
    weight, bias, (phi, labels, mask), _ = laplace_problem()

    def summed_nll(parameters):  # parameters: rows [w_c | b_c] flattened class by class
        rows = parameters.reshape(3, 6)
        logits = (phi @ rows[:, :5].T + rows[:, 5]).masked_fill(~mask, -math.inf)
        return -torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), labels].sum()

    theta_map = torch.cat([weight, bias[:, None]], dim=1).reshape(-1)
    exact = torch.autograd.functional.hessian(summed_nll, theta_map)
    ggn = LastLayerLaplace(weight, bias).ggn_hessian(phi, labels, mask)
    torch.testing.assert_close(ggn, exact, rtol=1e-10, atol=1e-10)
    # without a bias the parameters are the rows of W alone: the W-block of a zero-bias model
    ggn_no_bias = LastLayerLaplace(weight).ggn_hessian(phi, labels, mask)
    ggn_zero_bias = LastLayerLaplace(weight, torch.zeros(3, dtype=torch.float64)).ggn_hessian(phi, labels, mask)
    torch.testing.assert_close(ggn_no_bias, ggn_zero_bias.reshape(3, 6, 3, 6)[:, :5, :, :5].reshape(15, 15), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("predictive", ["mc", "probit"])
def test_prior_precision_grid_picks_the_validation_minimum_of_the_reported_predictive(predictive):
    weight, bias, train, val = laplace_problem(seed=1)
    taus = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    laplace = LastLayerLaplace(weight, bias).fit(*train, *val, taus=taus, predictive=predictive,
                                                 n_samples=200, seed=3)
    phi, labels, mask = val
    recomputed = []
    for tau in taus:  # independent recomputation through the public predictive, as predicted
        laplace.prior_precision = tau
        probabilities = laplace.predictive(phi, mask, method=predictive, n_samples=200,
                                           generator=torch.Generator().manual_seed(3))
        recomputed.append(-probabilities[torch.arange(len(labels)), labels].log().mean().item())
    torch.testing.assert_close(laplace.val_nll_grid, torch.tensor(recomputed, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    chosen = taus[min(range(len(taus)), key=recomputed.__getitem__)]
    laplace.fit(*train, *val, taus=taus, predictive=predictive, n_samples=200, seed=3)
    assert laplace.prior_precision == chosen
    assert max(recomputed) - min(recomputed) > 1e-3  # the grid matters on this problem


def test_one_grid_of_prior_precisions():
    from polar_vbll import laplace, methods

    assert laplace.PRIOR_PRECISIONS == tuple(10.0**k for k in range(-3, 6))
    assert not any("PRIOR_PRECISIONS" in name for name in vars(methods))


def test_laplace_logit_covariance_and_joint_samples():
    weight, bias, train, (phi, labels, mask) = laplace_problem(seed=2)
    laplace = LastLayerLaplace(weight, bias).fit(*train, taus=[0.5])
    # posterior covariance is the inverse of GGN + tau I
    precision = laplace.ggn + 0.5 * torch.eye(18, dtype=torch.float64)
    torch.testing.assert_close(laplace.posterior_covariance() @ precision, torch.eye(18, dtype=torch.float64), rtol=0, atol=1e-9)
    # logit covariance J Sigma J^T with the Jacobian J_n = I_C (x) [phi_n, 1] built densely
    augmented = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)
    jacobian = torch.einsum("ce,bj->bcej", torch.eye(3, dtype=torch.float64), augmented).reshape(len(phi), 3, 18)
    mean, covariance = laplace.logit_mean_and_covariance(phi)
    torch.testing.assert_close(covariance, jacobian @ laplace.posterior_covariance() @ jacobian.transpose(1, 2))
    torch.testing.assert_close(mean, phi @ weight.T + bias)
    assert (covariance - torch.diag_embed(torch.diagonal(covariance, dim1=1, dim2=2))).abs().max() > 1e-3  # correlated
    # joint samples reproduce the full covariance, off-diagonal included (20000 draws)
    _, samples = laplace.predictive(phi[:4], method="mc", n_samples=20000, generator=torch.Generator().manual_seed(0), return_samples=True)
    centered = samples - samples.mean(0)
    empirical = torch.einsum("sbc,sbe->bce", centered, centered) / 19999
    scale = torch.sqrt(torch.diagonal(covariance[:4], dim1=1, dim2=2))
    relative_error = (empirical - covariance[:4]) / (scale[:, :, None] * scale[:, None, :])
    assert relative_error.abs().max() < 0.05  # correlation error; sampling noise ~ 1/sqrt(20000) = 0.007


def test_laplace_predictive_sums_to_one_and_respects_mask():
    weight, bias, train, (phi, labels, mask) = laplace_problem(seed=3)
    laplace = LastLayerLaplace(weight, bias).fit(*train, taus=[1.0])
    for method in ["mc", "probit", "mean"]:
        probabilities = laplace.predictive(phi.float(), mask, method=method, generator=torch.Generator().manual_seed(0))
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(len(phi)))
        assert (probabilities[~mask] == 0).all()
    expected = torch.softmax((phi @ weight.T + bias).masked_fill(~mask, -math.inf), dim=-1)
    torch.testing.assert_close(laplace.predictive(phi, mask, method="mean"), expected)


def test_laplace_bad_inputs():
    weight, bias, (phi, labels, mask), _ = laplace_problem()
    laplace = LastLayerLaplace(weight, bias)
    with pytest.raises(ConfigError, match="fitted first"):
        laplace.predictive(phi)
    with pytest.raises(ShapeError, match="bias"):
        LastLayerLaplace(weight, torch.zeros(4))
    with pytest.raises(ShapeError, match=r"phi must have shape \(batch, 5\)"):
        laplace.fit(phi[:, :4], labels, mask, taus=[1.0])
    with pytest.raises(ConfigError, match="val_features"):
        laplace.fit(phi, labels, mask, taus=[1.0, 2.0])
    with pytest.raises(ConfigError, match="taus"):
        laplace.fit(phi, labels, mask, taus=[0.0])


def test_setting_the_ggn_drops_the_cached_covariance():
    # Method.load sets ggn and prior_precision on a fresh posterior; a refit sets a new ggn
    weight, bias, train, _ = laplace_problem(seed=4)
    laplace = LastLayerLaplace(weight, bias).fit(*train, taus=[1.0])
    laplace.posterior_covariance()
    laplace.ggn = 2 * laplace.ggn
    expected = torch.linalg.inv(laplace.ggn + torch.eye(18, dtype=torch.float64))
    torch.testing.assert_close(laplace.posterior_covariance(), expected)


def test_laplace_draws_with_a_cpu_generator():
    # a CUDA run hands the Laplace predictive a CUDA generator; the posterior draws on the CPU
    cpu = torch.Generator().manual_seed(5)
    assert cpu_generator(cpu) is cpu

    class CudaGenerator:  # what cpu_generator reads of a torch.Generator(device="cuda")
        device = torch.device("cuda", 0)

        @staticmethod
        def initial_seed():
            return 7

    moved = cpu_generator(CudaGenerator())
    assert moved.device.type == "cpu" and moved.initial_seed() == 7
    torch.testing.assert_close(torch.randn(3, generator=moved),
                               torch.randn(3, generator=torch.Generator().manual_seed(7)))


def test_a_saved_posterior_restores_the_same_predictive():
    weight, bias, train, val = laplace_problem(seed=2)
    laplace = LastLayerLaplace(weight, bias).fit(*train, *val, taus=[0.1, 1.0], n_samples=50, seed=0)
    state = laplace.state()  # the lower triangle only: half the bytes of the full matrix
    assert state["ggn_lower"].numel() == 18 * 19 // 2
    again = LastLayerLaplace(weight, bias).restore(state)
    torch.testing.assert_close(again.ggn, laplace.ggn, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again.posterior_covariance(), laplace.posterior_covariance(),
                               rtol=0, atol=0)
