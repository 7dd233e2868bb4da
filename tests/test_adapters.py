"""Tests for polar_vbll.adapters: LoRA parity with peft, PoLAR algebra, dtypes, merge, checkpoints, reports."""

import copy
import math

import pytest
import torch
from torch import nn

from polar_vbll import models
from polar_vbll.adapters import (
    LoRALinear,
    PoLARLinear,
    adapter_state_dict,
    adapters_of,
    add_adapters,
    load_adapters,
    orthogonality_report,
    rank_report,
    save_adapters,
)
from polar_vbll.errors import CheckpointError, ConfigError, ShapeError
from polar_vbll.linalg import orthogonality_error, stable_rank


def tiny_llama(seed=0):
    import transformers

    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(models.tiny_llama_config(128, hidden_size=32)).eval()


def seeded(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def linear(in_features=12, out_features=10, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features).to(dtype)


def randomize(adapter, seed):
    """Give the zero-initialised factors (B, Theta) random values so Delta W != 0."""
    with torch.no_grad():
        if isinstance(adapter, LoRALinear):
            adapter.lora_B.copy_(seeded(*adapter.lora_B.shape, seed=seed))
        else:
            adapter.Theta.copy_(seeded(*adapter.Theta.shape, seed=seed))
    return adapter


def test_lora_init_and_forward_formula():
    base = linear()
    adapter = LoRALinear(base, rank=4, alpha=8, generator=torch.Generator().manual_seed(1))
    assert adapter.lora_A.shape == (4, 12) and adapter.lora_B.shape == (10, 4)
    assert adapter.scaling == 2.0
    assert torch.count_nonzero(adapter.lora_B).item() == 0
    # Kaiming-uniform(a=sqrt(5)) on (r, in): bound = 1 / sqrt(in)
    assert adapter.lora_A.abs().max().item() <= 1 / math.sqrt(12)
    assert adapter.lora_A.std().item() > 0.5 / math.sqrt(3 * 12)
    assert not any(parameter.requires_grad for parameter in base.parameters())
    randomize(adapter, seed=2)
    x = seeded(3, 5, 12, seed=3)
    expected = base(x) + 2.0 * x @ (adapter.lora_B @ adapter.lora_A).T
    torch.testing.assert_close(adapter(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(adapter.delta_weight(), 2.0 * adapter.lora_B @ adapter.lora_A)


def test_lora_matches_peft_on_tiny_llama():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    ours = copy.deepcopy(model)
    adapters = add_adapters(ours, kind="lora", rank=4, alpha=8, target_modules=("q_proj", "v_proj"))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    ).eval()
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if name.endswith(("q_proj", "v_proj"))
    }
    assert sorted(peft_layers) == sorted(adapters)
    with torch.no_grad():
        for seed, (name, adapter) in enumerate(adapters.items()):
            adapter.lora_B.copy_(0.1 * seeded(*adapter.lora_B.shape, seed=seed))
            peft_layers[name].lora_A["default"].weight.copy_(adapter.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(adapter.lora_B)
        tokens = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
        ours_logits = ours(tokens).logits
        peft_logits = peft_model(tokens).logits
    assert peft_layers[next(iter(adapters))].scaling["default"] == adapters[next(iter(adapters))].scaling
    torch.testing.assert_close(ours_logits, peft_logits, atol=1e-6, rtol=0)
    with torch.no_grad(), peft_model.disable_adapter():
        plain_logits = peft_model(tokens).logits
    assert (ours_logits - plain_logits).abs().max().item() > 1e-3  # the adapters matter


def test_polar_init_and_forward_formula():
    base = linear()
    adapter = PoLARLinear(base, rank=3, alpha=6, generator=torch.Generator().manual_seed(4))
    assert adapter.X.shape == (10, 3) and adapter.Y.shape == (12, 3) and adapter.Theta.shape == (3, 3)
    assert orthogonality_error(adapter.X.double()).item() < 1e-6
    assert orthogonality_error(adapter.Y.double()).item() < 1e-6
    assert torch.count_nonzero(adapter.Theta).item() == 0
    x = seeded(4, 12, seed=5)
    torch.testing.assert_close(adapter(x), base(x))  # Delta W = 0 at init
    randomize(adapter, seed=6)
    delta = 2.0 * adapter.X @ adapter.Theta @ adapter.Y.T
    torch.testing.assert_close(adapter.delta_weight(), delta)
    torch.testing.assert_close(adapter(x), base(x) + x @ delta.T, atol=1e-6, rtol=1e-6)
    assert adapter.stiefel_parameters() == [adapter.X, adapter.Y]
    assert adapter.euclidean_parameters() == [adapter.Theta]


def test_polar_diagonal_theta():
    base = linear()
    adapter = randomize(PoLARLinear(base, rank=4, alpha=4, theta="diagonal"), seed=7)
    assert adapter.Theta.shape == (4,)
    delta = adapter.X @ torch.diag(adapter.Theta) @ adapter.Y.T
    x = seeded(2, 12, seed=8)
    torch.testing.assert_close(adapter(x), base(x) + x @ delta.T, atol=1e-6, rtol=1e-6)


def test_polar_init_is_seeded_and_sign_fixed():
    first = PoLARLinear(linear(), rank=3, alpha=3, generator=torch.Generator().manual_seed(9))
    second = PoLARLinear(linear(), rank=3, alpha=3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first.X, second.X) and torch.equal(first.Y, second.Y)
    # X spans the Gaussian draw G (out x r, float64, first from the generator) with
    # G = X R, R upper triangular with a positive diagonal (the sign fix): R = X^T G.
    gaussian = torch.randn(10, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    R = first.X.detach().double().T @ gaussian
    assert (torch.diagonal(R) > 0).all()
    assert torch.tril(R, diagonal=-1).abs().max().item() < 1e-5
    torch.testing.assert_close(first.X.double() @ R, gaussian, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_bfloat16_base(kind):
    base = linear(dtype=torch.bfloat16)
    adapter_class = LoRALinear if kind == "lora" else PoLARLinear
    adapter = randomize(adapter_class(base, rank=4, alpha=8), seed=10)
    assert all(p.dtype == torch.float32 for name, p in adapter.named_parameters() if not name.startswith("base"))
    x = seeded(3, 12, seed=11).to(torch.bfloat16)
    output = adapter(x)
    assert output.dtype == torch.bfloat16
    expected = base(x).float() + (x.float() @ adapter.delta_weight().T)
    torch.testing.assert_close(output.float(), expected, atol=0.05, rtol=0.02)  # bfloat16 rounding
    output.float().sum().backward()
    assert all(p.grad is not None for p in adapter.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_merge_unmerge(kind):
    base = linear()
    original_weight = base.weight.detach().clone()
    adapter_class = LoRALinear if kind == "lora" else PoLARLinear
    adapter = randomize(adapter_class(base, rank=4, alpha=8), seed=12)
    x = seeded(5, 12, seed=13)
    unmerged_output = adapter(x)
    adapter.merge()
    torch.testing.assert_close(base.weight, original_weight + adapter.delta_weight(), atol=1e-6, rtol=0)
    torch.testing.assert_close(adapter(x), unmerged_output, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="already merged"):
        adapter.merge()
    adapter.unmerge()
    assert torch.equal(base.weight, original_weight)
    torch.testing.assert_close(adapter(x), unmerged_output, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="not merged"):
        adapter.unmerge()


def test_lora_dropout_only_on_adapter_path():
    base = linear()
    adapter = randomize(LoRALinear(base, rank=4, alpha=8, dropout=0.5), seed=14)
    x = seeded(64, 12, seed=15)
    adapter.eval()
    torch.testing.assert_close(adapter(x), base(x) + x @ adapter.delta_weight().T, atol=1e-6, rtol=1e-6)
    adapter.train()  # MC-dropout: two passes differ, and the base output is untouched
    torch.manual_seed(0)
    first, second = adapter(x), adapter(x)
    assert (first - second).abs().max().item() > 1e-3
    adapter.dropout.p = 0.0
    torch.testing.assert_close(adapter(x), base(x) + x @ adapter.delta_weight().T, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_add_adapters_on_tiny_llama(kind):
    model = tiny_llama()
    tokens = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(tokens).logits
    adapters = add_adapters(model, kind=kind, rank=4, alpha=8, seed=3)
    assert sorted(adapters) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    )
    assert adapters_of(model) == adapters
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected_names = ("lora_A", "lora_B") if kind == "lora" else ("X", "Y", "Theta")
    assert trainable == {f"{layer}.{name}" for layer in adapters for name in expected_names}
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, before)  # Delta W = 0 at init
    # same seed -> same initialisation
    again = add_adapters(tiny_llama(), kind=kind, rank=4, alpha=8, seed=3)
    for name in adapters:
        for (_, p), (_, q) in zip(adapters[name].named_parameters(), again[name].named_parameters()):
            assert torch.equal(p, q)


def test_add_adapters_errors_name_the_input():
    model = tiny_llama()
    with pytest.raises(ShapeError, match=r"model\.layers\.0\.self_attn\.v_proj.*\(16, 32\)"):
        add_adapters(model, rank=17)  # v_proj is (out, in) = (16, 32)
    with pytest.raises(ShapeError, match="rank"):
        add_adapters(model, rank=0)
    with pytest.raises(ConfigError, match="kind"):
        add_adapters(model, kind="dora")
    with pytest.raises(ConfigError, match="matched no nn.Linear.*q_proj"):
        add_adapters(model, target_modules=("query",))
    with pytest.raises(ConfigError, match="theta"):
        add_adapters(model, kind="polar", theta="banded")
    assert adapters_of(model) == {}  # failed calls changed nothing
    assert all(p.requires_grad for p in model.parameters())
    add_adapters(model, rank=2)
    with pytest.raises(ConfigError, match="twice"):
        add_adapters(model, rank=2)
    with pytest.raises(ConfigError, match="alpha"):
        LoRALinear(linear(), rank=2, alpha=0)
    with pytest.raises(ConfigError, match="dropout"):
        LoRALinear(linear(), rank=2, alpha=1, dropout=1.5)
    with pytest.raises(ConfigError, match="nn.Linear"):
        PoLARLinear(nn.Conv1d(3, 3, 1), rank=1, alpha=1)


@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_save_load_round_trip(kind, tmp_path):
    trained_model = tiny_llama()
    trained = add_adapters(trained_model, kind=kind, rank=4, alpha=8, seed=0)
    for seed, adapter in enumerate(trained.values()):
        randomize(adapter, seed=20 + seed)
    path = tmp_path / "adapters.safetensors"
    save_adapters(trained, path)
    assert set(adapter_state_dict(trained)) == {
        f"{layer}.{name}" for layer in trained for name, p in trained[layer].named_parameters() if p.requires_grad
    }
    fresh_model = tiny_llama()
    fresh = add_adapters(fresh_model, kind=kind, rank=4, alpha=8, seed=1)  # different init
    load_adapters(fresh, path)
    tokens = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fresh_model(tokens).logits, trained_model(tokens).logits)


def test_load_adapters_errors(tmp_path):
    adapters = add_adapters(tiny_llama(), kind="lora", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_adapters(adapters, path)
    with pytest.raises(CheckpointError, match=r"lora_A.*\(4, 32\) in the file.*\(2, 32\) in the model"):
        load_adapters(add_adapters(tiny_llama(), kind="lora", rank=2, alpha=8), path)
    with pytest.raises(CheckpointError, match="missing keys.*Theta"):
        load_adapters(add_adapters(tiny_llama(), kind="polar", rank=4, alpha=8), path)
    only_q = add_adapters(tiny_llama(), kind="lora", rank=4, alpha=8, target_modules=("q_proj",))
    with pytest.raises(CheckpointError, match="unexpected keys.*v_proj"):
        load_adapters(only_q, path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adapters(adapters, tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_rank_report_matches_dense_svd(kind):
    adapters = add_adapters(tiny_llama(), kind=kind, rank=4, alpha=8, seed=0)
    report = rank_report(adapters)
    assert all(entry["stable_rank"] == 0.0 for entry in report.values())  # Delta W = 0 at init
    for seed, adapter in enumerate(adapters.values()):
        randomize(adapter, seed=30 + seed)
    if kind == "polar":  # exact even off the manifold
        first = next(iter(adapters.values()))
        with torch.no_grad():
            first.X.add_(0.1 * seeded(*first.X.shape, seed=40))
    report = rank_report(adapters)
    for name, adapter in adapters.items():
        dense = adapter.delta_weight().double().detach()
        dense_singular_values = torch.linalg.svdvals(dense)[:4]
        torch.testing.assert_close(
            torch.tensor(report[name]["singular_values"], dtype=torch.float64), dense_singular_values, atol=1e-5, rtol=1e-5
        )
        assert report[name]["stable_rank"] == pytest.approx(stable_rank(dense).item(), rel=1e-5)
    assert len(rank_report(adapters, top_k=2)[name]["singular_values"]) == 2


def test_rank_report_rank_one_lora():
    adapter = LoRALinear(linear(), rank=4, alpha=4)
    with torch.no_grad():
        adapter.lora_B.copy_(seeded(10, 1, seed=50) @ torch.ones(1, 4))  # B = b 1^T: rank 1
    entry = rank_report({"layer": adapter})["layer"]
    assert entry["stable_rank"] == pytest.approx(1.0, abs=1e-6)
    assert max(entry["singular_values"][1:]) < 1e-6 * entry["singular_values"][0]


def test_orthogonality_report():
    adapters = add_adapters(tiny_llama(), kind="polar", rank=4, alpha=8)
    report = orthogonality_report(adapters)
    assert set(report) == set(adapters)
    assert all(entry["X"] < 1e-6 and entry["Y"] < 1e-6 for entry in report.values())
    name, adapter = next(iter(adapters.items()))
    with torch.no_grad():
        adapter.X.mul_(2.0)  # X^T X = 4 I -> ||3 I||_F = 3 sqrt(4) = 6
    assert orthogonality_report(adapters)[name]["X"] == pytest.approx(6.0, rel=1e-5)
    lora_only = add_adapters(tiny_llama(), kind="lora", rank=4, alpha=8)
    assert orthogonality_report(lora_only) == {}


@pytest.mark.parametrize("method", ["landing", "geoopt", "retraction"])
def test_polar_trains_with_stiefel_optimizer(method):
    from polar_vbll.stiefel import make_stiefel_optimizer

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny steps: one thread is faster on a busy machine
    try:
        base = linear(in_features=12, out_features=10)
        adapter = PoLARLinear(base, rank=3, alpha=3, generator=torch.Generator().manual_seed(60))
        with torch.no_grad():
            adapter.Theta.copy_(0.1 * torch.eye(3))  # Theta = 0 would give X and Y zero gradient
        target = seeded(10, 3, seed=61) @ seeded(3, 12, seed=62) / 3  # a rank-3 Delta W to fit
        x = seeded(64, 12, seed=63)
        wanted = base(x) + x @ target.T
        stiefel = make_stiefel_optimizer(adapter.stiefel_parameters(), method=method, lr=3e-2)
        euclidean = torch.optim.Adam(adapter.euclidean_parameters(), lr=3e-2)
        losses = []
        for _ in range(300):
            stiefel.zero_grad()
            euclidean.zero_grad()
            loss = ((adapter(x) - wanted) ** 2).mean()
            loss.backward()
            stiefel.step()
            euclidean.step()
            losses.append(loss.item())
        # Measured final losses (start 4.8): landing 3e-5, geoopt 2e-4, retraction 4e-6.
        assert losses[-1] < 1e-3
        # Measured in float32: landing 4e-3 (near the manifold by design), geoopt 3e-5
        # (rounding accumulates over its Cayley steps), retraction 3e-7.
        bound = 1e-2 if method == "landing" else 1e-4
        assert max(orthogonality_report({"layer": adapter})["layer"].values()) < bound
    finally:
        torch.set_num_threads(previous_threads)
