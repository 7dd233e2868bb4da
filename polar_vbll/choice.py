"""The choice form: a classifier that starts from what the model already knows.

The letter form (one prompt, lettered choices, logits of `` A`` ... `` E``) is at chance for a
135M model: it cannot yet bind a letter to a choice it has read. In the *choice form* every
(question, choice) pair is one sequence, exactly as in cloze scoring (:mod:`polar_vbll.cloze`)::

    row_c    = format_cloze_context(example) + " " + choice_c          # one sequence per choice
    s_c      = (1 / n_c) * sum_t log p(choice token t | context, earlier choice tokens)
    phi_c    = final (normed) hidden state at the last token of row_c, minus its mean over
               the question's choices (see center_over_choices)             # (d,)
    z_c      = s_c + w^T phi_c   (+ b_c, optional)                         # one shared w in R^d

``w`` starts at 0, so at step 0 the head *is* the zero-shot cloze classifier; fine-tuning moves
both terms: the adapters change s_c and phi_c, the head learns w. Every (question, choice) pair
of a batch runs in one left-padded backbone pass, so "one backbone pass per question" means one
batched pass over its C continuations.

Pieces, in the order a batch meets them:

* :func:`encode_choices` -- token rows, continuation lengths, labels, choice mask (B, 5);
* :func:`choice_features` -- backbone (or only its top layers, on cached hidden states: see
  :mod:`polar_vbll.feature_cache`) -> :class:`ChoiceFeatures` (scores (B, 5), phi (B, 5, d));
* :class:`ChoiceHead` -- the deterministic head z = s + phi w (+ b). Its Bayesian twin,
  :class:`polar_vbll.vbll.ChoiceVBLLHead`, puts q(w) = N(m, S) on the same w.
* :class:`ChoiceForm` -- the three bound to one backbone, one tokenizer and one feature cache:
  what :class:`polar_vbll.training.Trainer` and :class:`polar_vbll.methods.Method` call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from polar_vbll import data, distributed, models
from polar_vbll.errors import ConfigError, ShapeError


class ChoiceFeatures(NamedTuple):
    """What the backbone gives a choice head for a batch of B questions."""

    scores: torch.Tensor  # (B, C) mean log-probability of each choice's tokens; 0 where absent
    phi: torch.Tensor  # (B, C, d) last hidden state of each (question, choice) row, centred over
    #                    the question's choices; 0 where absent

    def detach(self) -> "ChoiceFeatures":
        return ChoiceFeatures(self.scores.detach(), self.phi.detach())

    def to(self, *args, **kwargs) -> "ChoiceFeatures":
        return ChoiceFeatures(self.scores.to(*args, **kwargs), self.phi.to(*args, **kwargs))

    def __len__(self) -> int:  # the batch size, so code written for (B, d) tensors keeps working
        return self.scores.shape[0]

    @staticmethod
    def cat(parts: list["ChoiceFeatures"]) -> "ChoiceFeatures":
        return ChoiceFeatures(torch.cat([p.scores for p in parts]), torch.cat([p.phi for p in parts]))


def check_choice_features(features, in_features: int) -> None:
    """Raise ShapeError unless ``features`` is a ChoiceFeatures with scores (B, C), phi (B, C, d)."""
    if not isinstance(features, ChoiceFeatures):
        raise ShapeError(f"a choice head takes ChoiceFeatures(scores (B, C), phi (B, C, d)); got "
                         f"{type(features).__name__} (the letter form's (B, d) features go to "
                         "AnswerHead / VBLLHead)")
    scores, phi = features
    if scores.dim() != 2 or phi.dim() != 3 or phi.shape[:2] != scores.shape \
            or phi.shape[2] != in_features:
        raise ShapeError(f"ChoiceFeatures must hold scores (B, C) and phi (B, C, {in_features}); "
                         f"got scores {tuple(scores.shape)} and phi {tuple(phi.shape)}")


def choice_rows(tokenizer, examples, max_length: int) -> tuple[list[list[int]], list[int]]:
    """Token rows (context + continuation) and continuation lengths, question by question.

    The context is cut from its *start* (like the letter prompt) so that a row fits in
    ``max_length``; the continuation `` " " + choice`` is never cut.
    """
    rows, lengths = [], []
    for example in examples:
        context = tokenizer.encode(data.format_cloze_context(example), add_special_tokens=False)
        for choice in example.choices:
            continuation = tokenizer.encode(" " + choice, add_special_tokens=False)
            room = max(max_length - len(continuation), data.MIN_QUESTION_TOKENS)
            rows.append(context[-room:] + continuation)
            lengths.append(len(continuation))
    return rows, lengths


def encode_choices(tokenizer, examples, max_length: int) -> dict:
    """A batch in choice form: ``rows`` (R token lists, R = total choices), ``lengths`` (R,),
    ``input_ids`` / ``attention_mask`` (R, T) left-padded, ``labels`` (B,), ``choice_mask`` (B, 5)."""
    if not examples:
        raise ConfigError("cannot encode an empty list of examples")
    data.check_examples(examples)
    rows, lengths = choice_rows(tokenizer, examples, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = data.left_pad(rows, pad)
    choice_mask = torch.zeros((len(examples), data.NUM_CLASSES), dtype=torch.bool)
    for i, example in enumerate(examples):
        choice_mask[i, : example.num_choices] = True
    return {"rows": rows, "lengths": torch.tensor(lengths), "input_ids": input_ids,
            "attention_mask": attention_mask, "choice_mask": choice_mask,
            "labels": torch.tensor([e.label for e in examples], dtype=torch.long)}


def continuation_scores(model, hidden: torch.Tensor, input_ids: torch.Tensor,
                        lengths: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the last ``lengths[r]`` tokens of each row, (R,), differentiable.

    ``hidden`` (R, T, d) is the final normed hidden state of left-padded rows; only the positions
    that predict continuation tokens go through the LM head (not the whole (R, T, vocab) tensor).
    """
    lengths = lengths.to(hidden.device)
    keep = int(lengths.max())
    offsets = torch.arange(keep, device=hidden.device)
    counted = offsets >= keep - lengths[:, None]  # (R, keep): the continuation tokens
    predicting = hidden[:, -keep - 1:-1][counted]  # (P, d): position t predicts token t + 1
    targets = input_ids[:, -keep:][counted]  # (P,)
    logits = model.get_output_embeddings()(predicting).float()  # (P, V), P = sum of lengths
    token_logprobs = -F.cross_entropy(logits, targets, reduction="none")  # (P,)
    rows = torch.arange(len(lengths), device=hidden.device)[:, None].expand_as(counted)[counted]
    totals = torch.zeros(len(lengths), dtype=token_logprobs.dtype, device=hidden.device)
    return totals.index_add(0, rows, token_logprobs) / lengths


