"""Solve the budgeted allocation: the Lagrangian oracle and its price ``lambda*``.

Problem: choose one action per question to maximise mean accuracy subject to mean cost <= B.
For a price ``lambda`` each question takes ``argmax_j p_ij - lambda * c_ij``; the mean cost
``C(lambda)`` is a non-increasing step function. At the critical price the questions tied
between two actions are split, a fraction taking the dearer one, so the mean cost is exactly B.
That is an optimal solution of the LP relaxation, so its accuracy bounds every policy that
fixes its action before sampling.

Source: Zhai, Li, Xiao, Li, Wang, "Adaptive Test-Time Compute Allocation for Reasoning LLMs via
Constrained Policy Optimization", arXiv:2604.14853 (2026).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from online.lagrangian import lagrangian_argmax

__all__ = ["Solution", "solve"]

_SLOPE_RTOL = 1e-12


@dataclass(frozen=True)
class Solution:
    """The oracle at one budget.

    Question ``i`` takes action ``action[i]``, or ``dearer[i]`` with probability
    ``split[i]`` (non-zero only for questions tied at ``lambda_``). ``mean_cost`` and
    ``mean_accuracy`` are the expectations over that split.
    """

    lambda_: float
    action: np.ndarray
    dearer: np.ndarray
    split: np.ndarray
    mean_cost: float
    mean_accuracy: float
    budget: float

    @property
    def binding(self) -> bool:
        """True when the budget binds (``lambda_ > 0``); else the optimum costs less than B."""
        return self.lambda_ > 0


def _check(accuracy: np.ndarray, cost: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(accuracy, dtype=float)
    c = np.asarray(cost, dtype=float)
    if p.ndim != 2 or p.shape != c.shape or p.shape[1] == 0:
        raise ValueError(
            f"accuracy and cost must be (n, m) arrays of one shape, got {p.shape} and {c.shape}"
        )
    if not (np.isfinite(p).all() and np.isfinite(c).all()):
        raise ValueError("accuracy and cost must be finite")
    if np.any(np.diff(c, axis=1) < 0):
        raise ValueError("cost must be non-decreasing along the actions of every question")
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive finite number, got {budget!r}")
    cheapest = float(c[:, 0].mean())
    if budget < cheapest * (1 - 1e-12):
        raise ValueError(
            f"budget {budget} is below the mean cost of the cheapest actions ({cheapest:.6g}); "
            "no allocation fits"
        )
    return p, c


def _start(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Return the action at an infinite price: the most accurate of the cheapest actions."""
    masked = np.where(c == c[:, :1], p, -np.inf)
    return np.argmax(masked, axis=1)


def _hull_breakpoints(p: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """Walk each question's upper concave hull from its cheapest action.

    Returns flat arrays (row, slope, to, cost step, accuracy step), one entry per hull edge with a
    positive slope. Collinear points are merged into the dearest one, because just below the
    edge's slope the dearest of them has the largest Lagrangian value.
    """
    n, m = p.shape
    rows_all = np.arange(n)
    current = _start(p, c)
    edges: list[tuple[np.ndarray, ...]] = []
    active = rows_all
    for _ in range(m - 1):
        if active.size == 0:
            break
        cur = current[active]
        p_cur = p[active, cur][:, None]
        c_cur = c[active, cur][:, None]
        dc = c[active] - c_cur
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(dc > 0, (p[active] - p_cur) / dc, -np.inf)
        best = slope.max(axis=1)
        moving = best > 0
        if not moving.any():
            break
        tied = np.isclose(slope, best[:, None], rtol=_SLOPE_RTOL, atol=0.0) & (dc > 0)
        # The dearest of the tied actions: the last True column.
        target = m - 1 - np.argmax(tied[:, ::-1], axis=1)
        rows = active[moving]
        to = target[moving]
        frm = cur[moving]
        edges.append(
            (rows, best[moving], to, c[rows, to] - c[rows, frm], p[rows, to] - p[rows, frm])
        )
        current[rows] = to
        active = rows
    if not edges:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.int64), empty, np.zeros(0, dtype=np.int64), empty, empty
    return tuple(np.concatenate(parts) for parts in zip(*edges, strict=True))


