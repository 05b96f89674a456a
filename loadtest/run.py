"""Run Locust headless against a running allocator and check pass/fail thresholds.

    python loadtest/run.py --host http://127.0.0.1:8000 --users 64 --run-time 5m --out results/

The service must already be up. The runner accepts only a loopback host (127.0.0.1, localhost
or [::1]) and stops at ``--run-time`` or after ``--max-requests`` requests, whichever comes
first. It reads ``GET /v1/stats`` before the run, during it (every ``--stats-interval-s``) and
after it. Into ``--out`` it writes Locust's CSV files (``locust_stats.csv``,
``locust_failures.csv``, ``locust_exceptions.csv``) and ``summary.json``.

The budget error is ``|mean cost - budget| / budget``, with the mean cost of the run's requests
taken from the difference of the service's totals before and after the run. When the budget
changed during the run (``--retarget``, ``--operator`` or another client), the error is taken
over the requests since the last change instead, against the budget in force at the end. Other
traffic to the service during the run is counted too, so run it against a service of its own.

Exit status: 0 when every threshold holds. 1 when one fails: a failed request (including the
``--retarget`` request), p95 latency of ``/v1/solve`` above ``--max-p95-ms``, or budget error
above ``--max-budget-error``. 2 for invalid arguments, including a host that is not loopback.
3 when the service does not reply to ``GET /v1/stats`` before the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from serve.stream_file import loopback_url

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SOLVE = ("POST", "/v1/solve")
OPERATOR_ENV = "TTC_LOADTEST_OPERATOR"
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?")


def loopback_host(value: str) -> str:
    """Return ``value`` without a trailing slash; reject a URL whose host is not loopback."""
    return loopback_url(value, "--host")


def duration_s(value: str) -> float:
    """Parse ``90``, ``90s``, ``5m`` or ``1h30m`` as seconds."""
    match = _DURATION.fullmatch(value.strip())
    seconds = -1.0
    if match and any(match.groups()):
        hours, minutes, secs = (float(group or 0) for group in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(
            f"invalid duration {value!r}: give seconds or a span such as 15s, 5m, 1h30m"
        )
    return seconds


def retarget_spec(value: str) -> tuple[float, float]:
    """Parse ``AT_S:BUDGET`` into seconds after the start and a new budget."""
    try:
        at_s, budget = (float(part) for part in value.split(":"))
    except ValueError:
        at_s, budget = -1.0, -1.0
    if not (at_s >= 0 and budget > 0 and math.isfinite(at_s) and math.isfinite(budget)):
        raise argparse.ArgumentTypeError(
            f"invalid --retarget {value!r}: expected AT_S:BUDGET, e.g. 60:2, "
            "with AT_S >= 0 seconds and BUDGET > 0"
        )
    return at_s, budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", required=True, type=loopback_host, help="base URL of the service (loopback)"
    )
    parser.add_argument("--users", type=int, default=16, help="concurrent Locust users")
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default: all)"
    )
    parser.add_argument(
        "--run-time", type=duration_s, default=60.0, help="length of the run, e.g. 15s or 5m"
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=200_000,
        help="stop once this many requests were sent (all endpoints)",
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest-results"), help="output folder")
    parser.add_argument(
        "--max-p95-ms", type=float, default=2000.0, help="threshold on p95 of /v1/solve in ms"
    )
    parser.add_argument(
        "--max-budget-error",
        type=float,
        default=0.01,
        help="threshold on |mean cost - budget| / budget (0.01 is 1%%)",
    )
    parser.add_argument(
        "--operator",
        action="store_true",
        help=f"add the operator user, one of --users, that retargets the budget and sets it back "
        f"({OPERATOR_ENV}=1)",
    )
    parser.add_argument(
        "--retarget",
        type=retarget_spec,
        default=None,
        metavar="AT_S:BUDGET",
        help="set the budget to BUDGET at AT_S seconds after the start, e.g. 60:2",
    )
    parser.add_argument(
        "--stats-interval-s", type=float, default=1.0, help="seconds between /v1/stats samples"
    )
    parser.add_argument(
        "--stop-timeout-s",
        type=float,
        default=30.0,
        help="seconds the users get to finish their request in flight at the end",
    )
    args = parser.parse_args(argv)

    if args.users < 1:
        parser.error(f"--users must be at least 1, got {args.users}")
    if args.max_requests < 1:
        parser.error(f"--max-requests must be at least 1, got {args.max_requests}")
    if args.spawn_rate is None:
        args.spawn_rate = float(args.users)
    if args.spawn_rate <= 0:
        parser.error(f"--spawn-rate must be positive, got {args.spawn_rate}")
    if not 0 < args.stats_interval_s <= 60:
        parser.error(f"--stats-interval-s must be in (0, 60], got {args.stats_interval_s}")
    if args.retarget is not None and args.retarget[0] >= args.run_time:
        parser.error(f"--retarget at {args.retarget[0]:g} s is not before --run-time")
    return args


def budget_error(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Compute the run's mean cost and budget error from two ``GET /v1/stats`` replies.

    >>> before = {"requests": 10, "mean_cost": 4.0, "budget": 4.0}
    >>> after = {"requests": 30, "mean_cost": 4.5, "budget": 4.0, "requests_since_budget": 40,
    ...          "mean_cost_since_budget": 4.4}
    >>> result = budget_error(before, after)
    >>> result["mean_cost"], result["budget_error"], result["basis"]
    (4.75, 0.1875, 'run')
    """
    requests = after["requests"] - before["requests"]
    changed = after["budget"] != before["budget"] or after["requests_since_budget"] < requests
    if changed:
        requests = after["requests_since_budget"]
        mean_cost = after["mean_cost_since_budget"] if requests else None
        basis = "since_last_budget_change"
    else:
        total = after["mean_cost"] * after["requests"] - before["mean_cost"] * before["requests"]
        mean_cost = total / requests if requests else None
        basis = "run"
    budget = after["budget"]
    error = abs(mean_cost - budget) / budget if mean_cost is not None else None
    return {
        "requests": requests,
        "mean_cost": mean_cost,
        "budget": budget,
        "budget_error": error,
        "basis": basis,
    }


