"""Every method, smoke profile, on the real SmolLM2-135M and real ARC-Easy questions."""

import pytest
import torch

from polar_vbll import data, methods, metrics
from polar_vbll.errors import ConfigError
from polar_vbll.profiles import get_profile

SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def splits():
    return {
        "train": data.load_task("arc_easy", "train", limit=SMOKE.train_examples),
        "validation": data.load_task("arc_easy", "validation", limit=SMOKE.validation_examples),
        "test": data.load_task("arc_easy", "test", limit=SMOKE.test_examples),
        "ood": data.load_task("mmlu_college_physics", "test", limit=SMOKE.ood_examples),
    }


@pytest.mark.parametrize("name", methods.method_names())
def test_every_method_fits_and_predicts_on_smollm2(name, splits):
    method = methods.make_method(name, profile=SMOKE, progress=False)
    method.fit(splits["train"], splits["validation"])
    for dataset in ("test", "ood"):
        record = method.predict(splits[dataset])
        probs, mask = record["probs"], record["mask"]
        assert probs.shape == (len(splits[dataset]), data.NUM_CLASSES)
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), atol=1e-5, rtol=0)
        assert (probs[~mask] == 0).all()
        summary = metrics.summarize(probs, record["labels"])
        assert 0 <= summary["accuracy"] <= 1 and summary["nll"] > 0
    if name != "zero_shot":
        history = method.trainer.state.history
        assert len(history) == SMOKE.steps and all("loss" in h for h in history)
        assert "stable_rank" in history[-1]
    expected_passes = {"mc_dropout": SMOKE.mc_dropout_passes,
                       "ensemble": SMOKE.ensemble_members,
                       "blob": SMOKE.adapter_samples,
                       "polar_blob": SMOKE.adapter_samples,
                       "tfb": SMOKE.adapter_samples}.get(name, 1)
    assert record["backbone_passes"] == expected_passes
    if name in ("lora_vbll", "polar_vbll", "laplace"):
        assert record["sample_logits"].shape == (SMOKE.last_layer_samples, *probs.shape)


def test_training_moves_the_model_away_from_zero_shot(splits):
    zero = methods.make_method("zero_shot", profile=SMOKE, progress=False)
    tuned = methods.make_method("polar_vbll", profile=SMOKE, progress=False)
    tuned.fit(splits["train"], splits["validation"])
    before = zero.predict(splits["test"])["probs"]
    after = tuned.predict(splits["test"])["probs"]
    assert (before - after).abs().max() > 1e-3
    # prior variance = 1 / mean ||phi_c - (mean of the question's phi_c)||^2 on the first batch,
    # recomputed here from the untrained backbone's features
    features, _, mask = zero.extract_features(splits["train"][: SMOKE.eval_batch_size])
    expected = 1.0 / features.phi[mask].square().sum(-1).mean()  # phi is centred already
    assert tuned.prior_scale == pytest.approx(float(expected), rel=1e-4)


def test_temperature_fit_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 4, generator=generator)
    labels = torch.distributions.Categorical(logits=logits / 2.5).sample()
    assert methods.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_unknown_method_and_missing_validation(splits):
    with pytest.raises(ConfigError, match="unknown method 'bayes'"):
        methods.make_method("bayes", profile=SMOKE)
    method = methods.make_method("temperature", profile=SMOKE, model_name="tiny",
                                 progress=False)
    with pytest.raises(ConfigError, match="pass validation_examples"):
        method.fit(splits["train"], None)


def test_post_hoc_method_from_a_fitted_mle_equals_training_it_again(splits):
    """evaluation.compare lets temperature / laplace start from the fitted mle: training is
    deterministic, so this must give exactly what fitting the post-hoc method alone gives."""
    mle = methods.make_method("mle", profile=SMOKE, progress=False)
    mle.fit(splits["train"], splits["validation"])
    reused = methods.make_method("temperature", profile=SMOKE, progress=False)
    reused.fit(splits["train"], splits["validation"], fitted_base=mle.fitted_state())
    alone = methods.make_method("temperature", profile=SMOKE, progress=False)
    alone.fit(splits["train"], splits["validation"])
    assert reused.temperature == alone.temperature
    torch.testing.assert_close(reused.predict(splits["test"])["probs"],
                               alone.predict(splits["test"])["probs"], atol=1e-6, rtol=0)
    assert [h["loss"] for h in reused.history] == [h["loss"] for h in alone.history]
    with pytest.raises(ConfigError, match="no post-hoc step"):
        methods.make_method("map", profile=SMOKE, progress=False).fit(
            splits["train"], fitted_base=mle.fitted_state())

