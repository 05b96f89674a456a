"""Replay the service's per-request loop on recorded samples without Ray, to predict its figures."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from online.answers import answers_match, vote
from online.artifact import WarmStart
from online.controller import DualController, UpdateRule
from online.cost_curve import CostCurve
from online.features import question_features
from online.imitation import ImitationPolicy
from online.learner import Learner
from online.policy import ValuePolicy
from online.price_view import PriceView
from online.samples import Question
from online.sequential import STOP, SequentialPolicy, question_outcomes
from online.tables import Table, build_table
from online.trace import (
    Trace,
    baseline_accuracy,
    converged_after,
    segment_summaries,
    write_outputs,
)

__all__ = [
    "DEFAULT_STEP_SIZE",
    "DEFAULT_WINDOW",
    "POLICIES",
    "QuestionPool",
    "Retarget",
    "ServedPolicy",
    "SimulationConfig",
    "SimulationResult",
    "simulate",
]

logger = logging.getLogger(__name__)

# The service's controller defaults (step size and moving-window length).
DEFAULT_STEP_SIZE = 0.05
DEFAULT_WINDOW = 500
# The moving mean cost counts as converged within this fraction of the budget.
CONVERGENCE_TOLERANCE = 0.02


@dataclass(frozen=True)
class ServedPolicy:
    """A policy, its mean cost against the price and its typical price, for the controller."""

    policy: ValuePolicy | ImitationPolicy | SequentialPolicy
    cost_curve: CostCurve
    price_scale: float


def _artifact_policy(kind: str) -> Callable[[WarmStart], ServedPolicy]:
    """Return a factory of the artifact's policy ``kind``, as the service loads it."""

    def factory(warm: WarmStart) -> ServedPolicy:
        try:
            entry = warm.entry(kind)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return ServedPolicy(entry.policy, entry.cost_curve, entry.price_scale)

    return factory


def _uniform_policy(warm: WarmStart) -> ServedPolicy:
    """Predict the warm start's mean accuracy curve for every question (shrinkage 0).

    Every question then takes the same action at a given price, and the controller mixes the
    two actions whose costs bracket the budget by moving the price across their breakpoint.
    """
    policy = ValuePolicy(warm.actions, prior=warm.policy.prior, shrinkage=0.0)
    lambdas = warm.cost_curve.lambdas
    costs = [policy.costs[policy.decide_one({}, lam)] for lam in lambdas]
    return ServedPolicy(policy, CostCurve.from_points(lambdas, costs), warm.price_scale)


# Policy name to factory. A new policy is one more entry here.
POLICIES: dict[str, Callable[[WarmStart], ServedPolicy]] = {
    "value": _artifact_policy("value"),
    "imitation": _artifact_policy("imitation"),
    "sequential": _artifact_policy("sequential"),
    "uniform": _uniform_policy,
}


@dataclass(frozen=True)
class QuestionPool:
    """Questions with recorded samples to draw requests from, and a name for the reports."""

    name: str
    questions: Sequence[Question]


@dataclass(frozen=True)
class Retarget:
    """A budget change to ``budget`` just before request ``at`` (0-based) is dispatched."""

    at: int
    budget: float


