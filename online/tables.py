"""Per-question accuracy and cost tables for an action space, from a samples file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm import tqdm

from online.actions import ActionSpace
from online.answers import answers_match
from online.samples import Question
from online.vote_accuracy import group_answers, vote_accuracy

__all__ = ["CostUnit", "Table", "build_table", "uniform_allocation"]

logger = logging.getLogger(__name__)

CostUnit = Literal["samples", "tokens"]


@dataclass(frozen=True)
class Table:
    """``accuracy[i, j]``: expected accuracy of action ``j`` on question ``i``; ``cost`` alike.

    Action ``j`` draws ``min(k_j, available_i)`` samples, so ``cost`` is capped the same way.
    """

    ids: list[str]
    accuracy: np.ndarray
    cost: np.ndarray
    available: np.ndarray
    actions: ActionSpace
    unit: CostUnit


def build_table(
    questions: Sequence[Question],
    actions: ActionSpace,
    unit: CostUnit = "samples",
    progress: bool = False,
) -> Table:
    """Compute the exact vote accuracy and the expected cost of every action on every question.

    Questions without samples are rejected with a `ValueError` naming the id. With
    ``unit="tokens"`` every sample must carry ``tokens``.
    """
    n, m = len(questions), len(actions)
    accuracy = np.zeros((n, m))
    cost = np.zeros((n, m))
    available = np.zeros(n, dtype=np.int64)
    iterator = tqdm(questions, desc="accuracy table", disable=not progress, unit="q")
    for i, q in enumerate(iterator):
        if not q.samples:
            raise ValueError(f"question {q.id!r} has no samples; an accuracy table needs samples")
        answers = [s.answer for s in q.samples]
        counts, correct, nulls = group_answers(
            answers,
            [s.correct for s in q.samples],
            [answers_match(a, q.gold) for a in answers],
        )
        available[i] = len(q.samples)
        if unit == "tokens":
            tokens = [s.tokens for s in q.samples]
            if any(t is None for t in tokens):
                raise ValueError(
                    f"question {q.id!r} has samples without 'tokens'; use unit=samples"
                )
            per_sample = float(np.mean(np.asarray(tokens, dtype=float)))
        else:
            per_sample = 1.0
        for j, k in enumerate(actions.sample_counts):
            drawn = min(k, len(q.samples))
            accuracy[i, j] = vote_accuracy(counts, correct, nulls, drawn)
            cost[i, j] = drawn * per_sample
    capped = int((available < actions.max_samples).sum())
    if capped:
        logger.info(
            "%d of %d questions have fewer than %d samples; their larger actions are capped",
            capped,
            n,
            actions.max_samples,
        )
    return Table([q.id for q in questions], accuracy, cost, available, actions, unit)


def uniform_allocation(table: Table, budget: float) -> tuple[float, float]:
    """Return (accuracy, mean cost) of spending the same on every question at ``budget``.

    Every question takes action ``j`` or ``j + 1``, the two whose mean costs bracket the budget,
    with the mixing fraction that makes the mean cost equal the budget. Outside the range of
    mean costs the cheapest or dearest action is used alone.

    >>> import numpy as np
    >>> t = Table(["a", "b"], np.array([[0.5, 0.7], [0.2, 0.6]]), np.array([[1.0, 3.0]] * 2),
    ...           np.array([3, 3]), ActionSpace((1, 3)), "samples")
    >>> accuracy, cost = uniform_allocation(t, 2.0)
    >>> round(accuracy, 9), cost
    (0.5, 2.0)
    """
    mean_acc = table.accuracy.mean(axis=0)
    mean_cost = table.cost.mean(axis=0)
    if budget <= mean_cost[0]:
        return float(mean_acc[0]), float(mean_cost[0])
    if budget >= mean_cost[-1]:
        return float(mean_acc[-1]), float(mean_cost[-1])
    j = int(np.searchsorted(mean_cost, budget, side="right")) - 1
    span = mean_cost[j + 1] - mean_cost[j]
    theta = 0.0 if span == 0 else (budget - mean_cost[j]) / span
    accuracy = (1 - theta) * mean_acc[j] + theta * mean_acc[j + 1]
    cost = (1 - theta) * mean_cost[j] + theta * mean_cost[j + 1]
    return float(accuracy), float(cost)
