"""Geometry of the Stiefel manifold and optimizers that keep matrices on it.

The Stiefel manifold St(n, r) is the set of tall matrices X (n x r, n >= r) with orthonormal
columns, ``X^T X = I``. PoLAR keeps its factors X and Y there. Three ways to train them:

* **retraction**: project the gradient on the tangent space, step, and map back onto the
  manifold with a retraction (QR, polar or Cayley). Exact, but a QR/SVD per step.
* **geoopt**: the same idea done by the geoopt library (``RiemannianAdam``).
* **landing** (Ablin & Peyre, 2022; used by PoLAR): replace the gradient by the landing field,
  a tangent "relative gradient" plus a normal term that pulls X back to the manifold. Only
  matrix products, no retraction; X stays *close to* the manifold instead of exactly on it.

Metric: the Euclidean one, ``<U, V> = tr(U^T V)``, so the tangent projection is
``G - X sym(X^T G)``. All functions accept batches (..., n, r).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch

from polar_vbll.errors import ConfigError, ShapeError
from polar_vbll.linalg import polar_decomposition

RETRACTIONS = ("qr", "polar", "cayley")
OPTIMIZER_METHODS = ("landing", "geoopt", "retraction")


def _symmetric_part(A: torch.Tensor) -> torch.Tensor:
    """sym(A) = (A + A^T) / 2."""
    return (A + A.mT) / 2


def _check_tall(X: torch.Tensor, name: str) -> None:
    if X.dim() < 2 or X.shape[-2] < X.shape[-1]:
        raise ShapeError(f"{name} must be a tall matrix (..., n, r) with n >= r, got shape {tuple(X.shape)}")


def project_tangent(X: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of G onto the tangent space at X: ``G - X sym(X^T G)``.

    A tangent vector V at X satisfies ``X^T V + V^T X = 0`` (differentiate ``X^T X = I``).
    X (..., n, r) with orthonormal columns, G (..., n, r); returns (..., n, r).
    """
    _check_tall(X, "X")
    if G.shape != X.shape:
        raise ShapeError(f"G must have the shape of X {tuple(X.shape)}, got {tuple(G.shape)}")
    return G - X @ _symmetric_part(X.mT @ G)


def retract(X: torch.Tensor, V: torch.Tensor, method: str = "qr") -> torch.Tensor:
    """Map the step ``X + V`` (V tangent at X) back onto the Stiefel manifold.

    Every retraction R satisfies ``R(X, 0) = X`` and ``R(X, tV) = X + tV + O(t^2)``.

    * ``"qr"``: the Q factor of ``X + V = Q R``, with signs fixed so that ``diag(R) > 0``
      (without the fix, Q could flip column signs and the map would not be continuous).
    * ``"polar"``: the orthonormal polar factor of ``X + V`` (closest orthonormal matrix).
    * ``"cayley"``: ``(I - W/2)^{-1} (I + W/2) X`` with the skew n x n matrix
      ``W = P V X^T - X V^T P``, ``P = I - X X^T / 2`` (so ``W X = V`` for tangent V).
      Computed without forming n x n matrices: ``W = A B^T`` with ``A = [P V, X]``,
      ``B = [X, -P V]`` (n x 2r), and by the Woodbury identity
      ``R = X + A (I - B^T A / 2)^{-1} B^T X``, a 2r x 2r solve.
    """
    _check_tall(X, "X")
    if V.shape != X.shape:
        raise ShapeError(f"V must have the shape of X {tuple(X.shape)}, got {tuple(V.shape)}")
    if method == "qr":
        Q, R = torch.linalg.qr(X + V)  # Q (..., n, r), R (..., r, r)
        signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))  # (..., r)
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return Q * signs[..., None, :]
    if method == "polar":
        U, _ = polar_decomposition(X + V, method="svd")
        return U
    if method == "cayley":
        PV = V - X @ (X.mT @ V) / 2  # P V, (..., n, r)
        A = torch.cat([PV, X], dim=-1)  # (..., n, 2r)
        B = torch.cat([X, -PV], dim=-1)  # (..., n, 2r)
        identity = torch.eye(A.shape[-1], dtype=X.dtype, device=X.device)
        small = torch.linalg.solve(identity - B.mT @ A / 2, B.mT @ X)  # (..., 2r, r)
        return X + A @ small
    raise ConfigError(f"retraction method must be one of {RETRACTIONS}, got {method!r}")