def _check_positive(name: str, value: float) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of one simulated stream. Invalid values raise `ValueError` naming the field.

    ``explore`` is the fraction of requests that run the largest action as a probe and train
    the policy on the probe's own majority. ``feedback`` is the fraction of the other requests
    whose gold answer trains the policy after completion. ``in_flight`` is the number of
    requests reserved and not yet completed when the next one is decided. ``report_batch`` is
    how many finished requests the allocator reports to the controller at once, as a gateway
    replica does (the service also reports every 50 ms, which has no counterpart here).
    """

    budget: float
    requests: int
    policy: str = "value"
    retarget: Retarget | None = None
    explore: float = 0.0
    feedback: float = 0.0
    in_flight: int = 16
    report_batch: int = 16
    seed: int = 0
    step_size: float = DEFAULT_STEP_SIZE
    rule: UpdateRule = "additive"
    window: int = DEFAULT_WINDOW
    artifact: str | Path | None = None

    def __post_init__(self) -> None:
        _check_positive("budget", self.budget)
        for name in ("requests", "in_flight", "report_batch", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.policy not in POLICIES:
            known = ", ".join(POLICIES)
            raise ValueError(f"policy must be one of {known}, got {self.policy!r}")
        for name in ("explore", "feedback"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1], got {rate!r}")
        if self.retarget is not None:
            _check_positive("retarget budget", self.retarget.budget)
            if not 0 < self.retarget.at < self.requests:
                raise ValueError(
                    f"retarget request must be in 1..{self.requests - 1}, got {self.retarget.at!r}"
                )


@dataclass(frozen=True)
class _Recorded:
    """A question ready to replay: its row in the accuracy table, features and sample keys."""

    question: Question
    row: int
    features: dict[str, float]
    keys: tuple[str | None, ...]
    key_correct: dict[str, bool]


def _record(question: Question, row: int) -> _Recorded:
    """Compute a question's features, sample keys and which keys are correct.

    A key is correct by the rule of the accuracy tables: most of its samples are correct, and
    a sample's recorded ``correct`` flag wins over comparing its answer with the gold answer.
    """
    outcomes = question_outcomes(question)
    features = question_features(question.question, question.meta)
    return _Recorded(question, row, features, outcomes.keys, dict(outcomes.key_correct))


@dataclass
class _Pending:
    """A request that has reserved its cost with the controller and not yet completed."""

    ticket: int
    record: _Recorded
    keys: list[str | None]
    answer: str | None
    price: float
    action: str
    cost: float
    probe: bool
    feedback: bool


@dataclass
class SimulationResult:
    """The summary (the contents of ``summary.json``) and the per-request trace."""

    summary: dict[str, Any]
    trace: Trace

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``summary.json`` and ``trace.png`` into ``out_dir``; return both paths."""
        return write_outputs(self.summary, self.trace, out_dir)


def _prepare(pools: Sequence[QuestionPool], warm: WarmStart) -> tuple[list[list[_Recorded]], Table]:
    """Record every pool's questions and build one accuracy table over all of them."""
    records: list[list[_Recorded]] = []
    tables: list[Table] = []
    for pool in pools:
        if not pool.questions:
            raise ValueError(f"question pool {pool.name!r} is empty")
        offset = sum(len(t.ids) for t in tables)
        tables.append(build_table(pool.questions, warm.actions, unit="samples"))
        records.append([_record(q, offset + i) for i, q in enumerate(pool.questions)])
    table = Table(
        ids=[qid for t in tables for qid in t.ids],
        accuracy=np.vstack([t.accuracy for t in tables]),
        cost=np.vstack([t.cost for t in tables]),
        available=np.concatenate([t.available for t in tables]),
        actions=warm.actions,
        unit="samples",
    )
    return records, table


