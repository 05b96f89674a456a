"""Compare POST /v1/solve with a bare Ray Serve deployment that forwards to the same backend.

Both applications run in one local Ray instance with one HTTP proxy on a free loopback port:

- ``ttc`` at ``/``: the allocator (`serve.app.compose_app`) with its replay backend, whose
  ``latency_ms`` is 0 unless ``--latency-ms`` sets another value.
- ``bare`` at ``/bare``: `BareForwarder`, one replica of a deployment defined in this script.
  It sends each question to the same replay backend as one chat-completion call with
  ``n = --bare-samples`` (default 4, the allocator's budget, so both draw the same number of
  samples per request on average) and returns the backend's reply as it is.

A closed-loop aiohttp client keeps ``--concurrency`` requests in flight to one target for
``--duration-s`` seconds, sending the bundled SVAMP questions in a seeded random order. The
two targets alternate, ``--repeats`` times each, after one untimed warm-up run each. Each run
records its throughput and p50/p99 latency, and the script reports the medians over runs and
the ratio of the allocator's median throughput to the bare one's.

    python benchmarks/bench_overhead.py --out bench_overhead.json
    python benchmarks/bench_overhead.py --concurrency 4 --out bench_overhead_c4.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from typing import Any

import aiohttp
from _report import run_header, write_report
from _service import app_settings, free_port, machine_info, ray_serve, wait_healthy
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from online.datasets import load_dataset


@serve.deployment(name="BareForwarder", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class BareForwarder:
    """Forward ``{"question": ...}`` to the backend as one chat-completion call."""

    def __init__(self, base_url: str, samples: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._samples = samples
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, request: Request) -> JSONResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        body = await request.json()
        payload = {
            "model": "replay",
            "messages": [{"role": "user", "content": body["question"]}],
            "n": self._samples,
        }
        async with self._session.post(self._url, json=payload) as response:
            reply = await response.json()
            return JSONResponse(reply, status_code=response.status)


async def drive(
    url: str, questions: list[str], concurrency: int, duration_s: float, seed: int
) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight to ``url`` for ``duration_s`` seconds."""
    order = random.Random(seed)
    latencies_ms: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                question = questions[order.randrange(len(questions))]
                start = time.perf_counter()
                try:
                    async with session.post(url, json={"question": question}) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if status == 200:
                    latencies_ms.append((time.perf_counter() - start) * 1e3)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed_s = time.monotonic() - started

    latencies_ms.sort()

    def percentile(fraction: float) -> float | None:
        if not latencies_ms:
            return None
        return latencies_ms[min(len(latencies_ms) - 1, int(fraction * len(latencies_ms)))]

    return {
        "requests": len(latencies_ms),
        "errors": errors,
        "elapsed_s": elapsed_s,
        "throughput_rps": len(latencies_ms) / elapsed_s,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "loadavg": list(os.getloadavg()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="requests kept in flight")
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="untimed seconds per target")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per target")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="replay delay per call")
    parser.add_argument("--bare-samples", type=int, default=4, help="n of the bare forwarder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.repeats < 1 or args.duration_s <= 0:
        parser.error("--concurrency and --repeats must be at least 1, --duration-s positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from serve.app import compose_app

    questions = [q.question for q in load_dataset("svamp")]
    replay_port = free_port()
    settings = app_settings(replay_port, args.latency_ms)
    runs: list[dict[str, Any]] = []
    with ray_serve() as http_port:
        serve.run(compose_app(settings), name="ttc", route_prefix="/")
        forwarder: Any = BareForwarder
        serve.run(
            forwarder.bind(settings.backend.base_url, args.bare_samples),
            name="bare",
            route_prefix="/bare",
        )
        base = f"http://127.0.0.1:{http_port}"
        wait_healthy(base)
        targets = {"solve": f"{base}/v1/solve", "bare": f"{base}/bare"}

        for name, url in targets.items():
            warm = asyncio.run(drive(url, questions, args.concurrency, args.warmup_s, args.seed))
            print(f"warm-up {name}: {warm['requests']} requests, errors {warm['errors']}")

        machine = machine_info()
        stats_before = asyncio.run(get_stats(base))
        for repeat in range(args.repeats):
            for name, url in targets.items():
                seed = args.seed + 1 + repeat
                run = asyncio.run(drive(url, questions, args.concurrency, args.duration_s, seed))
                run |= {"target": name, "repeat": repeat}
                runs.append(run)
                print(
                    f"{name:>5} #{repeat}: {run['throughput_rps']:7.1f} req/s, "
                    f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, "
                    f"errors {run['errors']}, load {run['loadavg'][0]:.1f}"
                )
        stats_after = asyncio.run(get_stats(base))

    medians = {
        name: {
            key: statistics.median(r[key] for r in runs if r["target"] == name)
            for key in ("throughput_rps", "p50_ms", "p99_ms")
        }
        for name in targets
    }
    ratio = medians["solve"]["throughput_rps"] / medians["bare"]["throughput_rps"]
    print(f"median solve / bare throughput: {ratio:.3f}")
    if args.out:
        report = {
            **run_header(),
            "machine": machine,
            "settings": vars(args),
            "median_over_runs": medians,
            "throughput_ratio_solve_to_bare": ratio,
            "service_stats_before": stats_before,
            "service_stats_after": stats_after,
            "runs": runs,
        }
        write_report(args.out, report)
    return 0


async def get_stats(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/v1/stats") as response:
        body: dict[str, Any] = await response.json()
        return body


if __name__ == "__main__":
    sys.exit(main())
