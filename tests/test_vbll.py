"""Numbers for the variational Bayesian last layer.

Every test compares against an independent computation: weight-space Monte Carlo,
torch.distributions, the `vbll` package, or a dense formula.
Small sizes and float64 keep the whole file to a few seconds on two CPU cores.
"""

import math

import pytest
import torch

from polar_vbll.errors import ConfigError, DataError, NumericalError, ShapeError
from polar_vbll.vbll import VBLLHead, gaussian_kl_to_isotropic_prior, logit_gaussian_predictive

KINDS = ["dense", "diagonal", "lowrank"]


def make_head(kind, in_features=6, num_classes=4, scale=0.3, seed=0, **options):
    """A float64 head whose mean and covariance parameters are all random (not at their init)."""
    torch.manual_seed(seed)
    head = VBLLHead(in_features, num_classes, kind, rank=2 if kind == "lowrank" else None, **options).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in head.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if name == "weight_mean":
                parameter.copy_(noise)
            elif name.startswith("log"):  # log variances / log Cholesky diagonal around log(scale^2) / log(scale)
                base = 2 * math.log(scale) if name == "log_variance" else math.log(scale)
                parameter.copy_(base + 0.3 * noise)
            else:  # Cholesky off-diagonal or low-rank factor
                parameter.copy_(0.5 * scale * noise)
    return head


def random_features(batch, in_features, seed=1, norm=None):
    generator = torch.Generator().manual_seed(seed)
    phi = torch.randn(batch, in_features, generator=generator, dtype=torch.float64)
    if norm is not None:
        phi = phi / phi.norm(dim=1, keepdim=True) * norm
    return phi


# ----------------------------------------------------------------------------- posterior algebra


