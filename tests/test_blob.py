"""BLoB (polar_vbll.blob) on the real SmolLM2-135M: the variational adapter against the LoRA /
PoLAR forward it wraps, its KL, flipout's law, gradients, and real smoke fits."""

import copy
import math

import pytest
import torch

from polar_vbll import blob, cli, data, methods, metrics
from polar_vbll import adapters as adapter_lib
from polar_vbll.errors import ConfigError
from polar_vbll.methods import Method, make_method
from polar_vbll.profiles import get_profile

SMOKE = get_profile("smoke")
LAYER = "model.layers.29.self_attn.v_proj"


@pytest.fixture(scope="module")
def adapted(smollm2):
    """SmolLM2 with LoRA and BLoB twins on layer 29's v_proj (B set to a trained-like value), and
    the real input of that projection for one ARC-Easy question, (1, T, 576)."""
    model, tokenizer = smollm2
    example = data.load_task("arc_easy", "test", limit=1)[0]
    ids = tokenizer(data.format_cloze_context(example) + " " + example.choices[0],
                    return_tensors="pt")["input_ids"]
    captured = {}
    layer = model.get_submodule(LAYER)
    handle = layer.register_forward_hook(lambda m, args, out: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    copy_of_model = copy.deepcopy(model)
    lora = adapter_lib.add_adapters(copy_of_model, "lora", rank=8, alpha=16,
                                    target_modules=("v_proj",), layers=[29], seed=0)[LAYER]
    with torch.no_grad():
        lora.lora_B.copy_(0.05 * torch.randn(lora.lora_B.shape,
                                             generator=torch.Generator().manual_seed(1)))
    reference = copy.deepcopy(lora)
    variational = blob.make_variational(copy_of_model, {LAYER: lora}, seed=0)[LAYER]
    return {"x": captured["x"].detach(), "lora": reference, "blob": variational}


def test_blob_copies_lora_and_draws_rho_in_blobs_range(adapted):
    lora, variational = adapted["lora"], adapted["blob"]
    assert isinstance(variational, blob.BLoBLinear)
    assert torch.equal(variational.lora_A, lora.lora_A)
    assert torch.equal(variational.lora_B, lora.lora_B)
    rho = variational.lora_A_rho.detach()
    epsilon = blob.INIT_EPSILON
    assert epsilon / math.sqrt(2) <= rho.min() and rho.max() <= epsilon
    # uniform on [eps / sqrt 2, eps]: mean (1 + 1/sqrt 2) eps / 2 = 0.04268, 4608 draws
    assert float(rho.mean()) == pytest.approx((1 + 2**-0.5) * epsilon / 2, abs=2e-4)
    # rho is not a function of A (drawn from its own stream)
    mean = variational.lora_A.detach()
    correlation = torch.corrcoef(torch.stack([rho.flatten(), mean.flatten()]))
    assert abs(float(correlation[0, 1])) < 0.05


def test_blob_with_sigma_to_zero_equals_the_lora_forward(adapted):
    x, lora = adapted["x"], adapted["lora"]
    variational = copy.deepcopy(adapted["blob"])
    with torch.no_grad():
        expected = lora(x)
        variational.lora_A_rho.fill_(1e-5)  # sigma = 1e-10
        variational.train()  # flipout
        torch.testing.assert_close(variational(x), expected, atol=1e-6, rtol=0)
        variational.draw()  # a fixed posterior sample
        torch.testing.assert_close(variational(x), expected, atol=1e-6, rtol=0)
        variational.noise = None
        variational.eval()  # the mean
        torch.testing.assert_close(variational(x), expected, atol=1e-6, rtol=0)
        with blob.mean_weights({"v": adapted["blob"]}):  # sigma as trained, noise forced to 0
            torch.testing.assert_close(adapted["blob"](x), expected, atol=1e-6, rtol=0)
        # and at BLoB's initial sigma the sample does move the output
        adapted["blob"].train()
        assert (adapted["blob"](x) - expected).abs().max() > 1e-4
        adapted["blob"].eval()


def test_closed_form_kl_equals_torch_distributions(adapted):
    variational = adapted["blob"]
    for rho in (variational.lora_A_rho.detach(), torch.full_like(variational.lora_A_rho, 0.3)):
        mean = variational.lora_A.detach()
        ours = blob.gaussian_kl(mean, rho, blob.PRIOR_STD)
        theirs = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean.double(), rho.double() ** 2),
            torch.distributions.Normal(0.0, blob.PRIOR_STD)).sum()
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    assert float(variational.kl_divergence().detach()) == pytest.approx(
        float(blob.gaussian_kl(variational.lora_A, variational.lora_A_rho, 0.2).detach()), rel=1e-7)


