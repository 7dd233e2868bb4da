"""The choice form: head at step 0 = the cloze classifier, the top-layer cache, the choice VBLL
bound, the choice Laplace GGN -- each checked against an independent computation."""

import copy
import math

import pytest
import torch

from polar_vbll import adapters, choice, cloze, data, feature_cache
from polar_vbll.choice import ChoiceFeatures, ChoiceForm, ChoiceHead
from polar_vbll.errors import ConfigError, ShapeError
from polar_vbll.laplace import ChoiceLaplace
from polar_vbll.vbll import ChoiceVBLLHead, VBLLHead


@pytest.fixture(scope="module")
def questions():
    return data.load_task("arc_easy", "validation", limit=6)


def _probabilities(form, examples):
    with torch.no_grad():
        batch = form.encode(examples)
        logits = ChoiceHead(form.feature_width)(form.features(batch), batch["choice_mask"])
    return torch.softmax(logits, -1)


def test_choice_head_at_step_zero_is_the_cloze_classifier(smollm2, questions, tmp_path):
    model, tokenizer = smollm2
    reference = cloze.predict(model, tokenizer, questions, batch_size=3, max_length=160)["probs"]
    full = ChoiceForm(model, tokenizer, 160)
    torch.testing.assert_close(_probabilities(full, questions), reference, atol=1e-5, rtol=0)
    top = ChoiceForm(model, tokenizer, 160, adapt_layers=3, model_name="smollm2")
    top.cache.folder = tmp_path
    top.prepare(questions)
    torch.testing.assert_close(_probabilities(top, questions), reference, atol=1e-4, rtol=0)
    scored = ChoiceForm(model, tokenizer, 160, score_feature=5.0)  # phi gets the score feature
    assert scored.feature_width == 577
    torch.testing.assert_close(_probabilities(scored, questions), reference, atol=1e-5, rtol=0)


def test_top_layers_on_cached_states_equal_the_full_backbone(smollm2, questions, tmp_path):
    model, tokenizer = smollm2
    full, top = ChoiceForm(model, tokenizer, 160), ChoiceForm(model, tokenizer, 160, adapt_layers=5)
    top.cache.folder = tmp_path
    with torch.no_grad():
        a = full.features(full.encode(questions))
        b = top.features(top.encode(questions))
    assert a.phi.shape == (len(questions), data.NUM_CLASSES, 576)
    torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.phi, a.phi, atol=2e-4, rtol=1e-4)
    absent = ~full.encode(questions)["choice_mask"]
    assert (a.scores[absent] == 0).all() and (a.phi[absent] == 0).all()


def test_feature_cache_reads_back_from_disk_and_misses_on_any_change(smollm2, questions, tmp_path):
    model, tokenizer = smollm2
    rows, _ = choice.choice_rows(tokenizer, questions, 160)
    first = feature_cache.FeatureCache(model, split=26, model_name="m", folder=tmp_path)
    path = first.prepare(rows)
    assert path.is_file() and first.computed_rows == len(set(map(tuple, rows)))
    second = feature_cache.FeatureCache(model, split=26, model_name="m", folder=tmp_path)
    second.prepare(rows)
    assert second.computed_rows == 0 and second.loaded_files == [path]
    for row in map(tuple, rows):
        torch.testing.assert_close(second.store[row], first.store[row], atol=0, rtol=0)
    assert feature_cache.FeatureCache(model, 25, "m", folder=tmp_path).path(rows) != path
    assert feature_cache.FeatureCache(model, 26, "other", folder=tmp_path).path(rows) != path
    assert first.path(rows[1:]) != path
    cut, _ = choice.choice_rows(tokenizer, questions, 40)  # another max_length cuts contexts
    assert first.path(cut) != path


def test_the_backbone_pass_that_trains_leaves_out_cudnn_attention(questions, monkeypatch):
    from polar_vbll import models, training

    model, tokenizer = models.load_backbone("tiny")
    entered = []

    class Recording:
        def __init__(self, device):
            entered.append(torch.device(device).type)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(models, "attention_kernels", Recording)
    choice.choice_features(model, choice.encode_choices(tokenizer, questions[:2], 64))
    training.features(model, data.encode_examples(tokenizer, questions[:2]))
    assert entered == ["cpu", "cpu"]  # both forms' training passes, on the batch's device


