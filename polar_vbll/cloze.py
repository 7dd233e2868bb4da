"""Cloze scoring: the zero-shot baseline in the form small language models are evaluated.

The letter format (choices listed as ``A) ... B) ...``, read off the logits of `` A``, `` B``,
... after ``Answer:``) is what the fine-tuned heads start from, but a 135M model cannot yet
link a letter to a choice it has read: zero-shot SmolLM2-135M sits at chance on ARC-Easy in that
format and answers "A" almost always. In *cloze* form the model never sees a letter. Each choice
is scored as a continuation of the question::

    context  = data.format_cloze_context(example)        # "...Question: <q>\\nAnswer:"
    score_k  = (1 / n_k) * sum_t log p(c_k,t | context, c_k,<t)    # n_k tokens of " " + choice k

and the probabilities are ``softmax_k(score_k)`` over the question's choices. The score is the
mean log-probability per token: the summed log-likelihood favours short answers
(``scoring="sum"`` gives it, for comparison). One backbone pass per choice, so a 4-choice question
costs four passes; the batch holds every (question, choice) pair of ``batch_size`` questions.

The record has the same keys as ``Method.predict``'s (probs (N, 5), labels, mask), so
:func:`polar_vbll.metrics.summarize` and the plots take it unchanged.
"""

from __future__ import annotations

import time

import torch

from polar_vbll import data
from polar_vbll.choice import choice_rows
from polar_vbll.errors import ConfigError

SCORINGS = ("mean", "sum")


@torch.no_grad()
def continuation_logprobs(model, tokenizer, rows: list[list[int]], lengths: list[int],
                          device=None) -> torch.Tensor:
    """Summed log-probability of the last ``lengths[i]`` tokens of each row, (R,) float32.

    Rows are left-padded into one batch; only the logits of the continuation positions are
    computed (``logits_to_keep``), not the whole (R, T, vocab) tensor.
    """
    device = device or next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = data.left_pad(rows, pad)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding
    keep = max(lengths) + 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "position_ids": position_ids}
    try:
        logits = model(**inputs, logits_to_keep=keep).logits  # (R, keep, V)
    except TypeError:  # a model class without logits_to_keep: all positions, then slice
        logits = model(**inputs).logits[:, -keep:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts the last keep-1
    targets = input_ids[:, -(keep - 1):]  # (R, keep-1)
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    offsets = torch.arange(keep - 1, device=device)
    counted = offsets >= (keep - 1) - torch.tensor(lengths, device=device)[:, None]
    return (token_logprobs * counted).sum(-1).cpu()


def predict(model, tokenizer, examples, scoring: str = "mean", batch_size: int = 8,
            max_length: int = 256, progress: bool = False) -> dict:
    """Cloze zero-shot record: probs (N, 5) (absent choices 0), labels (N,), mask (N, 5),
    ``scores`` (N, 5; -inf where absent) and ``seconds_per_example``."""
    from tqdm.auto import tqdm

    if scoring not in SCORINGS:
        raise ConfigError(f"cloze scoring must be one of {SCORINGS}, got {scoring!r}")
    if not examples:
        raise ConfigError("cloze scoring needs at least one example")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    model.eval()
    scores = torch.full((len(examples), data.NUM_CLASSES), float("-inf"))
    done = 0
    for chunk in tqdm(data.batches(examples, batch_size), total=-(-len(examples) // batch_size),
                      desc="cloze scoring", disable=not progress, leave=False):
        rows, lengths = choice_rows(tokenizer, chunk, max_length)
        totals = continuation_logprobs(model, tokenizer, rows, lengths)
        if scoring == "mean":
            totals = totals / torch.tensor(lengths, dtype=totals.dtype)
        position = 0
        for i, example in enumerate(chunk):
            k = example.num_choices
            scores[done + i, :k] = totals[position:position + k]
            position += k
        done += len(chunk)
    mask = torch.isfinite(scores)
    labels = torch.tensor([example.label for example in examples], dtype=torch.long)
    return {"probs": torch.softmax(scores, dim=-1), "labels": labels, "mask": mask,
            "scores": scores,
            "seconds_per_example": (time.perf_counter() - start) / len(examples)}
