"""Write an evaluation's ``report.json``, ``report.md`` and ``budget_curve.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from offline.evaluate import METHODS

__all__ = ["write_report"]


def _markdown(report: dict[str, Any], curve: list[dict[str, Any]], source: str) -> str:
    methods = report["methods"]
    unit = report["unit"]
    lines = [
        f"# Allocation at a budget of {report['budget']:g} {unit} per question",
        "",
        f"Samples: {source}; {report['questions']} questions, actions {report['actions']}, "
        f"{report['folds']}-fold cross-validation (seed {report['seed']}), "
        f"about {report['n_train']} training and {report['n_test']} test questions per fold.",
    ]
    if report["capped_questions"]:
        lines.append(
            f"{report['capped_questions']} questions have fewer than {max(report['actions'])} "
            f"samples (the fewest: {report['fewest_samples']}). An action that asks for more "
            "draws all of them and costs no more."
        )
    lines += [
        "",
        "| method | accuracy | spread over folds | mean cost | gain over uniform | "
        "share of the oracle's gain | folds above uniform |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        m = methods[name]
        kept = "n/a" if m["oracle_gain_kept"] is None else f"{m['oracle_gain_kept']:.1%}"
        lines.append(
            f"| {name} | {m['accuracy']:.4f} | {m['accuracy_std']:.4f} | {m['mean_cost']:.3f} | "
            f"{m['gain_over_uniform']:+.4f} | {kept} | "
            f"{m['folds_above_uniform']}/{report['folds']} |"
        )
    lines += [
        "",
        f"Oracle price lambda* on all questions: {report['lambda_star']:.6g}"
        + ("." if report["budget_binding"] else " (the budget does not bind)."),
        f"Imitation accuracy of `learned`: {report['imitation_accuracy']:.4f} "
        f"(unguarded classifier: {report['imitation_accuracy_unguarded']:.4f}).",
        f"Lagrangian regret of `learned`: {report['regret']:.5f}; bound "
        f"(1 - imitation accuracy) x max gap = {report['regret_bound']:.5f}.",
        f"Guard per fold (`learned`, 1 = the mean accuracy curve for every question): "
        f"{report['guards']}; shrinkage per fold (`learned-value`, 0 = the mean curve): "
        f"{report['shrinkages']}. The mean curve gives uniform allocation where it is concave.",
        f"Rounds of backend calls per request: `sequential` {report['rounds']['sequential']:.2f}, "
        f"`early-stop` {report['rounds']['early-stop']:.2f}; every other method makes one call.",
        "`sequential` with the price matched on the training folds instead spends "
        f"{report['sequential_cost_with_training_price']:.3f} on the test folds.",
        "`early-stop` has no budget: its mean cost is what it spends, so its share of the "
        "oracle's gain is not at the same cost.",
        "",
        "Methods: `oracle` solves each test fold with full knowledge; `uniform` spends the same "
        "on every question; `heuristic` scales the mean accuracy curve by a difficulty proxy "
        "from the text; `learned` is the paper's classifier of oracle actions; `learned-value` "
        "predicts each action's accuracy and takes the Lagrangian argmax; `sequential` draws in "
        "rounds and stops when more samples do not pay at the price; `early-stop` is "
        "Adaptive-Consistency's stopping rule without a budget.",
        "",
        "The oracle is in-sample by definition. Every other method is measured on held-out "
        "questions: its guard is chosen on the training folds, and its price is set on the "
        "test fold's own predictions, which uses no outcome of a test question. `sequential` "
        "is fitted on the training folds; its price is set on the test fold's realised spend, "
        "as the dual controller sets it online from what requests cost.",
    ]
    if len(curve) > 1:
        lines += [
            "",
            "## Accuracy against budget",
            "",
            "A mean cost in brackets follows an accuracy where a method spent more than 0.5% "
            "away from the budget.",
            "",
        ]
        lines.append("| budget | " + " | ".join(METHODS) + " | rounds of `sequential` |")
        lines.append("|---" * (len(METHODS) + 2) + "|")
        for point in curve:
            cells = " | ".join(_curve_cell(point, name) for name in METHODS)
            rounds = point["rounds"]["sequential"]
            lines.append(f"| {point['budget']:g} | {cells} | {rounds:.2f} |")
    return "\n".join(lines) + "\n"


def _curve_cell(point: dict[str, Any], name: str) -> str:
    """Return the accuracy, with the mean cost in brackets where it misses the budget.

    >>> _curve_cell({"budget": 2.0, "accuracy": {"a": 0.5}, "mean_cost": {"a": 1.8}}, "a")
    '0.5000 (1.80)'
    """
    cell = f"{point['accuracy'][name]:.4f}"
    cost = point["mean_cost"][name]
    if abs(cost - point["budget"]) > 0.005 * point["budget"]:
        cell += f" ({cost:.2f})"
    return cell


def _plot(curve: list[dict[str, Any]], unit: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    for name in METHODS:
        # Each point sits at what the method spent: the oracle spends less than a budget that
        # does not bind, and early stopping has no budget, so its points coincide.
        spent = [p["mean_cost"][name] for p in curve]
        accuracy = [p["accuracy"][name] for p in curve]
        if name == "early-stop":
            label = "early-stop (no budget)"
            ax.plot(spent[:1], accuracy[:1], marker="*", markersize=12, ls="none", label=label)
        else:
            ax.plot(spent, accuracy, marker="o", label=name)
    ax.set_xlabel(f"mean cost ({unit} per question)")
    ax.set_ylabel("accuracy (held out; oracle in-sample)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    reports: dict[float, dict[str, Any]], budget: float, out_dir: Path, source: str
) -> dict[str, Any]:
    """Write the three files for ``budget`` with a curve over every budget in ``reports``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curve = [
        {
            "budget": b,
            "accuracy": {name: reports[b]["methods"][name]["accuracy"] for name in METHODS},
            "mean_cost": {name: reports[b]["methods"][name]["mean_cost"] for name in METHODS},
            "rounds": dict(reports[b]["rounds"]),
        }
        for b in sorted(reports)
    ]
    report = dict(reports[budget])
    report["source"] = source
    report["curve"] = curve
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report, curve, source))
    _plot(curve, report["unit"], out_dir / "budget_curve.png", source)
    return report
