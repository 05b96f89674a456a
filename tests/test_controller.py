"""Dual controller: budget held on a stationary stream, price near the offline price, retargets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from online.controller import DualController, SettingError, validate_budget, validate_explore
from online.cost_curve import CostCurve
from online.lagrangian import lagrangian_argmax
from online.price_view import PriceView
from online.solve import solve


def synthetic_table(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Concave accuracy curves over k in (1, 3, 5, 9, 15) with question-specific difficulty."""
    rng = np.random.default_rng(seed)
    k = np.array([1.0, 3.0, 5.0, 9.0, 15.0])
    p1 = rng.uniform(0.2, 0.95, size=(n, 1))
    ceiling = np.clip(p1 + rng.uniform(0.0, 0.3, size=(n, 1)), 0, 1)
    rate = rng.uniform(0.1, 0.6, size=(n, 1))
    accuracy = ceiling - (ceiling - p1) * np.exp(-rate * (k - 1))
    cost = np.tile(k, (n, 1))
    return accuracy, cost


def oracle_curve(accuracy: np.ndarray, cost: np.ndarray) -> CostCurve:
    lambdas = np.concatenate([[0.0], np.geomspace(1e-5, 0.5, 300)])
    rows = np.arange(len(accuracy))
    costs = [cost[rows, lagrangian_argmax(accuracy, cost[0], lam)].mean() for lam in lambdas]
    return CostCurve.from_points(lambdas, costs)


def run_stream(
    controller: DualController,
    accuracy: np.ndarray,
    cost: np.ndarray,
    requests: int,
    rng: np.random.Generator,
    in_flight: int = 1,
) -> tuple[list[float], list[float]]:
    """Stream questions drawn with replacement; ``in_flight`` requests overlap."""
    costs, prices = [], []
    pending: list[tuple[int, float, str]] = []
    for _ in range(requests):
        i = int(rng.integers(len(accuracy)))
        action = int(lagrangian_argmax(accuracy[i], cost[i], controller.lambda_))
        ticket = controller.reserve(float(cost[i, action]))
        pending.append((ticket, float(cost[i, action]), f"vote@{int(cost[i, action])}"))
        if len(pending) >= in_flight:
            ticket, billed, name = pending.pop(0)
            controller.complete(ticket, billed, name)
            costs.append(billed)
            prices.append(controller.lambda_)
    for ticket, billed, name in pending:
        controller.complete(ticket, billed, name)
        costs.append(billed)
    return costs, prices


@pytest.mark.parametrize("rule", ["additive", "multiplicative"])
def test_stationary_stream_holds_budget(rule: str) -> None:
    accuracy, cost = synthetic_table()
    budget = 4.0
    star = solve(accuracy, cost, budget)
    controller = DualController(
        budget, oracle_curve(accuracy, cost), step_size=0.05, price_scale=star.lambda_, rule=rule
    )
    costs, prices = run_stream(controller, accuracy, cost, 10_000, np.random.default_rng(0))
    assert np.mean(costs) == pytest.approx(budget, rel=0.01)
    # The price hovers around the offline price of the same budget.
    assert np.median(prices[-5000:]) == pytest.approx(star.lambda_, rel=0.25)


def test_concurrent_requests_hold_budget() -> None:
    accuracy, cost = synthetic_table()
    star = solve(accuracy, cost, 3.0)
    controller = DualController(3.0, None, step_size=0.05, price_scale=star.lambda_)
    costs, _ = run_stream(
        controller, accuracy, cost, 10_000, np.random.default_rng(1), in_flight=64
    )
    assert np.mean(costs) == pytest.approx(3.0, rel=0.01)


