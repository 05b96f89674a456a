"""Measure how often `answers_match(extract_answer(text), gold)` agrees with recorded correctness.

Run ``python -m offline.extraction_check`` to check the bundled ``math100`` set, or pass
``--path`` for another samples file. Samples without ``text`` or ``correct`` are skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from online.answers import answers_match, canonical_key, extract_answer, final_answer_text
from online.datasets import load_dataset
from online.equivalence import DEFAULT_TIMEOUT
from online.samples import Question, read_samples

__all__ = ["Disagreement", "ExtractionReport", "check_extraction", "main"]


@dataclass(frozen=True)
class Disagreement:
    """A sample whose match with the gold answer differs from its recorded correctness."""

    question_id: str
    sample_index: int
    gold: str | None
    final_answer: str | None
    key: str | None
    matched: bool
    recorded: bool


@dataclass
class ExtractionReport:
    """Counts over the checked samples and every disagreement."""

    samples: int = 0
    agreements: int = 0
    equivalence_matches: int = 0
    stored_answer_differs: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.agreements / self.samples if self.samples else float("nan")


def check_extraction(
    questions: Sequence[Question], timeout: float = DEFAULT_TIMEOUT
) -> ExtractionReport:
    """Compare ``answers_match(extract_answer(text), gold)`` with each sample's ``correct``.

    ``equivalence_matches`` counts matches whose keys differ, which math-verify decided.
    ``stored_answer_differs`` counts samples whose stored ``answer`` is not the key that
    `extract_answer` finds in their text, as in files written with an older extractor.
    """
    report = ExtractionReport()
    for question in questions:
        gold_key = canonical_key(question.gold)
        for index, sample in enumerate(question.samples):
            if sample.text is None or sample.correct is None:
                continue
            key = extract_answer(sample.text)
            matched = answers_match(key, question.gold, timeout=timeout)
            report.samples += 1
            report.stored_answer_differs += sample.answer != key
            report.equivalence_matches += matched and key != gold_key
            if matched == sample.correct:
                report.agreements += 1
                continue
            report.disagreements.append(
                Disagreement(
                    question_id=question.id,
                    sample_index=index,
                    gold=question.gold,
                    final_answer=final_answer_text(sample.text),
                    key=key,
                    matched=matched,
                    recorded=sample.correct,
                )
            )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Print the agreement figure and list the disagreements; return 1 if no sample was checked."""
    parser = argparse.ArgumentParser(
        prog="python -m offline.extraction_check",
        description="Measure how often answers_match(extract_answer(text), gold) agrees with "
        "the correctness recorded for each sample, and list the samples where it does not.",
    )
    parser.add_argument(
        "--dataset", default="math100", help="bundled data set to check (default: math100)"
    )
    parser.add_argument("--path", help="samples file to check instead of a bundled data set")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds per math-verify comparison; 0 compares plain keys only "
        f"(default: {DEFAULT_TIMEOUT})",
    )
    args = parser.parse_args(argv)

    source = args.path or args.dataset
    questions = read_samples(args.path) if args.path else load_dataset(args.dataset)
    report = check_extraction(questions, timeout=args.timeout)
    if not report.samples:
        print(f"{source}: no sample has both 'text' and 'correct'", file=sys.stderr)
        return 1

    print(
        f"{source}: {report.agreements} of {report.samples} samples agree with the recorded "
        f"correctness ({100 * report.agreement:.2f}%)"
    )
    print(f"matches decided by math-verify (keys differ): {report.equivalence_matches}")
    print(f"stored answers that differ from extract_answer(text): {report.stored_answer_differs}")
    for d in report.disagreements:
        print(
            f"{d.question_id} sample {d.sample_index}: gold {d.gold!r}, final answer "
            f"{d.final_answer!r}, key {d.key!r}, matched {d.matched}, recorded {d.recorded}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
