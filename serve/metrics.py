"""Prometheus metrics of the gateway, declared once per replica through Ray Serve's metrics API.

Ray exports each metric with the prefix ``ray_`` on every node's metrics export port, tagged
with the Serve application, deployment and replica besides the tags listed here.
"""

from __future__ import annotations

from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

__all__ = ["COST_BOUNDARIES", "LATENCY_BOUNDARIES_MS", "GatewayMetrics"]

COST_BOUNDARIES = [1.0, 2.0, 3.0, 5.0, 9.0, 15.0, 30.0, 60.0]
"""Histogram bucket bounds of the cost per request, in samples billed."""

LATENCY_BOUNDARIES_MS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0]
"""Histogram bucket bounds of the request latency, in milliseconds."""


def _tag_keys(*keys: str) -> Any:
    # Ray 2.60 annotates tag_keys as Tuple[str] (one key) but accepts any number of keys.
    return keys


class GatewayMetrics:
    """Requests by action, cost per request, budget, price, moving cost, errors and latency.

    ``route`` is ``solve``, ``chat`` or ``stream`` (one per record), ``action`` an action name
    such as ``vote@3``, and ``error_type`` the ``error.type`` sent to the client, such as
    ``backend_error``.
    """

    def __init__(self) -> None:
        self.requests = Counter(
            "ttc_requests",
            description="Requests served without error, by route and by the action taken.",
            tag_keys=_tag_keys("route", "action"),
        )
        self.cost = Histogram(
            "ttc_request_cost",
            description="Samples billed per request served without error, retries included.",
            boundaries=COST_BOUNDARIES,
            tag_keys=("route",),
        )
        self.latency_ms = Histogram(
            "ttc_request_latency_ms",
            description="Time from a parsed request to its reply, in milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route",),
        )
        self.backend_errors = Counter(
            "ttc_backend_errors",
            description="Requests failed at the LLM backend or the worker pool, by error type.",
            tag_keys=_tag_keys("route", "error_type"),
        )
        self.budget = Gauge(
            "ttc_budget",
            description="Budget (mean cost per request) that this gateway replica steers to.",
        )
        self.lambda_ = Gauge(
            "ttc_lambda",
            description="Price of compute in this gateway replica's view, after its own "
            "unreported requests.",
        )
        self.moving_cost = Gauge(
            "ttc_moving_cost",
            description="Mean cost of the controller's last window of requests, as of this "
            "gateway replica's last report.",
        )

    def record_request(self, route: str, action: str, cost: float, latency_ms: float) -> None:
        self.requests.inc(tags={"route": route, "action": action})
        self.cost.observe(cost, tags={"route": route})
        self.latency_ms.observe(latency_ms, tags={"route": route})

    def record_backend_error(self, route: str, error_type: str, latency_ms: float) -> None:
        self.backend_errors.inc(tags={"route": route, "error_type": error_type})
        self.latency_ms.observe(latency_ms, tags={"route": route})

    def set_price(self, budget: float, lambda_: float) -> None:
        self.budget.set(budget)
        self.lambda_.set(lambda_)

    def set_moving_cost(self, window_mean_cost: float) -> None:
        self.moving_cost.set(window_mean_cost)