def test_retarget_converges_within_1000_requests() -> None:
    accuracy, cost = synthetic_table()
    curve = oracle_curve(accuracy, cost)
    star = solve(accuracy, cost, 4.0)
    controller = DualController(4.0, curve, step_size=0.05, price_scale=star.lambda_)
    rng = np.random.default_rng(2)
    run_stream(controller, accuracy, cost, 2000, rng, in_flight=16)
    controller.set_budget(2.0)
    assert controller.lambda_ == pytest.approx(curve.price_for(2.0), rel=0.2)
    costs, _ = run_stream(controller, accuracy, cost, 1000, rng, in_flight=16)
    assert np.mean(costs[-500:]) == pytest.approx(2.0, rel=0.02)


def test_slack_budget_drives_price_to_zero() -> None:
    accuracy, cost = synthetic_table()
    # Plateaus: beyond five samples nothing improves, so the optimum spends at most 5.
    accuracy[:, 3:] = accuracy[:, 2:3]
    unconstrained = solve(accuracy, cost, 8.0)
    assert unconstrained.lambda_ == 0.0
    controller = DualController(8.0, None, step_size=0.05, price_scale=0.01)
    costs, prices = run_stream(controller, accuracy, cost, 3000, np.random.default_rng(4))
    assert prices[-1] == 0.0
    assert np.mean(costs[-1000:]) == pytest.approx(unconstrained.mean_cost, rel=0.05)


def test_reserve_moves_price_before_completion() -> None:
    controller = DualController(2.0, None, step_size=0.1, price_scale=1.0)
    before = controller.lambda_
    controller.reserve(6.0)
    assert controller.lambda_ == pytest.approx(before + 0.1 * (6.0 - 2.0) / 2.0)


def test_retarget_counts_in_flight_against_new_budget() -> None:
    curve = CostCurve.from_points([0.0, 1.0], [10.0, 1.0])
    controller = DualController(5.0, curve, step_size=0.1, price_scale=1.0)
    controller.reserve(9.0)
    controller.set_budget(3.0)
    jump = curve.price_for(3.0)
    assert controller.lambda_ == pytest.approx(jump + 0.1 * (9.0 - 3.0) / 3.0)


def test_snapshot_round_trip(tmp_path) -> None:
    controller = DualController(3.0, None, step_size=0.05, price_scale=0.01)
    for cost in (1.0, 5.0, 9.0):
        controller.complete(controller.reserve(cost), cost, f"vote@{int(cost)}")
    controller.set_budget(2.5)
    path = tmp_path / "state.msgpack"
    controller.save(path)
    restored = DualController(7.0, None, step_size=0.5, price_scale=0.01)
    restored.restore(path.read_bytes())
    assert restored.lambda_ == controller.lambda_
    assert restored.stats() == controller.stats()


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "4", None, True])
def test_invalid_budget_rejected(bad) -> None:
    with pytest.raises(ValueError, match="budget must be"):
        validate_budget(bad)


def test_invalid_budget_keeps_state() -> None:
    controller = DualController(3.0, None, price_scale=0.01)
    with pytest.raises(ValueError, match="got -2"):
        controller.set_budget(-2)
    assert controller.budget == 3.0


def test_cancel_undoes_reservation_without_counting() -> None:
    controller = DualController(3.0, None, step_size=0.1, price_scale=1.0)
    before = controller.lambda_
    ticket = controller.reserve(15.0)
    controller.cancel(ticket)
    assert controller.lambda_ == pytest.approx(before)
    assert controller.requests_ == 0
    assert controller.actions_ == {}
    assert controller.in_flight == 0


def test_budget_below_cheapest_action_rejected() -> None:
    controller = DualController(3.0, None, price_scale=0.01, min_budget=1.0)
    with pytest.raises(ValueError, match=r"at least 1, the cost of the cheapest action, got 0\.5"):
        controller.set_budget(0.5)
    assert controller.budget == 3.0


