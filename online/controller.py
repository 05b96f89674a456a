"""Dual controller: owns the price ``lambda`` and holds the mean cost at the budget.

After each request the price takes a projected dual-ascent step on the measured cost::

    additive:        lambda <- max(0, lambda + step_size * price_scale * (c - B) / B)
    multiplicative:  lambda <- lambda * exp(step_size * (c - B) / B)   (dual mirror descent)

(Balseiro, Lu, Mirrokni, "Dual Mirror Descent for Online Allocation Problems", 2020.)
A request reserves its expected cost when it is dispatched, and the step is corrected by the
difference when its measured cost arrives, so a burst of concurrent requests moves the price
before any of them finishes. A new budget jumps the price to the policy's cost curve and counts
the requests still in flight against the new budget.

The controller also owns the exploration rate ``explore``: the fraction of requests that run
the largest action as a probe to train the policy. Probes are billed and counted like any
request, so the budget holds as long as it covers them (see `DualController.budget_floor`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import msgpack

from online.cost_curve import CostCurve

__all__ = ["DualController", "SettingError", "validate_budget", "validate_explore"]

logger = logging.getLogger(__name__)

UpdateRule = Literal["additive", "multiplicative"]

SOURCE_TTL_S = 30.0
"""An allocator that has not reported for this long no longer counts as active."""
# Version 2 added ``explore``. A version 1 snapshot keeps the exploration rate it is loaded into.
_SNAPSHOT_VERSION = 2
_SNAPSHOT_VERSIONS = (1, 2)


class SettingError(ValueError):
    """An invalid value of the live setting ``field``: ``budget``, ``step_size`` or ``explore``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validate_budget(budget: Any, min_budget: float = 0.0) -> float:
    """Return ``budget`` as a float; raise `ValueError` unless it is finite, positive and at
    least ``min_budget`` (the cost of the cheapest action, below which no policy can go)."""
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ValueError(f"budget must be a number, got {budget!r}")
    value = float(budget)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget must be a positive finite number, got {budget!r}")
    if value < min_budget:
        raise ValueError(
            f"budget must be at least {min_budget:g}, the cost of the cheapest action, "
            f"got {budget!r}"
        )
    return value


def validate_explore(explore: Any) -> float:
    """Return ``explore`` as a float, or raise `ValueError` unless it is a number in [0, 1).

    A rate of 1 would leave no request to the policy, so it is excluded.
    """
    if isinstance(explore, bool) or not isinstance(explore, int | float):
        raise ValueError(f"explore must be a number in [0, 1), got {explore!r}")
    if not (math.isfinite(explore) and 0 <= explore < 1):
        raise ValueError(f"explore must be a number in [0, 1), got {explore!r}")
    return float(explore)


