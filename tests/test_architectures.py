"""Backbones beyond SmolLM2: any causal LM from a folder (what a hub id downloads to).

The hub is unreachable in tests, so each architecture is a tiny random model written with
``save_pretrained`` (plus the SmolLM2 tokenizer) and loaded by path through the same code path as
``--model Qwen/Qwen2.5-0.5B-Instruct``: the choice head reads ``get_decoder()`` and the output
embedding, and the adapters' target modules are resolved from the architecture
(``adapters.resolve_target_modules``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polar_vbll import adapters, data, methods, models
from polar_vbll.errors import ConfigError
from polar_vbll.profiles import get_profile


def tiny_folder(tmp_path, family: str):
    import transformers

    tokenizer = models._load_smollm2_tokenizer()
    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                 pad_token_id=tokenizer.pad_token_id)
    if family == "qwen2":
        config, model_class = transformers.Qwen2Config(num_key_value_heads=2, **sizes), \
            transformers.Qwen2ForCausalLM
    else:
        config, model_class = transformers.GPTNeoXConfig(**sizes), transformers.GPTNeoXForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config)
    folder = tmp_path / family
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family, targets", [("qwen2", ("q_proj", "v_proj")),
                                             ("gpt_neox", ("query_key_value",))])
@pytest.mark.parametrize("adapt_layers", [1, None])
def test_polar_vbll_trains_and_predicts_on_other_architectures(tmp_path, family, targets,
                                                                adapt_layers):
    folder = tiny_folder(tmp_path, family)
    profile = get_profile("smoke").with_overrides(adapt_layers=adapt_layers, steps=2)
    method = methods.make_method("polar_vbll", profile=profile, model_name=str(folder),
                                 progress=False)
    assert {name.rsplit(".", 1)[-1] for name in method.adapters} == set(targets)
    train = data.load_task("arc_easy", "train", limit=8)
    method.fit(train, train[:4])
    record = method.predict(data.load_task("arc_easy", "test", limit=8))
    assert record["probs"].shape == (8, data.NUM_CLASSES)
    assert torch.allclose(record["probs"].sum(-1), torch.ones(8), atol=1e-5)
    assert len(method.history) == 2


def test_unknown_target_modules_name_what_the_model_has(tiny_backbone):
    model, _ = tiny_backbone
    with pytest.raises(ConfigError, match=r"\['wq'\] are not nn.Linear layers of "
                                          r"LlamaForCausalLM.*'q_proj'"):
        adapters.resolve_target_modules(model, ("q_proj", "wq"))
    assert adapters.resolve_target_modules(model, ("k_proj",)) == ("k_proj",)


def test_a_model_without_linear_layers_is_refused_clearly():
    class Convolutional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Conv1d(4, 4, 1)

    with pytest.raises(ConfigError, match="no nn.Linear layer to adapt"):
        adapters.resolve_target_modules(Convolutional())