def run_replicas(
    controller: DualController,
    accuracy: np.ndarray,
    cost: np.ndarray,
    requests: int,
    rng: np.random.Generator,
    replicas: int = 4,
    batch: int = 20,
    in_flight: int = 16,
) -> list[float]:
    """Round-robin requests over replicas that report to the controller every ``batch``."""
    from online.price_view import PriceView

    views = [PriceView(controller.settings()) for _ in range(replicas)]
    pending: list[list[tuple[int, float, str]]] = [[] for _ in range(replicas)]
    costs: list[float] = []
    for n in range(requests):
        r = n % replicas
        view = views[r]
        i = int(rng.integers(len(accuracy)))
        action = int(lagrangian_argmax(accuracy[i], cost[i], view.price()))
        billed = float(cost[i, action])
        pending[r].append((view.reserve(billed), billed, f"vote@{int(billed)}"))
        if len(pending[r]) >= in_flight:
            ticket, done, name = pending[r].pop(0)
            view.complete(ticket, done, name)
            costs.append(done)
        if view.unreported >= batch:
            controller.report(view.take_report(), source=f"replica-{r}", now_s=float(n))
            view.publish(controller.settings(now_s=float(n)))
    return costs


def test_four_replicas_with_stale_prices_hold_budget() -> None:
    accuracy, cost = synthetic_table()
    star = solve(accuracy, cost, 3.0)
    controller = DualController(
        3.0, oracle_curve(accuracy, cost), step_size=0.05, price_scale=star.lambda_
    )
    costs = run_replicas(controller, accuracy, cost, 10_000, np.random.default_rng(5))
    assert np.mean(costs) == pytest.approx(3.0, rel=0.01)
    assert controller.settings(now_s=10_000.0)["replicas"] == 4
    assert controller.lambda_ == pytest.approx(star.lambda_, rel=0.5)


def test_four_replicas_follow_retarget() -> None:
    accuracy, cost = synthetic_table()
    curve = oracle_curve(accuracy, cost)
    star = solve(accuracy, cost, 4.0)
    controller = DualController(4.0, curve, step_size=0.05, price_scale=star.lambda_)
    rng = np.random.default_rng(6)
    run_replicas(controller, accuracy, cost, 2000, rng)
    controller.set_budget(2.0)
    costs = run_replicas(controller, accuracy, cost, 1000, rng)
    assert np.mean(costs[-500:]) == pytest.approx(2.0, rel=0.02)


def test_resent_report_batch_is_dropped() -> None:
    controller = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    assert controller.report([(3.0, "vote@3")], "gateway-a", batch=1)
    price = controller.lambda_
    assert not controller.report([(3.0, "vote@3")], "gateway-a", batch=1)
    assert controller.requests_ == 1
    assert controller.lambda_ == price
    # Batches are numbered per source.
    assert controller.report([(1.0, "vote@1")], "gateway-b", batch=1)
    assert controller.requests_ == 2


def test_snapshot_keeps_applied_batches() -> None:
    controller = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    controller.report([(3.0, "vote@3")], "gateway-a", batch=4)
    restored = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    restored.restore(controller.snapshot())
    assert not restored.report([(3.0, "vote@3")], "gateway-a", batch=4)
    assert restored.report([(3.0, "vote@3")], "gateway-a", batch=5)
    assert restored.requests_ == 2


def test_price_view_resends_a_batch_until_acknowledged() -> None:
    view = PriceView({"lambda": 0.1, "budget": 2.0, "step_size": 0.5, "price_scale": 0.1,
                      "rule": "additive"})  # fmt: skip
    view.complete(view.reserve(4.0), 4.0, "vote@5")
    priced = view.price()
    first = view.next_batch()
    view.complete(view.reserve(2.0), 2.0, "vote@3")
    # The unacknowledged batch still moves the price, and comes back unchanged.
    assert view.price() == priced
    assert view.next_batch() == first
    view.acknowledge(first[0])
    batch, report = view.next_batch()
    assert batch == first[0] + 1
    assert report == [(2.0, "vote@3")]


