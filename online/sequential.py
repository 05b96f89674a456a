"""Sequential allocation: draw samples in batches, and stop when more would not pay at the price.

The policies of Solve-then-Learn (Zhai et al., arXiv:2604.14853) fix the number of samples
before seeing any of them. The first samples reveal more about a question than its text does:
when they agree the question is likely easy. This policy draws along rungs of sample counts:
the service and the offline tools use every count from 1 to the largest action's, 15 by
default. After each batch it looks at the vote so far, summarised as the state (rung, samples
drawn, top count, runner-up count), and either stops or jumps to a later rung. The rule is the
Lagrangian one of the offline oracle: continue to rung ``u`` when the expected accuracy gained
by going on exceeds ``lambda`` times the expected extra cost.

Those expectations come from a dynamic programme over the states, fitted on random orderings of
the training questions' recorded samples. The question's features enter through a difficulty
group: a linear score of the features, cut at quantiles, and every group has its own statistics,
shrunk towards the pooled ones where a group saw a state only a few times. The first batch is
the root of the programme, so it too depends on the group and on ``lambda``.

Early-stopping self-consistency (Li et al., ICLR 2024) and Adaptive-Consistency (Aggarwal et
al., EMNLP 2023) also stop on agreement, with thresholds and no budget; here every extra sample
is priced by the same ``lambda`` that the dual controller moves to hold the budget.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse, special

from online.actions import ActionSpace
from online.answers import answers_match, canonical_key
from online.samples import Question

__all__ = [
    "STOP",
    "DifficultyGroups",
    "Outcomes",
    "Rollout",
    "SequentialPolicy",
    "Trajectories",
    "early_stop_rollout",
    "match_budget",
    "price_ceiling",
    "question_outcomes",
    "vote_state",
]

STOP = -1
"""The decision that ends a request: vote on the samples drawn so far."""

_ROOT = -1
_PLAN_CACHE = 512
_CODE = 256  # states are coded as ((rung * 256 + drawn) * 256 + top) * 256 + runner_up


@dataclass(frozen=True)
class Outcomes:
    """A question's recorded samples as answer keys, which keys are correct, and their costs."""

    keys: tuple[str | None, ...]
    key_correct: Mapping[str, bool]
    costs: tuple[float, ...]


def question_outcomes(question: Question, unit: str = "samples") -> Outcomes:
    """Return a question's answer keys, which of them are correct, and each sample's cost.

    A key is correct when most of its samples are; a sample's own ``correct`` flag wins over
    comparing its answer with the gold answer (the rule of the accuracy tables).

    >>> from online.samples import Sample
    >>> q = Question("q", "1 + 1?", "2", (Sample("2"), Sample("2.0"), Sample("3"), Sample(None)))
    >>> o = question_outcomes(q)
    >>> o.keys, dict(o.key_correct)
    (('2', '2', '3', None), {'2': True, '3': False})
    """
    keys = tuple(canonical_key(s.answer) for s in question.samples)
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for sample, key in zip(question.samples, keys, strict=True):
        if key is None:
            continue
        flag = sample.correct
        if flag is None:
            flag = answers_match(sample.answer, question.gold)
        total[key] = total.get(key, 0) + 1
        right[key] = right.get(key, 0) + int(flag)
    if unit == "tokens":
        if any(s.tokens is None for s in question.samples):
            raise ValueError(f"question {question.id!r} has samples without 'tokens'")
        costs = tuple(float(s.tokens or 0) for s in question.samples)
    else:
        costs = (1.0,) * len(question.samples)
    return Outcomes(keys, {k: 2 * right[k] > total[k] for k in total}, costs)


def vote_state(rung: int, keys: Sequence[str | None]) -> int:
    """Return the state code of a vote: rung index, samples drawn, top and runner-up counts.

    >>> vote_state(1, ["4", "5", "4"]) == vote_state(1, ["7", "7", "1"])
    True
    """
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    ranked = [*sorted(counts.values(), reverse=True), 0, 0]
    return ((rung * _CODE + len(keys)) * _CODE + ranked[0]) * _CODE + ranked[1]


