"""Stream questions through the service while the replay backend injects faults, and audit the bill.

    python -m serve.faults_check --questions 1000 --rate 0.1

starts a local Ray instance and makes one run for each fault mode alone and one for all modes
together. Each run deploys the application with that share of failing backend calls and streams
the questions. The output is one Markdown table row per run: faults injected, requests answered,
JSON errors, requests lost (neither answered nor a JSON error), the samples the replay backend
billed, the sum of the per-response costs, the controller's total cost and the mean cost
against the budget.
`check_faults` is the same audit against an application that is already running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from online.datasets import load_dataset
from online.samples import Question
from serve.faults import FAULT_MODES, FaultSettings
from serve.settings import AppSettings
from serve.stream import stream_questions

__all__ = ["FaultCheck", "check_faults", "fault_app_settings", "main", "mixed_questions"]

logger = logging.getLogger(__name__)

_SETTLE_S = 10.0


@dataclass(frozen=True)
class FaultCheck:
    """What one streamed run injected, answered, lost and billed; costs are in samples."""

    mode: str
    rate: float
    questions: int
    backend_calls: int
    faults_injected: int
    answered: int
    json_errors: int
    lost: int
    billed_samples: int
    response_cost: float
    controller_cost: float
    budget: float
    mean_cost: float
    elapsed_s: float

    @property
    def budget_error(self) -> float:
        """Relative deviation of the mean cost from the budget."""
        return self.mean_cost / self.budget - 1

    @property
    def exact(self) -> bool:
        """True when the service counted exactly what the backend billed."""
        return self.billed_samples == self.response_cost == self.controller_cost


def mixed_questions(count: int) -> list[Question]:
    """Return ``count`` questions: all of math100 (8 samples each) and then SVAMP (30 each)."""
    math = load_dataset("math100")
    return (math + load_dataset("svamp"))[:count]


def fault_app_settings(
    faults: FaultSettings,
    replay_port: int,
    *,
    latency_ms: float = 1.0,
    timeout_s: float = 2.0,
    budget: float = 4.0,
) -> AppSettings:
    """Settings of an application whose replay backend injects ``faults``.

    A hung call hangs ``timeout_s + 0.5`` seconds, so it always outlives the client's timeout.
    """
    faults = faults.model_copy(update={"hang_s": timeout_s + 0.5})
    return AppSettings.model_validate(
        {
            "backend": {
                "base_url": f"http://127.0.0.1:{replay_port}/v1",
                "timeout_s": timeout_s,
                "deadline_s": 30.0,
                "retries": 4,
                "backoff_s": 0.02,
            },
            "replay": {"port": replay_port, "latency_ms": latency_ms, "faults": faults},
            "controller": {"budget": budget},
        }
    )


async def _get(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        response.raise_for_status()
        body: dict[str, Any] = await response.json()
        return body


async def _settled_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Return ``/v1/stats`` once two reads 0.2 s apart agree (the gateways have reported)."""
    last = await _get(session, f"{url}/v1/stats")
    stop = time.monotonic() + _SETTLE_S
    while time.monotonic() < stop:
        await asyncio.sleep(0.2)
        current = await _get(session, f"{url}/v1/stats")
        if current == last and current["in_flight"] == 0:
            return current
        last = current
    return last


async def check_faults(
    service_url: str,
    replay_url: str,
    questions: Sequence[Question],
    *,
    mode: str,
    rate: float,
    concurrency: int = 16,
) -> FaultCheck:
    """Stream ``questions`` once and compare the service's costs with the backend's bill.

    Counters are read before and after, so earlier traffic to the same application is ignored.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        replay_before = await _get(session, f"{replay_url}/v1/replay/stats")
        stats_before = await _settled_stats(session, service_url)
        start = time.perf_counter()
        summary = await stream_questions(questions, service_url, concurrency, progress=False)
        elapsed_s = time.perf_counter() - start
        stats_after = await _settled_stats(session, service_url)
        replay_after = await _get(session, f"{replay_url}/v1/replay/stats")

    json_errors = sum(n for status, n in summary.errors.items() if status.isdigit())
    billed = replay_after["choices"] - replay_before["choices"]
    injected = sum(replay_after["faults"].values()) - sum(replay_before["faults"].values())
    response_cost = sum(summary.costs) + summary.error_cost
    return FaultCheck(
        mode=mode,
        rate=rate,
        questions=len(questions),
        backend_calls=replay_after["requests"] - replay_before["requests"],
        faults_injected=injected,
        answered=len(summary.costs),
        json_errors=json_errors,
        lost=len(questions) - len(summary.costs) - json_errors,
        billed_samples=billed,
        response_cost=response_cost,
        controller_cost=stats_after["total_cost"] - stats_before["total_cost"],
        budget=stats_after["budget"],
        mean_cost=response_cost / len(questions),
        elapsed_s=round(elapsed_s, 2),
    )


TABLE_HEADER = (
    "| faults | rate | questions | backend calls | faults injected | answered | JSON errors "
    "| lost | billed samples | sum of response costs | controller total | mean cost / budget "
    "| time (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(check: FaultCheck) -> str:
    """Format a check as a row of `TABLE_HEADER`."""
    return (
        f"| {check.mode} | {check.rate:.0%} | {check.questions} | {check.backend_calls} "
        f"| {check.faults_injected} | {check.answered} | {check.json_errors} | {check.lost} "
        f"| {check.billed_samples} | {check.response_cost:g} | {check.controller_cost:g} "
        f"| {check.mean_cost:.3f} / {check.budget:g} ({check.budget_error:+.2%}) "
        f"| {check.elapsed_s:.1f} |"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fault_runs(rate: float, modes: Sequence[str]) -> list[tuple[str, FaultSettings]]:
    runs: list[tuple[str, FaultSettings]] = []
    for mode in modes:
        if mode == "all":
            runs.append(("all modes", FaultSettings.spread(rate, seed=1)))
        else:
            runs.append((mode, FaultSettings.model_validate({f"{mode}_rate": rate, "seed": 1})))
    return runs


def _run_all(args: argparse.Namespace) -> list[FaultCheck]:
    import ray
    from ray import serve

    from serve.app import compose_app

    questions = mixed_questions(args.questions)
    http_port = _free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    checks = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        for mode, faults in _fault_runs(args.rate, args.modes):
            replay_port = _free_port()
            settings = fault_app_settings(faults, replay_port)
            serve.run(compose_app(settings), name="faults", route_prefix="/")
            check = asyncio.run(
                check_faults(
                    f"http://127.0.0.1:{http_port}",
                    f"http://127.0.0.1:{replay_port}",
                    questions,
                    mode=mode,
                    rate=args.rate,
                    concurrency=args.concurrency,
                )
            )
            print(table_row(check), file=sys.stderr, flush=True)
            checks.append(check)
            serve.delete("faults")
    finally:
        serve.shutdown()
        ray.shutdown()
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks and print the table; the exit status is 1 when a check failed."""
    parser = argparse.ArgumentParser(prog="python -m serve.faults_check", description=__doc__)
    parser.add_argument("--questions", type=int, default=1000, help="questions per run")
    parser.add_argument(
        "--rate", type=float, default=0.1, help="fraction of backend calls that fail, 0 to 1"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=[*FAULT_MODES, "all"],
        choices=[*FAULT_MODES, "all"],
        help="runs to make: one fault mode each, or 'all' for the rate spread over every mode",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    checks = _run_all(args)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(TABLE_HEADER)
        for check in checks:
            print(table_row(check))
    failed = [c for c in checks if c.lost or not c.exact or abs(c.budget_error) > 0.02]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
