"""A simulation's per-request trace: moving means, convergence, the plot and the output files."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from online.solve import solve
from online.tables import Table, uniform_allocation

__all__ = [
    "Baseline",
    "Trace",
    "baseline_accuracy",
    "converged_after",
    "moving_mean",
    "plot_trace",
    "segment_summaries",
    "write_outputs",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trace:
    """Per-request arrays, one entry per request in dispatch order.

    ``lambdas`` is the price at which each request was decided and ``costs`` the samples
    billed. ``correct`` is 1 where the voted answer was right, else 0. ``expected`` is the
    exact expected accuracy of the action taken on that question (for a sequential request,
    which has no fixed action, the outcome itself), and ``budgets`` the budget
    in force.
    """

    lambdas: np.ndarray
    costs: np.ndarray
    correct: np.ndarray
    expected: np.ndarray
    budgets: np.ndarray


def moving_mean(values: npt.ArrayLike, window: int) -> np.ndarray:
    """Return the mean of the last ``window`` values at each position (fewer at the start).

    >>> moving_mean([1.0, 3.0, 5.0], 2).tolist()
    [1.0, 2.0, 4.0]
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window!r}")
    v = np.asarray(values, dtype=float)
    sums = np.concatenate(([0.0], np.cumsum(v)))
    end = np.arange(1, v.size + 1)
    start = np.maximum(0, end - window)
    return (sums[end] - sums[start]) / (end - start)


def converged_after(
    costs: npt.ArrayLike, start: int, budget: float, window: int = 500, tolerance: float = 0.02
) -> int | None:
    """Count the requests from ``start`` on until the moving mean cost stays near ``budget``.

    The moving mean over the last ``window`` requests (which include requests before
    ``start``) must be within ``tolerance * budget`` of ``budget`` from there to the end. The
    result is 0 when it always is, and None when it is outside at the last request.

    >>> converged_after([4.0, 4.0, 2.0, 2.0, 2.0], start=2, budget=2.0, window=2)
    1
    """
    mean = moving_mean(costs, window)[start:]
    outside = np.abs(mean - budget) > tolerance * budget
    if outside.size == 0 or outside[-1]:
        return None
    last_outside = np.flatnonzero(outside)
    return 0 if last_outside.size == 0 else int(last_outside[-1]) + 1


def baseline_accuracy(
    table: Table, rows: np.ndarray, budgets: np.ndarray
) -> tuple[float, float | None]:
    """Return the uniform and oracle accuracy over the requests served, each at its budget.

    A question counts as often as it was served. The requests at each budget are solved on
    their own and weighted by their number. The oracle is None when a budget is below the
    mean cost of the cheapest action, where no allocation fits.
    """
    uniform, oracle = 0.0, 0.0
    oracle_known = True
    for budget in np.unique(budgets):
        served = rows[budgets == budget]
        part = Table(
            ids=[table.ids[r] for r in served],
            accuracy=table.accuracy[served],
            cost=table.cost[served],
            available=table.available[served],
            actions=table.actions,
            unit=table.unit,
        )
        weight = served.size / rows.size
        uniform += weight * uniform_allocation(part, float(budget))[0]
        try:
            oracle += weight * solve(part.accuracy, part.cost, float(budget)).mean_accuracy
        except ValueError as exc:
            logger.warning("no oracle allocation at budget %s: %s", budget, exc)
            oracle_known = False
    return uniform, oracle if oracle_known else None


def segment_summaries(
    trace: Trace, rows: np.ndarray, table: Table, bounds: list[int], pool_names: list[str]
) -> list[dict[str, Any]]:
    """Summarise each stretch of requests between a retarget and a change of question pool."""
    segments = []
    for start, end in itertools.pairwise(bounds):
        part = slice(start, end)
        uniform, oracle = baseline_accuracy(table, rows[part], trace.budgets[part])
        segments.append(
            {
                "start": start,
                "end": end,
                "budget": float(trace.budgets[start]),
                "pool": pool_names[start],
                "mean_cost": float(trace.costs[part].mean()),
                "accuracy": float(trace.correct[part].mean()),
                "expected_accuracy": float(trace.expected[part].mean()),
                "uniform_accuracy": uniform,
                "oracle_accuracy": oracle,
                "lambda_end": float(trace.lambdas[end - 1]),
            }
        )
    return segments