def test_flipout_mean_and_variance_match_the_posterior(adapted):
    """Over many draws the flipout output's mean is the mean-weight output (within its Monte
    Carlo error) and each token's variance is the posterior's, s^2 sum_k B_ok^2 sum_j sigma_kj^2
    x_j^2 (flipout keeps the marginal law of the perturbation)."""
    x = adapted["x"][:, -6:]  # (1, 6, 576): the last tokens
    variational = copy.deepcopy(adapted["blob"])
    draws = 4000
    with torch.no_grad():
        variational.lora_A_rho.fill_(0.3)  # sigma = 0.09, larger than A's entries
        variational.eval()
        mean_output = variational(x)  # (1, 6, out)
        variational.train()
        torch.manual_seed(0)
        outputs = torch.stack([variational(x) for _ in range(draws)]).double()  # (draws, 1, 6, out)
        sigma = variational.sigma().double()
        B = variational.lora_B.double()
        variance = variational.scaling**2 * (
            (x.double().square() @ sigma.square().T) @ B.square().T)  # (1, 6, out)
    error = outputs.std(0) / math.sqrt(draws)
    z = (outputs.mean(0) - mean_output.double()) / error
    assert z.abs().max() < 5.0  # 6 x 576 outputs; |z| > 5 has probability ~2e-3 in all
    assert z.square().mean() == pytest.approx(1.0, abs=0.15)  # z ~ N(0, 1)
    torch.testing.assert_close(outputs.var(0), variance, rtol=0.12, atol=0)


def test_gradients_reach_mean_and_sigma(adapted):
    variational = copy.deepcopy(adapted["blob"])
    variational.train()
    torch.manual_seed(0)
    loss = variational(adapted["x"]).square().mean() + variational.kl_divergence() / 1200
    loss.backward()
    for parameter in (variational.lora_A, variational.lora_A_rho, variational.lora_B):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().max() > 0
    # the KL's own gradient in rho: d/drho [-log rho^2 + rho^4 / (2 beta^2)] / N
    variational.zero_grad()
    torch.manual_seed(0)
    (variational.kl_divergence() / 1200).backward()
    rho = variational.lora_A_rho.detach()
    expected = (-2 / rho + 2 * rho**3 / blob.PRIOR_STD**2) / 1200
    torch.testing.assert_close(variational.lora_A_rho.grad, expected, rtol=1e-5, atol=0)


