"""Command line of the online package: ``python -m online simulate``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from online.datasets import DATASETS, dataset_path
from online.samples import SamplesFormatError, read_samples
from online.simulator import (
    DEFAULT_STEP_SIZE,
    DEFAULT_WINDOW,
    POLICIES,
    QuestionPool,
    Retarget,
    SimulationConfig,
    simulate,
)

__all__ = ["build_parser", "main"]

_SAMPLED_DATASETS = sorted(name for name, info in DATASETS.items() if info.has_samples)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a rate between 0 and 1, got {text!r}")
    return value


def _retarget(text: str) -> Retarget:
    at, sep, budget = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return Retarget(at=_positive_int(at), budget=_positive_float(budget))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected AT:B2, a positive request number and a positive budget such as "
            f"5000:2, got {text!r}"
        ) from None


def _dataset(text: str) -> str:
    if text not in DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r}; bundled sets with samples: {', '.join(_SAMPLED_DATASETS)}"
        )
    if not DATASETS[text].has_samples:
        raise argparse.ArgumentTypeError(
            f"dataset {text!r} has questions but no recorded samples; "
            f"use one of {', '.join(_SAMPLED_DATASETS)}"
        )
    return text


def _load_pool(dataset: str | None, samples: Path | None) -> QuestionPool:
    """Read the questions of a bundled set or of a samples file, whichever is given."""
    if dataset is not None:
        return QuestionPool(dataset, read_samples(dataset_path(dataset)))
    if samples is not None:
        return QuestionPool(samples.name, read_samples(samples))
    raise ValueError("give --dataset NAME or --samples FILE")


def _cmd_simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.retarget is not None and args.retarget.at >= args.requests:
        parser.error(
            f"argument --retarget: request {args.retarget.at} must be below "
            f"--requests {args.requests}"
        )
    try:
        config = SimulationConfig(
            budget=args.budget,
            requests=args.requests,
            policy=args.policy,
            retarget=args.retarget,
            explore=args.explore,
            feedback=args.feedback,
            in_flight=args.in_flight,
            report_batch=args.report_batch,
            seed=args.seed,
            step_size=args.step_size,
            rule=args.rule,
            window=args.window,
            artifact=args.artifact,
        )
        pool = _load_pool(args.dataset, args.samples)
        then = None
        if args.then_dataset is not None or args.then_samples is not None:
            then = _load_pool(args.then_dataset, args.then_samples)
        result = simulate(pool, config, then=then, progress=not args.no_progress)
    except (SamplesFormatError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary_path, trace_path = result.save(args.out)
    print(json.dumps(result.summary, indent=2))
    print(f"wrote {summary_path} and {trace_path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m online", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser(
        "simulate",
        help="stream recorded questions through the policy, controller and learner",
        description=(
            "Draw questions with replacement from recorded samples and run each through the "
            "service's steps without Ray: decide at the current price, reserve the action's "
            "cost, draw and vote samples, bill the samples drawn. Writes summary.json and "
            "trace.png into --out."
        ),
    )
    source = sim.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--samples", type=Path, metavar="FILE", help="samples file to draw questions from"
    )
    source.add_argument(
        "--dataset",
        type=_dataset,
        metavar="NAME",
        help=f"bundled set: {', '.join(_SAMPLED_DATASETS)}",
    )
    then = sim.add_mutually_exclusive_group()
    then.add_argument(
        "--then-samples",
        type=Path,
        metavar="FILE",
        help="samples file that replaces the pool after half the run",
    )
    then.add_argument(
        "--then-dataset",
        type=_dataset,
        metavar="NAME",
        help="bundled set that replaces the pool after half the run",
    )
    sim.add_argument(
        "--budget",
        type=_positive_float,
        required=True,
        metavar="B",
        help="mean samples per request",
    )
    sim.add_argument(
        "--requests", type=_positive_int, required=True, metavar="N", help="requests to simulate"
    )
    sim.add_argument(
        "--retarget",
        type=_retarget,
        metavar="AT:B2",
        help="change the budget to B2 just before request AT (0-based)",
    )
    sim.add_argument(
        "--policy",
        choices=list(POLICIES),
        default="value",
        metavar="NAME",
        help=f"allocation policy: {', '.join(POLICIES)} (default: value)",
    )
    sim.add_argument(
        "--explore",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="fraction of requests that probe with the largest action and train on its majority",
    )
    sim.add_argument(
        "--feedback",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="fraction of other requests whose gold answer trains the policy",
    )
    sim.add_argument(
        "--in-flight",
        type=_positive_int,
        default=16,
        metavar="K",
        help="requests reserved and not yet completed when the next one is decided",
    )
    sim.add_argument(
        "--report-batch",
        type=_positive_int,
        default=16,
        metavar="K",
        help="finished requests the allocator reports to the controller at once",
    )
    sim.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the questions and draws"
    )
    sim.add_argument(
        "--artifact",
        type=Path,
        metavar="FILE",
        help="warm-start artifact (default: the bundled one)",
    )
    sim.add_argument(
        "--step-size",
        type=_positive_float,
        default=DEFAULT_STEP_SIZE,
        metavar="X",
        help=f"dimensionless dual step of the controller (default: {DEFAULT_STEP_SIZE})",
    )
    sim.add_argument(
        "--rule",
        choices=["additive", "multiplicative"],
        default="additive",
        help="controller update rule",
    )
    sim.add_argument(
        "--window",
        type=_positive_int,
        default=DEFAULT_WINDOW,
        metavar="N",
        help="requests in the controller's window, the moving means and the convergence test",
    )
    sim.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for summary.json and trace.png",
    )
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sim.set_defaults(run=lambda args: _cmd_simulate(args, sim))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
