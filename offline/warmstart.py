"""Build the warm-start artifact: solve for the price, train the policy, tabulate its cost curve."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from online.actions import ActionSpace
from online.artifact import PolicyEntry, WarmStart
from online.cost_curve import CostCurve
from online.features import question_features
from online.imitation import ImitationPolicy
from online.lagrangian import lagrangian_argmax
from online.policy import ValuePolicy
from online.samples import Question
from online.sequential import (
    SequentialPolicy,
    Trajectories,
    price_ceiling,
    question_outcomes,
)
from online.solve import solve
from online.tables import Table, build_table

__all__ = [
    "TrainingSet",
    "build_warmstart",
    "fit_sequential_policy",
    "fit_value_policy",
    "policy_cost_curve",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSet:
    """Questions with their features and accuracy table, in one order."""

    questions: list[Question]
    features: list[dict[str, float]]
    table: Table


def make_training_set(
    questions: Sequence[Question], actions: ActionSpace, progress: bool = False
) -> TrainingSet:
    table = build_table(questions, actions, progress=progress)
    features = [question_features(q.question, q.meta) for q in questions]
    return TrainingSet(list(questions), features, table)


def fit_value_policy(
    features: Sequence[dict[str, float]],
    accuracy: np.ndarray,
    actions: ActionSpace,
    epochs: int = 20,
    seed: int = 0,
    shrinkage: float = 1.0,
    progress: bool = False,
) -> ValuePolicy:
    """Train a `ValuePolicy` by passing over the questions ``epochs`` times in seeded order."""
    policy = ValuePolicy(actions, prior=accuracy.mean(axis=0).tolist(), shrinkage=shrinkage)
    rng = np.random.default_rng(seed)
    for _ in tqdm(range(epochs), desc="train policy", disable=not progress, unit="epoch"):
        for i in rng.permutation(len(features)):
            policy.learn_one(features[i], accuracy[i])
    return policy


def matched_accuracy(
    values: np.ndarray, accuracy: np.ndarray, cost: np.ndarray, budget: float
) -> tuple[float, float]:
    """Accuracy and mean cost of the Lagrangian argmax over ``values`` at the price that spends
    ``budget`` on these questions, mixing the two neighbouring grid prices to spend it exactly.

    Returns the policy at price zero when even that costs less than ``budget``.
    """
    rows = np.arange(values.shape[0])
    nominal = cost.max(axis=0)
    top = max(float(np.max(np.diff(values, axis=1), initial=0.0)), 1e-6)
    lambdas = np.concatenate([[0.0], np.geomspace(top * 1e-4, top * 2, 400)])
    choices = [lagrangian_argmax(values, nominal, lam) for lam in lambdas]
    costs = np.array([cost[rows, a].mean() for a in choices])
    fits = np.nonzero(costs <= budget)[0]
    if fits.size == 0:
        a = choices[-1]
        return float(accuracy[rows, a].mean()), float(costs[-1])
    j = int(fits[0])
    if j == 0:
        return float(accuracy[rows, choices[0]].mean()), float(costs[0])
    cheap, dear = choices[j], choices[j - 1]
    c_cheap, c_dear = costs[j], costs[j - 1]
    theta = 0.0 if c_dear == c_cheap else (budget - c_cheap) / (c_dear - c_cheap)
    acc = (1 - theta) * accuracy[rows, cheap].mean() + theta * accuracy[rows, dear].mean()
    return float(acc), float((1 - theta) * c_cheap + theta * c_dear)


def choose_shrinkage(
    features: Sequence[dict[str, float]],
    table: Table,
    budget: float,
    grid: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
    folds: int = 5,
    epochs: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> tuple[float, dict[float, float]]:
    """Pick the shrinkage with the best held-out accuracy at ``budget`` (K-fold).

    Returns the choice and the mean held-out accuracy of every grid value. Ties go to the
    smaller shrinkage, the one closer to uniform allocation.
    """
    rng = np.random.default_rng(seed)
    parts = np.array_split(rng.permutation(len(features)), folds)
    scores: dict[float, list[float]] = {g: [] for g in grid}
    for f in tqdm(range(folds), desc="choose shrinkage", disable=not progress, unit="fold"):
        test = parts[f]
        train = np.concatenate([parts[g] for g in range(folds) if g != f])
        policy = fit_value_policy(
            [features[i] for i in train], table.accuracy[train], table.actions, epochs, seed
        )
        for g in grid:
            policy.shrinkage = g
            values = predicted_values(policy, [features[i] for i in test])
            held_out = matched_accuracy(values, table.accuracy[test], table.cost[test], budget)
            scores[g].append(held_out[0])
    means = {g: float(np.mean(v)) for g, v in scores.items()}
    best = max(grid, key=lambda g: (round(means[g], 12), -g))
    return best, means


IMITATION_BUDGETS = (1.5, 2.0, 3.0, 4.0, 6.0, 9.0)


def fit_imitation_policy(
    features: Sequence[dict[str, float]],
    table: Table,
    budgets: Sequence[float] = IMITATION_BUDGETS,
    epochs: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ImitationPolicy, np.ndarray]:
    """Train the budget-aware imitation policy on oracle actions at the prices of ``budgets``.

    Returns the policy and the prices it was trained at (budgets that do not bind, with price
    0, are kept at a small positive price).
    """
    rows = np.arange(len(features))
    prices, labels = [], []
    for budget in budgets:
        if budget <= table.cost[:, 0].mean():
            continue
        solution = solve(table.accuracy, table.cost, budget)
        prices.append(max(solution.lambda_, 1e-4))
        labels.append(np.where(solution.split >= 0.5, solution.dearer, solution.action))
    policy = ImitationPolicy(table.actions)
    rng = np.random.default_rng(seed)
    pairs = [(i, g) for i in rows for g in range(len(prices))]
    for _ in tqdm(range(epochs), desc="train imitation", disable=not progress, unit="epoch"):
        for n in rng.permutation(len(pairs)):
            i, g = pairs[n]
            policy.learn_label_one(features[i], prices[g], int(labels[g][i]))
    return policy, np.asarray(prices)


def imitation_cost_curve(
    policy: ImitationPolicy,
    features: Sequence[dict[str, float]],
    cost: np.ndarray,
    prices: np.ndarray,
    points: int = 50,
) -> CostCurve:
    """Mean billed cost of the imitation policy's choices over a price grid spanning ``prices``."""
    rows = np.arange(len(features))
    grid = np.concatenate([[0.0], np.geomspace(prices.min() / 4, prices.max() * 100, points)])
    costs = []
    for lam in grid:
        chosen = np.array([policy.decide_one(x, lam) for x in features])
        costs.append(float(cost[rows, chosen].mean()))
    return CostCurve.from_points(grid, costs)


