"""A policy's mean cost as a function of the price, used to jump to a new budget's price."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["CostCurve"]


@dataclass(frozen=True)
class CostCurve:
    """Mean cost ``costs[j]`` of a policy at price ``lambdas[j]``; prices increase.

    >>> curve = CostCurve.from_points([0.0, 0.1, 0.2], [9.0, 5.0, 1.0])
    >>> round(curve.price_for(3.0), 6)
    0.15
    >>> curve.price_for(10.0)
    0.0
    """

    lambdas: tuple[float, ...]
    costs: tuple[float, ...]

    @classmethod
    def from_points(cls, lambdas: npt.ArrayLike, costs: npt.ArrayLike) -> CostCurve:
        lam = np.asarray(lambdas, dtype=float)
        cost = np.asarray(costs, dtype=float)
        if lam.ndim != 1 or lam.shape != cost.shape or lam.size == 0:
            raise ValueError("lambdas and costs must be non-empty sequences of one length")
        if np.any(np.diff(lam) <= 0) or lam[0] < 0:
            raise ValueError("lambdas must be non-negative and strictly increasing")
        # A cost curve is non-increasing in the price; enforce it against estimation noise.
        cost = np.minimum.accumulate(cost)
        return cls(tuple(float(x) for x in lam), tuple(float(x) for x in cost))

    def price_for(self, budget: float) -> float:
        """Return the lowest price whose mean cost is at most ``budget``, interpolated linearly.

        The largest tabulated price is returned when no price is cheap enough.
        """
        lam = np.asarray(self.lambdas)
        cost = np.asarray(self.costs)
        if cost[0] <= budget:
            return float(lam[0])
        below = np.nonzero(cost <= budget)[0]
        if below.size == 0:
            return float(lam[-1])
        j = int(below[0])
        c_hi, c_lo = cost[j - 1], cost[j]
        fraction = 1.0 if c_hi == c_lo else (c_hi - budget) / (c_hi - c_lo)
        return float(lam[j - 1] + fraction * (lam[j] - lam[j - 1]))

    def cost_at(self, lambda_: float) -> float:
        """Return the interpolated mean cost at ``lambda_``."""
        return float(np.interp(lambda_, self.lambdas, self.costs))
