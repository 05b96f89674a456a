"""Time the gateway's per-request decision in process: features, price and policy.

For every request the gateway computes the question's features (`question_features`), reads its
local price (`PriceView.price`), takes the policy's action at that price (`decide_one`) and
reserves the action's cost in the price view (`PriceView.reserve`). This script times exactly
those four calls, one request after another, over the bundled SVAMP and MATH questions in a
seeded random order, with the bundled warm-start policy. To give the price view the state it
has under load, ``--in-flight`` requests stay reserved, and each new reservation completes the
oldest one. Every 16 completed requests go to a controller as a report, and its price is
published back, as the gateway does. That bookkeeping is not timed.

Each of ``--repeats`` runs times ``--requests`` decisions with ``time.perf_counter_ns`` around
each stage, after ``--warmup`` untimed ones. ``total_cpu`` is the same span as ``total`` in CPU
time of the thread (``time.thread_time_ns``), which leaves out the time that other processes
held the CPU. The script prints and writes (``--out``) the p50 and p99 of each run and their
medians over the runs, in microseconds.

    python benchmarks/bench_decision.py --out bench_decision.json
    python benchmarks/bench_decision.py --policy imitation --profile profile.html
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import sys
import time
from typing import Any

import numpy as np
from _report import machine_info, run_header, write_report

from online.artifact import WarmStart
from online.controller import DualController
from online.datasets import load_dataset
from online.features import question_features
from online.price_view import PriceView
from online.sequential import SequentialPolicy

STAGES = ("features", "price", "decide", "reserve")
REPORT_BATCH = 16


def make_controller(warm: WarmStart, policy: str, budget: float) -> DualController:
    """Build a fresh controller at ``budget``, as the service's controller starts."""
    entry = warm.entry(policy)
    return DualController(
        budget=budget,
        cost_curve=entry.cost_curve,
        price_scale=entry.price_scale,
        unit=warm.unit,
        min_budget=float(warm.actions.sample_counts[0]),
    )


def run_once(
    questions: list[str], warm: WarmStart, args: argparse.Namespace, seed: int
) -> dict[str, np.ndarray]:
    """Time ``args.warmup + args.requests`` decisions; return the timed ones per stage in ns."""
    entry = warm.entry(args.policy)
    policy = entry.policy
    actions = warm.actions
    controller = make_controller(warm, args.policy, args.budget)
    view = PriceView(controller.settings())
    order = random.Random(seed)
    outstanding: collections.deque[tuple[int, float, str]] = collections.deque()
    total = args.warmup + args.requests
    times = {stage: np.empty(total, dtype=np.int64) for stage in (*STAGES, "total", "total_cpu")}
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns

    for i in range(total):
        question = questions[order.randrange(len(questions))]
        c0 = cpu_clock()
        t0 = clock()
        features = question_features(question, None)
        t1 = clock()
        lambda_ = view.price()
        t2 = clock()
        if isinstance(policy, SequentialPolicy):
            # The first round's size; the reservation is the policy's mean cost at the price.
            policy.first_rung(features, lambda_)
            t3 = clock()
            reserved = entry.cost_curve.cost_at(lambda_)
            name = "sequential"
        else:
            index = policy.decide_one(features, lambda_)
            t3 = clock()
            reserved = float(actions[index].samples)
            name = actions[index].name
        ticket = view.reserve(reserved)
        t4 = clock()
        c4 = cpu_clock()
        times["features"][i] = t1 - t0
        times["price"][i] = t2 - t1
        times["decide"][i] = t3 - t2
        times["reserve"][i] = t4 - t3
        times["total"][i] = t4 - t0
        times["total_cpu"][i] = c4 - c0

        # Untimed bookkeeping that keeps the view as it is under load.
        outstanding.append((ticket, reserved, name))
        if len(outstanding) > args.in_flight:
            done, cost, name = outstanding.popleft()
            view.complete(done, cost, name)
            if view.unreported >= REPORT_BATCH:
                controller.report(view.take_report(), "bench")
                view.publish(controller.settings())
    return {stage: values[args.warmup :] for stage, values in times.items()}


def percentiles_us(values_ns: np.ndarray) -> dict[str, float]:
    return {
        "p50_us": float(np.percentile(values_ns, 50)) / 1e3,
        "p99_us": float(np.percentile(values_ns, 99)) / 1e3,
        "mean_us": float(values_ns.mean()) / 1e3,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="timed decisions per run")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed decisions per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs; medians are over runs")
    parser.add_argument("--in-flight", type=int, default=64, help="reservations kept open")
    parser.add_argument(
        "--policy",
        choices=("value", "imitation", "sequential"),
        default="value",
        help="for sequential, 'decide' is the first round's size",
    )
    parser.add_argument("--budget", type=float, default=4.0, help="mean-cost budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results to this JSON file")
    parser.add_argument(
        "--profile", help="profile one run with pyinstrument and write its HTML report here"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1 or args.warmup < 0 or args.in_flight < 0:
        parser.error("--requests and --repeats must be positive, --warmup and --in-flight >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    questions = [q.question for name in ("svamp", "math100") for q in load_dataset(name)]
    warm = WarmStart.load(None)

    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001)
        with profiler:
            run_once(questions, warm, args, args.seed)
        with open(args.profile, "w", encoding="utf-8") as handle:
            handle.write(profiler.output_html())
        print(profiler.output_text(unicode=True, color=False))
        return 0

    runs = []
    for repeat in range(args.repeats):
        times = run_once(questions, warm, args, args.seed + repeat)
        runs.append({stage: percentiles_us(values) for stage, values in times.items()})
    medians = {
        stage: {
            key: statistics.median(run[stage][key] for run in runs)
            for key in ("p50_us", "p99_us", "mean_us")
        }
        for stage in (*STAGES, "total", "total_cpu")
    }
    for stage, values in medians.items():
        print(
            f"{stage:>8}: p50 {values['p50_us']:7.2f} us  p99 {values['p99_us']:7.2f} us  "
            f"mean {values['mean_us']:7.2f} us"
        )
    if args.out:
        report: dict[str, Any] = {
            **run_header(),
            "machine": machine_info(),
            "settings": vars(args),
            "questions": len(questions),
            "median_over_runs": medians,
            "runs": runs,
        }
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
