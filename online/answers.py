"""Final-answer extraction, answer comparison and majority voting.

One implementation serves the worker pool, the data conversion and the offline evaluation. Bucket
keys come from `online.normalize.canonical_key`, whose docstring states the rules. Run
``python -m online.answers`` to extract answers from JSON Lines on standard input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from online.equivalence import DEFAULT_TIMEOUT, equivalent
from online.normalize import canonical_key, parse_number

__all__ = [
    "Vote",
    "answers_match",
    "canonical_key",
    "extract_answer",
    "final_answer_text",
    "main",
    "vote",
]

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_BOX_ARGUMENT = re.compile(r"[^\s$\\{}]+")
_MARKER = re.compile(
    r"\bthe\s+(?:final\s+)?answer\s+is\b|\bfinal\s+answer\s*(?:is\b|:)|^[ \t]*answer\s*:|####",
    re.IGNORECASE | re.MULTILINE,
)
_SENTENCE_END = re.compile(r"\.\s")
# A minus sign belongs to the number unless it follows a word or a closing bracket ("5-3").
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.])(?P<sign>[-\u2212]))?(?<![\w.])"
    r"(?P<number>\d{1,3}(?:(?:,|\{,\}|\\,|\\!|[\u00a0\u2009\u202f])\d{3})+(?:\.\d+)?"
    r"|\d+(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<denominator>\d+))?"
)


def _closing_braces(text: str) -> dict[int, int]:
    """Map the index of each ``{`` that is closed to the index of its ``}``; ``\\{`` is skipped."""
    closing: dict[int, int] = {}
    open_braces: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            open_braces.append(i)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = i
        i += 1
    return closing


def _last_box_argument(text: str) -> str | None:
    """Return the argument of the last box command whose argument is complete."""
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    closing = _closing_braces(text)
    for box in reversed(boxes):
        i = box.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            if i in closing:
                return text[i + 1 : closing[i]]
        elif bare := _BARE_BOX_ARGUMENT.match(text, i):
            return bare.group()
    return None


def final_answer_text(text: str | None) -> str | None:
    """Return the raw text of a reply's final answer, before it is mapped to a key.

    The first rule that finds something decides:

    1. the argument of the last complete ``\\boxed{...}``, ``\\fbox{...}`` or ``\\boxed 3``;
    2. the rest of the line after the last "the (final) answer is", "final answer:", "answer:"
       at the start of a line, or "####", up to the end of its sentence;
    3. the last number, with its sign and its thousands separators.

    An empty box or marker (as in "so the answer is .") gives an empty string, so no answer.

    >>> final_answer_text("\\\\boxed{1} and finally \\\\boxed{\\\\frac{3}{4}}.")
    '\\\\frac{3}{4}'
    >>> final_answer_text("The answer is $42$. That was easy: 1 + 1 = 2.")
    '$42$'
    """
    if not text:
        return None
    boxed = _last_box_argument(text)
    if boxed is not None:
        return boxed
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end() :].split("\n", 1)[0].lstrip(" \t:")
        return _SENTENCE_END.split(rest, 1)[0].rstrip(" *.").lstrip(" *")
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    last = numbers[-1]
    value = (last["sign"] or "") + last["number"]
    return f"{value}/{last['denominator']}" if last["denominator"] else value


def extract_answer(text: str | None) -> str | None:
    """Find the final answer of a reply (see `final_answer_text`) and return its key, or None.

    >>> extract_answer("so we get \\\\boxed{\\\\frac{1}{2}}.")
    '0.5'
    >>> extract_answer("The answer is 42.")
    '42'
    >>> extract_answer("the temperature falls to -3")
    '-3'
    """
    return canonical_key(final_answer_text(text))


def answers_match(
    answer: str | None, gold: str | None, *, timeout: float = DEFAULT_TIMEOUT
) -> bool:
    """Return True when an answer equals the gold answer (None never matches).

    Equal keys match and two different numbers never do. Other pairs, such as expressions or
    intervals, go to math-verify, which gets ``timeout`` seconds, but only when both keys use the
    same letters: math-verify 0.9.0 reads a trailing letter as a unit, so it equates "4" and "4t".
    Without math-verify, after a time-out and with ``timeout <= 0`` only the keys are compared.

    >>> answers_match("\\\\dfrac{1}{2}", "0.50"), answers_match("-3", "3")
    (True, False)
    """
    answer_key, gold_key = canonical_key(answer), canonical_key(gold)
    if answer_key is None or gold_key is None:
        return False
    if answer_key == gold_key:
        return True
    if parse_number(answer_key) is not None and parse_number(gold_key) is not None:
        return False
    if timeout <= 0 or _letters(answer_key) != _letters(gold_key):
        return False
    return equivalent(answer_key, gold_key, timeout) is True


def _letters(key: str) -> set[str]:
    """Return the letters of a key outside LaTeX command names."""
    return set(re.findall(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", key)))


@dataclass(frozen=True)
class Vote:
    """Outcome of a majority vote: the winning key (None if no sample had an answer), the index
    of the first sample that carries it, and the count per key."""

    answer: str | None
    index: int | None
    counts: dict[str, int]


def vote(keys: Sequence[str | None]) -> Vote:
    """Majority vote over canonical keys; None never wins.

    Each entry is passed through `canonical_key` first, so raw answers vote like their keys.
    Tie rule: among keys with the top count, the one that appears first in ``keys`` wins.
    With samples in random order this picks each tied key with equal probability.

    >>> vote(["3", None, "5", "5.0", "3"])
    Vote(answer='3', index=0, counts={'3': 2, '5': 2})
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, raw in enumerate(keys):
        key = canonical_key(raw)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return Vote(answer=None, index=None, counts={})
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return Vote(answer=best, index=first[best], counts=counts)


def _answer_line(line: str) -> dict[str, str | None]:
    """Parse one input line and return its output object; raise ValueError if it is invalid."""
    if not line.strip():
        raise ValueError('empty line; expected a JSON object such as {"text": "..."}')
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError(f"field 'text' must be a string, got {text!r:.60}")
    return {"answer": extract_answer(text)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: one ``{"answer": KEY}`` line out per JSON Lines line in."""
    parser = argparse.ArgumentParser(
        prog="python -m online.answers",
        description=(
            'Read JSON Lines {"text": "..."} from standard input and write {"answer": KEY} per '
            "line, with null when no answer is found. An invalid line is reported on standard "
            'error and gets {"answer": null, "error": "..."}; the exit status is then 1.'
        ),
    )
    parser.parse_args(argv)
    bad_lines = 0
    for line_no, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            out = _answer_line(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            bad_lines += 1
            message = f"line {line_no}: {exc}"
            print(f"error: {message}", file=sys.stderr)
            out = {"answer": None, "error": message}
        print(json.dumps(out, ensure_ascii=False), flush=True)
    return 1 if bad_lines else 0


if __name__ == "__main__":
    sys.exit(main())