class DualController:
    """Price controller for a mean-cost budget.

    Parameters
    ----------
    budget
        Target mean cost per request, in ``unit``.
    cost_curve
        The policy's mean cost against the price, for warm starts and retargets.
    step_size
        Dimensionless step; the additive rule multiplies it by ``price_scale``.
    price_scale
        Typical size of the price, so that one step size suits any cost unit.
    rule
        ``"additive"`` (projected dual ascent) or ``"multiplicative"`` (dual mirror descent).
    window
        Number of recent requests in ``window_mean_cost``.
    unit
        Name of the cost unit, reported with the budget.
    min_budget
        Smallest budget accepted: the cost of the cheapest action.
    explore
        Fraction of requests that allocators run as exploration probes, in [0, 1).
    probe_cost
        Cost of a probe (the largest action). None when the served policy does not learn from
        probes, and then ``explore`` must be 0.

    Examples
    --------
    >>> curve = CostCurve.from_points([0.0, 0.1], [5.0, 1.0])
    >>> ctl = DualController(budget=3.0, cost_curve=curve, step_size=0.5, price_scale=0.1)
    >>> ctl.lambda_
    0.05
    >>> ticket = ctl.reserve(3.0)
    >>> ctl.complete(ticket, 6.0, "vote@5")
    >>> round(ctl.lambda_, 6)  # overspent by 100%: one step of 0.5 * 0.1
    0.1
    """

    def __init__(
        self,
        budget: float,
        cost_curve: CostCurve | None = None,
        step_size: float = 0.05,
        price_scale: float = 1.0,
        rule: UpdateRule = "additive",
        window: int = 500,
        unit: str = "samples",
        min_budget: float = 0.0,
        explore: float = 0.0,
        probe_cost: float | None = None,
    ) -> None:
        self.min_budget = float(min_budget)
        self.probe_cost = None if probe_cost is None else float(probe_cost)
        self.explore = self._checked_explore(explore)
        self.budget = self._checked_budget(budget, self.explore)
        self.cost_curve = cost_curve
        self.step_size = self._validate_step(step_size)
        if not (math.isfinite(price_scale) and price_scale > 0):
            raise ValueError(f"price_scale must be positive, got {price_scale!r}")
        self.price_scale = float(price_scale)
        if rule not in ("additive", "multiplicative"):
            raise ValueError(f"rule must be 'additive' or 'multiplicative', got {rule!r}")
        self.rule: UpdateRule = rule
        self.unit = unit
        self.lambda_ = self._warm_price(self.budget)
        self.requests_ = 0
        self.total_cost_ = 0.0
        self.requests_since_budget_ = 0
        self.cost_since_budget_ = 0.0
        self.window_: deque[float] = deque(maxlen=window)
        self.actions_: dict[str, int] = {}
        self._in_flight: dict[int, float] = {}
        self._tickets = itertools.count()
        self._sources: dict[str, float] = {}
        # Requests reported by each source since this controller started (not snapshotted).
        self.source_requests_: dict[str, int] = {}
        # Last report batch applied from each source, so that a resent copy is dropped.
        self._batches: dict[str, int] = {}
        # Each source's running totals of probes and labels learned, as it last reported them.
        self._learning: dict[str, dict[str, int]] = {}
        self._source_in_flight: dict[str, int] = {}

    @staticmethod
    def _validate_step(step_size: Any) -> float:
        if isinstance(step_size, bool) or not isinstance(step_size, int | float):
            raise ValueError(f"step_size must be a number, got {step_size!r}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        return float(step_size)

    def _checked_explore(self, explore: Any) -> float:
        try:
            value = validate_explore(explore)
        except ValueError as exc:
            raise SettingError("explore", str(exc)) from None
        if value > 0 and self.probe_cost is None:
            raise SettingError(
                "explore",
                f"explore must be 0 because the served policy does not learn from probes, "
                f"got {explore!r}",
            )
        return value

    def _checked_budget(self, budget: Any, explore: float) -> float:
        try:
            value = validate_budget(budget, self.min_budget)
        except ValueError as exc:
            raise SettingError("budget", str(exc)) from None
        floor = self.budget_floor(explore)
        if value < floor:
            raise SettingError(
                "budget",
                f"budget must be at least {floor:g} at explore {explore:g}, because probes cost "
                f"{self.probe_cost:g} and other requests at least {self.min_budget:g}, "
                f"got {budget!r}",
            )
        return value

    def budget_floor(self, explore: float) -> float:
        """Return the lowest mean cost reachable at exploration rate ``explore``.

        Probes cost ``probe_cost`` and every other request at least ``min_budget``. Below this
        floor the budget cannot be met, and the price would rise without end.

        >>> DualController(3.0, min_budget=1.0, probe_cost=15.0).budget_floor(0.05)
        1.7
        """
        if explore == 0 or self.probe_cost is None:
            return self.min_budget
        return explore * self.probe_cost + (1 - explore) * self.min_budget

    def _warm_price(self, budget: float) -> float:
        if self.cost_curve is None:
            return self.price_scale
        return self.cost_curve.price_for(budget)

    def price_after(self, lambda_: float, overspend: float) -> float:
        """Return the price that ``lambda_`` becomes after a total ``overspend`` (cost minus
        budget, summed over requests), without changing the controller."""
        error = overspend / self.budget
        if self.rule == "additive":
            return max(0.0, lambda_ + self.step_size * self.price_scale * error)
        floor = 1e-6 * self.price_scale
        return max(floor, lambda_) * math.exp(self.step_size * error)

    def _step(self, delta_cost: float) -> None:
        """Move the price by the overspend ``delta_cost`` (negative when under budget)."""
        self.lambda_ = self.price_after(self.lambda_, delta_cost)

    def report(
        self,
        finished: list[tuple[float, str]],
        source: str = "local",
        now_s: float | None = None,
        batch: int | None = None,
        learning: dict[str, int] | None = None,
        in_flight: int | None = None,
    ) -> bool:
        """Record requests that allocator ``source`` decided on its own view of the price.

        Each ``(cost, action)`` steps the price by ``cost - budget``, as `complete` does for a
        request that reserved nothing here. ``now_s`` (monotonic seconds) dates the report for
        `active_sources`. ``batch`` numbers a source's reports from 1 up: a batch no later than
        the last one applied from that source is a copy sent again, and is dropped. ``learning``
        contains the source's running totals ``probes`` and ``labels_learned``, which replace
        the ones it reported before. ``in_flight`` is how many requests the source has
        dispatched and not finished. Returns whether the report was applied.
        """
        self._sources[source] = time.monotonic() if now_s is None else now_s
        if learning is not None:
            self._learning[source] = {
                "probes": int(learning.get("probes", 0)),
                "labels_learned": int(learning.get("labels_learned", 0)),
            }
        if in_flight is not None:
            self._source_in_flight[source] = int(in_flight)
        if batch is not None:
            if batch <= self._batches.get(source, 0):
                return False
            self._batches[source] = batch
        if finished:
            self.source_requests_[source] = self.source_requests_.get(source, 0) + len(finished)
        for cost, action in finished:
            self._step(float(cost) - self.budget)
            self._count(float(cost), action)
        return True

    def active_sources(self, now_s: float | None = None) -> int:
        """Return how many allocators reported within `SOURCE_TTL_S`, at least 1."""
        now = time.monotonic() if now_s is None else now_s
        live = sum(1 for seen in self._sources.values() if now - seen <= SOURCE_TTL_S)
        return max(1, live)

    def settings(self, now_s: float | None = None) -> dict[str, Any]:
        """Return what an allocator needs to step the price locally (see `PriceView`)."""
        return {
            "lambda": self.lambda_,
            "budget": self.budget,
            "step_size": self.step_size,
            "price_scale": self.price_scale,
            "rule": self.rule,
            "replicas": self.active_sources(now_s),
            "explore": self.explore,
        }

    def reserve(self, expected_cost: float) -> int:
        """Register a dispatched request with its expected cost; return its ticket."""
        ticket = next(self._tickets)
        self._in_flight[ticket] = float(expected_cost)
        self._step(float(expected_cost) - self.budget)
        return ticket

    def complete(self, ticket: int, cost: float, action: str) -> None:
        """Record a finished request's measured cost and correct the reserved step.

        An unknown ticket (for example one issued before a restart) counts as a request that
        reserved nothing.
        """
        expected = self._in_flight.pop(ticket, None)
        if expected is None:
            self._step(cost - self.budget)
        else:
            self._step(cost - expected)
        self._count(cost, action)

    def _count(self, cost: float, action: str) -> None:
        self.requests_ += 1
        self.total_cost_ += cost
        self.requests_since_budget_ += 1
        self.cost_since_budget_ += cost
        self.window_.append(cost)
        self.actions_[action] = self.actions_.get(action, 0) + 1

    def cancel(self, ticket: int) -> None:
        """Withdraw a reservation whose request billed nothing (it failed before sampling).

        The price steps back as if the request had never been dispatched, and nothing is
        counted. An unknown ticket is ignored.
        """
        expected = self._in_flight.pop(ticket, None)
        if expected is not None:
            self._step(self.budget - expected)

    def set_budget(self, budget: float) -> None:
        """Retarget: jump to the cost curve's price for ``budget``, then correct from there.

        Requests in flight count against the new budget, because they finish after the change.
        """
        self._retarget(self._checked_budget(budget, self.explore))

    def _retarget(self, new: float) -> None:
        old, old_lambda = self.budget, self.lambda_
        self.budget = new
        self.lambda_ = self._warm_price(new)
        for expected in self._in_flight.values():
            self._step(expected - new)
        self.requests_since_budget_ = 0
        self.cost_since_budget_ = 0.0
        logger.info(
            "budget changed from %s to %s; lambda from %.6g to %.6g",
            old,
            new,
            old_lambda,
            self.lambda_,
        )

    def set_step_size(self, step_size: float) -> None:
        self.configure(step_size=step_size)

    def configure(
        self, budget: Any = None, step_size: Any = None, explore: Any = None
    ) -> dict[str, float]:
        """Change any of the budget, the step size and the exploration rate, all or none.

        None leaves a setting as it is. The budget must reach `budget_floor` at the new rate.
        Raises `SettingError` for the first invalid value, and then changes nothing. A budget
        that differs from the current one retargets as `set_budget` does. Returns the settings
        that changed, with their new values.
        """
        new_explore = self.explore if explore is None else self._checked_explore(explore)
        new_step = self.step_size
        if step_size is not None:
            try:
                new_step = self._validate_step(step_size)
            except ValueError as exc:
                raise SettingError("step_size", str(exc)) from None
        if budget is not None:
            new_budget = self._checked_budget(budget, new_explore)
        elif self.budget < self.budget_floor(new_explore):
            # Above the floor only when probing is possible, so probe_cost is set here.
            probe_cost = float(self.probe_cost or 0.0)
            highest = (self.budget - self.min_budget) / (probe_cost - self.min_budget)
            raise SettingError(
                "explore",
                f"explore must be at most {highest:.4g} at budget {self.budget:g}, because "
                f"probes cost {probe_cost:g} and other requests at least "
                f"{self.min_budget:g}, got {explore!r}",
            )
        else:
            new_budget = self.budget

        changed: dict[str, float] = {}
        if new_step != self.step_size:
            logger.info("step_size changed from %s to %s", self.step_size, new_step)
            self.step_size = changed["step_size"] = new_step
        if new_explore != self.explore:
            logger.info("explore changed from %s to %s", self.explore, new_explore)
            self.explore = changed["explore"] = new_explore
        if new_budget != self.budget:
            self._retarget(new_budget)
            changed["budget"] = new_budget
        return changed

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def window_mean_cost(self) -> float:
        """Mean cost of the last ``window`` requests; 0 before the first request."""
        return sum(self.window_) / len(self.window_) if self.window_ else 0.0

    def stats(self, now_s: float | None = None) -> dict[str, Any]:
        """Return the counters that ``GET /v1/stats`` reports.

        ``probes`` and ``labels_learned`` add up the running totals of the allocators active
        within `SOURCE_TTL_S` of ``now_s`` (monotonic seconds). ``in_flight`` counts the
        requests reserved here plus those that the active allocators last reported in flight.
        """
        now = time.monotonic() if now_s is None else now_s

        def live(source: str) -> bool:
            return now - self._sources.get(source, -math.inf) <= SOURCE_TTL_S

        active = [totals for source, totals in self._learning.items() if live(source)]
        elsewhere = sum(n for source, n in self._source_in_flight.items() if live(source))
        return {
            "requests": self.requests_,
            "total_cost": self.total_cost_,
            "mean_cost": self.total_cost_ / self.requests_ if self.requests_ else 0.0,
            "window_mean_cost": self.window_mean_cost,
            "budget": self.budget,
            "lambda": self.lambda_,
            "unit": self.unit,
            "in_flight": self.in_flight + elsewhere,
            "requests_since_budget": self.requests_since_budget_,
            "mean_cost_since_budget": (
                self.cost_since_budget_ / self.requests_since_budget_
                if self.requests_since_budget_
                else 0.0
            ),
            "actions": dict(self.actions_),
            "active_sources": self.active_sources(now),
            "sources": dict(self.source_requests_),
            "step_size": self.step_size,
            "explore": self.explore,
            "probes": sum(totals["probes"] for totals in active),
            "labels_learned": sum(totals["labels_learned"] for totals in active),
        }

    def snapshot(self, extra: dict[str, Any] | None = None) -> bytes:
        """Serialise the state that a restart must keep (msgpack), with the caller's ``extra``."""
        return msgpack.packb(
            {
                "version": _SNAPSHOT_VERSION,
                "budget": self.budget,
                "lambda": self.lambda_,
                "step_size": self.step_size,
                "explore": self.explore,
                "rule": self.rule,
                "requests": self.requests_,
                "total_cost": self.total_cost_,
                "requests_since_budget": self.requests_since_budget_,
                "cost_since_budget": self.cost_since_budget_,
                "window": list(self.window_),
                "actions": self.actions_,
                "batches": self._batches,
                "extra": extra or {},
            }
        )

    def restore(self, blob: bytes) -> dict[str, Any]:
        """Load a state written by `snapshot` and return its ``extra``.

        Requests in flight when the snapshot was taken are forgotten. A version 1 snapshot has
        no exploration rate and keeps the current one. A rate above 0 restored into a controller
        whose policy does not probe (``probe_cost`` None) is set to 0, with a warning.
        """
        state = msgpack.unpackb(blob)
        if not isinstance(state, dict) or state.get("version") not in _SNAPSHOT_VERSIONS:
            raise ValueError("not a controller snapshot of a known version")
        self.budget = validate_budget(state["budget"])
        self.lambda_ = float(state["lambda"])
        self.step_size = self._validate_step(state["step_size"])
        explore = validate_explore(state.get("explore", self.explore))
        if explore > 0 and self.probe_cost is None:
            logger.warning(
                "snapshot has explore %s, but the policy does not probe; using 0", explore
            )
            explore = 0.0
        self.explore = explore
        self.rule = state["rule"]
        self.requests_ = int(state["requests"])
        self.total_cost_ = float(state["total_cost"])
        self.requests_since_budget_ = int(state["requests_since_budget"])
        self.cost_since_budget_ = float(state["cost_since_budget"])
        self.window_.clear()
        self.window_.extend(float(c) for c in state["window"])
        self.actions_ = {str(k): int(v) for k, v in state["actions"].items()}
        self._batches = {str(k): int(v) for k, v in state.get("batches", {}).items()}
        extra: dict[str, Any] = state.get("extra", {})
        return extra

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write `snapshot` to ``path`` atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.snapshot(extra))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
