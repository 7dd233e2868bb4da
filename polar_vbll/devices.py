"""What the device decides: the floating-point format of backbone passes, whether a profile's
training fits its memory, and its name in what a run prints.

A 135M-parameter model trains well in float32 and in bfloat16; what differs between devices is
what the hardware runs natively:

* **the CPU**: float32 weights, no autocast (the committed fine-tunes were made this way);
* **a GPU of compute capability 8.0 or more** (A100, L4, H100, H200, RTX 30xx and later):
  bfloat16 weights and bfloat16 autocast. bfloat16 has float32's exponent range, so no loss
  scaling is needed, and these GPUs have bfloat16 tensor cores;
* **an older GPU** (a Colab T4 is 7.5, a V100 7.0): float32. These GPUs have no bfloat16 units:
  recent PyTorch emulates bfloat16 on them (slowly) and older PyTorch refuses it, so bfloat16 is
  never used there. Their float16 tensor cores need the loss scaled (float16's narrow range
  loses small gradients where bfloat16's does not; :class:`polar_vbll.training.Trainer` scales
  it whenever the autocast is float16 and skips a step whose gradients overflowed); at the
  course profile's small batches (4 questions of 5 choices over 4 adapted layers) a step is
  bound by kernel launches more than by arithmetic, so float32 costs little and reproduces the
  CPU runs' numbers most closely. ``accelerate launch --mixed_precision fp16`` still selects
  float16 autocast there: SmolLM2's residual stream, whose largest activations are in the tens of
  thousands, stays inside float16's range, and float16 autocast ranks answers as float32 does
  (``tests/test_devices.py``). Which of the two is faster on a T4 is a measurement for a T4.

:func:`policy` takes an explicit ``capability`` and :func:`check_memory` an explicit memory size,
so that both choices can be tested without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from polar_vbll.errors import ConfigError

NATIVE_BFLOAT16 = (8, 0)  # the first compute capability with bfloat16 tensor cores (Ampere)


@dataclass(frozen=True)
class Precision:
    """The backbone's weight dtype, its autocast dtype (None = no autocast) and why."""

    weights: torch.dtype
    autocast: torch.dtype | None
    reason: str

    def __str__(self) -> str:
        autocast = str(self.autocast).replace("torch.", "") if self.autocast else "off"
        return (f"weights {str(self.weights).replace('torch.', '')}, autocast {autocast} "
                f"({self.reason})")


def capability_of(device: torch.device | str) -> tuple[int, int] | None:
    """The CUDA compute capability of ``device`` (None for a non-CUDA device)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def policy(device: torch.device | str, capability: tuple[int, int] | None = None) -> Precision:
    """The precision for backbone passes on ``device`` (see the module docstring).

    ``capability`` overrides the device's compute capability (tests, or planning for a GPU
    that is not here).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return Precision(torch.float32, None, f"{device.type}: float32")
    capability = tuple(capability or capability_of(device))
    name = f"compute capability {capability[0]}.{capability[1]}"
    if capability >= NATIVE_BFLOAT16:
        return Precision(torch.bfloat16, torch.bfloat16, f"{name}: native bfloat16")
    return Precision(torch.float32, None,
                     f"{name} < 8.0: no native bfloat16, so float32 (never emulated bfloat16)")


def check_autocast(dtype: torch.dtype, device: torch.device | str,
                   capability: tuple[int, int] | None = None) -> None:
    """ConfigError when ``dtype`` is bfloat16 on a CUDA device that would only emulate it."""
    device = torch.device(device)
    if dtype != torch.bfloat16 or device.type != "cuda":
        return
    capability = tuple(capability or capability_of(device))
    if capability < NATIVE_BFLOAT16:
        raise ConfigError(
            f"bfloat16 was requested (accelerate --mixed_precision bf16) on a GPU of compute "
            f"capability {capability[0]}.{capability[1]}, which has no native bfloat16 (needs "
            f">= 8.0); use --mixed_precision fp16 or no, or leave it unset (float32 there)")


# ------------------------------------------------------------------------------------ memory

MAX_CHOICES = 5  # rows per question in the choice form (ARC and OBQA have at most 5 choices)


def training_bytes(profile, config, weight_bytes: int, activation_bytes: int) -> int:
    """An estimate of the peak memory of one training step at ``profile``.

    ``config`` is the backbone's (``hidden_size``, ``num_hidden_layers``, ``intermediate_size``,
    ``vocab_size``); the weights count once (adapters and optimizer state are a few MB). Each
    adapted layer keeps its activations for the backward pass: for R rows of T tokens about
    R T (18 h + 4 m) values (the projections' inputs and outputs, the norms, the SwiGLU MLP of
    width m; a memory-efficient attention kernel keeps no T x T matrix), with every row padded to
    the profile's ``max_length`` -- the widest batch a run can meet, so the estimate is an upper
    bound for typical batches.
    """
    rows = profile.batch_size * MAX_CHOICES
    width = profile.max_length
    layers = profile.adapt_layers or config.num_hidden_layers
    h, m = config.hidden_size, config.intermediate_size
    per_layer = rows * width * (18 * h + 4 * m) * activation_bytes
    parameters = config.num_hidden_layers * (4 * h * h + 3 * h * m) + config.vocab_size * h
    return parameters * weight_bytes + layers * per_layer


def total_memory(device: torch.device | str) -> int:
    """Bytes of memory ``device`` has: the GPU's, or the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(profile, config, device: torch.device | str,
                 total: int | None = None, capability: tuple[int, int] | None = None) -> int:
    """The estimated training peak (:func:`training_bytes`) at ``profile`` on ``device``;
    ConfigError, before anything is trained or written, when it exceeds the device's memory
    (``total`` bytes overrides what the device reports)."""
    device = torch.device(device)
    chosen = policy(device, capability)
    size = torch.tensor([], dtype=chosen.weights).element_size()
    activations = torch.tensor([], dtype=chosen.autocast or chosen.weights).element_size()
    need = training_bytes(profile, config, size, activations)
    total = total if total is not None else total_memory(device)
    if need > total:
        raise ConfigError(
            f"profile {profile.name!r} needs about {need / 2**30:.1f} GiB to train "
            f"(batch {profile.batch_size} x {MAX_CHOICES} choices x {profile.max_length} tokens "
            f"over {profile.adapt_layers or config.num_hidden_layers} adapted layers) but "
            f"{name_of(device)} has {total / 2**30:.1f} GiB; use the 'course' profile or "
            f"lower it with --set batch_size=... / --set max_length=...")
    return need


def name_of(device: torch.device | str) -> str:
    """A readable name: 'NVIDIA H100 80GB HBM3 (cuda:0)' or 'the CPU (2 cores)'."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():  # planning for a GPU not here
        return f"the GPU ({device})"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "cpu":
        return f"the CPU ({os.cpu_count()} cores)"
    return str(device)


__all__ = ["MAX_CHOICES", "NATIVE_BFLOAT16", "Precision", "capability_of", "check_autocast",
           "check_memory", "name_of", "policy", "total_memory", "training_bytes"]
