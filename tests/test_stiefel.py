"""Tests for polar_vbll.stiefel: tangent projection, retractions, landing field, optimizers."""

import copy
import functools

import pytest
import torch

from polar_vbll.errors import ConfigError, ShapeError
from polar_vbll.linalg import orthogonality_error
from polar_vbll.stiefel import (
    LandingAdam,
    landing_field,
    make_stiefel_optimizer,
    project_tangent,
    retract,
)


def random_stiefel(rows, columns, seed, batch=()):
    generator = torch.Generator().manual_seed(seed)
    X, _ = torch.linalg.qr(torch.randn(*batch, rows, columns, generator=generator, dtype=torch.float64))
    return X


def random_matrix(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_projection_is_idempotent_and_tangent():
    X = random_stiefel(10, 3, seed=0, batch=(2,))
    G = random_matrix(2, 10, 3, seed=1)
    V = project_tangent(X, G)
    torch.testing.assert_close(project_tangent(X, V), V, atol=1e-14, rtol=0)
    skew_condition = X.mT @ V + V.mT @ X
    assert skew_condition.abs().max().item() < 1e-14
    # The removed part X sym(X^T G) is orthogonal to V: <G - V, V> = 0.
    assert torch.sum((G - V) * V).abs().item() < 1e-13


@pytest.mark.parametrize("method", ["qr", "polar", "cayley"])
def test_retraction_orthonormal_and_first_order(method):
    X = random_stiefel(9, 4, seed=2)
    V = project_tangent(X, random_matrix(9, 4, seed=3))
    assert orthogonality_error(retract(X, V, method=method)).item() < 1e-10
    torch.testing.assert_close(retract(X, torch.zeros_like(X), method=method), X, atol=1e-14, rtol=0)
    # ||R(X, tV) - (X + tV)|| = O(t^2): halving t divides the error by ~4.
    errors = [torch.linalg.matrix_norm(retract(X, t * V, method=method) - (X + t * V)).item() for t in (1e-2, 5e-3)]
    ratio = errors[0] / errors[1]
    assert 3.5 < ratio < 4.5, f"{method}: error ratio {ratio} when t halves"


def test_retraction_batched_and_qr_sign():
    X = random_stiefel(6, 2, seed=4, batch=(3,))
    V = project_tangent(X, random_matrix(3, 6, 2, seed=5))
    for method in ("qr", "polar", "cayley"):
        batched = retract(X, V, method=method)
        for i in range(3):
            torch.testing.assert_close(batched[i], retract(X[i], V[i], method=method), atol=1e-12, rtol=0)
    # QR sign fix: R(X, 0) = X even when numpy/LAPACK would return -X columns.
    flipped = X[0] * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(retract(flipped, torch.zeros_like(flipped)), flipped, atol=1e-14, rtol=0)


def test_retract_rejects_bad_inputs():
    X = random_stiefel(5, 2, seed=6)
    with pytest.raises(ConfigError, match="retraction method"):
        retract(X, X, method="exp")
    with pytest.raises(ShapeError, match="V must have the shape"):
        retract(X, X[:, :1])
    with pytest.raises(ShapeError, match="tall"):
        project_tangent(X.T, X.T)


def test_landing_field_parts():
    X = random_stiefel(8, 3, seed=7)
    G = random_matrix(8, 3, seed=8)
    # On the manifold the normal part vanishes and the field is tangent.
    on_manifold = landing_field(X, G, lam=1.0)
    assert (X.T @ on_manifold + on_manifold.T @ X).abs().max().item() < 1e-13
    expected_relative_gradient = 0.5 * (G @ X.T - X @ G.T) @ X
    torch.testing.assert_close(on_manifold, expected_relative_gradient, atol=1e-14, rtol=0)
    # Off the manifold the field minus its skew part is exactly lam X (X^T X - I).
    off = X + 0.1 * random_matrix(8, 3, seed=9)
    lam = 2.5
    identity = torch.eye(3, dtype=torch.float64)
    normal = landing_field(off, G, lam=lam) - landing_field(off, G, lam=0.0)
    torch.testing.assert_close(normal, lam * off @ (off.T @ off - identity), atol=1e-14, rtol=0)
    skew = 0.5 * (G @ off.T - off @ G.T)
    torch.testing.assert_close(skew, -skew.T)  # the relative gradient is skew(G X^T) X


def test_landing_field_vanishes_at_critical_point():
    A = random_matrix(7, 7, seed=10)
    A = A @ A.T
    eigenvectors = torch.linalg.eigh(A).eigenvectors
    X = eigenvectors[:, -2:]  # top 2 eigenvectors
    G = -A @ X  # gradient of f(X) = -tr(X^T A X) / 2
    assert landing_field(X, G).abs().max().item() < 1e-12
    # A non-critical point on the manifold has a non-zero field.
    assert landing_field(random_stiefel(7, 2, seed=11), G).abs().max().item() > 1e-2


def test_landing_field_wide_is_transpose_of_tall():
    X = random_stiefel(8, 3, seed=12) + 0.05 * random_matrix(8, 3, seed=13)
    G = random_matrix(8, 3, seed=14)
    torch.testing.assert_close(landing_field(X.T, G.T, lam=0.7), landing_field(X, G, lam=0.7).T)
    batched = landing_field(torch.stack([X, 2 * X]), torch.stack([G, G]))
    torch.testing.assert_close(batched[1], landing_field(2 * X, G))


def pca_problem():
    """f(X) = -tr(X^T A X)/2 on St(20, 3); minimum -(sum of the 3 top eigenvalues)/2 = -1.425."""
    Q = random_stiefel(20, 20, seed=15)
    eigenvalues = torch.linspace(1.0, 0.05, 20, dtype=torch.float64)
    A = (Q * eigenvalues) @ Q.T
    minimum = -eigenvalues[:3].sum().item() / 2
    return A, minimum, random_stiefel(20, 3, seed=16)


@pytest.fixture
def one_thread():
    """Thousands of tiny steps: with 2 threads on a busy 2-core machine, thread hand-offs
    make them ~10x slower. Run them on one thread and restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def run_pca(method, lr, steps=1000):
    A, minimum, X0 = pca_problem()
    X = torch.nn.Parameter(X0.clone())
    optimizer = make_stiefel_optimizer([X], method=method, lr=lr)
    errors, values = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        value = -torch.trace(X.T @ A @ X) / 2
        value.backward()
        optimizer.step()
        errors.append(orthogonality_error(X.detach()).item())
        values.append(value.item())
    return X.detach(), errors, values, minimum


def test_landing_stays_near_manifold_and_lands(one_thread):
    X, errors, values, minimum = run_pca("landing", lr=1e-2)
    # Measured: Adam on the landing field at lr = 1e-2 (20 x 3, lambda = 1) leaves the
    # manifold by at most 0.081 (in the first steps, while the gradient is large: Adam's
    # coordinate-wise scaling tilts the step off the tangent space by ~lr per coordinate).
    assert max(errors) < 0.1
    assert values[-1] == pytest.approx(minimum, abs=1e-9)
    # Once the gradient has vanished (from step ~300 on) the distance keeps decreasing
    # down to rounding level (measured 5e-16 at step 1000).
    late = errors[300::100]
    assert all(later < earlier or later < 1e-14 for earlier, later in zip(late, late[1:]))
    assert errors[-1] < 1e-12


def test_all_methods_reach_the_same_minimum(one_thread):
    results = {
        "landing": run_pca("landing", lr=1e-2),  # same run as the test above (cached)
        "retraction": run_pca("retraction", lr=1e-2, steps=600),
        "geoopt": run_pca("geoopt", lr=3e-2, steps=1000),  # canonical metric: slower here
    }
    for method, (X, errors, values, minimum) in results.items():
        assert values[-1] == pytest.approx(minimum, abs=1e-6), method
        if method != "landing":
            assert max(errors) < 1e-6, method
    subspaces = [X @ X.T for X, *_ in results.values()]  # same top-3 eigenspace
    for projector in subspaces[1:]:
        torch.testing.assert_close(projector, subspaces[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("method", ["landing", "geoopt", "retraction"])
def test_optimizer_is_a_torch_optimizer(method):
    X = torch.nn.Parameter(random_stiefel(6, 2, seed=17))
    optimizer = make_stiefel_optimizer([X], method=method, lr=0.1)
    assert isinstance(optimizer, torch.optim.Optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    target = random_matrix(6, 2, seed=18)
    for _ in range(3):
        optimizer.zero_grad()
        ((X - target) ** 2).sum().backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    # state_dict round trip: a fresh optimizer loaded with the state takes the same next step.
    twin = torch.nn.Parameter(X.detach().clone())
    twin_optimizer = make_stiefel_optimizer([twin], method=method, lr=0.1)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load shares tensors
    for parameter, opt in ((X, optimizer), (twin, twin_optimizer)):
        opt.zero_grad()
        ((parameter - target) ** 2).sum().backward()
        opt.step()
    torch.testing.assert_close(twin.detach(), X.detach(), atol=1e-12, rtol=0)


def test_landing_safe_step_limits_distance():
    X = torch.nn.Parameter(random_stiefel(6, 2, seed=19))
    optimizer = make_stiefel_optimizer([X], method="landing", lr=5.0, safe_distance=0.5)
    optimizer.zero_grad()
    (X**2 * random_matrix(6, 2, seed=20)).sum().backward()
    optimizer.step()
    assert orthogonality_error(X.detach()).item() <= 0.5
    # Without the guard (huge radius) the same step lands far away.
    Y = torch.nn.Parameter(random_stiefel(6, 2, seed=19))
    unguarded = make_stiefel_optimizer([Y], method="landing", lr=5.0, safe_distance=1e9)
    unguarded.zero_grad()
    (Y**2 * random_matrix(6, 2, seed=20)).sum().backward()
    unguarded.step()
    assert orthogonality_error(Y.detach()).item() > 1.0


@pytest.mark.parametrize("seed", range(5))
def test_safe_step_bound_holds(seed):
    """LandingAdam skips the exact distance when d + 2 sqrt(1 + d) |D| + |D|^2 <= radius; the
    bound must never be below the true distance of X + D (X off the manifold, D of any size)."""
    X = random_stiefel(40, 6, seed=seed) + 0.05 * random_matrix(40, 6, seed=seed + 100)
    d = orthogonality_error(X)
    for scale in (1e-4, 1e-2, 0.3, 3.0):
        D = scale * random_matrix(40, 6, seed=seed + 200)
        size = torch.linalg.matrix_norm(D)
        bound = d + 2 * torch.sqrt(1 + d) * size + size**2
        assert orthogonality_error(X + D) <= bound


def test_safe_step_can_be_skipped_and_still_matches_adam_on_the_field():
    """With a radius the step never reaches, LandingAdam is Adam on the landing field exactly."""
    X = torch.nn.Parameter(random_stiefel(30, 4, seed=7))
    twin = torch.nn.Parameter(X.detach().clone())
    landing = make_stiefel_optimizer([X], method="landing", lr=1e-3)
    adam = torch.optim.Adam([twin], lr=1e-3)
    target = random_matrix(30, 4, seed=8)
    for _ in range(5):
        for param, optimizer in ((X, landing), (twin, adam)):
            optimizer.zero_grad()
            ((param - target) ** 2).sum().backward()
        twin.grad = landing_field(twin.detach(), twin.grad)
        landing.step()
        adam.step()
    torch.testing.assert_close(X.detach(), twin.detach(), atol=1e-12, rtol=0)


def test_make_stiefel_optimizer_rejects_bad_inputs():
    X = torch.nn.Parameter(random_stiefel(6, 2, seed=21))
    with pytest.raises(ConfigError, match="method"):
        make_stiefel_optimizer([X], method="sgd")
    with pytest.raises(ShapeError, match="tall"):
        make_stiefel_optimizer([torch.nn.Parameter(X.detach().T.clone())], method="retraction")
    with pytest.raises(ConfigError, match="retraction"):
        make_stiefel_optimizer([X], method="retraction", retraction="exp")
    with pytest.raises(ConfigError, match="landing_lambda"):
        make_stiefel_optimizer([X], method="landing", landing_lambda=0.0)


def _distance(X):
    """||X^T X - I||_F of a tall or wide X, the largest over a batch."""
    return orthogonality_error(X if X.shape[-2] >= X.shape[-1] else X.mT).max()


def _landing_adam_one_matrix_at_a_time(params, lr, radius):
    """The landing step written per matrix (no stacking): Adam on each matrix's own landing
    field, then each step halved until it ends within ``radius`` of the manifold."""
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    adam = torch.optim.Adam(twins, lr=lr)

    def step(grads):
        before = [t.detach().clone() for t in twins]
        for twin, grad in zip(twins, grads):
            twin.grad = None if grad is None else landing_field(twin.detach(), grad)
        adam.step()
        with torch.no_grad():
            for twin, old in zip(twins, before):
                change = twin - old
                while _distance(old + change) > radius:
                    change = change / 2
                twin.copy_(old + change)

    return twins, step


@pytest.mark.parametrize("lr", [1e-2, 3.0])  # 3.0: some steps leave the radius and are halved
def test_landing_adam_stacks_matrices_of_one_shape_and_matches_one_at_a_time(lr):
    """LandingAdam stacks the matrices of one shape; tall, wide, batched and gradient-free
    matrices together give what the per-matrix step gives, the safe step included."""
    params = [torch.nn.Parameter(random_stiefel(12, 3, seed=s)) for s in range(3)]
    params += [torch.nn.Parameter(random_stiefel(7, 3, seed=s).T.clone()) for s in (3, 4)]  # wide
    params += [torch.nn.Parameter(random_stiefel(9, 2, seed=5, batch=(2,)))]
    params += [torch.nn.Parameter(random_stiefel(12, 3, seed=6))]  # gets no gradient
    twins, twin_step = _landing_adam_one_matrix_at_a_time(params, lr, radius=0.5)
    optimizer = make_stiefel_optimizer(params, method="landing", lr=lr, safe_distance=0.5)
    halved = 0
    for step in range(4):
        grads = [random_matrix(*p.shape, seed=100 * step + i) for i, p in enumerate(params)]
        grads[-1] = None
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        twin_step(grads)
        for param, twin in zip(params, twins):
            torch.testing.assert_close(param.detach(), twin.detach(), atol=1e-10, rtol=0)
        halved += sum(_distance(p.detach()).item() > 0.4 for p in params)
    assert torch.equal(params[-1].detach(), random_stiefel(12, 3, seed=6))
    assert all(_distance(p.detach()) <= 0.5 for p in params)
    if lr > 1:
        assert halved, "the large learning rate should push some steps to the radius"


def test_a_landing_step_reads_the_device_once_however_many_matrices():
    """The step stacks the matrices of one shape and decides the safe step for all of them
    with one host read (on a GPU each read waits for the device): 1 matrix or 40, the same."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        def __init__(self, skipped):
            super().__init__()
            self.skipped, self.reads = {id(t) for t in skipped}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten._local_scalar_dense:
                self.reads += id(args[0]) not in self.skipped
            return func(*args, **(kwargs or {}))

    for count in (1, 40):
        params = [torch.nn.Parameter(random_stiefel(20 + 5 * (i % 2), 4, seed=i)) for i in range(count)]
        optimizer = LandingAdam(params, lr=1e-3, foreach=True)  # Adam's path on CUDA
        for step in range(2):
            for i, param in enumerate(params):
                param.grad = random_matrix(*param.shape, seed=100 * step + i)
            # Adam's step counters stay on the CPU on a GPU too: reading them waits for nothing
            counters = [state["step"] for state in optimizer.state.values()]
            with HostReads(counters) as counter:
                optimizer.step()
        assert counter.reads == 1, count
