"""Stream a data set's questions at a running service and summarise accuracy and cost.

    python -m serve.stream --dataset svamp --url http://127.0.0.1:8000 --concurrency 16

Shows progress (requests, accuracy against gold, mean cost against the budget, lambda) and
prints a JSON summary at the end. With ``--retarget AT:BUDGET`` it changes the budget through
``PUT /v1/budget`` after AT finished requests and reports the requests that finished after it.
When the data set has recorded samples, the summary also gives the accuracy of uniform
allocation at the same mean cost (before and after a retarget separately), computed exactly from
the samples. The budget set by ``--budget`` or ``--retarget`` stays in force after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tqdm import tqdm

from online.actions import ActionSpace
from online.answers import answers_match
from online.datasets import DATASETS, load_dataset
from online.samples import Question, read_samples
from online.tables import build_table, uniform_allocation

__all__ = ["StreamSummary", "main", "stream_questions"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class StreamSummary:
    """Counters of one streaming run; ``costs``, ``correct``, ``ids`` and ``probes`` (whether
    the request was an exploration probe) are in order of completion.

    ``error_cost`` sums the ``error.cost`` of failed requests (samples billed before they failed).
    """

    costs: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    probes: list[bool] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    error_cost: float = 0.0
    retarget_index: int | None = None


async def _put_budget(session: aiohttp.ClientSession, url: str, budget: float) -> dict[str, Any]:
    """PUT the budget, with the admin token of ``TTC_ADMIN_TOKEN`` when that is set."""
    token = os.environ.get("TTC_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with session.put(
        f"{url}/v1/budget", json={"budget": budget}, headers=headers
    ) as response:
        body: dict[str, Any] = await response.json()
        if response.status != 200:
            raise RuntimeError(f"PUT /v1/budget returned {response.status}: {body}")
        return body


async def stream_questions(
    questions: Sequence[Question],
    url: str,
    concurrency: int,
    retarget: tuple[int, float] | None = None,
    progress: bool = True,
    timeout_s: float = 120.0,
) -> StreamSummary:
    """Send every question once to ``POST /v1/solve`` with ``concurrency`` requests in flight."""
    summary = StreamSummary()
    queue: asyncio.Queue[Question] = asyncio.Queue()
    for q in questions:
        queue.put_nowait(q)
    bar = tqdm(total=len(questions), disable=not progress, unit="q", dynamic_ncols=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while True:
                try:
                    q = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                payload = {"id": q.id, "question": q.question, "metadata": q.meta}
                try:
                    async with session.post(f"{url}/v1/solve", json=payload) as response:
                        body = await response.json()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    summary.errors[type(exc).__name__] += 1
                    summary.error_examples.setdefault(type(exc).__name__, repr(exc))
                    bar.update()
                    continue
                if status != 200:
                    summary.errors[str(status)] += 1
                    summary.error_cost += float((body.get("error") or {}).get("cost") or 0)
                    message = str((body.get("error") or {}).get("message", body))
                    summary.error_examples.setdefault(str(status), message[:300])
                    bar.update()
                    continue
                summary.costs.append(float(body["cost"]))
                summary.correct.append(answers_match(body.get("answer"), q.gold))
                summary.ids.append(q.id)
                summary.probes.append(bool(body.get("probe", False)))
                done = len(summary.costs)
                if retarget is not None and summary.retarget_index is None and done >= retarget[0]:
                    summary.retarget_index = done
                    await _put_budget(session, url, retarget[1])
                bar.update()
                if done % 20 == 0:
                    bar.set_postfix(
                        acc=f"{sum(summary.correct) / done:.3f}",
                        cost=f"{sum(summary.costs) / done:.2f}",
                        lam=f"{body['lambda']:.4g}",
                    )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    return summary


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(
    summary: StreamSummary,
    questions: Sequence[Question],
    budget: dict[str, Any],
    elapsed_s: float,
    retarget: tuple[int, float] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": len(questions),
        "answered": len(summary.costs),
        "errors": dict(summary.errors),
        "error_examples": dict(summary.error_examples),
        "error_cost": summary.error_cost,
        "accuracy": _mean([float(c) for c in summary.correct]),
        "mean_cost": _mean(summary.costs),
        "probes": sum(summary.probes),
        "budget": budget.get("budget"),
        "lambda": budget.get("lambda"),
        "unit": budget.get("unit"),
        "elapsed_s": round(elapsed_s, 3),
        "throughput_rps": round(len(summary.costs) / elapsed_s, 2) if elapsed_s > 0 else None,
    }
    if out["mean_cost"] and all(q.samples for q in questions):
        # Uniform allocation over the questions answered, at the mean cost each segment of
        # the run spent (one segment, or the parts before and after a retarget).
        by_id = {q.id: q for q in questions}
        cut = summary.retarget_index if summary.retarget_index is not None else len(summary.ids)
        segments = [(0, cut), (cut, len(summary.ids))]
        weighted = 0.0
        for start, stop in segments:
            if stop <= start:
                continue
            table = build_table([by_id[i] for i in summary.ids[start:stop]], ActionSpace())
            spent = sum(summary.costs[start:stop]) / (stop - start)
            weighted += uniform_allocation(table, spent)[0] * (stop - start)
        out["uniform_accuracy"] = weighted / len(summary.ids)
    if retarget is not None and summary.retarget_index is not None:
        i = summary.retarget_index
        after = summary.costs[i:]
        out["retarget"] = {
            "at": i,
            "budget": retarget[1],
            "mean_cost_before": _mean(summary.costs[:i]),
            "mean_cost_after": _mean(after),
            "mean_cost_next_500": _mean(after[:500]),
            "requests_after": len(after),
        }
    return out


def _parse_retarget(text: str) -> tuple[int, float]:
    try:
        at, budget = text.split(":")
        return int(at), float(budget)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--retarget must look like 300:2.0, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve.stream", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        default="svamp",
        choices=sorted(DATASETS),
        help="bundled set; gsm8k and math500 carry no samples, so the replay backend rejects them",
    )
    source.add_argument("--samples", type=Path, help="a samples file instead of a bundled set")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the service")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--limit", type=int, help="send only the first N questions")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="send the questions N times, each pass with its own request ids",
    )
    parser.add_argument("--shuffle", action="store_true", help="send in a seeded random order")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    parser.add_argument("--budget", type=float, help="PUT this budget before streaming")
    parser.add_argument("--retarget", type=_parse_retarget, help="AT:BUDGET, change mid-stream")
    parser.add_argument("--out", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    questions = read_samples(args.samples) if args.samples else load_dataset(args.dataset)
    if args.shuffle:
        random.Random(args.seed).shuffle(questions)
    if args.limit is not None:
        questions = questions[: args.limit]
    # Each pass gets its own ids, so that the backend's seeded draws differ between passes.
    questions = [
        q if args.repeat == 1 else dataclasses.replace(q, id=f"{q.id}~{n}")
        for n in range(args.repeat)
        for q in questions
    ]
    url = args.url.rstrip("/")
    async with aiohttp.ClientSession() as session:
        if args.budget is not None:
            await _put_budget(session, url, args.budget)
    start = time.perf_counter()
    summary = await stream_questions(
        questions, url, args.concurrency, args.retarget, progress=not args.no_progress
    )
    elapsed = time.perf_counter() - start
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/budget") as response:
        budget = await response.json()
    return summarise(summary, questions, budget, elapsed, args.retarget)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in _LOOPBACK:
        print(f"error: --url must point at a loopback host, got {host!r}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f"error: --repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print(f"error: --concurrency must be at least 1, got {args.concurrency}", file=sys.stderr)
        return 2
    result = asyncio.run(_run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