def fit_sequential_policy(
    training: TrainingSet, orderings: int = 128, seed: int = 0, groups: int = 3
) -> tuple[SequentialPolicy, CostCurve]:
    """Fit the sequential policy on every training question, and its mean cost by price.

    The cost curve is the mean realised cost over the questions' recorded orderings.
    """
    outcomes = [question_outcomes(q, training.table.unit) for q in training.questions]
    rungs = range(1, training.table.actions.max_samples + 1)
    trajectories = Trajectories.sample(outcomes, rungs, orderings, seed)
    policy = SequentialPolicy.fit(
        trajectories, training.features, outcomes, training.table.actions, groups=groups
    )
    assigned = policy.groups.assign(training.features)
    ceiling = price_ceiling(trajectories)
    grid = np.concatenate([[0.0], np.geomspace(ceiling * 1e-5, ceiling, 120)])
    costs = [float(policy.rollout(trajectories, assigned, lam).cost.mean()) for lam in grid]
    return policy, CostCurve.from_points(grid, costs)


def predicted_values(policy: ValuePolicy, features: Sequence[dict[str, float]]) -> np.ndarray:
    return np.array([policy.predict_values_one(x) for x in features])


def policy_cost_curve(values: np.ndarray, cost: np.ndarray, lambdas: np.ndarray) -> CostCurve:
    """Mean cost of the Lagrangian argmax over predicted ``values`` at each price.

    Decisions price each action at its nominal sample count (the column maximum of ``cost``),
    as the service does, but the cost counted is ``cost[i, a]``, what question ``i`` would bill.
    """
    rows = np.arange(values.shape[0])
    nominal = cost.max(axis=0)
    costs = [float(cost[rows, lagrangian_argmax(values, nominal, lam)].mean()) for lam in lambdas]
    return CostCurve.from_points(lambdas, costs)


