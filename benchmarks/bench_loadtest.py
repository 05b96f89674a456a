"""Run loadtest/run.py against a fresh allocator and record memory and budget convergence.

The script starts the default application (`_service`, replay latency ``--latency-ms``) in a
local Ray instance on free loopback ports, then runs ``loadtest/run.py`` against it as a child
process with ``--users``, ``--run-time`` and, if given, ``--retarget AT_S:BUDGET``. While the
load runs, a thread samples every ``--rss-interval-s`` seconds the resident set size (RSS) of
each Ray process that this script started, together with the service's request count from
``GET /v1/stats``.

The JSON output (``--out``) contains the runner's summary, the RSS series, and for each process
the RSS at the first sample after ``--rss-early-requests`` requests and at the last sample,
with the growth between them per 1,000 requests served. The default, 10,000, is the gateway's
default ``feedback_memory``: the gateway keeps that many recent requests for ``/v1/feedback``,
so its RSS grows by design until then. After a retarget it also gives the number of
requests after the change at which the moving mean cost (window 500) came within 2% of the new
budget and stayed there until the end of the run.

    python benchmarks/bench_loadtest.py --users 64 --run-time 5m --out bench_loadtest.json
    python benchmarks/bench_loadtest.py --users 64 --run-time 3m --retarget 60:2 \\
        --out bench_retarget.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from _report import run_header, write_report
from _service import machine_info, ray_serve, run_allocator, service_processes, wait_healthy

RUNNER = Path(__file__).resolve().parent.parent / "loadtest" / "run.py"
CONVERGENCE_TOLERANCE = 0.02


def sample_memory(
    url: str, interval_s: float, stop: threading.Event, samples: list[dict[str, Any]]
) -> None:
    """Append the RSS of every service process and the request count until ``stop`` is set."""
    import psutil

    started = time.monotonic()
    while not stop.wait(interval_s):
        rss = {}
        for pid, name in service_processes().items():
            try:
                rss[f"{name} ({pid})"] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        try:
            with urlopen(f"{url}/v1/stats", timeout=10) as response:
                requests = json.load(response)["requests"]
        except OSError:
            requests = None
        samples.append({"elapsed_s": time.monotonic() - started, "requests": requests, "rss": rss})


def memory_growth(samples: list[dict[str, Any]], early_requests: int) -> dict[str, Any]:
    """Compare each process's RSS at the first sample after the service counted
    ``early_requests`` requests with the RSS at the last sample."""
    early = next((s for s in samples if (s["requests"] or 0) >= early_requests), None)
    last = samples[-1] if samples else None
    if early is None or last is None or early is last:
        return {}
    served = (last["requests"] or 0) - early["requests"]
    out: dict[str, Any] = {
        "early_elapsed_s": early["elapsed_s"],
        "last_elapsed_s": last["elapsed_s"],
        "requests_between": served,
        "processes": {},
    }
    # Ray changes a worker's title while it runs a method, so processes are matched by pid.
    last_by_pid = {key.rsplit(" (", 1)[1]: (key, rss) for key, rss in last["rss"].items()}
    for key, rss_early in early["rss"].items():
        name, rss_last = last_by_pid.get(key.rsplit(" (", 1)[1], (key, None))
        if rss_last is None:
            continue
        growth = rss_last - rss_early
        out["processes"][name] = {
            "rss_early_mib": rss_early / 2**20,
            "rss_last_mib": rss_last / 2**20,
            "growth_mib": growth / 2**20,
            "growth_bytes_per_1000_requests": growth / served * 1000 if served else None,
        }
    return out


def convergence(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Return when the moving mean cost settled within 2% of the budget after the retarget."""
    applied = [r for r in summary["retargets"] if "error" not in r]
    if not applied:
        return None
    change = applied[-1]
    target = change["budget"]
    after = [
        s
        for s in summary["stats_timeline"]
        if s["elapsed_s"] > change["elapsed_s"] and "window_mean_cost" in s
    ]
    # The first sample of the last stretch of samples that are all within the tolerance.
    settled_at = None
    for sample in after:
        within = abs(sample["window_mean_cost"] - target) / target <= CONVERGENCE_TOLERANCE
        if not within:
            settled_at = None
        elif settled_at is None:
            settled_at = sample
    return {
        "budget": target,
        "retarget_elapsed_s": change["elapsed_s"],
        "tolerance": CONVERGENCE_TOLERANCE,
        "settled": settled_at is not None,
        "requests_to_settle": settled_at["requests_since_budget"] if settled_at else None,
        "seconds_to_settle": (
            settled_at["elapsed_s"] - change["elapsed_s"] if settled_at else None
        ),
        "window_mean_cost_series": [
            [s["elapsed_s"], s["requests_since_budget"], s["window_mean_cost"]] for s in after
        ],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=64, help="Locust users")
    parser.add_argument("--run-time", default="5m", help="run length for loadtest/run.py")
    parser.add_argument("--retarget", default=None, metavar="AT_S:BUDGET", help="see run.py")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="replay delay per call")
    parser.add_argument("--budget", type=float, default=4.0, help="budget at the start")
    parser.add_argument(
        "--feedback-memory",
        type=int,
        default=None,
        help="requests the gateway keeps for /v1/feedback (default: the application's)",
    )
    parser.add_argument("--max-p95-ms", type=float, default=2000.0, help="see run.py")
    parser.add_argument("--max-budget-error", type=float, default=0.01, help="see run.py")
    parser.add_argument("--stats-interval-s", type=float, default=0.5, help="see run.py")
    parser.add_argument("--rss-interval-s", type=float, default=5.0, help="seconds between RSS")
    parser.add_argument(
        "--rss-early-requests",
        type=int,
        default=10_000,
        help="requests served before the early RSS sample (default: the gateway's default "
        "feedback_memory, which fills up to then)",
    )
    parser.add_argument("--out", required=True, help="write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    samples: list[dict[str, Any]] = []
    with ray_serve() as http_port, tempfile.TemporaryDirectory() as tmp:
        extra = {}
        if args.feedback_memory is not None:
            extra["feedback_memory"] = args.feedback_memory
        run_allocator(args.latency_ms, args.budget, **extra)
        url = f"http://127.0.0.1:{http_port}"
        wait_healthy(url)
        machine = machine_info()
        command = [
            sys.executable,
            str(RUNNER),
            "--host",
            url,
            "--users",
            str(args.users),
            "--run-time",
            args.run_time,
            "--max-p95-ms",
            str(args.max_p95_ms),
            "--max-budget-error",
            str(args.max_budget_error),
            "--stats-interval-s",
            str(args.stats_interval_s),
            "--out",
            tmp,
        ]
        if args.retarget:
            command += ["--retarget", args.retarget]
        stop = threading.Event()
        sampler = threading.Thread(
            target=sample_memory, args=(url, args.rss_interval_s, stop, samples), daemon=True
        )
        sampler.start()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=4 * 3600)
        finally:
            stop.set()
            sampler.join()
        print(result.stdout.strip())
        print(result.stderr.strip()[-2000:], file=sys.stderr)
        summary_path = Path(tmp) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        stats_csv = (Path(tmp) / "locust_stats.csv").read_text() if summary else None

    report = {
        **run_header(),
        "runner_command": " ".join(command[1:]),
        "runner_exit_code": result.returncode,
        "machine": machine,
        "settings": vars(args),
        "summary": summary,
        "locust_stats_csv": stats_csv,
        "memory": memory_growth(samples, args.rss_early_requests),
        "memory_samples": samples,
        "convergence": convergence(summary) if summary else None,
    }
    write_report(args.out, report)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