@pytest.mark.parametrize("kind", KINDS)
def test_quadratic_form_matches_dense_covariance(kind):
    head = make_head(kind)
    phi = random_features(7, 6)
    covariance = head.covariance()  # (C, d, d)
    assert torch.linalg.eigvalsh(covariance).min() > 0  # a valid (positive-definite) covariance
    dense_quadratic = torch.einsum("bi,cij,bj->bc", phi, covariance, phi)
    torch.testing.assert_close(head.logit_variance(phi), dense_quadratic, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_kl_matches_torch_distributions(kind):
    prior_mean = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for prior_scale, mean_of_prior in [(0.7, None), (2.5, prior_mean)]:
        head = make_head(kind, prior_scale=prior_scale, prior_mean=mean_of_prior)
        prior_location = head.prior_mean  # stored in the default dtype (float32) then cast by .double()
        assert (prior_location == 0).all() == (mean_of_prior is None)
        D = torch.distributions
        if kind == "dense":
            q = D.MultivariateNormal(head.mean, scale_tril=head.cholesky_factor())
            p = D.MultivariateNormal(prior_location, covariance_matrix=prior_scale * torch.eye(6, dtype=torch.float64))
        elif kind == "diagonal":
            q = D.Normal(head.mean, head.log_variance.exp().sqrt())
            p = D.Normal(prior_location, math.sqrt(prior_scale))
        else:
            q = D.LowRankMultivariateNormal(head.mean, head.covariance_factor, head.log_variance.exp())
            p = D.MultivariateNormal(prior_location, covariance_matrix=prior_scale * torch.eye(6, dtype=torch.float64))
        expected = D.kl_divergence(q, p).sum()
        torch.testing.assert_close(head.kl_divergence(), expected, rtol=1e-10, atol=1e-10)


def test_standalone_kl_of_identical_gaussians_is_zero():
    mean = torch.randn(3, 5, dtype=torch.float64)
    trace, logdet = torch.full((3,), 5 * 0.4, dtype=torch.float64), torch.full((3,), 5 * math.log(0.4), dtype=torch.float64)
    assert abs(gaussian_kl_to_isotropic_prior(mean, trace, logdet, 0.4).item() - 0.5 * (mean**2).sum().item() / 0.4) < 1e-12
    kl = gaussian_kl_to_isotropic_prior(mean, trace, logdet, 0.4, mean)
    assert abs(kl.item()) < 1e-12


# ----------------------------------------------------------------------------- Jensen bound


@pytest.mark.parametrize("kind", KINDS)
def test_jensen_bound_is_below_weight_space_monte_carlo(kind):
    """E_q[log softmax(W phi)_y] estimated with 20000 weight draws (not logit draws) from q."""
    head = make_head(kind, scale=0.4, seed=3)
    phi = random_features(6, 6, seed=4, norm=3.0)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[4, 3] = mask[5, 0] = False
    q = torch.distributions.MultivariateNormal(head.mean, covariance_matrix=head.covariance())
    weights = q.sample((20000,))  # (S, C, d)
    logits = torch.einsum("scd,bd->sbc", weights, phi).masked_fill(~mask, -math.inf)
    log_likelihood = torch.log_softmax(logits, dim=-1).gather(2, labels[None, :, None].expand(20000, 6, 1)).squeeze(2)
    monte_carlo = log_likelihood.mean(0)  # (B,)
    standard_error = log_likelihood.std(0) / math.sqrt(20000)
    bound = head.jensen_bound(phi, labels, mask).detach()
    assert (bound <= monte_carlo + 3 * standard_error).all(), (bound, monte_carlo)
    # the bound is not trivially loose: the logit variances here are O(1) and the gap stays below 3 nats
    assert (monte_carlo - bound < 3.0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_jensen_bound_equals_log_softmax_when_covariance_vanishes(kind):
    head = make_head(kind, scale=1e-7)  # S ~ 1e-14 I: logit variance ~ 1e-13
    phi = random_features(5, 6, seed=2)
    labels = torch.tensor([0, 1, 2, 3, 1])
    expected = torch.log_softmax(phi @ head.mean.T, dim=-1)[torch.arange(5), labels]
    assert (head.jensen_bound(phi, labels) - expected).abs().max() < 1e-10


def test_jensen_bound_with_mask_equals_bound_without_the_absent_classes():
    head = make_head("dense")
    phi = random_features(3, 6)
    mask = torch.tensor([[True, True, False, True]] * 3)
    labels = torch.tensor([0, 1, 3])
    masked = head.jensen_bound(phi, labels, mask)
    mean_logits = (phi @ head.mean.T)[:, [0, 1, 3]]
    variance = head.logit_variance(phi)[:, [0, 1, 3]]
    reduced_labels = torch.tensor([0, 1, 2])
    expected = mean_logits[torch.arange(3), reduced_labels] - torch.logsumexp(mean_logits + 0.5 * variance, dim=-1)
    torch.testing.assert_close(masked, expected, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(masked).all()


def test_jensen_elbo_combines_bound_and_kl():
    head = make_head("lowrank")
    phi, labels = random_features(8, 6), torch.arange(8) % 4
    terms = head.jensen_elbo(phi, labels, num_data=100)
    torch.testing.assert_close(terms.bound, head.jensen_bound(phi, labels).mean())
    torch.testing.assert_close(terms.loss, -(terms.bound - head.kl_divergence() / 100))


@pytest.mark.parametrize("kind", KINDS)
def test_jensen_bound_matches_vbll_package(kind):
    """Same mean, covariance and features as vbll.layers.classification.DiscClassification.

    vbll's train loss is -(mean jensen_bound + weight * (wishart_term - kl)); its logits carry an
    extra learned noise N(0, exp(noise_logdiag)^2), which we make negligible (variance 4e-18),
    and its KL drops the constant -d/2 per class and uses prior variance prior_scale * 2 / d.
    """
    from vbll.layers.classification import DiscClassification, gaussian_kl

    torch.set_default_dtype(torch.float64)
    try:
        head = make_head(kind, in_features=6, num_classes=4, scale=0.3, seed=7)
        layer = DiscClassification(6, 4, regularization_weight=1.0, parameterization=kind, cov_rank=2)
        with torch.no_grad():
            layer.W_mean.copy_(head.mean)
            layer.noise_logdiag.fill_(-20.0)
            if kind == "dense":
                layer.W_logdiag.copy_(head.log_cholesky_diagonal)
                layer.W_offdiag.copy_(head.cholesky_offdiagonal)
            elif kind == "diagonal":  # vbll: Normal(mean, scale = exp(W_logdiag)), so variance = exp(2 W_logdiag)
                layer.W_logdiag.copy_(0.5 * head.log_variance)
            else:  # vbll: LowRankNormal(mean, W_offdiag, cov_diag = exp(W_logdiag))
                layer.W_logdiag.copy_(head.log_variance)
                layer.W_offdiag.copy_(head.covariance_factor)
        phi = random_features(9, 6, seed=8, norm=2.0)
        labels = torch.arange(9) % 4
        theirs = layer.jensen_bound(phi, labels).mean()
        ours = head.jensen_elbo(phi, labels, num_data=1).bound
        assert abs(ours.item() - theirs.item()) < 1e-5

        prior_variance = layer.prior_scale  # already multiplied by 2 / d inside vbll
        head.prior_scale = prior_variance
        their_kl_plus_constant = gaussian_kl(layer.W(), prior_variance) - 0.5 * 4 * 6
        assert abs(head.kl_divergence().item() - their_kl_plus_constant.item()) < 1e-6
    finally:
        torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------- predictive


@pytest.mark.parametrize("kind", KINDS)
def test_predictive_probabilities_sum_to_one_and_respect_mask(kind):
    head = make_head(kind)
    phi = random_features(5, 6)
    mask = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) < 0.6
    mask[:, 1] = True
    for method in ["mc", "probit", "mean"]:
        probabilities = head.predictive(phi, mask, method=method, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(5, dtype=torch.float64))
        assert (probabilities[~mask] == 0).all()
    torch.testing.assert_close(
        head.predictive(phi, mask, method="mean"), torch.softmax(head(phi, mask), dim=-1), rtol=0, atol=0
    )


def test_return_samples_gives_the_logits_that_were_averaged():
    head = make_head("dense")
    phi = random_features(3, 6)
    mask = torch.tensor([[True, True, True, False]] * 3)
    probabilities, samples = head.predictive(phi, mask, n_samples=50, generator=torch.Generator().manual_seed(0), return_samples=True)
    assert samples.shape == (50, 3, 4)
    torch.testing.assert_close(probabilities, torch.softmax(samples, dim=-1).mean(0))
    # the samples have the head's logit mean and variance (50 draws: loose, 5 standard errors)
    present = samples[:, :, :3]
    mean, variance = phi @ head.mean.T, head.logit_variance(phi)
    assert ((present.mean(0) - mean[:, :3]).abs() < 5 * (variance[:, :3] / 50).sqrt()).all()
    with pytest.raises(ConfigError, match="return_samples"):
        head.predictive(phi, method="probit", return_samples=True)


def test_monte_carlo_error_shrinks_like_one_over_sqrt_samples():
    generator = torch.Generator().manual_seed(0)
    mean = 2 * torch.randn(8, 5, generator=generator, dtype=torch.float64)
    variance = 2 * torch.rand(8, 5, generator=generator, dtype=torch.float64)
    reference = logit_gaussian_predictive(mean, variance, None, "mc", 400_000, torch.Generator().manual_seed(123))
    sample_counts = [100, 400, 1600, 6400]
    rms_errors = []
    for count in sample_counts:
        errors = [
            logit_gaussian_predictive(mean, variance, None, "mc", count, torch.Generator().manual_seed(seed)) - reference
            for seed in range(8)
        ]
        rms_errors.append(torch.stack(errors).pow(2).mean().sqrt().item())
    slope = (math.log(rms_errors[-1]) - math.log(rms_errors[0])) / (math.log(sample_counts[-1]) - math.log(sample_counts[0]))
    assert -0.65 < slope < -0.35, (slope, rms_errors)  # measured: -0.47 (rms 0.0117, 0.0064, 0.0033, 0.0017)
    assert rms_errors[0] < 0.03  # measured: 0.012 at 100 samples


def test_probit_is_close_to_a_high_sample_reference():
    """Measured over 20 random cases (16 x 5 each): max |probit - mc(200k)| was <= 0.009 for logit variances <= 0.1,
    <= 0.08 for variances <= 1, up to 0.3 for variances near 9 (the mean-field probit degrades with
    large variance). Tolerances below leave a margin; probit also beats the plug-in 'mean'."""
    for max_variance, tolerance in [(0.1, 0.015), (1.0, 0.12)]:
        for seed in range(2):
            generator = torch.Generator().manual_seed(seed)
            mean = 2 * torch.randn(16, 5, generator=generator, dtype=torch.float64)
            variance = max_variance * torch.rand(16, 5, generator=generator, dtype=torch.float64)
            mask = torch.rand(16, 5, generator=generator) < 0.8
            mask[:, 0] = True
            # 100k draws: Monte Carlo standard error <= 0.5 / sqrt(1e5) = 0.0016 per probability
            reference = logit_gaussian_predictive(mean, variance, mask, "mc", 100_000, torch.Generator().manual_seed(99))
            probit = logit_gaussian_predictive(mean, variance, mask, "probit")
            plug_in = logit_gaussian_predictive(mean, variance, mask, "mean")
            assert (probit - reference).abs().max() < tolerance
            assert (probit - reference).abs().mean() < (plug_in - reference).abs().mean()


@pytest.mark.parametrize("kind", KINDS)
def test_head_starts_at_the_zero_shot_model(kind):
    """Default init_scale 1e-4 with ||phi|| in [10, 100] like SmolLM2 (d = 576, float32):
    measured max |p - p_zero_shot| ~ 2e-6 (probit), ~2.5e-4 (mc, 100 samples), 0 (mean),
    |Jensen bound - log softmax| ~ 5e-5."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    lm_head_rows = 0.2 * torch.randn(5, 576, generator=generator)
    phi = torch.randn(64, 576, generator=generator)
    phi = phi / phi.norm(dim=1, keepdim=True) * torch.empty(64, 1).uniform_(10, 100, generator=generator)
    head = VBLLHead(576, 5, kind, rank=4 if kind == "lowrank" else None, init_mean=lm_head_rows)
    zero_shot = torch.softmax(phi @ lm_head_rows.T, dim=-1)
    assert (phi @ lm_head_rows.T).abs().max() > 20  # logits of realistic size
    assert (head.predictive(phi, method="mean") - zero_shot).abs().max() < 1e-6
    assert (head.predictive(phi, method="probit") - zero_shot).abs().max() < 2e-5
    assert (head.predictive(phi, method="mc", generator=generator) - zero_shot).abs().max() < 2e-3
    labels = torch.arange(64) % 5
    gap = head.jensen_bound(phi, labels) - torch.log_softmax(phi @ lm_head_rows.T, dim=-1)[torch.arange(64), labels]
    assert gap.abs().max() < 5e-4


# ----------------------------------------------------------------------------- gradients and numerics


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_features_and_variational_parameters(kind):
    head = make_head(kind)
    phi = random_features(8, 6).requires_grad_(True)
    mask = torch.ones(8, 4, dtype=torch.bool)
    mask[:, 3] = False
    head.jensen_elbo(phi, torch.arange(8) % 3, mask, num_data=50).loss.backward()
    gradients = {"phi": phi.grad, **{name: p.grad for name, p in head.named_parameters()}}
    for name, gradient in gradients.items():
        if name == "cholesky_offdiagonal":
            gradient = torch.tril(gradient, diagonal=-1)  # only the strict lower part is used
        assert gradient is not None and torch.isfinite(gradient).all(), name
        assert gradient.abs().max() > 1e-8, name


@pytest.mark.parametrize("kind", KINDS)
def test_huge_features_and_tiny_covariances_stay_finite(kind):
    phi = random_features(6, 6, norm=1e4).float().requires_grad_(True)
    labels = torch.arange(6) % 4
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[0, 1] = False
    for scale in [1e-6, 1.0]:  # S ~ 1e-12 I  and  S ~ I (logit variance ~ 1e8)
        head = VBLLHead(6, 4, kind, rank=2 if kind == "lowrank" else None, init_scale=scale, init_mean=torch.randn(4, 6))
        terms = head.jensen_elbo(phi, labels, mask, num_data=10)
        terms.loss.backward()
        assert torch.isfinite(terms.loss) and torch.isfinite(phi.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters())
        for method in ["mc", "probit", "mean"]:
            probabilities = head.predictive(phi.detach(), mask, method=method)
            assert torch.isfinite(probabilities).all() and (probabilities[~mask] == 0).all()
        phi.grad = None


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_project_errors_with_clear_messages():
    head = VBLLHead(6, 4, "diagonal")
    phi, labels = torch.randn(3, 6), torch.tensor([0, 1, 2])
    with pytest.raises(ShapeError, match=r"phi must have shape \(batch, 6\)"):
        head.jensen_elbo(torch.randn(3, 5), labels, num_data=10)
    with pytest.raises(DataError, match=r"labels\[1\] = 7 is outside the valid choices 0..3"):
        head.jensen_elbo(phi, torch.tensor([0, 7, 2]), num_data=10)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2] = False
    with pytest.raises(DataError, match="mask removes the true label of example 2"):
        head.jensen_elbo(phi, labels, mask, num_data=10)
    with pytest.raises(NumericalError, match="NaN or infinite"):
        head.jensen_elbo(torch.tensor([[math.nan] * 6] * 3), labels, num_data=10)
    with pytest.raises(ConfigError, match="prior_scale"):
        VBLLHead(6, 4, prior_scale=0.0)
    with pytest.raises(ConfigError, match="prior_scale"):
        VBLLHead(6, 4, prior_scale=-1.0)
    with pytest.raises(ShapeError, match="init_mean"):
        VBLLHead(6, 4, init_mean=torch.zeros(6, 4))
    with pytest.raises(ConfigError, match="rank"):
        VBLLHead(6, 4, "lowrank")
    with pytest.raises(ConfigError, match="covariance"):
        VBLLHead(6, 4, "full")
    with pytest.raises(ConfigError, match="method"):
        head.predictive(phi, method="laplace")
    with pytest.raises(ConfigError, match="num_data"):
        head.jensen_elbo(phi, labels, num_data=0)
    with pytest.raises(DataError, match="boolean"):
        head.predictive(phi, torch.ones(3, 4))
    with pytest.raises(DataError, match="removes every choice of example 0"):
        head.predictive(phi, torch.zeros(3, 4, dtype=torch.bool))
