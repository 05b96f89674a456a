"""Controller history: one point per interval at most, bounded, with the actions per interval."""

from __future__ import annotations

import pytest

from online.controller import DualController
from online.history import ControllerHistory

STATE = {"lambda": 0.05, "window_mean_cost": 3.5, "budget": 4.0}


def test_points_at_most_one_per_interval() -> None:
    history = ControllerHistory(interval_s=1.0)
    appended = [history.observe(STATE, {}, now_s=100.0 + 0.25 * i) for i in range(9)]
    # Reports every 0.25 s: a point at 100.0, 101.0 and 102.0.
    assert appended == [True, False, False, False, True, False, False, False, True]
    assert [p["time_s"] for p in history.points()] == [100.0, 101.0, 102.0]


def test_point_per_report_when_reports_are_rarer() -> None:
    history = ControllerHistory(interval_s=1.0)
    for i in range(4):
        assert history.observe(STATE, {}, now_s=10.0 + 5 * i)
    assert len(history.points()) == 4


def test_history_is_bounded() -> None:
    history = ControllerHistory(interval_s=1.0, max_points=5)
    for i in range(12):
        history.observe({**STATE, "lambda": float(i)}, {}, now_s=float(i))
    points = history.points()
    assert len(points) == 5
    assert [p["lambda"] for p in points] == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_actions_counted_per_interval() -> None:
    history = ControllerHistory(interval_s=1.0)
    history.observe(STATE, {"vote@3": 4}, now_s=0.0)
    history.observe(STATE, {"vote@3": 6, "vote@9": 1}, now_s=0.5)  # no point: within 1 s
    history.observe(STATE, {"vote@3": 7, "vote@9": 2}, now_s=1.0)
    history.observe(STATE, {"vote@3": 7, "vote@9": 2}, now_s=2.0)
    actions = [p["actions"] for p in history.points()]
    # The point at 1.0 counts everything since the point at 0.0, including the skipped report.
    assert actions == [{"vote@3": 4}, {"vote@3": 3, "vote@9": 2}, {}]


def test_start_sets_baseline_of_restored_counts() -> None:
    history = ControllerHistory()
    history.start({"vote@5": 100})
    history.observe(STATE, {"vote@5": 103}, now_s=0.0)
    assert history.points()[0]["actions"] == {"vote@5": 3}


def test_point_holds_controller_state() -> None:
    controller = DualController(budget=2.0, step_size=0.5, price_scale=0.1)
    controller.report([(3.0, "vote@3"), (5.0, "vote@5")], "gateway-a")
    history = ControllerHistory()
    state = {**controller.settings(), "window_mean_cost": controller.window_mean_cost}
    history.observe(state, controller.actions_, now_s=1.0)
    (point,) = history.points()
    assert point["lambda"] == controller.lambda_
    assert point["window_mean_cost"] == 4.0
    assert point["budget"] == 2.0
    assert point["actions"] == {"vote@3": 1, "vote@5": 1}


def test_points_are_copies() -> None:
    history = ControllerHistory()
    history.observe(STATE, {"vote@1": 1}, now_s=0.0)
    history.points()[0]["actions"]["vote@1"] = 99
    assert history.points()[0]["actions"] == {"vote@1": 1}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval_s": -1.0}, "interval_s must be a finite number >= 0, got -1.0"),
        ({"interval_s": float("nan")}, "interval_s must be a finite number >= 0, got nan"),
        ({"max_points": 0}, "max_points must be a positive integer, got 0"),
        ({"max_points": 2.5}, "max_points must be a positive integer, got 2.5"),
    ],
)
def test_invalid_settings_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ControllerHistory(**kwargs)
