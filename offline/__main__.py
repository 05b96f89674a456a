"""Command line of the offline tools: ``python -m offline COMMAND``.

Commands:
  datasets   list the bundled data sets with their counts
  export     write a bundled data set as a samples file
  evaluate   cross-validate the allocation policies at a budget and write a report
  warmstart  solve, train the policy and write the service's warm-start artifact
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from online.actions import DEFAULT_SAMPLE_COUNTS, ActionSpace
from online.artifact import DEFAULT_ARTIFACT
from online.datasets import DATASETS, dataset_path, load_dataset
from online.samples import Question, SamplesFormatError, read_samples, write_samples

logger = logging.getLogger("offline")


def _cmd_datasets(args: argparse.Namespace) -> int:
    for name, info in DATASETS.items():
        questions = load_dataset(name)
        samples = sum(len(q.samples) for q in questions)
        print(f"{name:10s} {len(questions):6d} questions {samples:7d} samples  {info.description}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        path = dataset_path(args.dataset)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    questions = read_samples(path)
    if args.holdout is not None:
        if not 0.0 < args.holdout < 1.0:
            print(f"error: --holdout must be between 0 and 1, got {args.holdout}", file=sys.stderr)
            return 2
        if args.holdout_out is None:
            message = "error: --holdout needs --holdout-out for the held-out questions"
            print(message, file=sys.stderr)
            return 2
        order = np.random.default_rng(args.seed).permutation(len(questions))
        held_out_rows = set(order[: round(args.holdout * len(questions))].tolist())
        held_out = [q for i, q in enumerate(questions) if i in held_out_rows]
        count = write_samples(held_out, args.holdout_out)
        print(f"wrote {count} held-out questions of {args.dataset} to {args.holdout_out}")
        questions = [q for i, q in enumerate(questions) if i not in held_out_rows]
    count = write_samples(questions, args.out)
    print(f"wrote {count} questions of {args.dataset} to {args.out}")
    return 0


def _load_inputs(datasets: Sequence[str], samples: Sequence[str]) -> list[Question]:
    questions: list[Question] = []
    for name in datasets:
        questions.extend(load_dataset(name))
    for path in samples:
        questions.extend(read_samples(path))
    return questions


def _cmd_warmstart(args: argparse.Namespace) -> int:
    from offline.warmstart import build_warmstart, make_training_set

    datasets = args.dataset or ([] if args.samples else ["svamp", "math100"])
    try:
        questions = _load_inputs(datasets, args.samples)
    except (KeyError, SamplesFormatError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    actions = ActionSpace(tuple(args.actions))
    training = make_training_set(questions, actions, progress=True)
    warm = build_warmstart(
        training,
        args.budget,
        epochs=args.epochs,
        seed=args.seed,
        trained_on=list(datasets) + [Path(p).name for p in args.samples],
        progress=True,
    )
    warm.save(args.out)
    summary = {
        "out": str(args.out),
        "questions": len(questions),
        "budget": warm.budget,
        "lambda_star": warm.lambda_star,
        "price_scale": warm.price_scale,
        **warm.metrics,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from offline.evaluate import EvaluationSettings, evaluate
    from offline.report import write_report

    try:
        questions = _load_inputs(args.dataset, args.samples)
    except (KeyError, SamplesFormatError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not questions:
        print("error: give --samples FILE or --dataset NAME", file=sys.stderr)
        return 2
    budgets = sorted({args.budget, *args.curve_budgets})
    settings = EvaluationSettings(
        folds=args.folds, seed=args.seed, unit=args.unit, actions=ActionSpace(tuple(args.actions))
    )
    try:
        reports = evaluate(questions, budgets, settings, progress=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = ", ".join([*args.dataset, *(Path(p).name for p in args.samples)])
    report = write_report(reports, args.budget, args.out, source)
    summary = {name: round(m["accuracy"], 4) for name, m in report["methods"].items()}
    print(json.dumps({"out": str(args.out), "budget": args.budget, "accuracy": summary}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m offline", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("datasets", help="list the bundled data sets").set_defaults(
        run=_cmd_datasets
    )

    export = commands.add_parser("export", help="write a bundled data set as a samples file")
    export.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    export.add_argument("--out", required=True, type=Path, help="output file (.jsonl or .jsonl.gz)")
    export.add_argument(
        "--holdout",
        type=float,
        help="fraction of the questions, drawn at random, to write to --holdout-out instead",
    )
    export.add_argument("--holdout-out", type=Path, help="output file of the held-out questions")
    export.add_argument("--seed", type=int, default=0, help="seed of the --holdout draw")
    export.set_defaults(run=_cmd_export)

    ev = commands.add_parser("evaluate", help="cross-validate the policies and write a report")
    ev.add_argument("--samples", action="append", default=[], help="samples file (repeatable)")
    ev.add_argument("--dataset", action="append", default=[], help="bundled set (repeatable)")
    ev.add_argument("--budget", type=float, required=True, help="mean cost per question")
    ev.add_argument(
        "--curve-budgets",
        type=float,
        nargs="*",
        default=[1.5, 2.0, 3.0, 4.0, 6.0],
        help="budgets of the accuracy-against-budget plot",
    )
    ev.add_argument("--out", type=Path, required=True, help="output folder")
    ev.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    ev.add_argument("--seed", type=int, default=0, help="seed of the folds and training order")
    ev.add_argument("--unit", choices=["samples", "tokens"], default="samples", help="cost unit")
    ev.add_argument(
        "--actions",
        type=int,
        nargs="+",
        default=list(DEFAULT_SAMPLE_COUNTS),
        help="sample counts of the actions",
    )
    ev.set_defaults(run=_cmd_evaluate)

    warm = commands.add_parser("warmstart", help="build the service's warm-start artifact")
    warm.add_argument("--dataset", action="append", default=[], help="bundled set to train on")
    warm.add_argument("--samples", action="append", default=[], help="samples file to train on")
    warm.add_argument("--budget", type=float, default=4.0, help="mean samples per question")
    warm.add_argument(
        "--actions",
        type=int,
        nargs="+",
        default=list(DEFAULT_SAMPLE_COUNTS),
        help="sample counts of the actions",
    )
    warm.add_argument("--epochs", type=int, default=20, help="passes over the training questions")
    warm.add_argument("--seed", type=int, default=0, help="seed of the training order")
    warm.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT, help="artifact file to write")
    warm.set_defaults(run=_cmd_warmstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
