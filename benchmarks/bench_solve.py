"""Time the oracle solve (`online.solve.solve`) against HiGHS on the same LP.

Each instance has ``n`` questions and 5 actions costing 1, 3, 5, 9 and 15 in every row. Each
row's accuracies are sorted uniform(0, 1) draws, so a dearer action is never less accurate. The
budget is a mean cost of 4. Every instance is drawn from a generator seeded with ``(seed, n)``.

For each size the script measures the wall time (``time.perf_counter``) of ``repeats`` calls of
``solve(..., method="breakpoints")`` and of ``method="bisection"``, alternating the two. It then
times ``repeats_highs`` calls of ``scipy.optimize.linprog(method="highs")`` on the LP relaxation:
variables ``x[i, a]`` in [0, 1], one equality ``sum_a x[i, a] = 1`` per question, and one
inequality ``(1/n) sum c x <= B``, with sparse CSR constraint matrices. Only the ``linprog``
call is timed, not building the matrices. HiGHS runs in a child process so that a call can be
stopped after ``--highs-timeout`` seconds and held to ``--highs-memory-gib`` of address space.
After a size where HiGHS times out or fails, it is skipped at the larger sizes.

Each record in the JSON output is one call, with its wall and CPU time, its count of minor page
faults, the objective (mean accuracy), and ``os.getloadavg()`` just before the call. The script
prints two Markdown tables. The first has the medians, the ratios HiGHS / breakpoints and
bisection / breakpoints, and the maximum absolute difference in mean accuracy between each of our
methods and HiGHS. The second has the wall and CPU time per question. Last it prints, for each
solver, the exponent ``k`` of a fit ``time ~ n ** k`` over the sizes and between consecutive
sizes, for the wall time and for the CPU time.

Run from the repository root::

    python benchmarks/bench_solve.py
    python benchmarks/bench_solve.py --sizes 1000 10000 --repeats 5 --out bench_solve.json
"""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import scipy
import scipy.sparse as sparse
from _report import machine_info, run_header, write_report
from scipy.optimize import linprog
from tqdm import tqdm

from online.solve import solve

ACTION_COSTS = (1.0, 3.0, 5.0, 9.0, 15.0)
METHODS = ("breakpoints", "bisection")


