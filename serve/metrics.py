"""Prometheus metrics of the gateway, declared once per replica through Ray Serve's metrics API.

Ray exports each metric with the prefix ``ray_`` on every node's metrics export port, tagged
with the Serve application, deployment and replica besides the tags listed here. Ray 2.60 exports
a histogram's ``_sum`` as the bucket midpoints times the bucket counts (see
``ray/_private/telemetry/open_telemetry_metric_recorder.py``), so exact totals are counters.
"""

from __future__ import annotations

from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

__all__ = ["COST_BOUNDARIES", "LATENCY_BOUNDARIES_MS", "MONEY_BOUNDARIES", "GatewayMetrics"]

COST_BOUNDARIES = [1.0, 2.0, 3.0, 5.0, 9.0, 15.0, 30.0, 60.0]
"""Histogram bucket bounds of the cost per request, in samples billed."""

MONEY_BOUNDARIES = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
"""Histogram bucket bounds of the money cost per request, in the unit of the backend prices."""

LATENCY_BOUNDARIES_MS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0]
"""Histogram bucket bounds of the request latency, in milliseconds."""


def _tag_keys(*keys: str) -> Any:
    # Ray 2.60 annotates tag_keys as Tuple[str] (one key) but accepts any number of keys.
    return keys


class GatewayMetrics:
    """Gateway metrics: requests, cost and money, budget, price, moving cost, errors, latency.

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
        self.money = Histogram(
            "ttc_request_money",
            description="Money cost per request served without error, from the token usage the "
            "LLM server reported and the backend token prices; only when a price is set.",
            boundaries=MONEY_BOUNDARIES,
            tag_keys=("route",),
        )
        self.money_total = Counter(
            "ttc_money",
            description="Money cost over the requests served without error, summed exactly; "
            "only when a backend token price is set.",
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
        self.probes = Counter(
            "ttc_probes",
            description="Exploration probes served without error: requests that ran the "
            "largest action instead of the policy's choice.",
            tag_keys=("route",),
        )
        self.backend_retries = Counter(
            "ttc_backend_retries",
            description="Backend calls sent again after a failed attempt, over all requests.",
            tag_keys=("route",),
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

    def record_request(
        self,
        route: str,
        action: str,
        cost: float,
        latency_ms: float,
        money: float | None = None,
        probe: bool = False,
    ) -> None:
        self.requests.inc(tags={"route": route, "action": action})
        if probe:
            self.probes.inc(tags={"route": route})
        self.cost.observe(cost, tags={"route": route})
        if money is not None:
            self.money.observe(money, tags={"route": route})
            if money > 0:
                self.money_total.inc(money, tags={"route": route})
        self.latency_ms.observe(latency_ms, tags={"route": route})

    def record_retries(self, route: str, retries: int) -> None:
        if retries > 0:
            self.backend_retries.inc(retries, tags={"route": route})

    def record_backend_error(self, route: str, error_type: str, latency_ms: float) -> None:
        self.backend_errors.inc(tags={"route": route, "error_type": error_type})
        self.latency_ms.observe(latency_ms, tags={"route": route})

    def set_price(self, budget: float, lambda_: float) -> None:
        self.budget.set(budget)
        self.lambda_.set(lambda_)

    def set_moving_cost(self, window_mean_cost: float) -> None:
        self.moving_cost.set(window_mean_cost)