class _Simulation:
    """The loop state: controller, policy, learner, random streams and the requests in flight."""

    def __init__(self, config: SimulationConfig, warm: WarmStart, served: ServedPolicy) -> None:
        self.config = config
        self.actions = warm.actions
        self.policy = served.policy
        self.cost_curve = served.cost_curve
        self.action_index = {name: j for j, name in enumerate(warm.actions.names)}
        # NOTE: the sequential policy does not learn from the stream; its probes still run
        # and count against the budget.
        self.learner = (
            None if isinstance(served.policy, SequentialPolicy) else Learner(served.policy)
        )
        self.controller = DualController(
            budget=config.budget,
            cost_curve=served.cost_curve,
            step_size=config.step_size,
            price_scale=served.price_scale,
            rule=config.rule,
            window=config.window,
            unit=warm.unit,
            min_budget=float(warm.actions.sample_counts[0]),
        )
        # The allocator's view of the price, reporting in batches, as in a gateway replica.
        self.view = PriceView(self.controller.settings())
        # Separate streams, so that changing one rate leaves the questions and draws unchanged.
        streams = np.random.SeedSequence(config.seed).spawn(4)
        self.pick, self.draw, self.explore, self.feedback = (
            np.random.default_rng(s) for s in streams
        )
        self.pending: deque[_Pending] = deque()
        self.probes = 0
        self.probes_judged = 0
        self.probes_agreeing = 0

    def dispatch(self, record: _Recorded, trace: Trace, table: Table, i: int) -> None:
        """Decide, reserve, draw and vote one request, as the service's gateway does."""
        probe = bool(self.explore.random() < self.config.explore)
        wants_feedback = bool(self.feedback.random() < self.config.feedback) and not probe
        price = self.view.price()
        order = self.draw.permutation(len(record.keys))
        if isinstance(self.policy, SequentialPolicy) and not probe:
            ticket = self.view.reserve(self.cost_curve.cost_at(price))
            keys, name = self._draw_sequentially(record, order, price)
        else:
            if probe:
                index = len(self.actions) - 1
            else:
                assert not isinstance(self.policy, SequentialPolicy)
                index = self.policy.decide_one(record.features, price)
            name = self.actions[index].name
            ticket = self.view.reserve(float(self.actions[index].samples))
            keys = [record.keys[j] for j in order[: self.actions[index].samples]]
        answer = vote(keys).answer
        self.probes += probe
        trace.lambdas[i] = price
        trace.costs[i] = len(keys)
        trace.correct[i] = answer is not None and record.key_correct.get(answer, False)
        # A sequential request has no fixed action: its outcome stands for its expectation.
        sequential = name not in self.action_index or (
            isinstance(self.policy, SequentialPolicy) and not probe
        )
        if sequential:
            trace.expected[i] = trace.correct[i]
        else:
            trace.expected[i] = table.accuracy[record.row, self.action_index[name]]
        trace.budgets[i] = self.controller.budget
        self.pending.append(
            _Pending(
                ticket=ticket,
                record=record,
                keys=keys,
                answer=answer,
                price=price,
                action=name,
                cost=float(len(keys)),
                probe=probe,
                feedback=wants_feedback,
            )
        )

    def _draw_sequentially(
        self, record: _Recorded, order: np.ndarray, price: float
    ) -> tuple[list[str | None], str]:
        """Draw batches up to the rungs the sequential policy picks; name the request by its size.

        A request that ends on an action's sample count is counted as that action, any other
        as ``draw@n``.
        """
        assert isinstance(self.policy, SequentialPolicy)
        rungs = self.policy.rungs_
        rung = self.policy.first_rung(record.features, price)
        while True:
            keys = [record.keys[j] for j in order[: rungs[rung]]]
            nxt = self.policy.next_rung(record.features, rung, keys, price)
            if nxt == STOP or len(keys) == len(order):
                break
            rung = nxt
        count = len(keys)
        return keys, f"vote@{count}" if count in self.actions.sample_counts else f"draw@{count}"

    def report(self) -> None:
        """Send the finished requests to the controller and adopt its price, as a gateway does."""
        self.controller.report(self.view.take_report(), "simulator")
        self.view.publish(self.controller.settings())

    def complete_oldest(self) -> None:
        """Bill the oldest request in flight, then learn from it as probes and feedback do."""
        done = self.pending.popleft()
        self.view.complete(done.ticket, done.cost, done.action)
        if self.view.unreported >= self.config.report_batch:
            self.report()
        features, gold = done.record.features, done.record.question.gold
        if done.probe and gold is not None:
            self.probes_judged += 1
            # A probe serves its own majority, so the answer is also its pseudo-label.
            self.probes_agreeing += answers_match(done.answer, gold)
        if self.learner is None:
            return
        if done.probe:
            self.learner.learn_from_probe(features, done.keys, done.price)
        elif done.feedback and gold is not None:
            self.learner.learn_from_gold(features, done.keys, gold, done.price)