def _encode(rung: int | np.ndarray, drawn: object, top: object, second: object) -> np.ndarray:
    code = ((np.asarray(rung) * _CODE + drawn) * _CODE + top) * _CODE + second
    return np.asarray(code, dtype=np.int64)


@dataclass
class Trajectories:
    """Random orderings of each question's samples, summarised at every rung.

    ``code[q, p, r]`` is the state after rung ``r`` of ordering ``p`` of question ``q``,
    ``correct`` whether the vote there is right, and ``cost`` the cost drawn so far.
    """

    code: np.ndarray
    correct: np.ndarray
    cost: np.ndarray
    rungs: tuple[int, ...]

    @classmethod
    def sample(
        cls,
        outcomes: Sequence[Outcomes],
        rungs: Sequence[int],
        orderings: int = 128,
        seed: int = 0,
    ) -> Trajectories:
        """Draw ``orderings`` random orders of every question's samples (seeded).

        A rung beyond a question's recorded samples draws all of them, as the accuracy tables
        cap an action. The vote takes the top answer; a tie goes to the tied answer that came
        first, as in the worker pool.
        """
        rungs = tuple(rungs)
        n, m = len(outcomes), len(rungs)
        code = np.zeros((n, orderings, m), dtype=np.int64)
        correct = np.zeros((n, orderings, m), dtype=bool)
        cost = np.zeros((n, orderings, m))
        rng = np.random.default_rng(seed)
        for i, out in enumerate(outcomes):
            names = sorted(out.key_correct)
            group = {k: g for g, k in enumerate(names)}
            ids = np.array([group[k] if k is not None else -1 for k in out.keys])
            good = np.array([out.key_correct[k] for k in names] + [False])
            total = len(ids)
            order = rng.permuted(np.tile(np.arange(total), (orderings, 1)), axis=1)
            drawn_ids = ids[order]
            onehot = drawn_ids[:, :, None] == np.arange(max(len(names), 1))[None, None, :]
            counts = onehot.cumsum(axis=1)
            first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), total)
            running = np.asarray(out.costs)[order].cumsum(axis=1)
            for r, k in enumerate(rungs):
                drawn = min(k, total)
                at = counts[:, drawn - 1, :]
                ranked = -np.sort(-at, axis=1)
                top = ranked[:, 0]
                second = ranked[:, 1] if ranked.shape[1] > 1 else np.zeros_like(top)
                tied = (at == top[:, None]) & (top[:, None] > 0)
                winner = np.where(tied, first, total + 1).argmin(axis=1)
                winner = np.where(top > 0, winner, len(names))
                code[i, :, r] = _encode(r, drawn, top, second)
                correct[i, :, r] = good[winner]
                cost[i, :, r] = running[:, drawn - 1]
        return cls(code, correct, cost, rungs)

    def subset(self, rows: np.ndarray) -> Trajectories:
        return Trajectories(self.code[rows], self.correct[rows], self.cost[rows], self.rungs)

    @property
    def questions(self) -> int:
        return int(self.code.shape[0])