def make_instance(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the accuracy and cost arrays, both of shape ``(n, 5)``, for ``n`` questions."""
    rng = np.random.default_rng([seed, n])
    accuracy = np.sort(rng.uniform(0.0, 1.0, size=(n, len(ACTION_COSTS))), axis=1)
    cost = np.tile(np.asarray(ACTION_COSTS), (n, 1))
    return accuracy, cost


def build_lp(
    accuracy: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, sparse.csr_matrix, sparse.csr_matrix]:
    """Build the objective (negated, since ``linprog`` minimises) and the CSR constraint rows."""
    n, m = accuracy.shape
    objective = -accuracy.ravel()
    # Row i has ones in columns i*m .. i*m + m - 1: the action probabilities of question i.
    a_eq = sparse.csr_matrix(
        (np.ones(n * m), np.arange(n * m), np.arange(0, n * m + 1, m)), shape=(n, n * m)
    )
    a_ub = sparse.csr_matrix(cost.reshape(1, -1) / n)
    return objective, a_ub, a_eq


def time_ours(accuracy: np.ndarray, cost: np.ndarray, budget: float, method: str) -> dict:
    """Time one call of `solve` with garbage collection paused, and return its record."""
    load = os.getloadavg()
    gc.collect()
    gc.disable()
    try:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, start_cpu = time.perf_counter(), time.process_time()
        solution = solve(accuracy, cost, budget, method=method)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - start_cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    finally:
        gc.enable()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "minor_page_faults": faults,
        "status": "ok",
        "mean_accuracy": solution.mean_accuracy,
        "mean_cost": solution.mean_cost,
        "lambda": solution.lambda_,
        "loadavg": list(load),
    }


def highs_worker(
    n: int, seed: int, budget: float, repeats: int, memory_gib: float, conn: Connection
) -> None:
    """Solve the LP with HiGHS ``repeats`` times in this child process, sending one record each."""
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        accuracy, cost = make_instance(n, seed)
        objective, a_ub, a_eq = build_lp(accuracy, cost)
        for _ in range(repeats):
            load = os.getloadavg()
            gc.collect()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start, start_cpu = time.perf_counter(), time.process_time()
            result = linprog(
                objective,
                A_ub=a_ub,
                b_ub=[budget],
                A_eq=a_eq,
                b_eq=np.ones(n),
                bounds=(0.0, 1.0),
                method="highs",
            )
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - start_cpu
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            record: dict[str, Any] = {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "minor_page_faults": faults,
                "status": "ok" if result.status == 0 else "failed",
                "message": str(result.message),
                "loadavg": list(load),
            }
            if result.status == 0:
                record["mean_accuracy"] = float(-result.fun / n)
                record["mean_cost"] = float((a_ub @ result.x)[0])
            conn.send(record)
    except MemoryError:
        conn.send({"status": "out of memory", "loadavg": list(os.getloadavg())})
    finally:
        conn.close()


def time_highs(
    n: int, seed: int, budget: float, repeats: int, timeout: float, memory_gib: float, bar: tqdm
) -> list[dict]:
    """Run `highs_worker` in a spawned process and collect its records.

    Stops the child when one call takes longer than ``timeout`` seconds, and records that call
    as ``"timeout"``. The wait for the first call also covers the child's start-up and the LP
    build, which took about 2 s together at n = 1,000,000 on a 2-core machine.
    """
    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=highs_worker, args=(n, seed, budget, repeats, memory_gib, sender), daemon=True
    )
    process.start()
    sender.close()
    records: list[dict] = []
    try:
        while len(records) < repeats:
            load = os.getloadavg()
            if not receiver.poll(timeout):
                records.append(
                    {"status": "timeout", "seconds": None, "timeout_s": timeout}
                    | {"loadavg": list(load)}
                )
                break
            try:
                record = receiver.recv()
            except EOFError:
                records.append({"status": "child process exited", "seconds": None})
                break
            records.append(record)
            if record["status"] != "ok":
                break
            bar.update(1)
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        receiver.close()
    if records[-1]["status"] == "child process exited":
        records[-1]["exitcode"] = process.exitcode
    return records


def median_of(records: list[dict], key: str = "seconds") -> float | None:
    """Return the median of ``key`` over the successful calls, or None if there were none."""
    times = [r[key] for r in records if r["status"] == "ok"]
    return statistics.median(times) if times else None


def summarise(n: int, results: dict[str, list[dict]]) -> dict:
    """Reduce the records at one size to medians, ratios and objective differences."""
    medians = {name: median_of(records) for name, records in results.items()}
    breakpoints = medians["breakpoints"]
    summary: dict[str, Any] = {"n": n, "median_seconds": medians}

    summary["runs"] = {
        name: sum(r["status"] == "ok" for r in records) for name, records in results.items()
    }
    summary["highs_status"] = sorted(
        {
            r["status"] + (f" (> {r['timeout_s']:g} s)" if "timeout_s" in r else "")
            for r in results["highs"]
        }
    )
    summary["ratio_highs_to_breakpoints"] = (
        medians["highs"] / breakpoints if medians["highs"] is not None and breakpoints else None
    )
    summary["ratio_bisection_to_breakpoints"] = (
        medians["bisection"] / breakpoints
        if medians["bisection"] is not None and breakpoints
        else None
    )

    ours = [r["mean_accuracy"] for m in METHODS for r in results[m]]
    highs = [r["mean_accuracy"] for r in results["highs"] if r["status"] == "ok"]
    summary["max_abs_diff_vs_highs"] = (
        max(abs(a - b) for a in ours for b in highs) if highs else None
    )
    summary["max_abs_diff_breakpoints_vs_bisection"] = max(
        abs(a - b)
        for a in (r["mean_accuracy"] for r in results["breakpoints"])
        for b in (r["mean_accuracy"] for r in results["bisection"])
    )

    summary["us_per_question"] = {
        name: (seconds / n * 1e6 if seconds is not None else None)
        for name, seconds in medians.items()
    }
    cpu_medians = {name: median_of(records, "cpu_seconds") for name, records in results.items()}
    summary["median_cpu_seconds"] = cpu_medians
    summary["median_minor_page_faults"] = {
        name: median_of(records, "minor_page_faults") for name, records in results.items()
    }
    summary["cpu_us_per_question"] = {
        name: (seconds / n * 1e6 if seconds is not None else None)
        for name, seconds in cpu_medians.items()
    }

    loads = [r["loadavg"][0] for records in results.values() for r in records if "loadavg" in r]
    summary["loadavg_1min_range"] = [min(loads), max(loads)] if loads else None
    return summary


def growth_exponents(summaries: list[dict], key: str = "median_seconds") -> dict[str, dict]:
    """Fit how each solver's median time grows with n: ``time ~ n ** exponent``.

    Returns, per solver, the least-squares slope of log(time) against log(n) over every size
    that the solver finished, and the slope between each pair of consecutive sizes. An
    exponent near 1 means linear growth. ``key`` selects wall time (``"median_seconds"``) or
    CPU time (``"median_cpu_seconds"``).
    """
    out: dict[str, dict] = {}
    for solver in (*METHODS, "highs"):
        points = [(s["n"], s[key][solver]) for s in summaries if s[key].get(solver) is not None]
        if len(points) < 2:
            continue
        log_n = np.log([n for n, _ in points])
        log_t = np.log([t for _, t in points])
        steps = [
            {
                "from_n": n0,
                "to_n": n1,
                "exponent": float(np.log(t1 / t0) / np.log(n1 / n0)),
            }
            for (n0, t0), (n1, t1) in itertools.pairwise(points)
        ]
        out[solver] = {"exponent": float(np.polyfit(log_n, log_t, 1)[0]), "steps": steps}
    return out


def markdown_tables(summaries: list[dict]) -> str:
    """Format the summaries as two Markdown tables: times and accuracy, then time per question.

    The second table also gives the median CPU time (``time.process_time``) per question. Unlike
    the wall time, it leaves out time when other processes had the CPU.
    """

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    times = [
        "| n | breakpoints median s | bisection median s | HiGHS median s "
        "| HiGHS / breakpoints | bisection / breakpoints | max abs diff vs HiGHS "
        "| max abs diff breakpoints vs bisection | runs (bp/bis/HiGHS) | load avg (1 min) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    per_question = [
        "| n | breakpoints us/question | bisection us/question | HiGHS us/question "
        "| breakpoints CPU us/question | bisection CPU us/question | HiGHS CPU us/question |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        medians, micros, runs = s["median_seconds"], s["us_per_question"], s["runs"]
        cpu_micros = s["cpu_us_per_question"]
        highs = number(medians["highs"], ".3g")
        if medians["highs"] is None:
            highs = ", ".join(s["highs_status"]) or "not run"
        load = s["loadavg_1min_range"]
        times.append(
            f"| {s['n']:,} | {number(medians['breakpoints'], '.3g')} "
            f"| {number(medians['bisection'], '.3g')} | {highs} "
            f"| {number(s['ratio_highs_to_breakpoints'], '.3g')} "
            f"| {number(s['ratio_bisection_to_breakpoints'], '.3g')} "
            f"| {number(s['max_abs_diff_vs_highs'], '.1e')} "
            f"| {number(s['max_abs_diff_breakpoints_vs_bisection'], '.1e')} "
            f"| {runs['breakpoints']}/{runs['bisection']}/{runs['highs']} "
            f"| {load[0]:.1f}-{load[1]:.1f} |"
        )
        per_question.append(
            f"| {s['n']:,} | {number(micros['breakpoints'], '.3g')} "
            f"| {number(micros['bisection'], '.3g')} | {number(micros['highs'], '.3g')} "
            f"| {number(cpu_micros['breakpoints'], '.3g')} "
            f"| {number(cpu_micros['bisection'], '.3g')} "
            f"| {number(cpu_micros['highs'], '.3g')} |"
        )
    return "\n".join(times) + "\n\n" + "\n".join(per_question)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5, help="calls per size of each method")
    parser.add_argument("--repeats-highs", type=int, default=3, help="HiGHS calls per size")
    parser.add_argument("--budget", type=float, default=4.0, help="mean-cost budget B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--highs-timeout",
        type=float,
        default=120.0,
        help="seconds after which one HiGHS call is stopped",
    )
    parser.add_argument(
        "--highs-memory-gib",
        type=float,
        default=16.0,
        help="address-space limit of the HiGHS child process, in GiB",
    )
    parser.add_argument("--out", help="write every measurement to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.repeats_highs < 0:
        parser.error("--repeats must be at least 1 and --repeats-highs at least 0")
    if any(n < 1 for n in args.sizes):
        parser.error("--sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted(set(args.sizes))
    total = len(sizes) * (2 * args.repeats + args.repeats_highs)
    summaries: list[dict] = []
    measurements: list[dict] = []
    highs_stopped_at: int | None = None
    with tqdm(total=total, unit="call", dynamic_ncols=True) as bar:
        for n in sizes:
            bar.set_description(f"n={n:,}")
            accuracy, cost = make_instance(n, args.seed)
            results: dict[str, list[dict]] = {"breakpoints": [], "bisection": [], "highs": []}
            for _ in range(args.repeats):
                for method in METHODS:
                    results[method].append(time_ours(accuracy, cost, args.budget, method))
                    bar.update(1)
            del accuracy, cost
            if highs_stopped_at is not None:
                results["highs"] = [{"status": f"skipped after n={highs_stopped_at:,}"}]
                bar.update(args.repeats_highs)
            elif args.repeats_highs > 0:
                bar.set_description(f"n={n:,} HiGHS")
                records = time_highs(
                    n,
                    args.seed,
                    args.budget,
                    args.repeats_highs,
                    args.highs_timeout,
                    args.highs_memory_gib,
                    bar,
                )
                results["highs"] = records
                if records[-1]["status"] != "ok":
                    highs_stopped_at = n
                bar.update(args.repeats_highs - sum(r["status"] == "ok" for r in records))
            for solver, records in results.items():
                for repeat, record in enumerate(records):
                    measurements.append({"n": n, "solver": solver, "repeat": repeat} | record)
            summaries.append(summarise(n, results))
    table = markdown_tables(summaries)
    print(table)
    growth = {
        "wall": growth_exponents(summaries),
        "cpu": growth_exponents(summaries, "median_cpu_seconds"),
    }
    for clock, fits in growth.items():
        for solver, fitted in fits.items():
            steps = ", ".join(
                f"{step['from_n']:,}->{step['to_n']:,}: {step['exponent']:.2f}"
                for step in fitted["steps"]
            )
            print(f"{solver} {clock} time ~ n^{fitted['exponent']:.2f} ({steps})")
    if args.out:
        report = {
            **run_header(),
            "machine": machine_info(numpy=np.__version__, scipy=scipy.__version__),
            "settings": vars(args) | {"action_costs": list(ACTION_COSTS)},
            "summary": summaries,
            "growth": growth,
            "measurements": measurements,
        }
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