def build_warmstart(
    training: TrainingSet,
    budget: float,
    epochs: int = 20,
    seed: int = 0,
    trained_on: Sequence[str] = (),
    progress: bool = False,
) -> WarmStart:
    """Solve at ``budget``, train the value policy and tabulate its cost curve."""
    table = training.table
    solution = solve(table.accuracy, table.cost, budget)
    logger.info(
        "oracle at budget %s: lambda*=%.6g, accuracy %.4f, mean cost %.4f",
        budget,
        solution.lambda_,
        solution.mean_accuracy,
        solution.mean_cost,
    )
    shrinkage, held_out = choose_shrinkage(
        training.features, table, budget, epochs=epochs, seed=seed, progress=progress
    )
    logger.info("held-out accuracy by shrinkage at budget %s: %s", budget, held_out)
    policy = fit_value_policy(
        training.features,
        table.accuracy,
        table.actions,
        epochs=epochs,
        seed=seed,
        shrinkage=shrinkage,
        progress=progress,
    )
    values = predicted_values(policy, training.features)
    span = float(np.max(np.diff(values, axis=1), initial=0.0))
    top = max(span, 1e-3)
    lambdas = np.concatenate([[0.0], np.geomspace(top * 1e-4, top * 2, 400)])
    curve = policy_cost_curve(values, table.cost, lambdas)
    policy_price = curve.price_for(budget)
    price_scale = policy_price if policy_price > 0 else max(solution.lambda_, top * 1e-2)
    imitation, prices = fit_imitation_policy(training.features, table, seed=seed, progress=progress)
    imitation_curve = imitation_cost_curve(imitation, training.features, table.cost, prices)
    imitation_price = imitation_curve.price_for(budget)
    sequential, sequential_curve = fit_sequential_policy(training, seed=seed)
    sequential_price = sequential_curve.price_for(budget)
    rows = np.arange(len(values))
    chosen = lagrangian_argmax(values, table.cost.max(axis=0), policy_price)
    metrics = {
        "oracle_accuracy": solution.mean_accuracy,
        "policy_accuracy_in_sample": float(table.accuracy[rows, chosen].mean()),
        "policy_cost_in_sample": float(table.cost[rows, chosen].mean()),
        "policy_lambda": policy_price,
        "shrinkage": shrinkage,
        **{f"held_out_accuracy_shrinkage_{g}": acc for g, acc in held_out.items()},
    }
    return WarmStart(
        actions=table.actions,
        unit=table.unit,
        budget=budget,
        lambda_star=solution.lambda_,
        price_scale=price_scale,
        cost_curve=curve,
        policy=policy,
        trained_on=list(trained_on),
        metrics=metrics,
        extra_policies={
            "imitation": PolicyEntry(
                imitation, imitation_curve, imitation_price if imitation_price > 0 else price_scale
            ),
            "sequential": PolicyEntry(
                sequential,
                sequential_curve,
                sequential_price if sequential_price > 0 else price_scale,
            ),
        },
    )