def test_prefix_groups_share_only_common_beginnings():
    rows = [[5, 6, 7, 1], [9, 9], [5, 6, 7, 2, 3], [5, 6, 7], [4], [5, 6, 7, 1], [5, 8]]
    groups = feature_cache.prefix_groups(rows)
    # sorted: [4] [5 6 7] [5 6 7 1] [5 6 7 1] [5 6 7 2 3] [5 8] [9 9]: the four rows that begin
    # with 5 6 7 share it (run once instead of four times); [5 8] joining them would share only
    # [5] and run more positions in all, so it starts its own group; a row on its own is whole
    assert sorted((p, sorted(members)) for p, members in groups) == \
        [(1, [4]), (2, [1]), (2, [6]), (3, [0, 2, 3, 5])]
    for p, members in groups:  # every row once, every group shares its first p tokens
        assert all(rows[i][:p] == rows[members[0]][:p] and p <= len(rows[i]) for i in members)
    assert sorted(i for _, members in groups for i in members) == list(range(len(rows)))


def test_prefix_groups_stop_at_max_rows():
    rows = [[1, 2, 3, 4, 5, 6, 7, 8, k] for k in range(10)]  # ten rows that share 8 tokens
    assert [len(members) for _, members in feature_cache.prefix_groups(rows)] == [10]
    capped = feature_cache.prefix_groups(rows, max_rows=4)
    assert [len(members) for _, members in capped] == [4, 4, 2]
    assert all(p == 8 for p, _ in capped)


def test_chunks_of_many_rows_give_the_same_states(smollm2, questions, monkeypatch):
    model, tokenizer = smollm2
    rows, _ = choice.choice_rows(tokenizer, questions, 160)
    whole = feature_cache.lower_hidden_states(model, rows, 20, batch_size=4, share_prefixes=False)
    monkeypatch.setattr(feature_cache, "MAX_CHUNK_ROWS", 3)  # fewer than a question's choices
    chunked = feature_cache.lower_hidden_states(model, rows, 20, batch_size=4)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)


def test_shared_prefixes_give_the_states_of_whole_rows(smollm2, questions):
    model, tokenizer = smollm2
    rows, _ = choice.choice_rows(tokenizer, questions, 160)
    rows = rows + [rows[0][:7], rows[0]]  # a row that is another's beginning, and a repeated row
    whole = feature_cache.lower_hidden_states(model, rows, 20, batch_size=4, share_prefixes=False)
    shared = feature_cache.lower_hidden_states(model, rows, 20, batch_size=4)
    groups = feature_cache.prefix_groups(rows)
    assert len(groups) <= len(rows) // 2  # a question's choices share its prompt
    for a, b in zip(whole, shared):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)


def test_adapters_only_in_the_top_layers_and_gradients_reach_them(smollm2, questions, tmp_path):
    model = copy.deepcopy(smollm2[0])
    form = ChoiceForm(model, smollm2[1], 160, adapt_layers=2)
    form.cache.folder = tmp_path
    made = adapters.add_adapters(model, "polar", rank=4, alpha=8,
                                 layers=form.top_layers.layer_indices())
    assert sorted({name.split(".")[2] for name in made}) == ["28", "29"] and len(made) == 4
    with torch.no_grad():
        for adapter in made.values():
            adapter.Theta.normal_(0, 1e-2)
    batch = form.encode(questions[:2])
    features = form.features(batch)
    features.scores[batch["choice_mask"]].sum().backward()  # through the LM head and the scores
    assert all(a.Theta.grad is not None and a.Theta.grad.abs().sum() > 0 for a in made.values())
    assert [layer.self_attn.layer_idx for layer in feature_cache.decoder_layers(model)] == \
        list(range(30))  # renumbered only while the top layers ran
    with pytest.raises(ConfigError, match="adapt_layers must be an integer between 1 and 30"):
        feature_cache.TopLayers(model, 31)


def test_sharing_rows_needs_a_decoder_with_a_key_value_cache():
    class NoCache(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None):
            raise AssertionError("not reached")

    inputs = feature_cache.group_tensors([(2, [0, 1])], [[1, 2, 3], [1, 2, 4]],
                                         lambda i, p: torch.tensor([1, 2][:p]),
                                         lambda i, p: torch.tensor([[1, 2, 3], [1, 2, 4]][i][p:]))
    assert inputs["tails"].tolist() == [[3], [4]] and inputs["owner"].tolist() == [0, 0]
    with pytest.raises(ConfigError, match="NoCache takes no key/value cache.*share_prompts=False"):
        feature_cache.run_shared_prefixes(NoCache(), *(inputs[name] for name in
                                          ("prefix", "prefix_mask", "tails", "tail_mask", "owner")))


