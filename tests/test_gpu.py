"""The CUDA path. Skipped without a GPU (CI has none); on a GPU machine run
``pytest tests/test_gpu.py`` (about a minute).

The first two come from what one H200 showed (README, "On a GPU"): every full-depth fine-tune
stopped at step 17 because PyTorch's cuDNN attention returned NaN gradients for left-padded rows
(fixed by :func:`polar_vbll.models.attention_kernels`), and ``laplace`` mixed CPU and CUDA tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polar_vbll import data, evaluation, methods, profiles

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def finite_gradient_batches(method: methods.Method, batches) -> list[int]:
    """Indices of the batches whose forward + backward (untrained adapters, cross-entropy of the
    deterministic head) gives a non-finite adapter or head gradient."""
    parameters = [p for p in method.model.parameters() if p.requires_grad]
    parameters += list(method.head.parameters())
    bad = []
    for index, examples in enumerate(batches):
        for parameter in parameters:
            parameter.grad = None
        batch = method.form.encode(examples)
        logits = method.head(method.form.features(batch), batch["choice_mask"])
        F.cross_entropy(logits, batch["labels"]).backward()
        if not all(torch.isfinite(p.grad).all() for p in parameters if p.grad is not None):
            bad.append(index)
    return bad


def test_full_profile_gradients_are_finite_on_its_first_batches():
    profile = profiles.get_profile("full")
    train = data.load_task("arc_easy", "train")
    order = torch.Generator().manual_seed(0)  # the trainer's first epoch at seed 0
    batches = list(data.batches(train, profile.batch_size, shuffle=True, generator=order))[:24]
    method = methods.make_method("mle", profile, progress=False)
    assert method.device.type == "cuda"
    # batch 15 (64 tokens wide) gave NaN in every adapter's gradient under cuDNN attention
    assert finite_gradient_batches(method, batches) == []


def test_every_method_runs_on_cuda(tmp_path):
    results = evaluation.compare("arc_easy", methods.method_names(),
                                 profile="smoke", model_name="tiny", progress=False,
                                 out=tmp_path, say=lambda _: None)
    for name, row in results["methods"].items():
        metrics = row["metrics"]["arc_easy"]
        assert all(math.isfinite(metrics[key]) for key in ("accuracy", "ece", "nll")), name


def test_the_precision_policy_matches_this_gpu():
    from polar_vbll import devices, models

    model, _ = models.load_backbone(models.TINY, device="cuda")
    capability = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if capability >= (8, 0) else torch.float32
    assert next(model.parameters()).dtype == expected
    assert devices.policy("cuda").weights == expected


def test_a_live_course_fine_tune_matches_its_committed_cpu_run(monkeypatch):
    """The walkthrough's promise: a live GPU fine-tune at the course profile lands within ACC 1.5
    points, ECE 2 points and NLL 0.03 of the committed CPU run of the same configuration."""
    from polar_vbll import pretrained

    monkeypatch.setenv(pretrained.LIVE_ENV, "1")
    run = pretrained.Run("mle", "arc_easy", profiles.get_profile("course"))
    committed, _ = pretrained.find(run)
    assert committed is not None
    fitted = pretrained.fit_or_load(run, live=True, progress=False)
    ours, theirs = fitted.metrics["arc_easy"], pretrained.read_run(committed)["metrics"]["arc_easy"]
    assert abs(ours["accuracy"] - theirs["accuracy"]) <= 0.015
    assert abs(ours["ece"] - theirs["ece"]) <= 0.02
    assert abs(ours["nll"] - theirs["nll"]) <= 0.03