def test_stats_count_requests_per_source() -> None:
    controller = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    controller.report([(3.0, "vote@3"), (1.0, "vote@1")], "gateway-a", batch=1)
    controller.report([(5.0, "vote@5")], "gateway-b", batch=1)
    controller.report([], "gateway-b", batch=2)  # an empty report only marks the source active
    controller.report([(5.0, "vote@5")], "gateway-b", batch=1)  # a resent copy: dropped
    stats = controller.stats()
    assert stats["sources"] == {"gateway-a": 2, "gateway-b": 1}
    assert stats["active_sources"] == 2
    assert stats["requests"] == 3
    assert stats["window_mean_cost"] == pytest.approx(3.0)


def probing_controller(budget: float = 3.0, explore: float = 0.0) -> DualController:
    """A controller for actions of 1 to 15 samples whose probes run the 15-sample action."""
    curve = CostCurve.from_points([0.0, 0.1], [15.0, 1.0])
    return DualController(
        budget, curve, step_size=0.05, price_scale=0.01, min_budget=1.0, explore=explore,
        probe_cost=15.0,
    )  # fmt: skip


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.1", None, True])
def test_invalid_explore_rejected(bad) -> None:
    with pytest.raises(ValueError, match=r"explore must be a number in \[0, 1\), got"):
        validate_explore(bad)


def test_configure_changes_all_settings() -> None:
    controller = probing_controller()
    changed = controller.configure(budget=4.0, step_size=0.1, explore=0.05)
    assert changed == {"budget": 4.0, "step_size": 0.1, "explore": 0.05}
    settings = controller.settings()
    assert settings["budget"] == 4.0
    assert settings["step_size"] == 0.1
    assert settings["explore"] == 0.05
    assert controller.stats()["explore"] == 0.05
    assert controller.stats()["step_size"] == 0.1


def test_configure_unchanged_budget_keeps_price() -> None:
    controller = probing_controller()
    controller.complete(controller.reserve(9.0), 9.0, "vote@9")
    price = controller.lambda_
    assert controller.configure(budget=3.0, explore=0.05) == {"explore": 0.05}
    assert controller.lambda_ == price
    assert controller.requests_since_budget_ == 1


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"explore": 1.0}, "explore", r"explore must be a number in \[0, 1\), got 1\.0"),
        ({"explore": "0.1"}, "explore", r"got '0\.1'"),
        ({"step_size": 0}, "step_size", r"step_size must be a positive finite number, got 0"),
        ({"budget": 0.5}, "budget", r"cheapest action, got 0\.5"),
        # 0.2 * 15 + 0.8 * 1 = 3.8 exceeds the budget of 3.
        ({"explore": 0.2}, "explore", r"at most 0\.1429 at budget 3, .* got 0\.2"),
        ({"budget": 2.0, "explore": 0.1}, "budget", r"at least 2\.4 at explore 0\.1, .* got 2\.0"),
        ({"budget": 4.0, "step_size": -1.0, "explore": 0.1}, "step_size", r"got -1\.0"),
    ],
)
def test_invalid_configure_changes_nothing(changes, field, message) -> None:
    controller = probing_controller()
    before = controller.settings()
    with pytest.raises(SettingError, match=message) as caught:
        controller.configure(**changes)
    assert caught.value.field == field
    assert controller.settings() == before


def test_explore_rejected_without_probe_cost() -> None:
    controller = DualController(3.0, None, price_scale=0.01, min_budget=1.0)
    with pytest.raises(SettingError, match=r"does not learn from probes, got 0\.1"):
        controller.configure(explore=0.1)
    assert controller.explore == 0.0
    with pytest.raises(SettingError, match="explore"):
        DualController(3.0, None, price_scale=0.01, explore=0.1)


def test_budget_floor_rises_with_explore() -> None:
    controller = probing_controller(explore=0.1)
    assert controller.budget_floor(0.0) == 1.0
    assert controller.budget_floor(0.1) == pytest.approx(2.4)
    with pytest.raises(SettingError, match=r"at least 2\.4 at explore 0\.1"):
        controller.set_budget(2.0)
    assert controller.budget == 3.0
    with pytest.raises(SettingError, match="budget"):
        probing_controller(budget=2.0, explore=0.1)