def test_shared_prompts_in_the_top_layers_give_the_gradients_of_whole_rows(smollm2, questions,
                                                                           tmp_path):
    """Independent computation: the full backbone on every (question, choice) row whole, with the
    same adapters in its top 2 layers, against the top layers running each prompt once."""
    model = copy.deepcopy(smollm2[0])
    top = ChoiceForm(model, smollm2[1], 160, adapt_layers=2)
    top.cache.folder = tmp_path
    full = ChoiceForm(model, smollm2[1], 160)
    made = adapters.add_adapters(model, "polar", rank=4, alpha=8,
                                 layers=top.top_layers.layer_indices(), seed=0)
    with torch.no_grad():
        for adapter in made.values():
            adapter.Theta.normal_(0, 1e-1)
    grads = []
    for form in (full, top):
        batch = form.encode(questions)
        features = form.features(batch)
        mask = batch["choice_mask"]
        loss = features.scores[mask].sum() + features.phi[mask].pow(2).mean()
        parameters = [p for a in made.values() for p in (a.Theta, a.X, a.Y)]
        grads.append(torch.autograd.grad(loss, parameters))
        groups = feature_cache.prefix_groups(batch["rows"])
    assert len(groups) == len(questions)  # one prompt per question ran once
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-3)


def _random_features(generator, batch=64, choices=4, width=8):
    scores = torch.randn(batch, choices, generator=generator, dtype=torch.float64)
    phi = torch.randn(batch, choices, width, generator=generator, dtype=torch.float64)
    mask = torch.ones(batch, choices, dtype=torch.bool)
    mask[::3, -1] = False  # some questions have 3 choices
    scores, phi = scores.masked_fill(~mask, 0), phi.masked_fill(~mask[..., None], 0)
    labels = torch.randint(0, 3, (batch,), generator=generator)
    return ChoiceFeatures(scores, phi), mask, labels


@pytest.mark.parametrize("covariance", ["dense", "diagonal", "lowrank"])
def test_choice_jensen_bound_is_below_monte_carlo_over_w(covariance):
    torch.set_default_dtype(torch.float64)
    try:
        generator = torch.Generator().manual_seed(0)
        features, mask, labels = _random_features(generator)
        head = ChoiceVBLLHead(8, covariance=covariance, rank=2 if covariance == "lowrank" else None,
                              prior_scale=0.5, init_scale=0.3)
        with torch.no_grad():
            head.weight_mean.normal_(0, 0.5, generator=generator)
        bound = head.jensen_bound(features, labels, mask)  # (B,)
        weights = head.sample_weights(20000, generator)[:, 0]  # (S, d)
        logits = features.scores + torch.einsum("bcd,sd->sbc", features.phi, weights)
        exact = torch.log_softmax(logits.masked_fill(~mask, -math.inf), -1)
        exact = exact.gather(2, labels[None, :, None].expand(len(weights), -1, 1)).squeeze(2)
        mean, spread = exact.mean(0), exact.std(0) / math.sqrt(len(weights))
        assert (bound <= mean + 4 * spread).all()
        assert (bound < mean - 1e-3).float().mean() > 0.5  # a real gap, not an equality
        # S -> 0: the bound is log_softmax of the mean logits
        tiny = ChoiceVBLLHead(8, covariance=covariance, rank=2 if covariance == "lowrank" else None,
                              init_scale=1e-9)
        expected = torch.log_softmax(features.scores.masked_fill(~mask, -math.inf), -1)
        torch.testing.assert_close(tiny.jensen_bound(features, labels, mask),
                                   expected.gather(1, labels[:, None]).squeeze(1), atol=1e-8, rtol=0)
        # the KL is that of a one-class VBLLHead
        reference = VBLLHead(8, 1, covariance=covariance, rank=head.rank, prior_scale=0.5)
        reference.load_state_dict(head.state_dict())
        torch.testing.assert_close(head.kl_divergence(), reference.kl_divergence())
        # Monte Carlo over w agrees with the probit approximation at small variance
        mc = head.predictive(features, mask, "mc", 4000, generator)
        probit = head.predictive(features, mask, "probit")
        assert (mc - probit).abs().max() < 0.1 and (mc[~mask] == 0).all()
    finally:
        torch.set_default_dtype(torch.float32)