def landing_field(X: torch.Tensor, G: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Landing field ``Lambda(X) = skew(G X^T) X + lam * X (X^T X - I)`` for a tall X (n x r).

    Convention (Ablin & Peyre 2022): ``skew(A) = (A - A^T) / 2``, so the first term is
    ``(G X^T - X G^T) X / 2``. (The PoLAR write-up drops the 1/2; that only rescales the
    learning rate of the tangent part relative to the normal part.)

    * The first term is the *relative gradient*. On the manifold it is the Riemannian
      gradient for the canonical metric, and it is tangent there: with ``S = skew(G X^T)``,
      ``X^T (S X) + (S X)^T X = X^T (S + S^T) X = 0``.
    * The second term, ``lam * X (X^T X - I)``, is the gradient of the penalty
      ``lam * ||X^T X - I||_F^2 / 4``. It is zero on the manifold and normal to it, and
      following ``-Lambda`` shrinks the distance ``||X^T X - I||``: it pulls X back.

    The update ``X <- X - lr * Lambda(X)`` needs no retraction, only matrix products.
    At a critical point on the manifold (``G = X G^T X``, e.g. X spanning the top eigenvectors
    of A for f = -tr(X^T A X)/2) the field vanishes.

    For a wide X (r x n, r < n, rows orthonormal) the field is computed on the transposes:
    ``Lambda(X) = landing_field(X^T, G^T, lam)^T``. Batched over leading dimensions.
    """
    if X.dim() < 2:
        raise ShapeError(f"X must be a matrix (..., n, r), got shape {tuple(X.shape)}")
    if G.shape != X.shape:
        raise ShapeError(f"G must have the shape of X {tuple(X.shape)}, got {tuple(G.shape)}")
    return _landing_field_and_gram(X, G, lam)[0]


def _landing_field_and_gram(X: torch.Tensor, G: torch.Tensor, lam: float):
    """The landing field and the Gram matrix X^T X of the tall side (LandingAdam reuses it)."""
    if X.shape[-2] < X.shape[-1]:
        field, gram = _landing_field_and_gram(X.mT, G.mT, lam)
        return field.mT, gram
    identity = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    # skew(G X^T) X = (G (X^T X) - X (G^T X)) / 2: r x r products only, never the n x n skew(G X^T),
    # so the cost is O(n r^2) (the n x n form costs O(n^2 r) time and O(n^2) memory). The two
    # terms that start with X share one product:
    #   relative gradient + normal pull = G (X^T X) / 2 + X (lam (X^T X - I) - (G^T X) / 2).
    gram = X.mT @ X  # (..., r, r)
    inner = lam * (gram - identity) - (G.mT @ X) / 2  # (..., r, r)
    return (G @ gram) / 2 + X @ inner, gram  # (..., n, r): 4 products of n x r by r x r


def _distance_to_manifold(X: torch.Tensor) -> torch.Tensor:
    """``||X^T X - I||_F`` (largest over a batch), for tall or wide X."""
    if X.shape[-2] < X.shape[-1]:
        X = X.mT
    identity = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    return torch.linalg.matrix_norm(X.mT @ X - identity, ord="fro").max()


class LandingAdam(torch.optim.Adam):
    """Adam on the landing field: each step replaces ``p.grad`` by ``landing_field(p, p.grad)``.

    This is how the PoLAR reference code trains X and Y: the optimizer never retracts, the
    normal term of the field keeps ``||X^T X - I||`` small.

    Safe step: Adam rescales coordinates, so a large step can still throw X far from the
    manifold, where the landing term would no longer bring it back. As in the landing paper
    (which bounds the step size so the distance stays below a radius epsilon), after each
    Adam update the change ``D = X_new - X_old`` is halved (up to 30 times) while
    ``||X_new^T X_new - I||_F > safe_distance`` (default 0.5). For the small learning rates
    used in fine-tuning the check never fires; it only guards against blow-ups. It costs
    nothing in the usual case: with ``d = ||X^T X - I||_F`` (known from the field's Gram
    matrix) and ``||X||_2 <= sqrt(1 + d)``,
    ``||(X + D)^T (X + D) - I||_F <= d + 2 sqrt(1 + d) ||D||_F + ||D||_F^2``,
    and the exact distance is only computed when this bound exceeds ``safe_distance``.

    Speed: the matrices of one shape (a model's PoLAR factors come in two or three shapes) are
    stacked, so the field and the bound cost the same few kernels for 120 matrices as for one,
    and the step waits for the device once (to read whether any bound exceeds the radius). On a
    GPU a step of this size is bound by kernel launches, not arithmetic.
    """

    def __init__(self, params, lr=1e-3, landing_lambda=1.0, safe_distance=0.5, **adam_options):
        if landing_lambda <= 0:
            raise ConfigError(f"landing_lambda must be > 0, got {landing_lambda}")
        if safe_distance <= 0:
            raise ConfigError(f"safe_distance must be > 0, got {safe_distance}")
        defaults_extra = {"landing_lambda": landing_lambda, "safe_distance": safe_distance}
        super().__init__(params, lr=lr, **adam_options)
        for group in self.param_groups:
            for key, value in defaults_extra.items():
                group.setdefault(key, value)
        self.defaults.update(defaults_extra)

    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stacks = []  # (group, params of one shape, their values before the step, distances)
        with torch.no_grad():
            for group in self.param_groups:
                for same_shape in _same_shape_stacks(group["params"]):
                    old = torch.stack(same_shape)  # (k, ..., n, r): a copy, the values before the step
                    grads = torch.stack([param.grad for param in same_shape])
                    field, gram = _landing_field_and_gram(old, grads, group["landing_lambda"])
                    for param, param_field in zip(same_shape, field.unbind(0)):
                        param.grad = param_field
                    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
                    distance = _largest_per_parameter(torch.linalg.matrix_norm(gram - identity))
                    stacks.append((group, same_shape, old, distance))
        super().step()
        with torch.no_grad():
            outside = []  # per stack: which parameters the bound cannot keep inside the radius
            for group, same_shape, old, distance in stacks:
                change = torch.stack(same_shape) - old
                size = _largest_per_parameter(torch.linalg.matrix_norm(change))
                bound = distance + 2 * torch.sqrt(1 + distance) * size + size**2
                outside.append(bound > group["safe_distance"])
            if not outside or not torch.cat(outside).any():  # one host sync a step
                return loss
            for (group, same_shape, old, _), flags in zip(stacks, outside):
                for param, before, flag in zip(same_shape, old.unbind(0), flags.tolist()):
                    if flag:
                        _halve_into_radius(param, before, group["safe_distance"])
        return loss


def _same_shape_stacks(params) -> list[list[torch.Tensor]]:
    """The parameters with a gradient, in lists of one shape, dtype and device (stackable)."""
    stacks: dict[tuple, list[torch.Tensor]] = {}
    for param in params:
        if param.grad is not None:
            stacks.setdefault((tuple(param.shape), param.dtype, param.device), []).append(param)
    return list(stacks.values())


def _largest_per_parameter(norms: torch.Tensor) -> torch.Tensor:
    """(k, ...) norms of k stacked parameters (each maybe a batch) -> (k,), the largest of each."""
    return norms.reshape(norms.shape[0], -1).amax(dim=1)


def _halve_into_radius(param: torch.Tensor, before: torch.Tensor, radius: float) -> None:
    """Halve the step ``param - before`` (up to 30 times) until it ends within ``radius``."""
    change = param - before
    halvings = 0
    while _distance_to_manifold(before + change) > radius and halvings < 30:
        change = change / 2
        halvings += 1
    if halvings:
        param.copy_(before + change)


class RetractionAdam(torch.optim.Optimizer):
    """Riemannian Adam by projection and retraction, for tall Stiefel matrices.

    Per step, with G the Euclidean gradient (plus ``weight_decay * X``):
    ``g = project_tangent(X, G)``; Adam moments ``m, v`` of g (bias-corrected);
    ``D = project_tangent(X, m_hat / (sqrt(v_hat) + eps))``; ``X <- retract(X, -lr * D)``.
    The moments are not transported between tangent spaces; projecting the direction at the
    new point each step plays that role (a cheap vector transport).
    Weight decay has no effect on the manifold (``project_tangent(X, X) = 0``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, retraction="qr"):
        if retraction not in RETRACTIONS:
            raise ConfigError(f"retraction must be one of {RETRACTIONS}, got {retraction!r}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "retraction": retraction}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for X in group["params"]:
                if X.grad is None:
                    continue
                state = self.state[X]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(X)
                    state["exp_avg_sq"] = torch.zeros_like(X)
                state["step"] += 1
                step = state["step"].item()
                gradient = project_tangent(X, X.grad + group["weight_decay"] * X)
                state["exp_avg"].mul_(beta1).add_(gradient, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
                mean = state["exp_avg"] / (1 - beta1**step)
                second_moment = state["exp_avg_sq"] / (1 - beta2**step)
                direction = project_tangent(X, mean / (second_moment.sqrt() + group["eps"]))
                X.copy_(retract(X, -group["lr"] * direction, method=group["retraction"]))
        return loss


def _import_geoopt():
    """Import geoopt, silencing only its import-time ``torch.jit.script`` deprecation warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
        import geoopt
    return geoopt


def make_stiefel_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict],
    method: str = "landing",
    lr: float = 1e-3,
    landing_lambda: float = 1.0,
    retraction: str = "qr",
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    safe_distance: float = 0.5,
) -> torch.optim.Optimizer:
    """One torch.optim.Optimizer for Stiefel matrices (e.g. PoLAR's X and Y), any method.

    * ``"landing"``: :class:`LandingAdam` (Adam on ``landing_field(X, grad, landing_lambda)``,
      with the safe-step check; X may be tall or wide).
    * ``"geoopt"``: ``geoopt.optim.RiemannianAdam`` with the Stiefel manifold. Plain
      ``nn.Parameter`` s work: the optimizer's default manifold (used for every parameter that
      is not a ``geoopt.ManifoldParameter``) is set to ``geoopt.Stiefel()`` (canonical metric,
      Cayley retraction), so callers need not convert their parameters.
    * ``"retraction"``: :class:`RetractionAdam` (tangent projection + ``retract(..., retraction)``).

    geoopt and retraction need tall parameters (n >= r) that start on the manifold.
    ``weight_decay`` cannot change a Stiefel matrix: its tangent part is zero
    (``project_tangent(X, X) = 0``, ``skew((G + wd X) X^T) = skew(G X^T)``). It is passed to
    geoopt and retraction for completeness and not used by landing, where Adam would add it
    after the landing field and fight the pull back to the manifold.
    The result is a real ``torch.optim.Optimizer``: LR schedulers and ``state_dict`` work.
    """
    if method not in OPTIMIZER_METHODS:
        raise ConfigError(f"method must be one of {OPTIMIZER_METHODS}, got {method!r}")
    if lr <= 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    params = list(params)
    if method != "landing":
        for group in params:
            for param in group["params"] if isinstance(group, dict) else [group]:
                _check_tall(param, f"a parameter for method={method!r}")
    if method == "landing":
        return LandingAdam(
            params,
            lr=lr,
            landing_lambda=landing_lambda,
            safe_distance=safe_distance,
            betas=betas,
            eps=eps,
        )
    if method == "retraction":
        return RetractionAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, retraction=retraction)
    geoopt = _import_geoopt()
    optimizer = geoopt.optim.RiemannianAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    optimizer._default_manifold = geoopt.Stiefel()  # used for plain (non-Manifold) parameters
    optimizer.register_load_state_dict_post_hook(_step_counts_back_to_int)
    return optimizer


def _step_counts_back_to_int(optimizer: torch.optim.Optimizer) -> None:
    """torch's load_state_dict turns geoopt's int ``step`` into a float32 tensor; geoopt then
    computes its bias corrections in float32. Turn it back into an int."""
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = int(state["step"].item())