def test_polar_blob_with_sigma_to_zero_equals_polar_and_its_kl(smollm2):
    model = copy.deepcopy(smollm2[0])
    polar = adapter_lib.add_adapters(model, "polar", rank=4, alpha=8, target_modules=("q_proj",),
                                     layers=[29], seed=0, theta="diagonal")
    name = next(iter(polar))
    with torch.no_grad():
        polar[name].Theta.copy_(torch.tensor([0.5, -0.2, 0.1, 0.05]))
    reference = copy.deepcopy(polar[name])
    twin = blob.make_variational(model, polar, seed=0)[name]
    assert isinstance(twin, blob.PoLARBLoBLinear)
    assert [p is twin.Theta_rho for p in twin.euclidean_parameters()] == [False, True]
    x = torch.randn(3, 7, 576, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        twin.Theta_rho.fill_(1e-5)
        twin.train()
        torch.testing.assert_close(twin(x), reference(x), atol=1e-6, rtol=0)
        twin.Theta_rho.fill_(0.3)
        assert (twin(x) - reference(x)).abs().max() > 1e-3
    theirs = torch.distributions.kl_divergence(
        torch.distributions.Normal(twin.Theta.detach().double(), 0.09),
        torch.distributions.Normal(0.0, blob.PRIOR_STD)).sum()
    assert float(twin.kl_divergence().detach()) == pytest.approx(float(theirs), rel=1e-5)


@pytest.fixture(scope="module")
def splits():
    return {"train": data.load_task("arc_easy", "train", limit=SMOKE.train_examples),
            "test": data.load_task("arc_easy", "test", limit=SMOKE.test_examples)}


@pytest.mark.parametrize("name", ["blob", "polar_blob"])
def test_smoke_fit_learns_predicts_and_counts_its_passes(name, splits, tmp_path):
    method = make_method(name, profile=SMOKE, progress=False)
    variational = blob.variational_adapters(method.adapters)
    assert len(variational) == len(method.adapters) == 2 * SMOKE.adapt_layers  # q, v per layer
    before = {n: p.detach().clone() for n, p in method.model.named_parameters() if p.requires_grad}
    initial_kl = float(blob.posterior_kl(method.adapters).detach())
    method.fit(splits["train"])
    history = method.history
    assert len(history) == SMOKE.steps
    # the first step's KL term is the initial KL / N (N = 16 training questions)
    assert history[0]["kl"] == pytest.approx(initial_kl / len(splits["train"]), rel=1e-5)
    assert all(h["loss"] > h["kl"] > 0 for h in history)  # loss = cross-entropy + KL / N
    for parameter_name, value in before.items():  # mean, rho and the deterministic factors move
        moved = (dict(method.model.named_parameters())[parameter_name] - value).abs().max()
        assert moved > 0, parameter_name
    assert any("_rho" in n for n in before)

    test = splits["test"]
    record = method.predict(test)
    probs, mask = record["probs"], record["mask"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(test)), atol=1e-5, rtol=0)
    assert (probs[~mask] == 0).all()
    assert record["backbone_passes"] == SMOKE.adapter_samples == 3
    choices = sum(e.num_choices for e in test) / len(test)
    assert record["sequences_per_question"] == pytest.approx(SMOKE.adapter_samples * choices)
    summary = metrics.summarize(probs, record["labels"])
    assert 0 <= summary["accuracy"] <= 1 and summary["nll"] > 0
    # the prediction is the mean softmax over adapter_samples weight draws, all of a batch's
    # draws before the next batch (from the method's seeded generator)
    with methods.seeded_global_rng(method.seed, method.device):
        manual = []
        for chunk in data.batches(test, SMOKE.eval_batch_size):
            total = 0
            for _ in range(SMOKE.adapter_samples):
                blob.draw_posterior_sample(method.adapters)
                total = total + torch.softmax(method._logits(chunk)[0], -1)
            manual.append(total / SMOKE.adapter_samples)
        blob.clear_posterior_sample(method.adapters)
    torch.testing.assert_close(torch.cat(manual), probs, atol=1e-6, rtol=0)
    assert torch.equal(method.predict(test)["probs"], probs)
    torch.testing.assert_close(method.predict(test[:8])["probs"], probs[:8], atol=1e-6, rtol=0)
    # a saved and reloaded method predicts the same
    method.save(tmp_path / name)
    loaded = Method.load(tmp_path / name, progress=False)
    torch.testing.assert_close(loaded.predict(test)["probs"], probs, atol=1e-6, rtol=0)
    # with a wide posterior the samples move the prediction away from the mean model's
    with torch.no_grad():
        for adapter in variational.values():
            adapter.variational_parameters()[1].fill_(0.5)  # sigma = 0.25
    with blob.mean_weights(method.adapters):
        mean_probs = torch.softmax(method._logits(test)[0], -1)
    assert (method.predict(test)["probs"] - mean_probs).abs().max() > 1e-3


def test_bad_options_are_config_errors(capsys):
    with pytest.raises(ConfigError, match="adapter_samples"):
        SMOKE.with_overrides(adapter_samples=0)
    with pytest.raises(ConfigError, match="sampling"):
        blob.BLoBTrainer(None, None, None, None, 1, sampling="local")
    with pytest.raises(ConfigError, match="prior std"):
        blob.BLoBLinear(torch.nn.Linear(8, 8), 2, 4.0, prior_std=0.0)
    code = cli.main(["finetune", "--task", "arc_easy", "--method", "blob", "--profile", "smoke",
                     "--set", "adapter_samples=0"])
    assert code == 2
    assert "adapter_samples" in capsys.readouterr().err


def test_cli_help_lists_blob(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "blob" in text and "polar_blob" in text


def test_an_interrupted_blob_fit_resumes_as_if_never_stopped(splits, tmp_path, monkeypatch):
    """BLoB draws its weight noise from torch's global generator: a checkpoint keeps that
    generator's state, so the steps after a resume draw what the uninterrupted run drew."""
    straight = make_method("blob", profile=SMOKE, progress=False)
    straight.fit(splits["train"])

    fit = blob.BLoBTrainer.fit
    monkeypatch.setattr(blob.BLoBTrainer, "fit",  # interrupted after 2 of the 4 steps
                        lambda self, *args, **kwargs: fit(self, *args, **{**kwargs, "until": 2}))
    make_method("blob", profile=SMOKE, progress=False).fit(
        splits["train"], checkpoint_dir=tmp_path / "ckpt", resume=True)
    monkeypatch.setattr(blob.BLoBTrainer, "fit", fit)
    resumed = make_method("blob", profile=SMOKE, progress=False)
    resumed.fit(splits["train"], checkpoint_dir=tmp_path / "ckpt", resume=True)

    assert resumed.trainer.state.step == SMOKE.steps
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    ours = dict(resumed.model.named_parameters())
    for name, value in straight.model.named_parameters():
        if value.requires_grad:
            assert torch.equal(ours[name], value), name
