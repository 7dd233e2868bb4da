"""Determinism on CPU: the same seed gives bit-identical probabilities and metrics.

Every method of :func:`polar_vbll.methods.method_names` is fitted twice from scratch on the tiny
random Llama (same code path as SmolLM2, seconds per method) with the smoke profile and
ARC-Easy from ``POLAR_VBLL_DATA``; PoLAR-VBLL is also run twice on the real SmolLM2-135M.
A different seed must change the trained methods' probabilities, so the test can tell seeds apart.
"""

from __future__ import annotations

import copy

import pytest
import torch

from polar_vbll import data, devices, methods, metrics, models, profiles
from polar_vbll.adapters import adapters_of

SMOKE = profiles.get_profile("smoke")
TASK = "arc_easy"


@pytest.fixture(scope="module")
def splits():
    return {split: data.load_task(TASK, split, limit=limit) for split, limit in
            (("train", SMOKE.train_examples), ("validation", SMOKE.validation_examples),
             ("test", SMOKE.test_examples))}


def run(name, splits, seed=0, profile=SMOKE, model_name=models.TINY):
    method = methods.make_method(name, profile=profile, model_name=model_name, seed=seed,
                                 progress=False)
    method.fit(splits["train"], splits["validation"])
    record = method.predict(splits["test"])
    return record, metrics.summarize(record["probs"], record["labels"])


FIRST_RUNS: dict = {}  # name -> the seed-0 run of the first test, reused by the seed test


@pytest.mark.parametrize("name", methods.method_names())
def test_same_seed_gives_identical_probabilities_and_metrics(name, splits):
    first, first_metrics = FIRST_RUNS[name] = run(name, splits)
    second, second_metrics = run(name, splits)
    assert first["probs"].shape == (SMOKE.test_examples, data.NUM_CLASSES)
    assert torch.equal(first["probs"], second["probs"])
    assert first_metrics == second_metrics
    if "sample_logits" in first:
        assert torch.equal(first["sample_logits"], second["sample_logits"])


@pytest.mark.parametrize("name", ["mle", "polar_vbll", "ensemble"])
def test_another_seed_gives_other_probabilities(name, splits):
    first, _ = FIRST_RUNS[name] if name in FIRST_RUNS else run(name, splits, seed=0)
    other, _ = run(name, splits, seed=1)
    assert not torch.equal(first["probs"], other["probs"])


def test_polar_vbll_on_smollm2_is_deterministic(smollm2, splits, monkeypatch):
    """The real model, smoke profile cut to 2 steps of 2 questions x 64 tokens (2 CPU cores)."""
    model, tokenizer = smollm2
    monkeypatch.setattr(models, "load_backbone",
                        lambda name, device=None, dtype=None: (copy.deepcopy(model), tokenizer))
    profile = SMOKE.with_overrides(steps=2, batch_size=2, max_length=64, eval_batch_size=4,
                                   posterior_steps=1)
    small = {"train": splits["train"][:4], "validation": splits["validation"][:2],
             "test": splits["test"][:4]}
    first, first_metrics = run("polar_vbll", small, profile=profile, model_name=models.SMOLLM2)
    second, second_metrics = run("polar_vbll", small, profile=profile, model_name=models.SMOLLM2)
    assert torch.equal(first["probs"], second["probs"])
    assert torch.equal(first["sample_logits"], second["sample_logits"])
    assert first_metrics == second_metrics
    assert not adapters_of(model), "the session model must stay without adapters"


def test_start_notebook_prints_and_seeds(capsys):
    """The notebooks' common setup: profile, device, and one seed for torch and the generator."""
    profile, device, generator = profiles.start_notebook("smoke", seed=3)
    printed = capsys.readouterr().out
    assert profile == SMOKE and "name='smoke'" in printed
    assert f"device: {devices.name_of(device)}; {devices.policy(device)}" in printed
    global_draw = torch.rand(4)
    assert torch.equal(global_draw, torch.rand(4, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(torch.rand(4, generator=generator),
                       torch.rand(4, generator=torch.Generator().manual_seed(3)))
