"""Bounded time series of the controller's price, moving mean cost, budget and action mix."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

__all__ = ["ControllerHistory"]


class ControllerHistory:
    """Points taken from a `~online.controller.DualController`, at most one per ``interval_s``.

    Each point holds the wall-clock time, ``lambda``, the moving mean cost over the
    controller's window, the budget, and the actions counted since the previous point. Only the
    last ``max_points`` points are kept, so memory stays bounded however long the service runs.

    Parameters
    ----------
    interval_s
        Minimum time between two points, in seconds. `observe` takes a point only when this much
        time has passed since the last one, so a caller that observes once per cost report gets
        one point per report or per ``interval_s``, whichever is rarer.
    max_points
        Points kept; older points are dropped.

    Examples
    --------
    >>> history = ControllerHistory(interval_s=1.0, max_points=2)
    >>> state = {"lambda": 0.1, "window_mean_cost": 3.0, "budget": 4.0}
    >>> history.observe(state, {"vote@3": 2}, now_s=10.0)
    True
    >>> history.observe(state, {"vote@3": 5}, now_s=10.5)  # too soon: no point
    False
    >>> history.observe(state, {"vote@3": 6, "vote@9": 1}, now_s=11.0)
    True
    >>> [p["actions"] for p in history.points()]
    [{'vote@3': 2}, {'vote@3': 4, 'vote@9': 1}]
    """

    def __init__(self, interval_s: float = 1.0, max_points: int = 3600) -> None:
        if not (math.isfinite(interval_s) and interval_s >= 0):
            raise ValueError(f"interval_s must be a finite number >= 0, got {interval_s!r}")
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
        self.interval_s = float(interval_s)
        self.max_points = max_points
        self.points_: deque[dict[str, Any]] = deque(maxlen=max_points)
        self._last_s: float | None = None
        self._counted: dict[str, int] = {}

    def start(self, actions: dict[str, int]) -> None:
        """Take ``actions`` (cumulative counts) as the baseline of the first point.

        A controller restored from a snapshot starts with its restored counts, which belong to
        no interval of this history.
        """
        self._counted = dict(actions)

    def observe(
        self, state: dict[str, Any], actions: dict[str, int], now_s: float | None = None
    ) -> bool:
        """Append a point unless the last one is less than ``interval_s`` old.

        ``state`` carries ``lambda``, ``window_mean_cost`` and ``budget``; ``actions`` are the
        cumulative counts of actions chosen, of which the point keeps the increase since the
        previous point. ``now_s`` is the wall-clock time in seconds (default `time.time`).
        Returns whether a point was appended.
        """
        now = time.time() if now_s is None else now_s
        if self._last_s is not None and now - self._last_s < self.interval_s:
            return False
        chosen = {
            name: count - self._counted.get(name, 0)
            for name, count in actions.items()
            if count > self._counted.get(name, 0)
        }
        self.points_.append(
            {
                "time_s": now,
                "lambda": float(state["lambda"]),
                "window_mean_cost": float(state["window_mean_cost"]),
                "budget": float(state["budget"]),
                "actions": chosen,
            }
        )
        self._counted = dict(actions)
        self._last_s = now
        return True

    def points(self) -> list[dict[str, Any]]:
        """Return the points kept, oldest first, as new dicts that the caller may change."""
        return [{**point, "actions": dict(point["actions"])} for point in self.points_]
