"""Value policy, warm-start artifact and features."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from offline.warmstart import build_warmstart, make_training_set, matched_accuracy
from online.actions import ActionSpace
from online.artifact import WarmStart
from online.datasets import load_dataset
from online.features import question_features
from online.lagrangian import lagrangian_argmax
from online.policy import ValuePolicy
from online.tables import uniform_allocation


def test_features_are_stable_and_finite() -> None:
    text = "A baker sells 12 cakes each day for $3.50 each. How much in 7 days?"
    first = question_features(text)
    assert first == question_features(text)
    assert all(np.isfinite(v) for v in first.values())
    assert first["numbers"] == 3.0
    assert question_features(text, {"level": 4})["level"] == 4.0


def test_feature_order_ignores_hash_seed() -> None:
    # Sums over the features in key order must not change from one process to the next.
    code = (
        "from online.features import question_features; "
        "print(list(question_features('Tom has 3 red apples, gives Ann 2 and buys 9 more.')))"
    )
    orders = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        orders.add(result.stdout)
    assert len(orders) == 1


def test_policy_predictions_are_monotone_and_bounded() -> None:
    policy = ValuePolicy(ActionSpace((1, 3, 5)), learning_rate=0.05)
    for _ in range(50):
        policy.learn_one({"a": 1.0}, [0.9, 0.7, 1.2])
    values = policy.predict_values_one({"a": 1.0})
    assert np.all(np.diff(values) >= 0)
    assert values.min() >= 0.0
    assert values.max() <= 1.0


def test_policy_decision_follows_price() -> None:
    policy = ValuePolicy(ActionSpace((1, 3, 5)), prior=[0.5, 0.7, 0.8], shrinkage=0.0)
    x = {"a": 1.0}
    assert policy.decide_one(x, 0.0) == 2
    assert policy.decide_one(x, 0.07) == 1  # 0.7 - 0.21 > 0.8 - 0.35 and > 0.5 - 0.07
    assert policy.decide_one(x, 1.0) == 0


@pytest.mark.parametrize("shrinkage", [0.0, 0.4, 1.0])
def test_policy_decision_matches_numpy_argmax(shrinkage: float) -> None:
    rng = np.random.default_rng(7)
    policy = ValuePolicy(
        ActionSpace((1, 3, 5, 9, 15)),
        learning_rate=0.05,
        prior=[0.5, 0.6, 0.65, 0.7, 0.72],
        shrinkage=shrinkage,
    )
    for _ in range(300):
        x = {"a": float(rng.normal()), "b": float(rng.uniform(0, 5))}
        policy.learn_one(x, list(np.sort(rng.uniform(-0.2, 1.2, size=5))))
    lambdas = [0.0, 1e-4, 0.003, 0.01, 0.02, 0.05, 0.5, 10.0]
    for _ in range(200):
        x = {"a": float(rng.normal(scale=3)), "b": float(rng.uniform(-5, 10))}
        for lambda_ in lambdas:
            expected = int(lagrangian_argmax(policy.predict_values_one(x), policy.costs, lambda_))
            assert policy.decide_one(x, lambda_) == expected, (x, lambda_)


def test_policy_decision_with_nan_prediction_matches_numpy() -> None:
    policy = ValuePolicy(ActionSpace((1, 3, 5)), prior=[0.5, 0.7, 0.8])
    policy.models_[1].intercept = float("nan")
    expected = int(lagrangian_argmax(policy.predict_values_one({"a": 1.0}), policy.costs, 0.01))
    assert policy.decide_one({"a": 1.0}, 0.01) == expected


def test_policy_decision_rejects_bad_price() -> None:
    policy = ValuePolicy(ActionSpace((1, 3)))
    with pytest.raises(ValueError, match="lambda_ must be"):
        policy.decide_one({"a": 1.0}, -0.1)
    with pytest.raises(ValueError, match="lambda_ must be"):
        policy.decide_one({"a": 1.0}, float("nan"))


def test_policy_partial_learning_touches_only_given_actions() -> None:
    policy = ValuePolicy(ActionSpace((1, 3, 5)), prior=[0.5, 0.5, 0.5], learning_rate=0.1)
    for _ in range(30):
        policy.learn_partial_one({"a": 1.0}, {0: 0.9})
    raw = [m.predict_one(policy.scaler_.transform_one({"a": 1.0})) for m in policy.models_]
    assert raw[0] > 0.8
    assert raw[2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"got \[3\]"):
        policy.learn_partial_one({"a": 1.0}, {3: 0.5})


def test_policy_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="shrinkage must be in"):
        ValuePolicy(ActionSpace((1, 3)), shrinkage=1.5)
    with pytest.raises(ValueError, match="prior must have 2 entries"):
        ValuePolicy(ActionSpace((1, 3)), prior=[0.5])


@pytest.fixture(scope="module")
def small_warmstart() -> WarmStart:
    questions = load_dataset("svamp")[:200]
    training = make_training_set(questions, ActionSpace())
    return build_warmstart(training, budget=3.0, epochs=3)


def test_artifact_round_trip(small_warmstart: WarmStart, tmp_path) -> None:
    path = tmp_path / "warm.msgpack"
    small_warmstart.save(path)
    loaded = WarmStart.load(path)
    assert loaded.actions == small_warmstart.actions
    assert loaded.cost_curve == small_warmstart.cost_curve
    assert loaded.lambda_star == small_warmstart.lambda_star
    x = question_features("Tom has 3 apples and eats 1. How many are left?")
    assert np.array_equal(
        loaded.policy.predict_values_one(x), small_warmstart.policy.predict_values_one(x)
    )


def test_artifact_cost_curve_matches_budget(small_warmstart: WarmStart) -> None:
    price = small_warmstart.cost_curve.price_for(3.0)
    assert small_warmstart.cost_curve.cost_at(price) == pytest.approx(3.0, rel=0.05)
    assert small_warmstart.metrics["policy_cost_in_sample"] == pytest.approx(3.0, rel=0.1)


def test_missing_artifact_names_command(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m offline warmstart"):
        WarmStart.load(tmp_path / "absent.msgpack")


def test_bundled_artifact_loads() -> None:
    warm = WarmStart.load()
    assert warm.actions == ActionSpace()
    assert warm.unit == "samples"
    assert 0.0 <= warm.policy.shrinkage <= 1.0


def test_matched_accuracy_spends_budget() -> None:
    rng = np.random.default_rng(0)
    accuracy = np.sort(rng.uniform(0.3, 1.0, size=(300, 3)), axis=1)
    cost = np.tile([1.0, 3.0, 5.0], (300, 1))
    values = accuracy + rng.normal(0, 0.05, size=accuracy.shape)
    acc, spent = matched_accuracy(values, accuracy, cost, 2.5)
    assert spent == pytest.approx(2.5, rel=1e-9)
    assert 0.3 <= acc <= 1.0


def test_uniform_allocation_mixes_neighbours() -> None:
    training = make_training_set(load_dataset("svamp")[:50], ActionSpace())
    acc, spent = uniform_allocation(training.table, 4.0)
    mean = training.table.accuracy.mean(axis=0)
    assert spent == pytest.approx(4.0)
    assert acc == pytest.approx(0.5 * mean[1] + 0.5 * mean[2])


def test_bundled_artifact_has_imitation_policy() -> None:
    warm = WarmStart.load()
    entry = warm.entry("imitation")
    # The imitation policy's cost falls as the price rises, enough to reach common budgets.
    assert entry.cost_curve.costs[0] > 6.0
    for budget in (2.0, 3.0, 4.0):
        price = entry.cost_curve.price_for(budget)
        assert entry.cost_curve.cost_at(price) == pytest.approx(budget, rel=0.1)
    with pytest.raises(KeyError, match="has: value, imitation, sequential"):
        warm.entry("bandit")


def test_bundled_artifact_has_sequential_policy() -> None:
    warm = WarmStart.load()
    entry = warm.entry("sequential")
    # Its mean cost on the training orderings falls with the price across common budgets.
    costs = entry.cost_curve.costs
    assert all(a >= b for a, b in itertools.pairwise(costs))
    for budget in (2.0, 3.0, 4.0):
        price = entry.cost_curve.price_for(budget)
        assert entry.cost_curve.cost_at(price) == pytest.approx(budget, rel=0.05)
    assert entry.policy.first_rung({}, price) >= 0


def test_imitation_policy_learns_from_full_probe_only() -> None:
    from online.imitation import ImitationPolicy

    policy = ImitationPolicy(ActionSpace((1, 3, 5)), learning_rate=0.1)
    policy.learn_partial_one({"a": 1.0}, {0: 0.5, 1: 0.9}, lambda_=0.01)
    assert policy.model_.predict_proba_one({"a": 0.0}) == {}
    for _ in range(100):
        policy.learn_partial_one({"a": 1.0}, {0: 0.5, 1: 0.9, 2: 0.92}, lambda_=0.05)
    assert policy.decide_one({"a": 1.0}, 0.05) == 1  # 0.9 - 0.15 beats 0.5 - 0.05 and 0.92 - 0.25
    with pytest.raises(ValueError, match="label must be in"):
        policy.learn_label_one({"a": 1.0}, 0.05, 3)
