"""Tests for answer extraction, bucket keys, answer comparison, voting and the command line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import online.answers
from online.answers import answers_match, canonical_key, extract_answer, final_answer_text, vote
from online.normalize import parse_number

REPO = Path(__file__).resolve().parent.parent
HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None

# (reply, key of its final answer). Each row is one kind of fault seen in real model output.
EXTRACTION_CASES = [
    ("So the total is \\boxed{8,000}.", "8000"),
    ("So the total is \\boxed{8000}.", "8000"),
    ("So the total is \\boxed{8{,}000}.", "8000"),
    ("We get \\boxed{840}. Checking again, the sum is \\boxed{840}", "840"),
    ("The code is \\boxed{004}.", "4"),
    ("The probability is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("The probability is \\boxed{\\dfrac{1}{2}}.", "0.5"),
    ("The probability is \\boxed{\\frac12}.", "0.5"),
    ("The probability is \\boxed{\\frac{1}{3}}.", "1/3"),
    ("the temperature falls to -3", "-3"),
    ("the temperature falls to \u22123 degrees", "-3"),
    ("Since 5-3 = 2, we subtract 7-4", "4"),
    ("Total: 12\n#### -1,234.5", "-1234.5"),
    ("The answer is 42.", "42"),
    ("Final Answer: The final answer is $7$. I hope it is correct.", "7"),
    ("The answer is **18**.", "18"),
    ("so the answer is .", None),
    ("We find \\fbox{42}.", "42"),
    ("first \\boxed 3 and then, after checking, the final \\boxed{7}", "7"),
    ("so the result is \\boxed 3.", "3"),
    ("The mixed number is \\(\\boxed{12 \\frac{3}{5}}\\).", "12.6"),
    ("They arrive at \\boxed{4:30 \\text{ p.m.}}.", "4:30p.m"),
    ("There are \\[15^4=\\boxed{50,\\!625}\\] choices.", "50625"),
    ("Only graph \\boxed{\\text{(A)}} fits.", "A"),
    ("The sweatshirt cost \\boxed{\\$37.50}.", "37.5"),
    ("About \\boxed{25\\%} of the total.", "25"),
    ("The angle is \\boxed{140^\\circ}.", "140"),
    ("The length is \\boxed{12 \\text{ cm}}.", "12"),
    ("Thus \\boxed{x = 5}.", "5"),
    ("Thus \\boxed{\\left( 1, \\frac{\\pi}{2} \\right)}.", "(1,\\frac{\\pi}{2})"),
    ("The set is \\boxed{\\{1, 2\\}}.", "\\{1,2\\}"),
    ("Cut off: \\boxed{7} and then \\boxed{\\frac{1}{", "7"),
    ("An empty box \\boxed{} ends it.", None),
    ("No digits at all here.", None),
    ("The population is 8\u2009000 people.", "8000"),
    ("The population is 8\u202f000 people.", "8000"),
    ("", None),
]


@pytest.mark.parametrize(("text", "key"), EXTRACTION_CASES)
def test_extract_answer_cases(text: str, key: str | None) -> None:
    assert extract_answer(text) == key


def test_extract_answer_none_text() -> None:
    assert extract_answer(None) is None


def test_final_answer_text_before_key() -> None:
    assert final_answer_text("\\boxed{1} then \\boxed{\\frac{3}{4}}.") == "\\frac{3}{4}"
    assert final_answer_text("no answer here") is None


# (answer, key) for canonical_key alone.
KEY_CASES = [
    ("8,000", "8000"),
    ("8{,}000", "8000"),
    ("8\u2009000", "8000"),
    ("8\\,000", "8000"),
    ("-0", "0"),
    ("+5", "5"),
    ("0.50", "0.5"),
    (".5", "0.5"),
    ("5.", "5"),
    ("1/2", "0.5"),
    ("\\frac{2}{4}", "0.5"),
    ("-\\frac{2}{6}", "-1/3"),
    ("\\frac{-2}{6}", "-1/3"),
    ("1\\frac{1}{9}", "10/9"),
    ("-1\\frac{1}{2}", "-1.5"),
    ("50%", "50"),
    ("50\\%", "50"),
    ("50 percent", "50"),
    ("€12", "12"),
    ("\\text{4:30 p.m.}", "4:30p.m"),
    ("\\textbf{(C)}", "C"),
    ("y = 2x + 3", "2x+3"),
    ("x \\in [2, 5)", "[2,5)"),
    ("4t", "4t"),
    ("4 t", "4t"),
    ("864 \\mbox{ inches}^2", "864"),
    ("\\left[ 1, 2 \\right)", "[1,2)"),
    ("1, 2, 3", "1,2,3"),
    ("\\frac{1}{0}", "\\frac{1}{0}"),
    ("3.333333", "3.333333"),
    ("\\frac{1}{1024}", "0.0009765625"),
    ("  ", None),
    (None, None),
]


@pytest.mark.parametrize(("answer", "key"), KEY_CASES)
def test_canonical_key_cases(answer: str | None, key: str | None) -> None:
    assert canonical_key(answer) == key


def test_long_number_keys_as_text() -> None:
    digits = "1" * 300
    assert canonical_key(digits) == digits
    assert canonical_key("0" + digits) == "0" + digits


def test_vote_thousands_separators_one_bucket() -> None:
    replies = ["\\boxed{8,000}", "\\boxed{8000}", "\\boxed{8{,}000}"]
    result = vote([extract_answer(r) for r in replies])
    assert result.answer == "8000"
    assert result.counts == {"8000": 3}


def test_vote_fractions_majority() -> None:
    replies = ["\\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{3}}", "\\boxed{\\frac{1}{3}}"]
    result = vote([extract_answer(r) for r in replies])
    assert result.answer == "1/3"
    assert result.counts["1/3"] == 2
    assert result.index == 1


def test_vote_tie_first_wins() -> None:
    assert vote(["5", "3", "3", "5"]).answer == "5"
    assert vote(["5", "3", "3", "5"]).index == 0


def test_vote_none_never_wins() -> None:
    assert vote([None, None, "2"]).answer == "2"
    assert vote([None, None]) == online.answers.Vote(answer=None, index=None, counts={})
    assert vote([]).answer is None


def test_vote_canonicalizes_raw_answers() -> None:
    assert vote(["0.5", "\\frac{1}{2}", "1/3"]).counts == {"0.5": 2, "1/3": 1}


def test_sign_never_shares_bucket() -> None:
    assert extract_answer("falls to -3") != extract_answer("rises to 3")
    assert canonical_key("-3") != canonical_key("3")
    assert not answers_match("-3", "3")


# --- formatting variants of one number ----------------------------------------------------------

integers = st.integers(min_value=-(10**12), max_value=10**12)
terminating = st.builds(
    lambda n, twos, fives: Fraction(n, 2**twos * 5**fives),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=0, max_value=6),
)
fractions = st.builds(
    Fraction,
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=1, max_value=10**4),
)
numbers = st.one_of(integers, terminating, fractions)


def _grouped(n: int, separator: str) -> str:
    return f"{n:,}".replace(",", separator)


def _integer_renderings(n: int) -> list[str]:
    """Write a non-negative integer in the ways models do."""
    out = [str(n), f"00{n}", f"{n}.000", f"\\${n}", f"{n}\\%", f"\\text{{{n}}}"]
    out += [f"{n} \\text{{ dollars}}", f"\\frac{{{3 * n}}}{{3}}", f"{7 * n}/7"]
    if n >= 1000:
        for separator in (",", "{,}", ",\\!", "\u2009", "\u202f", "\\,"):
            out.append(_grouped(n, separator))
    return out


def _terminates(denominator: int) -> bool:
    while denominator % 2 == 0:
        denominator //= 2
    while denominator % 5 == 0:
        denominator //= 5
    return denominator == 1


def _fraction_renderings(value: Fraction) -> list[str]:
    """Write a positive non-integer in the ways models do."""
    p, q = value.numerator, value.denominator
    out = [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", f"{p}/{q}"]
    out.append(f"\\frac{{{2 * p}}}{{{2 * q}}}")
    if p < 10 and q < 10:
        out.append(f"\\frac{p}{q}")
    whole, rest = divmod(p, q)
    if whole:
        out += [f"{whole}\\frac{{{rest}}}{{{q}}}", f"{whole} \\frac{{{rest}}}{{{q}}}"]
    if _terminates(q):
        decimal = format(Decimal(p) / Decimal(q), "f")
        out += [decimal, decimal + "00", decimal.removeprefix("0")]
    return out


def renderings(value: Fraction) -> list[str]:
    """Return formatting variants of one number, each with its sign."""
    magnitude = abs(value)
    if magnitude.denominator == 1:
        plain = _integer_renderings(magnitude.numerator)
    else:
        plain = _fraction_renderings(magnitude)
    if value >= 0:
        return plain + ([f"+{plain[0]}"] if value else [])
    signed = [f"-{r}" for r in plain] + [f"\u2212{plain[0]}"]
    return signed


@given(numbers)
def test_variants_share_bucket(value: Fraction) -> None:
    keys = {canonical_key(r) for r in renderings(value)}
    assert len(keys) == 1, (value, keys)


@given(numbers)
def test_key_keeps_value(value: Fraction) -> None:
    for rendering in renderings(value):
        key = canonical_key(rendering)
        assert key is not None
        assert parse_number(key) == value, (rendering, key)


@given(numbers)
def test_boxed_variants_share_bucket(value: Fraction) -> None:
    expected = canonical_key(renderings(value)[0])
    for rendering in renderings(value):
        reply = f"First 2 + 2 = 4, so \\boxed{{4}}. Finally \\(\\boxed{{{rendering}}}\\)."
        assert extract_answer(reply) == expected, reply


@given(st.one_of(integers, terminating))
def test_last_number_keeps_sign(value: Fraction) -> None:
    written = canonical_key(renderings(value)[0]) or ""
    assert extract_answer(f"The level falls to {written}.") == written
    assert extract_answer(f"#### {written}") == written


@given(numbers)
def test_key_format(value: Fraction) -> None:
    key = canonical_key(renderings(value)[0])
    if value.denominator == 1:
        assert key == str(value.numerator)
    elif _terminates(value.denominator):
        assert key == format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    else:
        assert key == f"{value.numerator}/{value.denominator}"


@given(numbers, numbers)
def test_different_numbers_different_buckets(a: Fraction, b: Fraction) -> None:
    if a != b:
        assert canonical_key(renderings(a)[0]) != canonical_key(renderings(b)[0])
        assert not answers_match(renderings(a)[0], renderings(b)[0])


@given(st.integers(min_value=1, max_value=10**9))
def test_negation_different_bucket(n: int) -> None:
    assert canonical_key(f"-{n}") != canonical_key(str(n))


@given(st.text(alphabet="0123456789.,-+/{}()[]\\$% abcdefrtxA=:^~\u2009", max_size=30))
def test_key_of_key_is_key(answer: str) -> None:
    key = canonical_key(answer)
    assert canonical_key(key) == key


@given(st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", "0.5"])), max_size=12))
def test_vote_winner_properties(keys: list[str | None]) -> None:
    result = vote(keys)
    present = [k for k in keys if k is not None]
    if not present:
        assert result.answer is None
        return
    top = max(result.counts.values())
    assert result.answer is not None
    assert sum(result.counts.values()) == len(present)
    assert result.counts[result.answer] == top
    assert result.index == keys.index(result.answer)
    assert result.answer == next(k for k in present if result.counts[k] == top)


# --- answers_match -------------------------------------------------------------------------------


def test_answers_match_plain_keys() -> None:
    assert answers_match("8{,}000", "8000")
    assert answers_match(extract_answer("\\boxed{4:30 \\text{ p.m.}}"), "\\text{4:30 p.m.}")
    assert answers_match("12.6", "12\\frac{3}{5}")
    assert not answers_match(None, "3")
    assert not answers_match("3", None)


def test_answers_match_numbers_skip_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> bool:
        raise AssertionError("numbers must be decided without math-verify")

    monkeypatch.setattr(online.answers, "equivalent", fail)
    assert not answers_match("0.05", "5\\%")
    assert not answers_match("1/3", "0.33")


def test_answers_match_without_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online.answers, "equivalent", lambda *args: None)
    assert not answers_match("2(2a-1)", "4a-2")
    assert answers_match("4a - 2", "4a-2")


def test_answers_match_timeout_zero_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online.answers, "equivalent", lambda *args: True)
    assert not answers_match("2(2a-1)", "4a-2", timeout=0)
    assert answers_match("2(2a-1)", "4a-2")


def test_answers_match_letters_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online.answers, "equivalent", lambda *args: True)
    assert not answers_match("4", "4t")
    assert not answers_match("a", "A")
    assert not answers_match("4:30", "4:30p.m")


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed")
def test_answers_match_expressions() -> None:
    assert answers_match("2(2a-1)", "4a-2")
    assert answers_match("\\frac{x}{2}", "\\frac{1}{2}x")
    assert answers_match("\\sqrt{4}", "2")
    assert not answers_match("\\sqrt{34}+3\\sqrt{10}", "28")
    assert not answers_match("[1,2)", "(1,2)")


@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed")
def test_answers_match_timeout_falls_back() -> None:
    assert not answers_match("(b+1)^2", "b^2+2b+1", timeout=1e-4)
    assert answers_match("(b+1)^2", "b^2+2b+1", timeout=30)


# --- command line --------------------------------------------------------------------------------


def run_cli(stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "online.answers", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_cli_extracts_per_line() -> None:
    lines = [
        {"text": "So \\boxed{8{,}000}."},
        {"text": "no answer"},
        {"text": "#### -1,234.5", "id": 3},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines).encode()
    result = run_cli(stdin)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert out == [{"answer": "8000"}, {"answer": None}, {"answer": "-1234.5"}]


def test_cli_bad_lines_reported() -> None:
    stdin = (
        b'{"text": "\\\\boxed{1}"}\n'
        b"not json\n"
        b"[1, 2]\n"
        b'{"txt": "x"}\n'
        b'{"text": "caf\xff"}\n'
        b"\n"
        b'{"text": "\\\\fbox{42}"}\n'
    )
    result = run_cli(stdin)
    assert result.returncode == 1
    errors = result.stderr.decode().splitlines()
    assert [e.split(":", 2)[1].strip() for e in errors] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "line 6",
    ]
    assert "invalid JSON" in errors[0]
    assert "field 'text'" in errors[2]
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(out) == 7
    assert out[0] == {"answer": "1"}
    assert out[6] == {"answer": "42"}
    assert all(
        o["answer"] is None and o["error"].startswith(f"line {i}:")
        for i, o in enumerate(out[1:6], 2)
    )


def test_cli_help() -> None:
    result = run_cli(b"", "--help")
    assert result.returncode == 0
    assert b"JSON Lines" in result.stdout


def test_cli_empty_input() -> None:
    result = run_cli(b"")
    assert result.returncode == 0
    assert result.stdout == b""