@dataclass(frozen=True)
class Baseline:
    """An accuracy to compare with over requests ``start`` to ``end`` (exclusive)."""

    label: str
    start: int
    end: int
    accuracy: float | None


def plot_trace(
    trace: Trace,
    path: str | Path,
    window: int = 500,
    markers: dict[str, int] | None = None,
    baselines: Sequence[Baseline] = (),
) -> None:
    """Draw lambda, the moving mean cost and the moving accuracy against the request number.

    ``markers`` maps a label to a request number drawn as a vertical line in every panel (a
    retarget, a change of question pool). ``baselines`` are drawn as horizontal segments in
    the accuracy panel. The moving accuracy starts once its window is full, because the first
    few requests swing it across the whole axis. Writes a PNG through the Agg backend.
    """
    # Imported here so that the simulation itself runs without matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    requests = np.arange(1, trace.costs.size + 1)
    figure = Figure(figsize=(9, 8), layout="constrained")
    FigureCanvasAgg(figure)
    price, cost, accuracy = figure.subplots(3, 1, sharex=True)

    price.plot(requests, trace.lambdas, lw=0.8, color="tab:purple")
    price.set_ylabel("lambda (price per sample)")

    cost.plot(requests, moving_mean(trace.costs, window), lw=1.0, label=f"mean cost, last {window}")
    cost.plot(requests, trace.budgets, lw=1.0, ls="--", color="black", label="budget")
    cost.set_ylabel("samples per request")
    cost.legend(loc="best", fontsize="small")

    full = slice(min(window, trace.costs.size) - 1, None)
    for values, label in (
        (trace.correct, f"voted answer, last {window}"),
        (trace.expected, "expected, same window"),
    ):
        accuracy.plot(requests[full], moving_mean(values, window)[full], lw=1.0, label=label)
    styles = dict(
        zip(dict.fromkeys(b.label for b in baselines), itertools.cycle(":-"), strict=False)
    )
    for baseline in baselines:
        if baseline.accuracy is None:
            continue
        accuracy.hlines(
            baseline.accuracy,
            baseline.start + 1,
            baseline.end,
            lw=1.2,
            ls=styles[baseline.label],
            color="gray" if styles[baseline.label] == ":" else "black",
            label=baseline.label,
        )
    # One legend entry per label, although a baseline may have several segments.
    handles, labels = accuracy.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    accuracy.legend(unique.values(), unique.keys(), loc="best", fontsize="small")
    accuracy.set_ylabel("accuracy")
    accuracy.set_xlabel("request")

    for label, at in (markers or {}).items():
        for axes in (price, cost, accuracy):
            axes.axvline(at, lw=0.8, color="tab:red", alpha=0.6)
        price.annotate(label, (at, 1.0), xycoords=("data", "axes fraction"), fontsize="small")
    figure.savefig(path, dpi=110)


def write_outputs(summary: dict[str, Any], trace: Trace, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``trace.png`` into ``out_dir``; return both paths.

    Retargets and changes of question pool in ``summary`` are marked on the plot, and each
    segment's uniform and oracle accuracy are drawn as baselines.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path, trace_path = out / "summary.json", out / "trace.png"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    markers = {}
    if summary.get("retarget"):
        markers[f"budget {summary['retarget']['budget']:g}"] = summary["retarget"]["at"]
    if summary.get("switch"):
        markers[summary["switch"]["pool"]] = summary["switch"]["at"]
    baselines = [
        Baseline(f"{name} allocation", part["start"], part["end"], part[f"{name}_accuracy"])
        for part in summary.get("segments", [])
        for name in ("uniform", "oracle")
    ]
    plot_trace(trace, trace_path, summary.get("window", 500), markers, baselines)
    return summary_path, trace_path
