"""What the device decides (polar_vbll.devices): precision by compute capability, whether a
profile's training fits the memory, and its name -- checked with injected capabilities and
memory sizes, since CI has no GPU; and the real SmolLM2 under float16 autocast on the CPU (the
float16 route of GPUs without bfloat16)."""

import pytest
import torch

from polar_vbll import devices, models
from polar_vbll.errors import ConfigError
from polar_vbll.profiles import get_profile


@pytest.mark.parametrize("capability, weights, autocast", [
    ((7, 0), torch.float32, None),  # V100
    ((7, 5), torch.float32, None),  # T4: no native bfloat16, never emulated
    ((8, 0), torch.bfloat16, torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16, torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16, torch.bfloat16),  # H100, H200
])
def test_bfloat16_only_where_the_gpu_has_it(capability, weights, autocast):
    chosen = devices.policy("cuda", capability=capability)
    assert (chosen.weights, chosen.autocast) == (weights, autocast)
    assert f"{capability[0]}.{capability[1]}" in chosen.reason


def test_the_cpu_is_float32_without_autocast():
    chosen = devices.policy("cpu")
    assert (chosen.weights, chosen.autocast) == (torch.float32, None)
    model, _ = models.load_backbone(models.TINY, device="cpu")
    assert next(model.parameters()).dtype == torch.float32


def test_the_backbone_loads_in_the_policys_dtype_on_a_t4(monkeypatch):
    """load_backbone asks devices.policy; on a (pretended) T4 that is float32, not bfloat16."""
    asked = []
    real = devices.policy

    def pretend_t4(device, capability=None):
        asked.append(torch.device(device).type)
        return real("cuda", capability=(7, 5))

    monkeypatch.setattr(devices, "policy", pretend_t4)
    model, _ = models.load_backbone(models.TINY, device="cpu")
    assert asked == ["cpu"] and next(model.parameters()).dtype == torch.float32


def test_explicit_bfloat16_on_an_old_gpu_is_refused():
    with pytest.raises(ConfigError, match=r"capability 7\.5.*no native bfloat16"):
        devices.check_autocast(torch.bfloat16, "cuda", capability=(7, 5))
    devices.check_autocast(torch.bfloat16, "cuda", capability=(8, 0))  # fine
    devices.check_autocast(torch.float16, "cuda", capability=(7, 5))  # fine


class SmolLM2Config:  # the numbers of SmolLM2-135M's config
    hidden_size, num_hidden_layers, intermediate_size, vocab_size = 576, 30, 1536, 49152


def test_the_memory_estimate_follows_the_profile():
    course, full = get_profile("course"), get_profile("full")
    small = devices.training_bytes(course, SmolLM2Config, 4, 4)
    big = devices.training_bytes(full, SmolLM2Config, 4, 4)
    # the weights alone: 30 layers of 4 h^2 + 3 h m plus the embedding, in float32
    weights = (30 * (4 * 576 ** 2 + 3 * 576 * 1536) + 49152 * 576) * 4
    assert weights < small < 2 * 2**30 < big
    assert devices.training_bytes(full, SmolLM2Config, 2, 2) < big  # bfloat16 halves it


def test_a_profile_that_does_not_fit_is_one_clear_line():
    full = get_profile("full")
    with pytest.raises(ConfigError) as error:
        devices.check_memory(full, SmolLM2Config, "cuda", total=4 * 2**30, capability=(7, 5))
    message = str(error.value)
    assert "\n" not in message and "'full' needs about" in message and "4.0 GiB" in message
    assert "'course'" in message
    need = devices.check_memory(get_profile("course"), SmolLM2Config, "cuda",
                                total=15 * 2**30, capability=(7, 5))  # a T4 has 15 GiB
    assert need < 15 * 2**30


def test_device_names():
    assert devices.name_of("cpu").startswith("the CPU (")


def test_smollm2_in_float16_autocast_stays_in_range_and_scores_as_float32(smollm2):
    """The float16 route on a GPU without bfloat16 (``accelerate launch --mixed_precision fp16``):
    SmolLM2's residual stream peaks far below float16's largest number, and float16 autocast
    ranks the answers of real questions as float32 does."""
    from polar_vbll import cloze, data, feature_cache

    model, tokenizer = smollm2
    questions = data.load_task("arc_easy", "validation", limit=4)
    peaks = []

    def record(module, inputs, output):
        peaks.append((output[0] if isinstance(output, tuple) else output).abs().max().item())

    hooks = [layer.register_forward_hook(record) for layer in feature_cache.decoder_layers(model)]
    try:
        full = cloze.predict(model, tokenizer, questions)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.autocast("cpu", dtype=torch.float16):
        half = cloze.predict(model, tokenizer, questions)
    largest = torch.finfo(torch.float16).max
    assert 1000 < max(peaks) < largest / 2, max(peaks)  # massive activations, still in range
    mask = full["mask"]
    assert torch.isfinite(half["scores"][mask]).all()
    difference = (half["scores"] - full["scores"])[mask].abs().max().item()
    assert difference < 0.05, difference  # mean log-probability per answer token
    assert torch.equal(half["scores"].argmax(-1), full["scores"].argmax(-1))
