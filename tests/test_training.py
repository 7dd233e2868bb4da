"""The training loop on the tiny model: schedules, guards, checkpoints and resume."""

import math

import pytest
import torch

from polar_vbll import adapters, data, models
from polar_vbll.errors import ConfigError, NumericalError
from polar_vbll.training import AnswerHead, Trainer, TrainConfig, warmup_cosine
from polar_vbll.vbll import VBLLHead


def _setup(kind="polar", head="vbll", seed=0):
    model, tokenizer = models.load_backbone("tiny")
    adapters.add_adapters(model, kind=kind, rank=2, alpha=4, seed=seed)
    weight = models.answer_head_weight(model, tokenizer)
    if head == "vbll":
        head_module = VBLLHead(weight.shape[1], 5, covariance="diagonal", prior_scale=1e-2,
                               init_mean=weight, prior_mean=weight, init_scale=1e-2)
    else:
        head_module = AnswerHead(weight)
    return model, tokenizer, head_module


@pytest.fixture(scope="module")
def examples():
    return data.load_task("arc_easy", "train", limit=12)


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_alternating_blocks_touch_only_their_parameters(examples):
    model, tokenizer, head = _setup()
    config = TrainConfig(steps=1, batch_size=4, objective="elbo", schedule="alternating",
                         posterior_steps=0, learning_rate=1e-2)
    trainer = Trainer(model, tokenizer, head, config, num_data=len(examples))
    head_before, adapters_before = _snapshot(head), _snapshot(model)
    trainer.train_step([examples[:4]])
    assert all(torch.equal(head_before[n], p) for n, p in _snapshot(head).items())
    moved = [n for n, p in _snapshot(model).items() if not torch.equal(adapters_before[n], p)]
    assert any(n.endswith("Theta") for n in moved)

    # Posterior steps alone: the adapters stay put, the head moves and the ELBO rises.
    adapters_before = _snapshot(model)
    batch = {k: v for k, v in data.encode_examples(tokenizer, examples[:4]).items()}
    with torch.no_grad():
        phi = models.last_token_features(model, batch["input_ids"], batch["attention_mask"])
    before = head.jensen_elbo(phi, batch["labels"], batch["choice_mask"], num_data=12).loss
    trainer.config.posterior_steps = 5
    trainer._posterior_steps([(phi, batch, 1.0)])  # (features, batch, share of the step)
    after = head.jensen_elbo(phi, batch["labels"], batch["choice_mask"], num_data=12).loss
    assert all(torch.equal(adapters_before[n], p) for n, p in _snapshot(model).items())
    assert after < before


def test_joint_training_lowers_the_loss_and_logs_geometry(examples):
    model, tokenizer, head = _setup(kind="polar", head="answer")
    config = TrainConfig(steps=6, batch_size=4, learning_rate=5e-3, head_learning_rate=5e-3,
                         log_every=3, warmup_fraction=0.0)
    history = Trainer(model, tokenizer, head, config, num_data=12).fit(examples, progress=False)
    assert [h["step"] for h in history] == list(range(1, 7))
    assert "stable_rank" in history[2] and "orthogonality_error" in history[5]
    assert history[5]["orthogonality_error"] < 0.1  # the landing bound of tests/test_stiefel.py
    assert min(h["loss"] for h in history[3:]) < history[0]["loss"]


def test_non_finite_loss_names_step_and_term(examples):
    model, tokenizer, head = _setup(head="answer")
    with torch.no_grad():
        head.weight.fill_(float("nan"))
    trainer = Trainer(model, tokenizer, head, TrainConfig(steps=2, batch_size=4), num_data=12)
    with pytest.raises(NumericalError, match=r"step 1 \(joint step\): the 'loss' term is nan"):
        trainer.fit(examples, progress=False)


def test_config_rejects_conflicts():
    with pytest.raises(ConfigError, match="needs objective='elbo'"):
        TrainConfig(schedule="alternating")
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        TrainConfig(steps=0)


