"""AQuA-RAT answer options: read option texts as numbers and map a program's value to a letter.

The Program-of-Thoughts programs for AQuA-RAT compute a value, not a letter. `read_choice`
turns an option text such as ``"C)Rs. 787.50"``, ``"B)28%"``, ``"A)4 1/3 km/h"``,
``"D)8(√3 - 2)"`` or ``"D)3D/(M2-3M)"`` into its possible numeric readings, and `nearest_letter`
picks the option closest to the value. Nothing here runs program text: option texts go through
a small arithmetic parser of its own, and `read_ans` (which runs inside the sandbox child)
turns the program's ``ans`` into plain numbers there.
"""

from __future__ import annotations

import contextlib
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PREAMBLE",
    "Choice",
    "ProgramValue",
    "nearest_letter",
    "read_ans",
    "read_choice",
    "symbol_value",
]

#: Code run in each sandboxed child before an AQuA-RAT program. The few-shot prompt of the
#: programs imports ``Symbol``, ``simplify`` and ``math`` and promises ``solve_it(equations,
#: variable)``, which returns the first solution as a dict from symbol to value (``None`` for
#: each requested symbol when there is no solution). The random generators of Python and SymPy
#: get a fixed seed, so a program that draws random numbers gives the same value in every run.
PREAMBLE = """
import math
import random as _random

import sympy as _sympy
import sympy.core.random as _sympy_random
from sympy import Symbol, simplify

_random.seed(0)
_sympy_random.seed(0)


def solve_it(equations, variable):
    solutions = _sympy.solve(equations, variable, dict=True)
    if solutions:
        return solutions[0]
    requested = variable if isinstance(variable, (list, tuple)) else [variable]
    return {symbol: None for symbol in requested}
"""


def symbol_value(name: str) -> float:
    """Return the fixed test value, in [1.5, 3.5), that stands for the free symbol ``name``.

    A program whose ``ans`` still contains symbols (such as ``(y*z - 2*x)/(z - 2)``) and an option
    written with the same letters are compared at these values.

    >>> symbol_value("x") == symbol_value("x") != symbol_value("y")
    True
    """
    return 1.5 + (zlib.crc32(name.encode("utf-8")) % 100_003) / 100_003 * 2.0


# ---------------------------------------------------------------------------------------------
# Program side: runs inside the sandbox child, after the program


@dataclass(frozen=True)
class ProgramValue:
    """Value of a program's ``ans``: one or more real numbers, and the names of the free
    symbols that were set to `symbol_value` to get them."""

    numbers: tuple[float, ...]
    symbols: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, raw: Any) -> ProgramValue:
        """Rebuild the value from the ``[numbers, symbols]`` list that `read_ans` reports."""
        numbers, symbols = raw
        return cls(tuple(float(x) for x in numbers), frozenset(symbols))


def _real_numbers(ans: Any) -> tuple[list[float], set[str]] | str:
    """Return the numbers and symbol names of ``ans``, or the reason it has no usable value."""
    import sympy

    if isinstance(ans, dict):
        items = list(ans.values())
    elif isinstance(ans, list | tuple | set | frozenset):
        items = sorted(ans, key=str) if isinstance(ans, set | frozenset) else list(ans)
    elif type(ans).__module__ == "numpy" and hasattr(ans, "tolist"):
        listed = ans.tolist()
        items = listed if isinstance(listed, list) else [listed]
    else:
        items = [ans]
    if not items:
        return f"left an empty {type(ans).__name__} in ans"

    numbers: list[float] = []
    symbols: set[str] = set()
    for item in items:
        if isinstance(item, bool) or item is None or isinstance(item, str | bytes):
            return f"left ans of type {type(item).__name__}"
        try:
            expr = sympy.sympify(item, strict=True)
        except (sympy.SympifyError, TypeError, ValueError):
            return f"left ans of type {type(item).__name__}"
        if not isinstance(expr, sympy.Expr):
            return f"left ans of type {type(item).__name__}"
        names = {s.name for s in expr.free_symbols if isinstance(s, sympy.Symbol)}
        if len(names) != len(expr.free_symbols):
            return "left ans with free symbols that are not plain symbols"
        subs = {s: symbol_value(s.name) for s in expr.free_symbols}
        value = complex(sympy.N(expr.subs(subs) if subs else expr, 15))
        if abs(value.imag) > 1e-9 * max(1.0, abs(value.real)):
            return "left ans that is not a real number"
        if not math.isfinite(value.real):
            return "left ans not finite"
        numbers.append(value.real)
        symbols |= names
    return numbers, symbols