def _solve_breakpoints(p: np.ndarray, c: np.ndarray, budget: float) -> Solution:
    n = p.shape[0]
    start = _start(p, c)
    base_cost = float(c[np.arange(n), start].sum())
    base_acc = float(p[np.arange(n), start].sum())
    rows, slope, to, dcost, dacc = _hull_breakpoints(p, c)
    order = np.argsort(-slope, kind="stable")
    rows, slope, to, dcost, dacc = rows[order], slope[order], to[order], dcost[order], dacc[order]
    cum_cost = base_cost + np.cumsum(dcost)
    target = budget * n
    action = start.copy()
    dearer = start.copy()
    split = np.zeros(n)
    if slope.size == 0 or cum_cost[-1] <= target:
        # The unconstrained optimum fits in the budget: price zero.
        action[rows] = to  # later edges of a row come later in the order and overwrite
        dearer[:] = action
        total_cost = float(cum_cost[-1]) if slope.size else base_cost
        total_acc = base_acc + float(dacc.sum())
        return Solution(0.0, action, dearer, split, total_cost / n, total_acc / n, budget)
    idx = int(np.searchsorted(cum_cost, target, side="left"))
    lam = float(slope[idx])
    group = np.isclose(slope, lam, rtol=_SLOPE_RTOL, atol=0.0)
    first = int(np.argmax(group))
    last = len(group) - 1 - int(np.argmax(group[::-1]))
    taken = slice(0, first)
    action[rows[taken]] = to[taken]
    cost_before = base_cost + float(dcost[taken].sum())
    acc_before = base_acc + float(dacc[taken].sum())
    grp = slice(first, last + 1)
    group_cost = float(dcost[grp].sum())
    theta = (target - cost_before) / group_cost if group_cost > 0 else 0.0
    theta = min(max(theta, 0.0), 1.0)
    dearer[:] = action
    dearer[rows[grp]] = to[grp]
    split[rows[grp]] = theta
    mean_cost = (cost_before + theta * group_cost) / n
    mean_acc = (acc_before + theta * float(dacc[grp].sum())) / n
    return Solution(lam, action, dearer, split, mean_cost, mean_acc, budget)


def _solve_bisection(p: np.ndarray, c: np.ndarray, budget: float, steps: int = 60) -> Solution:
    n = p.shape[0]
    rows = np.arange(n)

    def at(lam: float) -> tuple[np.ndarray, float]:
        a = lagrangian_argmax(p, c, lam)
        return a, float(c[rows, a].mean())

    a0, cost0 = at(0.0)
    if cost0 <= budget:
        return Solution(0.0, a0, a0.copy(), np.zeros(n), cost0, float(p[rows, a0].mean()), budget)
    lo, hi = 0.0, 1.0
    while at(hi)[1] > budget:
        hi *= 2.0
        if hi > 1e12:
            raise ValueError("no finite price meets the budget")
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if at(mid)[1] > budget:
            lo = mid
        else:
            hi = mid
    cheap, cost_cheap = at(hi)
    dear, cost_dear = at(lo)
    theta = 0.0 if cost_dear == cost_cheap else (budget - cost_cheap) / (cost_dear - cost_cheap)
    theta = min(max(theta, 0.0), 1.0)
    split = np.where(cheap != dear, theta, 0.0)
    acc = (1 - theta) * p[rows, cheap].mean() + theta * p[rows, dear].mean()
    mean_cost = (1 - theta) * cost_cheap + theta * cost_dear
    return Solution(hi, cheap, dear, split, float(mean_cost), float(acc), budget)


def solve(
    accuracy: np.ndarray,
    cost: np.ndarray,
    budget: float,
    method: Literal["breakpoints", "bisection"] = "breakpoints",
) -> Solution:
    """Find the oracle allocation at mean-cost budget ``budget``.

    ``accuracy`` and ``cost`` have shape ``(n, m)``, costs non-decreasing along each row.
    ``method="breakpoints"`` sorts the slopes of every question's upper concave hull and reads
    the exact critical price; ``"bisection"`` bisects on the price (60 steps) and splits between
    the allocations on each side of the final bracket. Both give the LP optimum; the first is
    faster. Raises `ValueError` when even the cheapest actions cost more than ``budget``.

    Two questions, actions cost 1 and 3. The first gains 0.4 from the dearer action, the
    second 0.1, so at budget 2 only the first is upgraded (price 0.2 = 0.4 / 2):

    >>> s = solve(np.array([[0.5, 0.9], [0.8, 0.9]]), np.array([[1.0, 3.0], [1.0, 3.0]]), 2.0)
    >>> round(s.lambda_, 6), s.action.tolist(), round(s.mean_cost, 6), round(s.mean_accuracy, 6)
    (0.2, [0, 0], 2.0, 0.85)
    >>> s.split.tolist()
    [1.0, 0.0]
    """
    p, c = _check(accuracy, cost, budget)
    if method == "breakpoints":
        return _solve_breakpoints(p, c, budget)
    if method == "bisection":
        return _solve_bisection(p, c, budget)
    raise ValueError(f"method must be 'breakpoints' or 'bisection', got {method!r}")
