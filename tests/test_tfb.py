"""TFB (polar_vbll.tfb): the posterior it samples, the scale search, and a real smoke fit."""

import math

import pytest
import torch
from torch import nn

from polar_vbll import data, metrics, tfb
from polar_vbll.adapters import LoRALinear
from polar_vbll.methods import Method, make_method
from polar_vbll.profiles import get_profile

SMOKE = get_profile("smoke")


def trained_lora(seed=0, out_features=24, in_features=32, rank=4):
    """A LoRA layer whose B is not zero (as after training), on a real nn.Linear."""
    generator = torch.Generator().manual_seed(seed)
    layer = LoRALinear(nn.Linear(in_features, out_features), rank, alpha=8.0, generator=generator)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(out_features, rank, generator=generator))
    return layer


def test_sampled_delta_w_has_covariance_sigma_squared_identity_in_the_reparameterized_space():
    layer, sigma, draws = trained_lora(), 0.3, 4000
    posterior = tfb.TFBPosterior({"layer": layer}, scale=sigma)
    left = posterior.layers["layer"][1]  # U (out, r)
    torch.testing.assert_close(left.T @ left, torch.eye(4), atol=1e-6, rtol=0)
    identity = torch.eye(layer.in_features)  # inputs e_j: the outputs are the columns of W
    with torch.no_grad():
        mean_weight = (layer(identity) - layer.base.bias).T  # W + Delta W, (out, in)
        generator = torch.Generator().manual_seed(1)
        noise = []
        for _ in range(draws):
            with posterior.sampled(posterior.draw(generator)):
                noise.append((layer(identity) - layer.base.bias).T - mean_weight)  # (out, in)
    noise = torch.stack(noise).double()  # (draws, out, in)
    # all of it lies in the span of U ...
    outside = noise - torch.einsum("or,sri->soi", left.double(), left.double().T @ noise)
    assert outside.abs().max() < 1e-5
    # ... and there, U^T (Delta W_sample - Delta W) has covariance sigma^2 I (r * in = 128 dims)
    inside = torch.einsum("ro,soi->sri", left.double().T, noise).reshape(draws, -1)
    covariance = inside.T @ inside / draws
    error = covariance - sigma**2 * torch.eye(covariance.shape[0], dtype=torch.float64)
    # sampling error of one entry ~ sigma^2 sqrt(2 / draws) = 0.002 on the diagonal
    assert error.diagonal().abs().max() < 5 * sigma**2 * math.sqrt(2 / draws)
    assert (error - torch.diag(error.diagonal())).abs().max() < 5 * sigma**2 / math.sqrt(draws)
    # TFB's parameterization: the noise on A' = V^T A, row i, has std sigma / (s D_i)
    singular = torch.linalg.svdvals(layer.lora_B.detach().double())  # D, (r,)
    implied = inside.reshape(draws, 4, -1) / (layer.scaling * singular[:, None])  # (draws, r, in)
    expected = sigma / (layer.scaling * singular)
    torch.testing.assert_close(implied.std(dim=(0, 2)), expected, rtol=0.02, atol=0)


def test_the_signs_of_u_are_fixed_so_a_flipped_svd_gives_the_same_draws():
    layer = trained_lora(seed=2)
    left = tfb.left_singular_vectors(layer.lora_B)
    flipped = tfb.left_singular_vectors(-layer.lora_B)  # the SVD of -B has U's columns flipped
    torch.testing.assert_close(left, flipped)
    assert (left.gather(0, left.abs().argmax(0, keepdim=True)) > 0).all()


def test_the_search_brackets_then_bisects_a_known_change():
    # change(sigma) = sigma^2: the largest accepted sigma is sqrt(threshold) = 0.1
    sigma, trace = tfb.search_scale(lambda s: s * s, threshold=0.01, initial=1e-2, steps=3)
    assert sigma**2 <= 0.01 < (2 * sigma) ** 2
    assert 0.1 / 4 ** (1 / 8) <= sigma <= 0.1  # the bracket shrinks to a ratio of 4^(1/8)
    assert [s for s, _ in trace[:4]] == [0.01, 0.04, 0.16, 0.16 / 2]  # x4 up, then bisect
    assert len(trace) == 3 + 3
    # from above: divide by 4 until accepted
    sigma, trace = tfb.search_scale(lambda s: s * s, threshold=1e-6, initial=1.0, steps=3)
    assert sigma**2 <= 1e-6 < (2 * sigma) ** 2


def test_relative_nll_change_is_measured_against_the_reference_answers():
    reference = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    flatter = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    before = -(math.log(0.7) + math.log(0.6)) / 2
    after = -(math.log(0.5) + math.log(0.5)) / 2
    assert tfb.relative_nll_change(reference, flatter) == pytest.approx((after - before) / before)
    assert tfb.relative_nll_change(reference, reference) == 0.0


@pytest.fixture(scope="module")
def fitted():
    splits = {split: data.load_task("arc_easy", split, limit=size) for split, size in
              [("train", SMOKE.train_examples), ("validation", SMOKE.validation_examples),
               ("test", SMOKE.test_examples)]}
    method = make_method("tfb", profile=SMOKE, progress=False)
    method.fit(splits["train"], splits["validation"])
    return method, splits


def test_a_real_smoke_fit_chooses_a_scale_within_the_threshold_and_not_twice_it(fitted):
    method, splits = fitted
    anchor = tfb.anchor_batches(splits["validation"], SMOKE.eval_batch_size)
    samples = SMOKE.adapter_samples
    change = method.tfb.nll_change(method._batch_probs, anchor, samples, method.seed,
                                   method.tfb.scale)
    doubled = method.tfb.nll_change(method._batch_probs, anchor, samples, method.seed,
                                    2 * method.tfb.scale)
    assert 0 < change <= tfb.THRESHOLD < doubled
    assert (method.tfb.scale, change) in method.tfb.trace  # the search saw the same number


def test_a_real_smoke_fit_predicts_with_weight_samples_and_reloads(fitted, tmp_path):
    method, splits = fitted
    record = method.predict(splits["test"])
    probs = record["probs"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), atol=1e-5, rtol=0)
    assert (probs[~record["mask"]] == 0).all()
    choices = sum(e.num_choices for e in splits["test"]) / len(splits["test"])
    assert record["backbone_passes"] == SMOKE.adapter_samples == 3
    assert record["sequences_per_question"] == pytest.approx(3 * choices)
    # the weight noise changes the prediction, by little (the scale keeps the answers likely)
    method.tfb.scale, scale = 0.0, method.tfb.scale
    plain = method.predict(splits["test"])["probs"]
    method.tfb.scale = scale
    assert 1e-4 < (probs - plain).abs().max() < 0.5
    assert metrics.summarize(probs, record["labels"])["nll"] > 0
    method.save(tmp_path)
    loaded = Method.load(tmp_path, progress=False)
    assert loaded.tfb.scale == scale and loaded.tfb.trace == method.tfb.trace
    torch.testing.assert_close(loaded.predict(splits["test"])["probs"], probs, atol=1e-6, rtol=0)