def read_ans(namespace: Mapping[str, Any]) -> tuple[list[Any] | None, str | None]:
    """Read ``ans`` from a program's namespace as ``([numbers, symbol names], None)``.

    A dict gives its values and a list, tuple or NumPy array its elements. Each must be a real
    number or a SymPy expression; free symbols are set to `symbol_value`. Returns
    ``(None, reason)`` when ``ans`` is unset, empty, a string, a bool, ``None``, complex,
    infinite or an object SymPy cannot read as an expression.
    """
    if "ans" not in namespace:
        return None, "left ans unset"
    try:
        result = _real_numbers(namespace["ans"])
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        return None, f"left ans of type {type(namespace['ans']).__name__} with no number"
    if isinstance(result, str):
        return None, result
    numbers, symbols = result
    return [numbers, sorted(symbols)], None


# ---------------------------------------------------------------------------------------------
# Option side: runs in the converter


@dataclass(frozen=True)
class Reading:
    """One way to read an option text as numbers, with the symbols it uses. A ``ratio``
    reading is ``a / b`` of an option ``a:b``, which a pair of values matches by its ratio."""

    numbers: tuple[float, ...]
    symbols: frozenset[str] = frozenset()
    ratio: bool = False


@dataclass(frozen=True)
class Choice:
    """An answer option: its letter, its text without the letter, and its numeric readings
    (none for texts such as "None of these")."""

    letter: str
    text: str
    readings: tuple[Reading, ...]