def choice_features(model, batch: dict, top_layers=None) -> ChoiceFeatures:
    """Scores and phi for a batch from :func:`encode_choices` (bfloat16 autocast on CUDA, or
    accelerate's ``--mixed_precision``, :meth:`polar_vbll.distributed.World.autocast`; no cuDNN
    attention, :func:`polar_vbll.models.attention_kernels`).

    Full depth by default. With ``top_layers`` (a :class:`~polar_vbll.feature_cache.TopLayers`)
    only the top layers run, on the cached hidden states that the frozen lower layers produced
    for these very rows (``batch["shared"]``): each question's prompt once, each choice's own
    tokens against its keys and values.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    device = input_ids.device
    with distributed.world().autocast(device), models.attention_kernels(device):
        if top_layers is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids).last_hidden_state
        else:
            hidden = top_layers(batch["shared"], batch["rows"], input_ids.shape[1])  # (R, T, d)
        scores = continuation_scores(model, hidden, input_ids, batch["lengths"])  # (R,)
    phi_rows = hidden[:, -1].float()  # (R, d): left padding puts every row's last token last
    mask = batch["choice_mask"].to(device)  # (B, C)
    out_scores = torch.zeros(mask.shape, dtype=torch.float32, device=device)
    out_phi = torch.zeros(*mask.shape, phi_rows.shape[-1], dtype=torch.float32, device=device)
    out_scores = out_scores.masked_scatter(mask, scores.float())  # row order = question-major
    out_phi = out_phi.masked_scatter(mask[..., None], phi_rows)
    return ChoiceFeatures(out_scores, center_over_choices(out_phi, mask))


def center_over_choices(phi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """phi_c minus the mean of the question's present phi_c, (B, C, d); 0 at absent choices.

    softmax_c(s_c + w^T phi_c) does not change when the same vector is subtracted from every
    phi_c of a question, so centring changes no deterministic prediction. It matters for the
    Bayesian heads: the part of phi_c that all choices share would give every logit the same
    variance, which the softmax ignores but the Jensen bound charges for (by half that variance);
    after centring, the logit variances phi_c^T S phi_c measure only uncertainty that can change
    the answer.
    """
    present = mask[..., None].to(phi.dtype)  # (B, C, 1)
    mean = (phi * present).sum(1, keepdim=True) / present.sum(1, keepdim=True)  # (B, 1, d)
    return (phi - mean) * present


def append_score_feature(features: ChoiceFeatures, mask: torch.Tensor, kappa: float) -> ChoiceFeatures:
    """phi_c -> [phi_c, kappa (s_c - mean of the question's s_c)], (B, C, d + 1); scores unchanged.

    With this extra feature the head's logit is z_c = s_c + w^T phi_c + w_s kappa (s_c - s̄):
    up to a shift shared by the question's choices (which the softmax ignores) that is
    (1 + kappa w_s) s_c + w^T phi_c, so the head learns how far to trust the zero-shot score
    (w_s < 0: less). It starts at w_s = 0 (the cloze classifier) and, being one more coordinate
    of w, it gets the same treatment as the others: a point estimate for mle, a posterior under
    VBLL and Laplace -- uncertainty about the score's scale widens the logits of exactly the
    questions whose choices the score separates most. ``kappa`` sets the feature's size, and so
    how strongly the shared prior N(0, s I) on w holds w_s back (prior std of the scale is
    kappa sqrt(s)).
    """
    if not kappa:
        return features
    centred = center_over_choices(features.scores[..., None], mask)  # (B, C, 1)
    return ChoiceFeatures(features.scores, torch.cat([features.phi, kappa * centred], dim=-1))


class ChoiceHead(nn.Module):
    """Deterministic choice head: z_c = s_c + w^T phi_c (+ b_c), w (d,) and b (C,) started at 0.

    At initialisation the logits are the cloze scores: the head is the zero-shot cloze classifier.
    """

    def __init__(self, in_features: int, num_classes: int = data.NUM_CLASSES, bias: bool = False):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.zeros(in_features))  # (d,)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None  # (C,)

    def forward(self, features: ChoiceFeatures, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_choice_features(features, self.in_features)
        logits = features.scores + features.phi @ self.weight  # (B, C)
        if self.bias is not None:
            logits = logits + self.bias[: logits.shape[1]]
        return logits if mask is None else logits.masked_fill(~mask, -math.inf)


class ChoiceForm:
    """The choice form bound to a backbone: ``encode(examples)`` then ``features(batch)``.

    ``adapt_layers`` = K trains only the top K decoder layers; the frozen lower layers run once
    per row and their output is kept by ``cache`` (a :class:`~polar_vbll.feature_cache.FeatureCache`),
    in memory and, through :meth:`prepare`, on disk under ``POLAR_VBLL_CACHE``. In the top
    layers each question's prompt runs once and each choice's own tokens attend to its keys and
    values (``share_prompts=False`` runs every row whole, for comparison: same numbers up to float
    rounding, ~1.4-1.7x slower a step). ``adapt_layers=None`` runs the full backbone every time,
    every row whole (the `full` profile).
    """

    name = "choice"

    def __init__(self, model, tokenizer, max_length: int, adapt_layers: int | None = None,
                 model_name: str = "", progress: bool = False, batch_size: int = 16,
                 score_feature: float = 0.0, share_prompts: bool = True):
        from polar_vbll import feature_cache

        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.share_prompts = share_prompts  # False: the top layers run every row whole (benchmark)
        self.score_feature = float(score_feature)
        self.device = next(model.parameters()).device
        self.top_layers = self.cache = None
        if adapt_layers is not None:
            self.top_layers = feature_cache.TopLayers(model, adapt_layers)
            self.cache = feature_cache.FeatureCache(model, self.top_layers.split, model_name,
                                                    batch_size=batch_size, progress=progress)

    @property
    def feature_width(self) -> int:
        """The width d of phi that a head over these features needs (+1 with the score feature)."""
        return self.model.config.hidden_size + (1 if self.score_feature else 0)

    def prepare(self, examples, progress: bool | None = None) -> None:
        """Make sure the lower layers' hidden states of every row of ``examples`` are at hand
        (from disk when this exact set of rows was seen before); no-op at full depth. Under a
        launcher the main process computes and writes the file first, the others read it."""
        if self.cache is not None:
            rows, _ = choice_rows(self.tokenizer, examples, self.max_length)
            world = distributed.world()
            with world.main_first():
                self.cache.prepare(rows, progress=progress if world.is_main else False)

    def encode(self, examples) -> dict:
        batch = encode_choices(self.tokenizer, examples, self.max_length)
        if self.cache is not None:
            batch["shared"] = self.cache.shared_inputs(batch["rows"], share=self.share_prompts)
        return {key: (value.to(self.device) if isinstance(value, torch.Tensor) else value)
                for key, value in batch.items()}

    def features(self, batch: dict) -> ChoiceFeatures:
        features = choice_features(self.model, batch, self.top_layers)
        return append_score_feature(features, batch["choice_mask"], self.score_feature)


__all__ = ["ChoiceFeatures", "ChoiceForm", "ChoiceHead", "append_score_feature", "center_over_choices",
           "check_choice_features", "choice_features",
           "choice_rows", "continuation_scores", "encode_choices"]