def test_resume_matches_an_uninterrupted_run(tmp_path, examples):
    config = dict(steps=4, batch_size=4, objective="elbo", schedule="alternating",
                  posterior_steps=2, learning_rate=5e-3, log_every=2)
    model, tokenizer, head = _setup()
    straight = Trainer(model, tokenizer, head, TrainConfig(**config), num_data=12)
    straight.fit(examples, progress=False)

    model2, tokenizer2, head2 = _setup()
    first = Trainer(model2, tokenizer2, head2, TrainConfig(**config), num_data=12)
    first.fit(examples, progress=False, until=2)  # "interrupted" after two steps
    first.save(tmp_path / "ckpt")

    model3, tokenizer3, head3 = _setup()
    resumed = Trainer(model3, tokenizer3, head3, TrainConfig(**config), num_data=12)
    resumed.load(tmp_path / "ckpt")
    assert resumed.state.step == 2
    resumed.fit(examples, progress=False)
    for (name, a), b in zip(_snapshot(model).items(), _snapshot(model3).values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    for (name, a), b in zip(_snapshot(head).items(), _snapshot(head3).values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert [h["loss"] for h in resumed.state.history] == pytest.approx(
        [h["loss"] for h in straight.state.history], rel=1e-5)
    assert not math.isnan(resumed.state.history[-1]["kl"])


# ---------------------------------------------------------------------- float16: a loss scaler


def _world(monkeypatch, mixed_precision):
    from polar_vbll import distributed

    monkeypatch.setattr(distributed, "_WORLD", distributed.World(mixed_precision=mixed_precision))


def _gradients(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_float16_scales_the_loss_and_steps_with_the_true_gradients(examples, monkeypatch,
                                                                   tmp_path):
    """accelerate's --mixed_precision fp16: the loss is scaled (no underflow in the float16
    backward), the gradients are unscaled before clipping and the step, an overflowing step is
    skipped with a smaller scale, and a resumed run keeps its scale; other formats leave the loss
    alone."""
    _world(monkeypatch, "bf16")
    assert not Trainer(*_setup(), TrainConfig(steps=1), num_data=12).scaler.is_enabled()
    # clipping active (the true gradient norm is above 0.01): it must see unscaled gradients
    config = TrainConfig(steps=2, batch_size=4, warmup_fraction=0.0, max_grad_norm=1e-2)
    _world(monkeypatch, "no")
    full = Trainer(*_setup(head="answer"), config, num_data=12)
    _world(monkeypatch, "fp16")
    scaled = Trainer(*_setup(head="answer"), config, num_data=12)
    assert scaled.scaler.is_enabled() and scaled.scaler.get_scale() == 2.0 ** 16
    for trainer in (full, scaled):
        trainer.train_step([examples[:4]])
    true, seen = ({**_gradients(t.model), **_gradients(t.head)} for t in (full, scaled))
    assert true.keys() == seen.keys() and true
    assert sum(g.norm() ** 2 for g in true.values()).sqrt() == pytest.approx(1e-2, rel=1e-3)
    for name in true:  # float32's clipped gradients to float16's precision
        error = (seen[name] - true[name]).norm() / true[name].norm().clamp(min=1e-30)
        assert error < 1e-2, (name, error.item())

    # a scale so large that the float16 backward overflows: the step is skipped, the scale drops
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    before = {**_snapshot(scaled.model), **_snapshot(scaled.head)}
    scaled.train_step([examples[4:8]])  # the adapters' float16 gradients overflow, the head's not
    after = {**_snapshot(scaled.model), **_snapshot(scaled.head)}
    assert all(torch.equal(before[n], p) for n, p in after.items())  # nothing moved, nothing NaN
    assert scaled.scaler.get_scale() == 2.0 ** 99 == scaled.state.history[-1]["loss_scale"]
    assert "loss_scale" not in full.state.history[-1]
    scaled.save(tmp_path / "run")  # a resumed float16 run goes on with its loss scale
    resumed = Trainer(*_setup(head="answer"), config, num_data=12)
    resumed.load(tmp_path / "run")
    assert resumed.scaler.get_scale() == 2.0 ** 99