def _summarise(
    sim: _Simulation,
    trace: Trace,
    rows: np.ndarray,
    table: Table,
    pools: Sequence[QuestionPool],
    switch_at: int | None,
) -> dict[str, Any]:
    config = sim.config
    uniform, oracle = baseline_accuracy(table, rows, trace.budgets)
    summary: dict[str, Any] = {
        "budget": float(config.budget),
        "requests": config.requests,
        "policy": config.policy,
        "explore": config.explore,
        "feedback": config.feedback,
        "in_flight": config.in_flight,
        "seed": config.seed,
        "step_size": config.step_size,
        "rule": config.rule,
        "window": config.window,
        "pools": [p.name for p in pools],
        "mean_cost": float(trace.costs.mean()),
        "accuracy": float(trace.correct.mean()),
        "expected_accuracy": float(trace.expected.mean()),
        "uniform_accuracy": uniform,
        "oracle_accuracy": oracle,
        "lambda_final": sim.controller.lambda_,
        "actions": sim.controller.stats()["actions"],
        "probes": sim.probes,
        "pseudo_label_agreement": (
            sim.probes_agreeing / sim.probes_judged if sim.probes_judged else None
        ),
        "labels_learned": sim.learner.labels_ if sim.learner is not None else 0,
    }
    bounds = {0, config.requests}
    if config.retarget is not None:
        at, budget = config.retarget.at, config.retarget.budget
        after = converged_after(trace.costs, at, budget, config.window, CONVERGENCE_TOLERANCE)
        summary["retarget"] = {"at": at, "budget": budget, "converged_after": after}
        summary["mean_cost_before"] = float(trace.costs[:at].mean())
        summary["mean_cost_after"] = float(trace.costs[at:].mean())
        bounds.add(at)
    if switch_at is not None:
        summary["switch"] = {"at": switch_at, "pool": pools[1].name}
        bounds.add(switch_at)
    pool_names = [
        pools[1].name if switch_at is not None and i >= switch_at else pools[0].name
        for i in range(config.requests)
    ]
    summary["segments"] = segment_summaries(trace, rows, table, sorted(bounds), pool_names)
    return summary


def simulate(
    pool: QuestionPool,
    config: SimulationConfig,
    then: QuestionPool | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Stream ``config.requests`` questions through the policy, controller and learner.

    Questions are drawn with replacement from ``pool``, and from ``then`` after half of the
    requests when it is given. Each request draws ``min(k, recorded)`` of its question's
    recorded samples without replacement and is billed that many samples. Raises `ValueError`
    for a budget below the cheapest action's cost, an empty pool, a question without samples,
    or an artifact whose unit is not samples.
    """
    warm = WarmStart.load(config.artifact)
    if warm.unit != "samples":
        raise ValueError(
            f"artifact unit must be 'samples' (the simulator bills samples), got {warm.unit!r}"
        )
    cheapest = float(warm.actions.sample_counts[0])
    budgets = [("budget", config.budget)]
    if config.retarget is not None:
        budgets.append(("retarget budget", config.retarget.budget))
    for name, budget in budgets:
        if budget < cheapest:
            raise ValueError(
                f"{name} must be at least {cheapest:g} samples, the cost of the cheapest "
                f"action, got {budget!r}"
            )
    pools = [pool] if then is None else [pool, then]
    records, table = _prepare(pools, warm)
    sim = _Simulation(config, warm, POLICIES[config.policy](warm))
    n = config.requests
    switch_at = n // 2 if then is not None else None
    trace = Trace(
        lambdas=np.zeros(n),
        costs=np.zeros(n),
        correct=np.zeros(n),
        expected=np.zeros(n),
        budgets=np.zeros(n),
    )
    rows = np.zeros(n, dtype=np.int64)

    for i in tqdm(range(n), desc="simulate", unit="req", disable=not progress, mininterval=0.5):
        if config.retarget is not None and i == config.retarget.at:
            sim.controller.set_budget(config.retarget.budget)
            sim.view.publish(sim.controller.settings())
        if len(sim.pending) >= config.in_flight:
            sim.complete_oldest()
        current = records[1] if switch_at is not None and i >= switch_at else records[0]
        record = current[int(sim.pick.integers(len(current)))]
        rows[i] = record.row
        sim.dispatch(record, trace, table, i)
    while sim.pending:
        sim.complete_oldest()
    sim.report()

    summary = _summarise(sim, trace, rows, table, pools, switch_at)
    logger.info(
        "simulated %d requests: mean cost %.4g at budget %s, accuracy %.4f",
        n,
        summary["mean_cost"],
        config.budget,
        summary["accuracy"],
    )
    return SimulationResult(summary, trace)
