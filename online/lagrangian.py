"""The Lagrangian decision rule: take the action that maximises accuracy minus price times cost."""

from __future__ import annotations

import numpy as np

__all__ = ["lagrangian_argmax"]


def lagrangian_argmax(values: np.ndarray, costs: np.ndarray, lambda_: float) -> np.ndarray:
    """Return ``argmax_j values[..., j] - lambda_ * costs[..., j]`` along the last axis.

    Ties go to the cheaper action: with columns in order of increasing cost, the first maximum
    wins. Works on one question (shape ``(m,)``, returns a 0-d array) or many (``(n, m)``).

    >>> int(lagrangian_argmax(np.array([0.5, 0.8, 0.9]), np.array([1.0, 3.0, 5.0]), 0.1))
    1
    >>> int(lagrangian_argmax(np.array([0.5, 0.7]), np.array([1.0, 3.0]), 0.1))
    0
    """
    if lambda_ < 0 or not np.isfinite(lambda_):
        raise ValueError(f"lambda_ must be a finite non-negative number, got {lambda_!r}")
    return np.argmax(values - lambda_ * costs, axis=-1)
