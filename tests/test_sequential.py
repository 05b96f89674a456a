"""The sequential policy: recorded orderings, the priced stopping rule and budget matching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from online.actions import ActionSpace
from online.sequential import (
    STOP,
    Outcomes,
    SequentialPolicy,
    Trajectories,
    early_stop_rollout,
    match_budget,
    vote_state,
)
from online.vote_accuracy import vote_accuracy

ACTIONS = ActionSpace((1, 3, 5, 9))
RUNGS = tuple(range(1, 10))


def outcome(keys: list[str | None], right: set[str]) -> Outcomes:
    names = {k for k in keys if k is not None}
    return Outcomes(tuple(keys), {k: k in right for k in names}, (1.0,) * len(keys))


def mixed_questions(n: int = 120, seed: int = 3) -> list[Outcomes]:
    """Easy questions (the right answer dominates) and hard ones (a near coin toss)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        share = 0.9 if i % 2 else 0.5
        keys: list[str | None] = [
            "r" if rng.random() < share else str(rng.integers(1, 3)) for _ in range(12)
        ]
        out.append(outcome(keys, {"r"}))
    return out


def test_orderings_match_exact_vote_accuracy() -> None:
    # Two right answers, two of one wrong answer, one of another, one without an answer.
    keys: list[str | None] = ["a", "a", "b", "b", "c", None]
    traj = Trajectories.sample([outcome(keys, {"a"})], (1, 2, 3, 4, 6), orderings=20000, seed=1)
    for r, k in enumerate(traj.rungs):
        exact = vote_accuracy([2, 2, 1], [True, False, False], 1, k)
        estimate = traj.correct[0, :, r].mean()
        error = np.sqrt(exact * (1 - exact) / 20000)
        assert abs(estimate - exact) <= 4 * error + 1e-12, (k, estimate, exact)


def test_tie_goes_to_the_first_answer_drawn() -> None:
    traj = Trajectories.sample([outcome(["a", "b"], {"a"})], (2,), orderings=4000, seed=2)
    assert traj.correct[0, :, 0].mean() == pytest.approx(0.5, abs=0.04)


def test_rungs_beyond_the_samples_draw_them_all() -> None:
    traj = Trajectories.sample([outcome(["a", "a", "b"], {"a"})], (1, 3, 5), orderings=10)
    assert np.all(traj.cost[0, :, 2] == 3.0)
    assert np.all(traj.correct[0, :, 2])


def test_live_vote_state_matches_orderings() -> None:
    traj = Trajectories.sample([outcome(["x", "y", "x", None], {"x"})], (1, 2, 3, 4), 50)
    codes = set(traj.code[0, :, 3].tolist())
    assert codes == {vote_state(3, ["x", "y", "x", None])}


@pytest.fixture(scope="module")
def fitted() -> tuple[SequentialPolicy, Trajectories, list[Outcomes]]:
    outcomes = mixed_questions()
    traj = Trajectories.sample(outcomes, RUNGS, orderings=64, seed=0)
    features = [{"odd": float(i % 2)} for i in range(len(outcomes))]
    policy = SequentialPolicy.fit(traj, features, outcomes, ACTIONS, groups=2)
    return policy, traj, outcomes


def test_high_price_draws_one_sample(fitted: tuple) -> None:
    policy, traj, _ = fitted
    run = policy.rollout(traj, np.zeros(traj.questions, dtype=np.int64), 10.0)
    assert np.all(run.cost == 1.0)
    assert np.all(run.rounds == 1.0)


def test_lower_price_spends_more(fitted: tuple) -> None:
    policy, traj, _ = fitted
    groups = np.zeros(traj.questions, dtype=np.int64)
    spend = [policy.rollout(traj, groups, lam).cost.mean() for lam in (0.2, 0.05, 0.01, 0.0)]
    assert spend == sorted(spend)
    assert spend[-1] > spend[0]


def test_agreement_stops_early_and_disagreement_goes_on(fitted: tuple) -> None:
    policy, _, _ = fitted
    features = {"odd": 1.0}
    lam = 0.01
    first = policy.first_rung(features, lam)
    agreeing = policy.next_rung(features, 1, ["r", "r"], lam)
    split = policy.next_rung(features, 1, ["r", "2"], lam)
    assert first >= 0
    assert agreeing == STOP
    assert split > 1


def test_unknown_state_stops(fitted: tuple) -> None:
    policy, _, _ = fitted
    # Nine null answers never occur in the training orderings.
    assert policy.next_rung({"odd": 0.0}, 8, [None] * 9, 0.0) == STOP


@pytest.mark.parametrize("budget", [1.5, 2.5, 4.0])
def test_match_budget_spends_exactly(fitted: tuple, budget: float) -> None:
    policy, traj, outcomes = fitted
    groups = policy.groups.assign([{"odd": float(i % 2)} for i in range(len(outcomes))])
    matched = match_budget(policy, traj, groups, budget)
    assert matched.rollout.cost.mean() == pytest.approx(budget, rel=1e-9)
    assert 0.0 <= matched.weight <= 1.0


def test_groups_put_easy_and_hard_apart(fitted: tuple) -> None:
    policy, _, _ = fitted
    assert policy.groups.assign_one({"odd": 1.0}) != policy.groups.assign_one({"odd": 0.0})


def test_policy_survives_pickling(fitted: tuple) -> None:
    policy, _, _ = fitted
    copy = pickle.loads(policy.to_bytes())
    features = {"odd": 0.0}
    assert copy.first_rung(features, 0.02) == policy.first_rung(features, 0.02)
    assert copy.next_rung(features, 2, ["r", "1", "2"], 0.02) == policy.next_rung(
        features, 2, ["r", "1", "2"], 0.02
    )


def test_early_stop_waits_for_a_confident_lead() -> None:
    # Beta(k + 1, 1) puts mass 1 - 0.5 ** (k + 1) above one half: four agreeing samples are
    # the first to pass 0.95.
    traj = Trajectories.sample([outcome(["a"] * 9, {"a"})], RUNGS, orderings=4)
    run = early_stop_rollout(traj)
    assert run.cost[0] == 4.0
    assert run.rounds[0] == 4.0
    assert run.accuracy[0] == 1.0


def test_early_stop_ends_when_samples_run_out() -> None:
    # Three samples that split two to one never give a confident lead. Rungs 4 to 9 draw
    # nothing more, so they are not rounds.
    traj = Trajectories.sample([outcome(["a", "a", "b"], {"a"})], RUNGS, orderings=8)
    run = early_stop_rollout(traj)
    assert run.cost[0] == 3.0
    assert run.rounds[0] == 3.0