def test_choice_heads_reject_letter_features():
    with pytest.raises(ShapeError, match="ChoiceFeatures"):
        ChoiceHead(8)(torch.zeros(2, 8))
    with pytest.raises(ShapeError, match="phi \\(B, C, 8\\)"):
        ChoiceVBLLHead(8)(ChoiceFeatures(torch.zeros(2, 4), torch.zeros(2, 4, 7)))


def test_choice_laplace_ggn_is_the_hessian_of_the_nll():
    generator = torch.Generator().manual_seed(1)
    features, mask, labels = _random_features(generator, batch=32, width=6)
    w = torch.randn(6, generator=generator, dtype=torch.float64)
    laplace = ChoiceLaplace(w)

    def nll(weight):
        logits = (features.scores + features.phi @ weight).masked_fill(~mask, -math.inf)
        return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

    hessian = torch.autograd.functional.hessian(nll, w)
    torch.testing.assert_close(laplace.ggn_hessian(features, labels, mask), hessian,
                               atol=1e-10, rtol=0)
    laplace.fit(features, labels, mask, features, labels, mask, taus=(0.1, 1.0, 10.0))
    mean, covariance = laplace.logit_mean_and_covariance(features, mask)
    sigma = torch.linalg.inv(hessian + laplace.prior_precision * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(covariance[0], features.phi[0] @ sigma @ features.phi[0].T)
    probs = laplace.predictive(features, mask, "mc", 500, generator)
    assert (probs[~mask] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(32, dtype=probs.dtype))


def test_centring_over_choices_changes_no_deterministic_prediction():
    generator = torch.Generator().manual_seed(2)
    phi = torch.randn(5, 4, 8, generator=generator)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 3] = mask[2, 2:] = False
    phi = phi * mask[..., None]
    scores = torch.randn(5, 4, generator=generator).masked_fill(~mask, 0)
    centred = choice.center_over_choices(phi, mask)
    torch.testing.assert_close(centred.sum(1), torch.zeros(5, 8), atol=1e-6, rtol=0)
    assert (centred[~mask] == 0).all()
    head = ChoiceHead(8)
    with torch.no_grad():
        head.weight.normal_(0, 1, generator=generator)
    before = torch.softmax(head(ChoiceFeatures(scores, phi), mask), -1)
    after = torch.softmax(head(ChoiceFeatures(scores, centred), mask), -1)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_the_score_feature_lets_the_head_rescale_the_cloze_score():
    generator = torch.Generator().manual_seed(3)
    features, mask, labels = _random_features(generator, batch=16, width=6)
    assert choice.append_score_feature(features, mask, 0.0) is features  # off
    extended = choice.append_score_feature(features, mask, 2.5)
    assert extended.phi.shape == (16, 4, 7) and extended.scores is features.scores
    torch.testing.assert_close(extended.phi[..., :6], features.phi)
    column = extended.phi[..., 6]  # kappa (s_c - mean of the question's s_c), 0 where absent
    assert (column[~mask] == 0).all()
    torch.testing.assert_close(column.sum(1), torch.zeros(16, dtype=column.dtype), atol=1e-12, rtol=0)
    head = ChoiceHead(7).double()
    with torch.no_grad():
        head.weight.normal_(0, 1, generator=generator)
        head.weight[6] = -0.2  # scale 1 + 2.5 * (-0.2) = 0.5
    expected = 0.5 * features.scores + features.phi @ head.weight[:6]
    torch.testing.assert_close(torch.softmax(head(extended, mask), -1),
                               torch.softmax(expected.masked_fill(~mask, -math.inf), -1))
    # the gradient reaches the score's weight; VBLL gives it a variance like any coordinate of w
    fresh = ChoiceHead(7).double()
    torch.nn.functional.cross_entropy(fresh(extended, mask), labels).backward()
    assert fresh.weight.grad[6].abs() > 0
    vbll = ChoiceVBLLHead(7, prior_scale=0.5, init_scale=0.3).double()
    _, variance = vbll.choice_moments(extended)
    torch.testing.assert_close(variance, (extended.phi.square() * 0.09).sum(-1))
