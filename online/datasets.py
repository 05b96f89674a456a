"""Bundled data sets: recorded samples and question-only traffic sets shipped with the package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from online.samples import Question, read_samples

__all__ = ["DATASETS", "DATA_DIR", "BundledDataset", "dataset_path", "load_dataset"]

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class BundledDataset:
    """A data set shipped in ``online/data``; ``has_samples`` is false for question-only sets."""

    name: str
    filename: str
    has_samples: bool
    description: str


DATASETS: dict[str, BundledDataset] = {
    d.name: d
    for d in (
        BundledDataset(
            "svamp",
            "svamp.jsonl.gz",
            True,
            "SVAMP, 30 Program-of-Thoughts samples per question (code-davinci-002)",
        ),
        BundledDataset(
            "math100",
            "math100.jsonl.gz",
            True,
            "100 MATH problems, 8 chain-of-thought samples each (Qwen2.5-Math-Instruct)",
        ),
        BundledDataset("gsm8k", "gsm8k.jsonl.gz", False, "GSM8K test questions with gold answers"),
        BundledDataset(
            "math500", "math500.jsonl.gz", False, "MATH-500 problems with level and subject"
        ),
    )
}


def dataset_path(name: str) -> Path:
    """Return the file of a bundled data set; raise `KeyError` listing the known names."""
    try:
        return DATA_DIR / DATASETS[name].filename
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise KeyError(f"unknown dataset {name!r}; bundled datasets are: {known}") from None


def load_dataset(name: str) -> list[Question]:
    """Read a bundled data set."""
    return read_samples(dataset_path(name))
