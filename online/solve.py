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
    start = np.zeros(p.shape[0], dtype=np.int64)
    best = p[:, 0].copy()
    for j in range(1, p.shape[1]):
        cheapest = c[:, j] == c[:, 0]
        if not cheapest.any():
            break  # costs rise along each row, so no later action is among the cheapest
        better = cheapest & (p[:, j] > best)
        start[better] = j
        best[better] = p[better, j]
    return start


def _hull_edges(p: np.ndarray, c: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mark the vertices of each question's upper concave hull, walked from ``start``.

    Action ``j`` is a vertex when every cheaper action reaches it with a steeper slope than any
    dearer action leaves it with, and it gains accuracy over the cheaper hull (slope above 0).
    Returns ``(vertex, slope, cost step, accuracy step)``, each of shape ``(m, n)`` (actions
    first, so that each action's row is contiguous): the edge into vertex ``j`` from the
    previous vertex. Points on one line with their neighbours are not vertices, so such an
    edge ends at the dearest of them, which just below the edge's slope has the largest
    Lagrangian value.
    """
    n, m = p.shape
    pt = np.ascontiguousarray(p.T)
    shared = bool((c == c[0]).all())  # one cost vector for every question
    ct = None if shared else np.ascontiguousarray(c.T)
    into = np.full((m, n), np.inf)  # the flattest slope from a cheaper action
    out = np.zeros((m, n))  # the steepest slope to a dearer action, at least 0
    dominated = np.zeros((m, n), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(m):
            for k in range(i + 1, m):
                dp = pt[k] - pt[i]
                if shared and c[0, k] > c[0, i]:
                    slope = np.multiply(dp, 1.0 / (c[0, k] - c[0, i]), out=dp)
                    np.minimum(into[k], slope, out=into[k])
                    np.maximum(out[i], slope, out=out[i])
                    continue
                dc = np.full(n, c[0, k] - c[0, i]) if ct is None else ct[k] - ct[i]
                slope = dp / dc
                same = dc == 0
                # Of actions with one cost, only the first most accurate can be chosen.
                dominated[k] |= same & (dp <= 0)
                dominated[i] |= same & (dp > 0)
                np.minimum(into[k], np.where(same, np.inf, slope), out=into[k])
                np.maximum(out[i], np.where(same, 0.0, slope), out=out[i])
    vertex = (into > out) & ~dominated
    vertex &= np.arange(m)[:, None] > start
    rows = np.arange(n)
    previous = start.copy()
    dcost = np.zeros((m, n))
    dacc = np.zeros((m, n))
    for j in range(m):
        v = vertex[j]
        if not v.any():
            continue
        if ct is None:
            np.subtract(c[0, j], c[0][previous], out=dcost[j], where=v)
        else:
            np.subtract(ct[j], ct[previous, rows], out=dcost[j], where=v)
        np.subtract(pt[j], pt[previous, rows], out=dacc[j], where=v)
        previous[v] = j
    slope = np.full((m, n), -np.inf)
    np.divide(dacc, dcost, out=slope, where=vertex)
    return vertex, slope, dcost, dacc


def _critical_slope(slope: np.ndarray, dcost: np.ndarray, need: float) -> float:
    """Return the largest ``s`` in ``slope`` with ``sum(dcost[slope >= s]) >= need``.

    Each pass estimates the critical slope from a sample of the remaining edges and keeps only
    the edges between two slopes that bracket the estimate. When the bracket misses, the pass
    keeps the side that holds the critical slope instead. A pass usually removes most edges, so
    the work grows about linearly with the edges, where a full sort would be ``n log n``.
    """
    committed = 0.0  # cost of the edges above every remaining candidate
    while slope.size > 8192:
        step = slope.size // 4096
        order = np.argsort(-slope[::step])
        sample = slope[::step][order]
        estimate = committed + step * np.cumsum(dcost[::step][order])
        idx = int(np.searchsorted(estimate, need))
        hi = float(sample[max(idx - 256, 0)])
        lo = float(sample[min(idx + 256, sample.size - 1)])
        above = slope > hi
        cost_above = committed + float(dcost[above].sum())
        if cost_above >= need:
            slope, dcost = slope[above], dcost[above]
            continue
        inside = (slope >= lo) & ~above
        cost_inside = float(dcost[inside].sum())
        if cost_above + cost_inside < need:
            committed = cost_above + cost_inside
            below = slope < lo
            slope, dcost = slope[below], dcost[below]
            continue
        if inside.all():
            break
        committed = cost_above
        slope, dcost = slope[inside], dcost[inside]
    order = np.argsort(-slope, kind="stable")
    cum = committed + np.cumsum(dcost[order])
    idx = int(np.searchsorted(cum, need, side="left"))
    return float(slope[order][min(idx, slope.size - 1)])


def _solve_breakpoints(p: np.ndarray, c: np.ndarray, budget: float) -> Solution:
    n, m = p.shape
    rows = np.arange(n)
    start = _start(p, c)
    base_cost = float(c[rows, start].sum())
    base_acc = float(p[rows, start].sum())
    vertex, slope, dcost, dacc = _hull_edges(p, c, start)
    target = budget * n
    total_cost = base_cost + float(dcost.sum())
    columns = np.arange(m)[:, None]
    split = np.zeros(n)
    if total_cost <= target:
        # The unconstrained optimum fits in the budget: price zero, every question at its
        # dearest vertex.
        action = np.where(vertex, columns, start).max(axis=0)
        mean_acc = (base_acc + float(dacc.sum())) / n
        return Solution(0.0, action, action.copy(), split, total_cost / n, mean_acc, budget)
    lam = _critical_slope(slope[vertex], dcost[vertex], target - base_cost)
    group = vertex & np.isclose(slope, lam, rtol=_SLOPE_RTOL, atol=0.0)
    taken = vertex & (slope > lam) & ~group
    action = np.where(taken, columns, start).max(axis=0)
    dearer = np.where(taken | group, columns, start).max(axis=0)
    cost_before = base_cost + float(dcost[taken].sum())
    acc_before = base_acc + float(dacc[taken].sum())
    group_cost = float(dcost[group].sum())
    theta = (target - cost_before) / group_cost if group_cost > 0 else 0.0
    theta = min(max(theta, 0.0), 1.0)
    split[dearer != action] = theta
    mean_cost = (cost_before + theta * group_cost) / n
    mean_acc = (acc_before + theta * float(dacc[group].sum())) / n
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
    ``method="breakpoints"`` finds the exact critical price among the slopes of every
    question's upper concave hull, in time linear in the number of questions;
    ``"bisection"`` bisects on the price (60 steps) and splits between the allocations on each
    side of the final bracket. Both give the LP optimum; the first is faster. Raises
    `ValueError` when even the cheapest actions cost more than ``budget``.

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
