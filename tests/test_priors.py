"""Priors, on the real SmolLM2-135M and real ARC-Easy questions (smoke profile): MAP's Gaussian
prior on adapters and head, and the prior precision Laplace chooses."""

import pytest
import torch

from polar_vbll import data, metrics
from polar_vbll.laplace import PRIOR_PRECISIONS
from polar_vbll.methods import MAP_PRIOR_PRECISION, make_method
from polar_vbll.profiles import get_profile
from polar_vbll.training import Trainer

SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def splits():
    return {split: data.load_task("arc_easy", split, limit=size) for split, size in
            [("train", SMOKE.train_examples), ("validation", SMOKE.validation_examples)]}


def objective_terms(name, examples, prior_precision=None):
    """The objective of a fresh ``name`` on one batch, its trainer and the batch's features."""
    method = make_method(name, profile=SMOKE, progress=False)
    config = method.train_config(0)
    if prior_precision is not None:
        config.prior_precision = prior_precision
    with torch.no_grad():  # a trained-looking head and B, so every parameter is in the prior
        method.head.weight.copy_(0.01 * torch.randn(method.head.weight.shape,
                                                    generator=torch.Generator().manual_seed(1)))
        for adapter in method.adapters.values():
            adapter.lora_B.fill_(0.02)
    trainer = Trainer(method.model, method.tokenizer, method.head, config,
                      num_data=len(examples), form=method.form)
    batch_examples = examples[: SMOKE.batch_size]
    method.form.prepare(batch_examples)
    batch = method.form.encode(batch_examples)
    with torch.no_grad():
        phi = method.form.features(batch)
        return trainer.objective(phi, batch)["loss"].item(), trainer


def test_map_objective_is_mle_plus_the_scaled_gaussian_log_prior(splits):
    examples = splits["train"]
    mle, _ = objective_terms("mle", examples)
    at_zero, _ = objective_terms("map", examples, prior_precision=0.0)
    assert at_zero == mle  # zero prior precision: exactly the mle objective
    tau = 7.0
    with_prior, trainer = objective_terms("map", examples, prior_precision=tau)
    parameters = [p for group in trainer.optimizers.values() for g in group.param_groups
                  for p in g["params"]]
    names = {n for n, p in trainer.head.named_parameters()} | {
        n.rsplit(".", 1)[-1] for a in trainer.adapters.values() for n, p in a.named_parameters()
        if p.requires_grad}
    assert names == {"weight", "lora_A", "lora_B"}  # the prior covers the adapters and the head
    squares = sum(float(p.detach().double().square().sum()) for p in parameters)
    expected = tau * squares / (2 * len(examples))  # -log N(theta; 0, I / tau) / N + const
    assert with_prior - mle == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-3  # the prior is visible at this tau
    assert make_method("map", profile=SMOKE, progress=False).train_config(0).prior_precision \
        == MAP_PRIOR_PRECISION > 0
    assert make_method("map", profile=SMOKE, progress=False).train_config(0).weight_decay == 0


def test_laplace_chooses_the_prior_precision_that_minimizes_its_reported_validation_nll(splits):
    method = make_method("laplace", profile=SMOKE, progress=False)
    method.fit(splits["train"], splits["validation"])
    chosen = method.laplace.prior_precision
    nlls = []
    for tau in PRIOR_PRECISIONS:  # the reported predictive: Method.predict, MC, its samples
        method.laplace.prior_precision = tau
        record = method.predict(splits["validation"])
        nlls.append(metrics.negative_log_likelihood(record["probs"], record["labels"]))
    torch.testing.assert_close(method.laplace.val_nll_grid,
                               torch.tensor(nlls, dtype=torch.float64), rtol=0, atol=1e-6)
    assert chosen == PRIOR_PRECISIONS[min(range(len(nlls)), key=nlls.__getitem__)]
    assert max(nlls) - min(nlls) > 1e-3  # the grid matters here