def test_probes_hold_budget() -> None:
    """A tenth of the requests cost 15; the controller pushes the others down to compensate."""
    accuracy, cost = synthetic_table()
    controller = DualController(
        4.0, oracle_curve(accuracy, cost), step_size=0.05,
        price_scale=solve(accuracy, cost, 4.0).lambda_, min_budget=1.0, explore=0.1,
        probe_cost=15.0,
    )  # fmt: skip
    rng = np.random.default_rng(7)
    costs = []
    for _ in range(10_000):
        i = int(rng.integers(len(accuracy)))
        probe = rng.random() < controller.explore
        action = 4 if probe else int(lagrangian_argmax(accuracy[i], cost[i], controller.lambda_))
        billed = float(cost[i, action])
        controller.complete(controller.reserve(billed), billed, f"vote@{int(billed)}")
        costs.append(billed)
    assert np.mean(costs) == pytest.approx(4.0, rel=0.01)


def test_learning_totals_sum_active_sources() -> None:
    controller = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    controller.report([], "gateway-a", now_s=0.0, learning={"probes": 3, "labels_learned": 3})
    controller.report([], "gateway-b", now_s=0.0, learning={"probes": 1, "labels_learned": 0})
    # Running totals replace the earlier ones, so a resent report does not count twice.
    controller.report([], "gateway-a", now_s=5.0, learning={"probes": 4, "labels_learned": 4})
    controller.report([], "gateway-a", now_s=5.0, learning={"probes": 4, "labels_learned": 4})
    stats = controller.stats(now_s=10.0)
    assert stats["probes"] == 5
    assert stats["labels_learned"] == 4
    # gateway-b last reported at 0 s, so at 31 s it no longer counts.
    stats = controller.stats(now_s=31.0)
    assert stats["probes"] == 4
    assert stats["labels_learned"] == 4


def test_snapshot_keeps_step_size_and_explore() -> None:
    controller = probing_controller()
    controller.configure(step_size=0.2, explore=0.1)
    restored = probing_controller()
    restored.restore(controller.snapshot())
    assert restored.step_size == 0.2
    assert restored.explore == 0.1
    assert restored.settings() == controller.settings()


def test_version_1_snapshot_loads() -> None:
    import msgpack

    old = {
        "version": 1, "budget": 2.5, "lambda": 0.02, "step_size": 0.1, "rule": "additive",
        "requests": 7, "total_cost": 21.0, "requests_since_budget": 2, "cost_since_budget": 6.0,
        "window": [3.0, 3.0], "actions": {"vote@3": 7}, "batches": {"gateway-a": 3},
        "extra": {"config_budget": 2.5},
    }  # fmt: skip
    restored = probing_controller(explore=0.05)
    extra = restored.restore(msgpack.packb(old))
    assert extra == {"config_budget": 2.5}
    assert restored.budget == 2.5
    assert restored.step_size == 0.1
    assert restored.requests_ == 7
    # Version 1 had no exploration rate, so the controller keeps its own.
    assert restored.explore == 0.05


def test_price_view_adopts_explore() -> None:
    state = {"lambda": 0.1, "budget": 2.0, "step_size": 0.5, "price_scale": 0.1,
             "rule": "additive"}  # fmt: skip
    view = PriceView(state)
    assert view.explore == 0.0
    view.publish({**state, "explore": 0.25})
    assert view.explore == 0.25


def test_stats_in_flight_sums_active_sources() -> None:
    controller = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    controller.reserve(3.0)
    controller.report([], "gateway-a", now_s=0.0, in_flight=5)
    controller.report([], "gateway-b", now_s=20.0, in_flight=2)
    assert controller.stats(now_s=25.0)["in_flight"] == 8
    # gateway-a last reported at 0 s, so at 31 s its requests no longer count.
    assert controller.stats(now_s=31.0)["in_flight"] == 3
    controller.report([], "gateway-b", now_s=40.0, in_flight=0)
    assert controller.stats(now_s=41.0)["in_flight"] == 1
