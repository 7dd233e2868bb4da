"""Self-checks for notebooks and exercises: compare your tensor with the library's.

>>> compare("stable rank", my_stable_rank(W), linalg.stable_rank(W))
stable rank                    | exact: False | close: True  | max diff: 2.38e-07

``compare`` prints one line and returns True when the two agree within tolerance; with
``strict=True`` (the default in notebooks) a mismatch raises :class:`CheckFailed`, so a
notebook run stops at the first derivation that disagrees with the library.
"""

from __future__ import annotations

import numpy as np
import torch

from polar_vbll.errors import PolarVBLLError, ShapeError


class CheckFailed(PolarVBLLError, AssertionError):
    """Your result and the reference differ by more than the tolerance."""


def _as_float64(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().to(torch.float64).numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ShapeError(f"{name} must be a number, array or tensor; got {type(value).__name__}")


def compare(name: str, mine, reference, atol: float = 1e-5, rtol: float = 1e-4,
            strict: bool = True) -> bool:
    """Print exact / close / max difference of ``mine`` against ``reference``."""
    if mine is None:
        raise CheckFailed(f"{name}: your answer is None -- fill in the exercise cell first")
    a, b = _as_float64(mine, f"{name} (yours)"), _as_float64(reference, f"{name} (reference)")
    if a.shape != b.shape:
        raise CheckFailed(f"{name}: shape {a.shape} differs from the reference shape {b.shape}")
    exact = bool(np.array_equal(a, b, equal_nan=True))
    close = bool(np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))
    finite = np.isfinite(a) & np.isfinite(b)
    difference = float(np.max(np.abs(a - b)[finite])) if finite.any() else 0.0
    print(f"{name:<30} | exact: {exact!s:<5} | close: {close!s:<5} | max diff: {difference:.2e}")
    if strict and not close:
        raise CheckFailed(f"{name}: max difference {difference:.3e} exceeds atol={atol}, "
                          f"rtol={rtol}")
    return close