_LETTER_PREFIX = re.compile(r"\s*([A-E])\s*\)\s*")
_NO_VALUE = re.compile(
    r"none|cannot|can ?not|not (?:be )?determined|data inadequate|[<>=≠≤≥]|\bonly\b", re.I
)
_CHARACTERS = str.maketrans(
    {
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2212": "-",  # minus sign
        "\u00d7": "*",  # multiplication sign
        "÷": "/",
        "π": " pi ",
        "√": " sqrt ",
        "½": " 1/2",
        "⅓": " 1/3",
        "⅔": " 2/3",
        "¼": " 1/4",
        "¾": " 3/4",
    }
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_HOURS_MINUTES = re.compile(
    r"(\d+(?:\.\d+)?)\s*(?:hours?|hrs?|h)\s*(?:and\s*)?(\d+(?:\.\d+)?)\s*(?:minutes?|mins?|m)",
    re.I,
)
_MIXED_NUMBER = re.compile(r"(?<![\d.])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])")
_COMBINATIONS = re.compile(r"(\d+)\s*C\s*(\d+)")
_CURRENCY = re.compile(r"^(?:rs\.?|inr|s\.|\$|€|£)\s*", re.I)
_RATE_UNIT = re.compile(r"\b(?:km|kms|m|miles?)\s*/\s*(?:hr|hrs|hours?|h|min|sec|s)\b", re.I)
_WORD = re.compile(r"[A-Za-z]{2,}\.?")
# Short letter runs that are words or units; other runs of two or three letters are products
# of variables ("zy", "AB", "wx").
_SHORT_WORDS = frozenset(
    {"am", "pm", "on", "of", "the", "day", "km", "kms", "hr", "hrs", "min", "sec", "cm", "mm"}
    | {"ft", "kg", "gm", "gms", "rs", "inr", "usd", "per", "and", "men", "sq", "cu", "yr", "yrs"}
    | {"mph", "lb", "lbs", "oz", "mt", "mtr"}
)
_ODD_CHARACTERS = re.compile(r"[^0-9A-Za-z\s+\-*/^()!.,:&%$€£]")
_SEPARATOR = re.compile(r"\s*(?:,|&|:|\band\b)\s*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_MAX_FACTORIAL = 170


class _ParseError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    """Split an arithmetic text into numbers, names, operators and brackets."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        number = _NUMBER.match(text, i)
        if number:
            # A digit right after a letter or a closing bracket is an exponent: "M2", "(a - b)2".
            if tokens and (tokens[-1] == ")" or tokens[-1].isalpha()) and text[i - 1] != " ":
                tokens.append("^")
            tokens.append(number.group())
            i = number.end()
            continue
        if text.startswith(("sqrt", "pi"), i):
            name = "sqrt" if text.startswith("sqrt", i) else "pi"
            tokens.append(name)
            i += len(name)
            continue
        if char.isalpha() or char in "+-*/^()!":
            tokens.append(char)
            i += 1
            continue
        raise _ParseError(f"unexpected character {char!r}")
    return tokens


class _Evaluator:
    """Recursive-descent evaluator of arithmetic with implicit multiplication.

    Grammar: sum = product (("+" | "-") product)*; product = signed (["*" | "/"] signed)*;
    signed = ("-" | "+") signed | power; power = postfix ("^" signed)?; postfix = atom "!"*;
    atom = number | letter | "pi" | "sqrt" atom | "(" sum ")".
    """

    def __init__(self, tokens: list[str], variables: Mapping[str, float]) -> None:
        self.tokens = tokens
        self.variables = variables
        self.position = 0

    def evaluate(self) -> float:
        value = self._sum()
        if self.position != len(self.tokens):
            raise _ParseError(f"unexpected {self.tokens[self.position]!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _ParseError("unexpected end")
        self.position += 1
        return token

    def _sum(self) -> float:
        value = self._product()
        while self._peek() in ("+", "-"):
            if self._take() == "+":
                value += self._product()
            else:
                value -= self._product()
        return value

    def _product(self) -> float:
        value = self._signed()
        while True:
            token = self._peek()
            if token in ("*", "/"):
                self._take()
                right = self._signed()
                value = value * right if token == "*" else value / right
            elif token is not None and (token[0].isalnum() or token == "("):
                value *= self._signed()
            else:
                return value

    def _signed(self) -> float:
        token = self._peek()
        if token == "-":
            self._take()
            return -self._signed()
        if token == "+":
            self._take()
            return self._signed()
        return self._power()

    def _power(self) -> float:
        base = self._postfix()
        if self._peek() == "^":
            self._take()
            return float(base ** self._signed())
        return base

    def _postfix(self) -> float:
        value = self._atom()
        while self._peek() == "!":
            self._take()
            if value != int(value) or not 0 <= value <= _MAX_FACTORIAL:
                raise _ParseError(f"factorial of {value}")
            value = float(math.factorial(int(value)))
        return value

    def _atom(self) -> float:
        token = self._take()
        if token == "(":
            value = self._sum()
            if self._take() != ")":
                raise _ParseError("unclosed bracket")
            return value
        if token == "sqrt":
            return math.sqrt(self._atom())
        if token == "pi":
            return math.pi
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        if token.isalpha():
            return self.variables[token]
        raise _ParseError(f"unexpected {token!r}")


def _evaluate(text: str) -> Reading:
    """Evaluate one arithmetic text, its single letters set to `symbol_value`."""
    tokens = _tokens(text)
    if not tokens:
        raise _ParseError("empty")
    letters = frozenset(t for t in tokens if len(t) == 1 and t.isalpha())
    variables = {name: symbol_value(name) for name in letters}
    try:
        value = _Evaluator(tokens, variables).evaluate()
    except (ArithmeticError, ValueError) as exc:
        raise _ParseError(str(exc)) from None
    if not math.isfinite(value):
        raise _ParseError("not finite")
    return Reading((value,), letters)


def _drop_word(match: re.Match[str]) -> str:
    """Replace a unit or word by a space and split a product of variables into its letters."""
    word = match.group().rstrip(".")
    if word in ("pi", "sqrt"):
        return f" {word} "
    if len(word) >= 4 or word.lower() in _SHORT_WORDS:
        return " "
    return " " + " ".join(word) + " "


def _readings(text: str) -> list[Reading]:
    """Return the numeric readings of an option text whose letter prefix is already removed."""
    text = text.translate(_CHARACTERS).strip()
    if not text or _NO_VALUE.search(text):
        return []
    text = _THOUSANDS.sub("", text)
    hours_minutes = _HOURS_MINUTES.fullmatch(text.strip(" ."))
    if hours_minutes:
        hours, minutes = (float(g) for g in hours_minutes.groups())
        return [Reading((hours * 60 + minutes,)), Reading((hours + minutes / 60,))]

    percent = "%" in text
    text = _CURRENCY.sub("", text.replace("%", " "))
    text = _MIXED_NUMBER.sub(r"(\1+\2/\3)", text)
    text = _COMBINATIONS.sub(lambda m: str(math.comb(int(m[1]), int(m[2]))), text)
    text = _RATE_UNIT.sub(" ", _ODD_CHARACTERS.sub(" ", text))
    text = _WORD.sub(_drop_word, text)
    # A slash left over from a unit such as "step/minute" stands at the end.
    text = re.sub(r"\s*/\s*$", "", text).strip(" ./")

    readings: list[Reading] = []
    parts = [p for p in _SEPARATOR.split(text.strip("()")) if p.strip()]
    if len(parts) == 1 and re.fullmatch(r"[\d.]+(?:\s+[\d.]+)+", text):
        parts = text.split()
    try:
        if len(parts) > 1:
            values = [_evaluate(p) for p in parts]
            numbers = tuple(v.numbers[0] for v in values)
            symbols = frozenset().union(*(v.symbols for v in values))
            readings.append(Reading(numbers, symbols))
            if ":" in text and len(parts) == 2 and numbers[1] != 0:
                readings.append(Reading((numbers[0] / numbers[1],), symbols, ratio=True))
        else:
            readings.append(_evaluate(text))
    except (_ParseError, KeyError):
        return []

    # A trailing single letter after a number may be a unit ("60 m", "2.6m") or a variable
    # ("1000p"): keep both readings.
    unit = re.fullmatch(r"(.*\d)\s*([A-Za-z])", text)
    if unit and not re.search(r"[A-Za-z]", unit.group(1)):
        with contextlib.suppress(_ParseError):
            readings.append(_evaluate(unit.group(1)))
    if percent:
        readings += [Reading(tuple(x / 100 for x in r.numbers), r.symbols) for r in readings]
    return readings


def read_choice(option: str) -> Choice:
    """Split an option such as ``"B)28%"`` into its letter and text, and read its numbers.

    A percentage reads both as itself and divided by 100; hours and minutes read both in
    minutes and in hours; ``a:b`` reads as the pair and as the ratio.

    >>> [r.numbers for r in read_choice("B)28%").readings]
    [(28.0,), (0.28,)]
    >>> [r.numbers for r in read_choice("A)1 hr 23 min").readings]
    [(83.0,), (1.3833333333333333,)]
    >>> read_choice("E)None of these").readings
    ()
    """
    match = _LETTER_PREFIX.match(option)
    if match is None:
        raise ValueError(f"option must start with a letter A to E and ')', got {option!r}")
    letter, text = match.group(1), option[match.end() :]
    # Some options repeat their letter: "A)A)59".
    repeated = _LETTER_PREFIX.match(text)
    if repeated and repeated.group(1) == letter:
        text = text[repeated.end() :]
    return Choice(letter, text.strip(), tuple(_readings(text)))


def _distance(value: ProgramValue, reading: Reading) -> float:
    """Return how far a program's value is from one reading of an option (inf: not comparable)."""
    if value.symbols != reading.symbols:
        return math.inf
    if reading.ratio and len(value.numbers) == 2 and value.numbers[1] != 0:
        return abs(value.numbers[0] / value.numbers[1] - reading.numbers[0])
    if len(value.numbers) == len(reading.numbers):
        return sum(abs(a - b) for a, b in zip(value.numbers, reading.numbers, strict=True))
    if len(reading.numbers) == 1:
        # Several numbers against one option number: the closest of them counts.
        return min(abs(a - reading.numbers[0]) for a in value.numbers)
    return math.inf


def nearest_letter(value: ProgramValue, choices: Sequence[Choice]) -> str | None:
    """Return the letter of the option nearest to ``value``, or None when none is comparable.

    Distance is the absolute difference, summed over the elements when both sides hold the same
    count of numbers; an option's best reading counts. Ties go to the earlier option. A value
    with free symbols is compared only with options that use the same letters.

    >>> choices = [read_choice(o) for o in ["A)226", "B)230", "C)240", "D)260", "E)280"]]
    >>> nearest_letter(ProgramValue((234.2857,)), choices)
    'B'
    """
    best_letter, best_distance = None, math.inf
    for choice in choices:
        for reading in choice.readings:
            distance = _distance(value, reading)
            if distance < best_distance:
                best_letter, best_distance = choice.letter, distance
    return best_letter
