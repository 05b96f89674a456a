"""Match a scoring policy's spend to a budget with a price, and apply that price elsewhere.

A scoring policy takes ``argmax_a score[i, a] - price * cost[i, a]``. Calibration finds the
price (and the fraction of questions tied at that price that take the dearer action) that
spends the budget on one set of questions; `PriceRule.apply` uses them on another set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online.solve import solve

__all__ = ["Allocation", "PriceRule"]

_TIE = 1e-9


@dataclass(frozen=True)
class Allocation:
    """Per question: the action at the price, the dearer action if tied, and the chance of it."""

    cheap: np.ndarray
    dear: np.ndarray
    weight: np.ndarray

    def expected(self, table: np.ndarray) -> np.ndarray:
        """Return the per-question expectation of ``table[i, action]`` over the tie split."""
        rows = np.arange(len(self.cheap))
        return (1 - self.weight) * table[rows, self.cheap] + self.weight * table[rows, self.dear]

    def matches(self, labels: np.ndarray, alternatives: np.ndarray) -> np.ndarray:
        """Return the per-question chance that the action is ``labels`` or ``alternatives``."""
        hit_cheap = (self.cheap == labels) | (self.cheap == alternatives)
        hit_dear = (self.dear == labels) | (self.dear == alternatives)
        return (1 - self.weight) * hit_cheap + self.weight * hit_dear


@dataclass(frozen=True)
class PriceRule:
    """A price and the share of tied questions that take the dearer action.

    >>> scores = np.array([[0.5, 0.9], [0.5, 0.6]])
    >>> cost = np.array([[1.0, 3.0], [1.0, 3.0]])
    >>> rule = PriceRule.calibrate(scores, cost, budget=2.0)
    >>> float(rule.apply(scores, cost).expected(cost).mean())
    2.0
    """

    lambda_: float
    split: float

    @classmethod
    def calibrate(cls, scores: np.ndarray, cost: np.ndarray, budget: float) -> PriceRule:
        """Find the rule that spends ``budget`` on these questions.

        The price stays at zero or above, so a policy whose own choices cost less than
        ``budget`` spends less: the budget is a ceiling.
        """
        cheapest = float(cost[:, 0].mean())
        if budget <= cheapest:
            return cls(float("inf"), 0.0)
        solution = solve(scores, cost, budget)
        tied = solution.split > 0
        split = float(solution.split[tied][0]) if tied.any() else 0.0
        return cls(solution.lambda_, split)

    def apply(self, scores: np.ndarray, cost: np.ndarray) -> Allocation:
        """Decide for other questions; those tied at the price take the dearer action w.p. split."""
        if not np.isfinite(self.lambda_):
            first = np.zeros(len(scores), dtype=np.int64)
            return Allocation(first, first, np.zeros(len(scores)))
        # The absolute floor keeps a tie at price zero a tie.
        margin = max(_TIE * abs(self.lambda_), 1e-12)
        # np.argmax keeps the first maximum, so ties go to the cheaper action.
        cheap = np.argmax(scores - (self.lambda_ + margin) * cost, axis=1)
        dear = np.argmax(scores - (self.lambda_ - margin) * cost, axis=1)
        weight = np.where(cheap != dear, self.split, 0.0)
        return Allocation(cheap, dear, weight)