def check_thresholds(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Return one message per failed threshold; an empty list means the run passed."""
    failed = []
    if summary["failures"]:
        failed.append(f"{summary['failures']} of {summary['requests']} requests failed")
    for change in summary["retargets"]:
        if "error" in change:
            failed.append(f"--retarget to {change['budget']:g} failed: {change['error']}")
    if summary["solve"]["requests"] == 0:
        failed.append("no /v1/solve request completed")
    p95 = summary["solve"]["p95_ms"]
    if p95 is not None and p95 > args.max_p95_ms:
        failed.append(
            f"p95 latency of /v1/solve {p95:g} ms is above --max-p95-ms {args.max_p95_ms:g}"
        )
    budget = summary["budget"]
    error = budget["budget_error"]
    if error is None:
        failed.append("budget error unknown: the service counted no request in the run")
    elif error > args.max_budget_error:
        failed.append(
            f"budget error {error:.4f} is above --max-budget-error {args.max_budget_error:g} "
            f"(mean cost {budget['mean_cost']:.4f}, budget {budget['budget']:g})"
        )
    return failed


def get_json(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    from urllib.request import urlopen

    with urlopen(url, timeout=timeout_s) as response:
        body: dict[str, Any] = json.load(response)
        return body


def put_budget(host: str, budget: float, timeout_s: float = 10.0) -> dict[str, Any]:
    from urllib.request import Request, urlopen

    request = Request(
        f"{host}/v1/budget",
        data=json.dumps({"budget": budget}).encode(),
        headers={"Content-Type": "application/json"},
        method="PUT",
    )
    with urlopen(request, timeout=timeout_s) as response:
        body: dict[str, Any] = json.load(response)
        return body


def settled_stats(host: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Return ``/v1/stats`` once the request count stops moving.

    Gateways report finished requests in batches (every 50 ms by default), so the count can
    trail the requests that have finished. Gives up after ``timeout_s`` and returns the last
    reply.
    """
    import gevent

    deadline = time.monotonic() + timeout_s
    last = get_json(f"{host}/v1/stats")
    while time.monotonic() < deadline:
        gevent.sleep(0.5)
        current = get_json(f"{host}/v1/stats")
        if current["requests"] == last["requests"] and current.get("in_flight", 0) == 0:
            return current
        last = current
    return last


def load_user_classes() -> list[type]:
    """Import the locustfile and return its user classes that are not abstract."""
    import importlib.util

    from locust import User

    spec = importlib.util.spec_from_file_location("ttc_locustfile", LOCUSTFILE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import the locustfile {LOCUSTFILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, User)
        and value.__module__ == module.__name__
        and not value.abstract
    ]


def write_locust_csv(environment: Any, prefix: Path) -> None:
    """Write the request, failure and exception tables as Locust's ``--csv`` option does."""
    import csv

    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    tables = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("stats", tables.requests_csv),
        ("failures", tables.failures_csv),
        ("exceptions", tables.exceptions_csv),
    ):
        with open(f"{prefix}_{suffix}.csv", "w", newline="", encoding="utf-8") as handle:
            write(csv.writer(handle))