class DifficultyGroups:
    """Cut a linear score of the question features into equally filled groups.

    The score is a ridge regression of how often two of a question's samples agree, a label
    that needs no gold answer. With one group every question falls in group 0.
    """

    def __init__(self, groups: int = 1, ridge: float = 10.0) -> None:
        if groups < 1:
            raise ValueError(f"groups must be at least 1, got {groups!r}")
        self.groups = groups
        self.ridge = ridge
        self.names_: list[str] = []
        self.mean_ = np.zeros(0)
        self.scale_ = np.ones(0)
        self.weights_: np.ndarray = np.zeros(0)
        self.intercept_ = 0.0
        self.cuts_: np.ndarray = np.zeros(0)
        self._coefficients: dict[str, float] = {}
        self._offset = 0.0

    def fit(
        self, features: Sequence[Mapping[str, float]], outcomes: Sequence[Outcomes]
    ) -> DifficultyGroups:
        if self.groups == 1:
            return self
        self.names_ = sorted({name for f in features for name in f})
        raw = np.array([[f.get(name, 0.0) for name in self.names_] for f in features], dtype=float)
        self.mean_ = raw.mean(axis=0)
        self.scale_ = np.where(raw.std(axis=0) > 0, raw.std(axis=0), 1.0)
        x = (raw - self.mean_) / self.scale_
        y = np.array([_agreement(o) for o in outcomes])
        self.intercept_ = float(y.mean())
        gram = x.T @ x + self.ridge * np.eye(x.shape[1])
        self.weights_ = np.linalg.solve(gram, x.T @ (y - self.intercept_))
        scores = x @ self.weights_
        self.cuts_ = np.quantile(scores, np.linspace(0, 1, self.groups + 1)[1:-1])
        return self

    def assign(self, features: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Return the group of every question, computed as `assign_one` does for one."""
        return np.array([self.assign_one(f) for f in features], dtype=np.int64)

    def assign_one(self, features: Mapping[str, float]) -> int:
        """Return the group of one question; a feature unseen in training counts 0."""
        if self.groups == 1:
            return 0
        # Groups unpickled from an older artifact lack the cached coefficients.
        coefficients = getattr(self, "_coefficients", None)
        if not coefficients:
            slopes = self.weights_ / self.scale_
            coefficients = dict(zip(self.names_, slopes.tolist(), strict=True))
            self._coefficients = coefficients
            self._offset = -float(slopes @ self.mean_)
        score = self._offset + sum(coefficients.get(k, 0.0) * v for k, v in features.items())
        return int(np.searchsorted(self.cuts_, score, side="right"))


def _agreement(outcome: Outcomes) -> float:
    """Chance that two samples drawn without replacement give the same answer."""
    counts: dict[str, int] = {}
    for key in outcome.keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    n = len(outcome.keys)
    if n < 2:
        return 1.0
    return sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))


@dataclass
class _Counts:
    """Visit statistics of one group (or of all questions pooled)."""

    visits: np.ndarray
    correct: np.ndarray
    # Moves from rung t to every later rung u, stacked in one matrix per t. Row
    # (u - t - 1) * n_t + i counts the orderings that went from the i-th state of rung t to
    # each state of rung u.
    moves: list[sparse.csr_matrix]
    extra_cost: list[np.ndarray]  # (later rungs, states of rung t): summed extra cost


@dataclass(frozen=True)
class Rollout:
    """Per-question expectations over the orderings: accuracy, cost and rounds of calls."""

    accuracy: np.ndarray
    cost: np.ndarray
    rounds: np.ndarray

    def mix(self, other: Rollout, weight: float) -> Rollout:
        """Run ``other`` on a share ``weight`` of the requests and this rollout on the rest."""
        return Rollout(
            (1 - weight) * self.accuracy + weight * other.accuracy,
            (1 - weight) * self.cost + weight * other.cost,
            (1 - weight) * self.rounds + weight * other.rounds,
        )


@dataclass
class _Plan:
    """Decisions at one price: the first rung per group and the next rung per group and state."""

    first: np.ndarray
    next: np.ndarray


@dataclass
class SequentialPolicy:
    """The fitted dynamic programme; `plan` decides at a price, `first_rung`/`next_rung` serve.

    ``smoothing`` is how many questions' worth of pooled statistics a group's own statistics
    are blended with, state by state.
    """

    actions: ActionSpace
    groups: DifficultyGroups
    smoothing: float = 20.0
    orderings: int = 128
    rungs_: tuple[int, ...] = ()
    states_: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rung_of_: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rung_rows_: list[np.ndarray] = field(default_factory=list)
    pooled_accuracy_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    counts_: list[_Counts] = field(default_factory=list)
    root_: list[dict[int, tuple[np.ndarray, float, float]]] = field(default_factory=list)
    _plans: dict[float, _Plan] = field(default_factory=dict, repr=False)

    # fitting

    @classmethod
    def fit(
        cls,
        trajectories: Trajectories,
        features: Sequence[Mapping[str, float]],
        outcomes: Sequence[Outcomes],
        actions: ActionSpace,
        groups: int = 1,
        smoothing: float = 20.0,
    ) -> SequentialPolicy:
        """Fit the groups and the per-state statistics on training questions."""
        grouping = DifficultyGroups(groups).fit(features, outcomes)
        policy = cls(actions, grouping, smoothing, trajectories.code.shape[1], trajectories.rungs)
        policy._fit_counts(trajectories, grouping.assign(features))
        return policy

    def _fit_counts(self, traj: Trajectories, group_of: np.ndarray) -> None:
        self.states_ = np.unique(traj.code)
        self.rung_of_ = self.states_ // (_CODE**3)
        n_states, m = len(self.states_), len(traj.rungs)
        self.rung_rows_ = [np.flatnonzero(self.rung_of_ == r) for r in range(m)]
        index = np.searchsorted(self.states_, traj.code)
        group_ids: list[int | None] = [*range(self.groups.groups), None]
        self.counts_, self.root_ = [], []
        for g in group_ids:
            rows = np.arange(traj.questions) if g is None else np.flatnonzero(group_of == g)
            idx, correct, cost = index[rows], traj.correct[rows], traj.cost[rows]
            flat = idx.reshape(-1, m)
            visits = np.bincount(flat.ravel(), minlength=n_states).astype(float)
            right = np.bincount(
                flat.ravel(), weights=correct.reshape(-1, m).ravel(), minlength=n_states
            )
            run = cost.reshape(-1, m)
            moves, extra = [], []
            for t in range(m):
                # Only the states of rung t move from rung t: keep those rows alone.
                rows_t = self.rung_rows_[t]
                local = np.searchsorted(rows_t, flat[:, t])
                later = m - t - 1
                block_rows = (np.arange(later)[:, None] * len(rows_t) + local[None, :]).ravel()
                block_cols = flat[:, t + 1 :].T.ravel()
                moves.append(
                    sparse.csr_matrix(
                        (np.ones(len(block_rows)), (block_rows, block_cols)),
                        shape=(later * len(rows_t), n_states),
                    )
                )
                extra.append(
                    np.stack(
                        [
                            np.bincount(local, weights=run[:, u] - run[:, t], minlength=len(rows_t))
                            for u in range(t + 1, m)
                        ]
                    ).reshape(later, len(rows_t))
                    if later
                    else np.zeros((0, len(rows_t)))
                )
            self.counts_.append(_Counts(visits, right, moves, extra))
            root = {}
            for u in range(m):
                dist = np.bincount(flat[:, u], minlength=n_states).astype(float)
                size = float(len(flat))
                root[u] = (dist, size, float(run[:, u].sum()))
            self.root_.append(root)

        # The pooled chance that stopping in a state is right, shrunk by one visit towards the
        # mean of its rung, so that a state seen once does not count as certain.
        pooled = self.counts_[-1]
        prior = np.array(
            [
                pooled.correct[rows].sum() / max(pooled.visits[rows].sum(), 1.0)
                for rows in self.rung_rows_
            ]
        )
        self.pooled_accuracy_ = (pooled.correct + prior[self.rung_of_]) / (pooled.visits + 1.0)

    # deciding

    def plan(self, lambda_: float) -> _Plan:
        """Return the decisions at price ``lambda_`` for every group and state."""
        key = float(lambda_)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            plan = self._plans[key] = self._solve(key)
        return plan

    def _solve(self, lambda_: float) -> _Plan:
        m = len(self.rungs_)
        n_groups = self.groups.groups
        pooled = self.counts_[-1]
        weight = self.smoothing * self.orderings
        nexts = np.full((n_groups, len(self.states_)), STOP, dtype=np.int64)
        first = np.zeros(n_groups, dtype=np.int64)
        last = self.rung_rows_[m - 1]
        for g in range(n_groups):
            own = self.counts_[g]
            denominator = own.visits + weight
            stop_value = (own.correct + weight * self.pooled_accuracy_) / denominator
            value = np.zeros(len(self.states_))
            value[last] = stop_value[last]
            for t in range(m - 2, -1, -1):
                rows = self.rung_rows_[t]
                best = stop_value[rows].copy()
                choice = np.full(len(rows), STOP, dtype=np.int64)
                seen = pooled.visits[rows] > 0
                later = m - t - 1
                own_next = (own.moves[t] @ value).reshape(later, len(rows))
                pooled_next = (pooled.moves[t] @ value).reshape(later, len(rows))
                pooled_visits = np.maximum(pooled.visits[rows], 1.0)
                expected = (own_next + weight * pooled_next / pooled_visits) / denominator[rows]
                extra = (
                    own.extra_cost[t] + weight * pooled.extra_cost[t] / pooled_visits
                ) / denominator[rows]
                gain = expected - lambda_ * extra
                # The first of equal gains wins, so a tie goes to the cheaper later rung.
                best_u = gain.argmax(axis=0)
                best_gain = gain[best_u, np.arange(len(rows))]
                better = seen & (best_gain > best + 1e-12)
                best = np.where(better, best_gain, best)
                choice = np.where(better, t + 1 + best_u, choice)
                value[rows] = best
                nexts[g, rows] = choice
            own_root, pooled_root = self.root_[g], self.root_[-1]
            best_root = -np.inf
            for u in range(m):
                dist, size, cost_sum = own_root[u]
                p_dist, p_size, p_cost = pooled_root[u]
                total = size + weight
                root_value = (dist @ value + weight * (p_dist @ value) / p_size) / total
                root_cost = (cost_sum + weight * p_cost / p_size) / total
                root_gain = float(root_value - lambda_ * root_cost)
                if root_gain > best_root + 1e-12:
                    best_root, first[g] = root_gain, u
        return _Plan(first, nexts)

    def first_rung(self, features: Mapping[str, float], lambda_: float) -> int:
        """Return the rung (action index) whose sample count the first batch reaches."""
        return int(self.plan(lambda_).first[self.groups.assign_one(features)])

    def next_rung(
        self,
        features: Mapping[str, float],
        rung: int,
        keys: Sequence[str | None],
        lambda_: float,
    ) -> int:
        """Return the rung to draw up to after ``keys`` were drawn at ``rung``, or `STOP`."""
        code = vote_state(rung, keys)
        at = int(np.searchsorted(self.states_, code))
        if at >= len(self.states_) or self.states_[at] != code:
            return STOP
        return int(self.plan(lambda_).next[self.groups.assign_one(features), at])

    # evaluating

    def rollout(self, traj: Trajectories, groups: np.ndarray, lambda_: float) -> Rollout:
        """Run the decisions at ``lambda_`` over recorded orderings; average per question."""
        plan = self.plan(lambda_)
        return _run(traj, groups, plan.first, self._state_decisions(traj, plan, groups))

    def _state_decisions(self, traj: Trajectories, plan: _Plan, groups: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.states_, traj.code)
        index = np.minimum(index, len(self.states_) - 1)
        known = self.states_[index] == traj.code
        decisions = plan.next[groups[:, None, None], index]
        return np.where(known, decisions, STOP)

    def to_bytes(self) -> bytes:
        """Serialise the policy. Load only bytes you wrote yourself: this is a pickle."""
        self._plans.clear()
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


def _run(
    traj: Trajectories, groups: np.ndarray, first: np.ndarray, decisions: np.ndarray
) -> Rollout:
    """Follow per-state decisions from each group's first rung; average over orderings."""
    n, p, m = traj.code.shape
    rung = np.broadcast_to(first[groups][:, None], (n, p)).copy()
    rounds = np.ones((n, p))
    qi, pi = np.meshgrid(np.arange(n), np.arange(p), indexing="ij")
    for _ in range(m):
        nxt = decisions[qi, pi, rung]
        moving = nxt != STOP
        if not moving.any():
            break
        rung = np.where(moving, nxt, rung)
        rounds += moving
    accuracy = traj.correct[qi, pi, rung].mean(axis=1)
    cost = traj.cost[qi, pi, rung].mean(axis=1)
    return Rollout(accuracy, cost, rounds.mean(axis=1))


def early_stop_rollout(traj: Trajectories, confidence: float = 0.95) -> Rollout:
    """Budget-free early stopping, with the stopping criterion of Adaptive-Consistency.

    After each rung the top answer's share against the runner-up gets a Beta posterior from
    the two counts (Aggarwal et al., EMNLP 2023). The request stops once the top answer leads
    with probability at least ``confidence``, at the last rung, or once the question's recorded
    samples are all drawn. Nothing prices the samples, so the cost is whatever the rule spends.
    """
    n, _, m = traj.code.shape
    top = (traj.code // _CODE) % _CODE
    second = traj.code % _CODE
    drawn = (traj.code // _CODE**2) % _CODE
    leads = 1.0 - special.betainc(top + 1.0, second + 1.0, 0.5)
    # A rung past the recorded samples draws nothing, so it is not a round of backend calls.
    exhausted = drawn >= drawn[:, :, -1:]
    decisions = np.where(
        (leads >= confidence) | exhausted, STOP, np.arange(1, m + 1)[None, None, :]
    )
    decisions[:, :, m - 1] = STOP
    return _run(traj, np.zeros(n, dtype=np.int64), np.array([0]), decisions)


def price_ceiling(traj: Trajectories) -> float:
    """Return a price at which the policy draws only the first rung on these orderings.

    No accuracy gain exceeds 1, so at twice 1 / (smallest extra cost) nothing more pays.
    """
    steps = np.diff(traj.cost, axis=2)
    positive = steps[steps > 0]
    return 2.0 / float(positive.min()) if positive.size else 1.0


@dataclass(frozen=True)
class Matched:
    """A mix of the policies at two neighbouring prices that spends a budget on a set."""

    rollout: Rollout
    lambda_: float
    weight: float


def match_budget(
    policy: SequentialPolicy,
    traj: Trajectories,
    groups: np.ndarray,
    budget: float,
    iterations: int = 40,
) -> Matched:
    """Find the price where the mean cost on ``traj`` crosses ``budget`` and split there.

    ``weight`` is the share of requests run at the higher cost side of the crossing. When the
    policy spends less than the budget even at price 0, the price is 0 and the budget is not
    reached, as for the oracle.
    """
    high = price_ceiling(traj)
    low_run = policy.rollout(traj, groups, 0.0)
    if low_run.cost.mean() <= budget:
        return Matched(low_run, 0.0, 0.0)
    low, high_run = 0.0, policy.rollout(traj, groups, high)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        run = policy.rollout(traj, groups, mid)
        if run.cost.mean() > budget:
            low, low_run = mid, run
        else:
            high, high_run = mid, run
    spend_low, spend_high = low_run.cost.mean(), high_run.cost.mean()
    if spend_high >= budget or spend_low == spend_high:
        return Matched(high_run, high, 0.0)
    weight = (budget - spend_high) / (spend_low - spend_high)
    return Matched(high_run.mix(low_run, float(weight)), high, float(weight))
