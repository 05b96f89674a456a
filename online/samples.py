"""Read and write samples files: JSON Lines, one question with its recorded LLM samples per line.

Format, one object per line::

    {"id": "svamp-0001", "question": "...", "gold": "51",
     "samples": [{"answer": "51", "tokens": 31}, {"answer": null}],
     "meta": {"dataset": "svamp"}}

``answer`` may be null (nothing extracted), ``tokens``, ``text`` and ``correct`` are optional.
``correct`` overrides the comparison of ``answer`` with ``gold``. Unknown fields are ignored.
Files ending in ``.gz`` are read and written through gzip.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Question",
    "Sample",
    "SamplesFormatError",
    "iter_samples",
    "read_samples",
    "write_samples",
]


class SamplesFormatError(ValueError):
    """A line of a samples file does not follow the format; the message names file and line."""


@dataclass(frozen=True)
class Sample:
    """One recorded LLM sample: its extracted final answer and what it cost."""

    answer: str | None
    tokens: int | None = None
    correct: bool | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"answer": self.answer}
        if self.tokens is not None:
            out["tokens"] = self.tokens
        if self.correct is not None:
            out["correct"] = self.correct
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class Question:
    """A question, its gold answer (if known) and its recorded samples."""

    id: str
    question: str
    gold: str | None = None
    samples: tuple[Sample, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "gold": self.gold,
            "samples": [s.to_json() for s in self.samples],
            "meta": self.meta,
        }


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        if mode == "w":
            # mtime 0 in the gzip header: the same questions always give the same bytes.
            raw = gzip.GzipFile(path, "wb", mtime=0)
            return io.TextIOWrapper(raw, encoding="utf-8")
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _fail(path: Path | str, line_no: int, message: str) -> SamplesFormatError:
    return SamplesFormatError(f"{path}:{line_no}: {message}")


def _parse_sample(raw: Any, where: str, path: Path | str, line_no: int) -> Sample:
    if not isinstance(raw, dict):
        raise _fail(path, line_no, f"{where} must be an object, got {type(raw).__name__}")
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, str):
        if isinstance(answer, bool) or not isinstance(answer, int | float):
            raise _fail(path, line_no, f"{where}.answer must be a string or null, got {answer!r}")
        answer = str(answer)
    tokens = raw.get("tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
    ):
        raise _fail(path, line_no, f"{where}.tokens must be a non-negative integer, got {tokens!r}")
    correct = raw.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise _fail(
            path, line_no, f"{where}.correct must be true, false or absent, got {correct!r}"
        )
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise _fail(path, line_no, f"{where}.text must be a string, got {type(text).__name__}")
    return Sample(answer=answer, tokens=tokens, correct=correct, text=text)


def parse_question(line: str, path: Path | str = "<string>", line_no: int = 1) -> Question:
    """Parse one line of a samples file; raise `SamplesFormatError` naming the line and field."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(path, line_no, f"invalid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise _fail(path, line_no, f"expected a JSON object, got {type(raw).__name__}")
    qid = raw.get("id")
    if not isinstance(qid, str) or not qid:
        raise _fail(path, line_no, f"field 'id' must be a non-empty string, got {qid!r}")
    text = raw.get("question")
    if not isinstance(text, str) or not text.strip():
        raise _fail(path, line_no, f"field 'question' must be a non-empty string, got {text!r}")
    gold = raw.get("gold")
    if gold is not None and not isinstance(gold, str):
        if isinstance(gold, bool) or not isinstance(gold, int | float):
            raise _fail(path, line_no, f"field 'gold' must be a string or null, got {gold!r}")
        gold = str(gold)
    raw_samples = raw.get("samples", [])
    if not isinstance(raw_samples, list):
        raise _fail(
            path, line_no, f"field 'samples' must be a list, got {type(raw_samples).__name__}"
        )
    samples = tuple(
        _parse_sample(s, f"samples[{j}]", path, line_no) for j, s in enumerate(raw_samples)
    )
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise _fail(path, line_no, f"field 'meta' must be an object, got {type(meta).__name__}")
    return Question(id=qid, question=text, gold=gold, samples=samples, meta=meta)


def iter_samples(path: str | Path) -> Iterator[Question]:
    """Yield the questions of a samples file in order, skipping blank lines.

    Raises `SamplesFormatError` with ``file:line`` for a malformed line and for a repeated id.
    """
    path = Path(path)
    seen: set[str] = set()
    with _open_text(path, "r") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            question = parse_question(line, path, line_no)
            if question.id in seen:
                raise _fail(path, line_no, f"duplicate id {question.id!r}")
            seen.add(question.id)
            yield question


def read_samples(path: str | Path) -> list[Question]:
    """Read a whole samples file; see `iter_samples`."""
    return list(iter_samples(path))


def write_samples(questions: Iterable[Question], path: str | Path) -> int:
    """Write questions to ``path`` (gzip when it ends in ``.gz``); return how many were written."""
    path = Path(path)
    count = 0
    with _open_text(path, "w") as fh:
        for question in questions:
            fh.write(json.dumps(question.to_json(), ensure_ascii=False, separators=(",", ":")))
            fh.write("\n")
            count += 1
    return count