def entry_summary(entry: Any, elapsed_s: float) -> dict[str, Any]:
    """Summarise one Locust stats entry; percentiles are Locust's rounded response times."""

    def percentile(fraction: float) -> float | None:
        return float(entry.get_response_time_percentile(fraction)) if entry.num_requests else None

    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
        "mean_ms": entry.avg_response_time if entry.num_requests else None,
        "max_ms": entry.max_response_time if entry.num_requests else None,
        "throughput_rps": entry.num_requests / elapsed_s if elapsed_s > 0 else None,
    }


def run_locust(args: argparse.Namespace) -> int:
    """Run the load, write the CSV files and ``summary.json``, and return the exit status."""
    from urllib.error import HTTPError

    import gevent
    from locust.env import Environment

    user_classes = load_user_classes()
    try:
        before = get_json(f"{args.host}/v1/stats")
    except OSError as exc:
        print(
            f"error: GET {args.host}/v1/stats failed ({exc}); start the service first",
            file=sys.stderr,
        )
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    environment = Environment(
        user_classes=user_classes, host=args.host, stop_timeout=args.stop_timeout_s
    )
    runner = environment.create_local_runner()
    timeline: list[dict[str, Any]] = []
    retargets: list[dict[str, Any]] = []
    started = time.monotonic()

    def sample_stats() -> None:
        while True:
            gevent.sleep(args.stats_interval_s)
            try:
                stats = get_json(f"{args.host}/v1/stats")
            except OSError as exc:
                timeline.append({"elapsed_s": time.monotonic() - started, "error": repr(exc)})
                continue
            timeline.append({"elapsed_s": time.monotonic() - started} | stats)

    def retarget(at_s: float, budget: float) -> None:
        gevent.sleep(at_s)
        record: dict[str, Any] = {"elapsed_s": time.monotonic() - started, "budget": budget}
        try:
            record |= put_budget(args.host, budget)
        except OSError as exc:
            # A rejected budget (HTTP 422) or a network error: the run goes on at the old one.
            detail = str(exc)
            if isinstance(exc, HTTPError):
                detail += " " + exc.read().decode(errors="replace")[:300]
            print(f"error: PUT {args.host}/v1/budget {budget:g} failed: {detail}", file=sys.stderr)
            record["error"] = detail
        retargets.append(record)

    sampler = gevent.spawn(sample_stats)
    helpers = [sampler]
    if args.retarget is not None:
        helpers.append(gevent.spawn(retarget, *args.retarget))
    runner.start(args.users, spawn_rate=args.spawn_rate)
    deadline = started + args.run_time
    stop_reason = "run_time"
    while time.monotonic() < deadline:
        if environment.stats.total.num_requests >= args.max_requests:
            stop_reason = "max_requests"
            break
        gevent.sleep(0.1)
    runner.quit()
    elapsed_s = time.monotonic() - started
    gevent.killall(helpers)
    after = settled_stats(args.host)

    write_locust_csv(environment, args.out / "locust")
    solve = environment.stats.get(SOLVE[1], SOLVE[0])
    total = environment.stats.total
    summary: dict[str, Any] = {
        "host": args.host,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time_s": args.run_time,
        "elapsed_s": elapsed_s,
        "stop_reason": stop_reason,
        "operator": args.operator,
        "user_classes": [cls.__name__ for cls in user_classes],
        "requests": total.num_requests,
        "failures": total.num_failures,
        "solve": entry_summary(solve, elapsed_s),
        "endpoints": {
            f"{entry.method} {entry.name}": entry_summary(entry, elapsed_s)
            for entry in environment.stats.entries.values()
        },
        "budget": budget_error(before, after),
        "stats_before": before,
        "stats_after": after,
        "retargets": retargets,
        "stats_timeline": timeline,
        "thresholds": {
            "max_p95_ms": args.max_p95_ms,
            "max_budget_error": args.max_budget_error,
            "max_requests": args.max_requests,
        },
    }
    failed = check_thresholds(summary, args)
    summary["passed"] = not failed
    summary["failed_thresholds"] = failed
    with open(args.out / "summary.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
        handle.write("\n")

    solve_stats, budget = summary["solve"], summary["budget"]
    print(
        f"{summary['requests']} requests, {summary['failures']} failed; /v1/solve "
        f"p50 {solve_stats['p50_ms']} ms, p95 {solve_stats['p95_ms']} ms, "
        f"p99 {solve_stats['p99_ms']} ms, {solve_stats['throughput_rps'] or 0:.1f} req/s; "
        f"mean cost {budget['mean_cost']} against budget {budget['budget']} "
        f"(error {budget['budget_error']}, over {budget['requests']} requests)"
    )
    for message in failed:
        print(f"FAILED: {message}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.operator:
        os.environ[OPERATOR_ENV] = "1"
    # Locust patches the standard library for gevent when it is imported, which must happen
    # before any network module is loaded, so it is imported here and not at the top.
    import locust  # noqa: F401

    return run_locust(args)


if __name__ == "__main__":
    sys.exit(main())
