"""The oracle solve against HiGHS, and the exact vote accuracy against enumeration."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import linprog

from online.solve import _critical_slope, solve
from online.vote_accuracy import vote_accuracy


def lp_optimum(p: np.ndarray, c: np.ndarray, budget: float) -> float:
    n, m = p.shape
    a_eq = np.zeros((n, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1.0
    result = linprog(
        -p.ravel(),
        A_ub=c.ravel()[None, :] / n,
        b_ub=[budget],
        A_eq=a_eq,
        b_eq=np.ones(n),
        bounds=(0, 1),
        method="highs",
    )
    assert result.status == 0, result.message
    return -result.fun / n


def random_instance(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    p = rng.uniform(0, 1, size=(n, m))
    steps = rng.integers(1, 4, size=(n, m)).astype(float)
    c = np.cumsum(steps, axis=1)
    return p, c


@pytest.mark.parametrize("method", ["breakpoints", "bisection"])
@pytest.mark.parametrize("seed", range(12))
def test_solve_matches_highs(seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    p, c = random_instance(rng, n=int(rng.integers(3, 40)), m=int(rng.integers(2, 6)))
    lo, hi = c[:, 0].mean(), c[:, -1].mean()
    budget = float(rng.uniform(lo, hi))
    solution = solve(p, c, budget, method=method)
    assert solution.mean_accuracy == pytest.approx(lp_optimum(p, c, budget), abs=1e-9)
    assert solution.mean_cost <= budget + 1e-9


@pytest.mark.parametrize("method", ["breakpoints", "bisection"])
@pytest.mark.parametrize("seed", range(6))
def test_solve_matches_highs_with_equal_costs(seed: int, method: str) -> None:
    # Steps of 0 give actions of one cost; only the most accurate of them can be chosen.
    rng = np.random.default_rng(100 + seed)
    n, m = int(rng.integers(3, 40)), int(rng.integers(2, 6))
    p = rng.uniform(0, 1, size=(n, m))
    c = np.cumsum(rng.integers(0, 3, size=(n, m)).astype(float), axis=1) + 1.0
    budget = float(rng.uniform(c[:, 0].mean(), c[:, -1].mean()))
    solution = solve(p, c, budget, method=method)
    assert solution.mean_accuracy == pytest.approx(lp_optimum(p, c, budget), abs=1e-9)
    assert solution.mean_cost <= budget + 1e-9


def test_solve_matches_highs_on_thousands_of_tied_questions() -> None:
    # Accuracies in eighths, as from 8 recorded samples, tie many hull slopes. With 4,000
    # questions the edges outnumber what the critical-price search sorts outright.
    rng = np.random.default_rng(11)
    p = np.sort(rng.integers(0, 9, size=(4000, 5)) / 8.0, axis=1)
    c = np.tile([1.0, 3.0, 5.0, 9.0, 15.0], (4000, 1))
    for budget in (2.0, 4.0, 7.5):
        solution = solve(p, c, budget)
        assert solution.mean_accuracy == pytest.approx(lp_optimum(p, c, budget), abs=1e-9)
        assert solution.mean_cost == pytest.approx(budget, rel=1e-12)


@pytest.mark.parametrize("layout", ["random", "sorted", "reversed", "tied", "constant"])
def test_critical_slope_matches_a_full_sort(layout: str) -> None:
    rng = np.random.default_rng(3)
    size = 60_000
    slope = {
        "random": rng.uniform(0, 1, size),
        "sorted": np.sort(rng.uniform(0, 1, size)),
        "reversed": np.sort(rng.uniform(0, 1, size))[::-1].copy(),
        "tied": rng.integers(0, 40, size) / 40.0,
        "constant": np.full(size, 0.25),
    }[layout]
    dcost = rng.integers(1, 7, size).astype(float)
    order = np.argsort(-slope, kind="stable")
    cumulative = np.cumsum(dcost[order])
    for need in (1.0, cumulative[size // 3], cumulative[-1] * 0.999, cumulative[-1]):
        expected = slope[order][int(np.searchsorted(cumulative, need))]
        assert _critical_slope(slope, dcost, float(need)) == expected


def test_solve_spends_budget_when_binding() -> None:
    rng = np.random.default_rng(7)
    p = np.sort(rng.uniform(0, 1, size=(500, 5)), axis=1)  # more samples never hurt here
    c = np.tile([1.0, 3.0, 5.0, 9.0, 15.0], (500, 1))
    solution = solve(p, c, 4.0)
    assert solution.binding
    assert solution.mean_cost == pytest.approx(4.0, rel=1e-12)
    rows = np.arange(500)
    realised = (1 - solution.split) * c[rows, solution.action] + solution.split * c[
        rows, solution.dearer
    ]
    assert realised.mean() == pytest.approx(4.0, rel=1e-12)


def test_solve_price_zero_when_budget_slack() -> None:
    p = np.array([[0.9, 0.9, 0.9], [0.2, 0.6, 0.6]])
    c = np.array([[1.0, 3.0, 5.0], [1.0, 3.0, 5.0]])
    solution = solve(p, c, 4.5)
    assert solution.lambda_ == 0.0
    assert solution.action.tolist() == [0, 1]
    assert solution.mean_cost == pytest.approx(2.0)


def test_solve_rejects_budget_below_cheapest() -> None:
    with pytest.raises(ValueError, match="below the mean cost of the cheapest"):
        solve(np.array([[0.5, 0.6]]), np.array([[2.0, 3.0]]), 1.0)


def test_solve_rejects_decreasing_cost() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        solve(np.array([[0.5, 0.6]]), np.array([[3.0, 2.0]]), 2.5)


def brute_force_accuracy(labels: list[str | None], correct: set[str], k: int) -> Fraction:
    """Enumerate every ordered k-draw and apply the first-to-appear tie rule."""
    total = Fraction(0)
    count = 0
    for draw in itertools.permutations(range(len(labels)), k):
        count += 1
        counts: dict[str, int] = {}
        first: dict[str, int] = {}
        for pos, idx in enumerate(draw):
            label = labels[idx]
            if label is None:
                continue
            counts[label] = counts.get(label, 0) + 1
            first.setdefault(label, pos)
        if not counts:
            continue
        winner = max(counts, key=lambda key: (counts[key], -first[key]))
        total += winner in correct
    return total / count


@pytest.mark.parametrize(
    "labels",
    [
        ["a", "a", "b"],
        ["a", "b", "c", None],
        ["a", "a", "b", "b", "c", None],
        ["b", "b", "b", "a", "a", None, None],
        [None, None, "a"],
    ],
)
def test_vote_accuracy_matches_enumeration(labels: list[str | None]) -> None:
    groups = sorted({x for x in labels if x is not None})
    counts = [labels.count(g) for g in groups]
    flags = [g == "a" for g in groups]
    nulls = labels.count(None)
    for k in range(1, len(labels) + 1):
        expected = float(brute_force_accuracy(labels, {"a"}, k))
        assert vote_accuracy(counts, flags, nulls, k) == pytest.approx(expected, abs=1e-12), k
