"""Canonical bucket keys for final answers.

`canonical_key` applies these rules in order:

1. LaTeX that does not change the value goes: math delimiters (``$``, ``\\(``, ``\\)``, ``\\[``,
   ``\\]``), ``\\left`` and ``\\right``, spacing (``\\!``, ``\\,``, ``\\;``, ``\\:``, ``\\quad``,
   ``~``, all whitespace) and ``\\displaystyle``. ``\\dfrac`` and ``\\tfrac`` become ``\\frac``,
   ``\\frac12`` becomes ``\\frac{1}{2}``, and ``\\text{..}``, ``\\mathrm{..}`` and ``\\mbox{..}``
   are replaced by their content.
2. Currency symbols (``$ € £ ¥``), degree signs and percent signs are dropped. So "50%" keys as
   "50", the same as "50", and not as "0.5".
3. Words after a number are a unit and are dropped when each word has at least two letters:
   "12 \\text{ cm}", "12 square inches" and "12 \\mbox{ inches}^2" key as "12". A single letter
   stays ("4 t" keys as "4t").
4. Trailing punctuation goes, a leading "x =" or "x \\in" goes when no other equals sign
   follows, and "(A)" becomes "A".
5. A number written as an integer, a decimal (with optional thousands separators), ``a/b``,
   ``\\frac{a}{b}`` or a mixed number ``3\\frac{1}{2}`` keys by its value: integers as "-12",
   values with a terminating decimal expansion as decimals ("0.5", "-1234.5") and all others as a
   fraction in lowest terms ("1/3"). Numbers written with more than 200 characters key as text.
6. Anything else keys as the text left after rules 1 to 4, case kept.

The rules repeat until the key is stable, so the key of a key is the key itself.
`online.equivalence.equivalent` compares keys that these rules cannot decide.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

__all__ = ["canonical_key", "parse_number"]

logger = logging.getLogger(__name__)


_MAX_NUMBER_CHARS = 200
_MAX_PASSES = 8

_SPACES = str.maketrans({"\u00a0": " ", "\u2007": " ", "\u2009": " ", "\u202f": " "})
_SIGNS = str.maketrans({"\u2212": "-"})

# (pattern, replacement) pairs applied in order; each keeps the value of the answer.
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\{,\}", ","),
        (r"\\?\$", " "),
        (r"(?<!\\)\\[()\[\]]", " "),
        (r"\\(?:left|right)(?![A-Za-z])", ""),
        (r"\\(?:displaystyle|textstyle|q?quad)(?![A-Za-z])", " "),
        (r"~", " "),
        (r"(?<!\\)\\[!,;:\s]", " "),
        (r"\\[dt]frac(?![A-Za-z])", r"\\frac"),
        (r"\\frac\s*([^{\s\\])\s*([^{\s\\])", r"\\frac{\1}{\2}"),
        (r"\\frac\s*(\{[^{}]*\})\s*([^{\s\\])", r"\\frac\1{\2}"),
        (r"\\frac\s*([^{\s\\])\s*\{", r"\\frac{\1}{"),
        (r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])", ""),
        (r"\\?%|[€£¥]", ""),
    )
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|textit|textnormal|mathrm|mbox)\s*\{([^{}]*)\}")
_UNIT_WORD = re.compile(r"[A-Za-z][A-Za-z.]+(?:\^\{?[23]\}?)?")
_TRAILING_PUNCTUATION = ".,;:!? "
_LEADING_VARIABLE = re.compile(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)\s*(?:=|\\in(?![A-Za-z]))([^=]*)")
_CHOICE = re.compile(r"\(([A-Z])\)")

_DECIMAL = r"[+-]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)"
_PLAIN = re.compile(_DECIMAL)
_SLASH = re.compile(rf"({_DECIMAL})/({_DECIMAL})")
_FRAC = re.compile(rf"([+-]?)\\frac\{{({_DECIMAL})\}}\{{({_DECIMAL})\}}")
_MIXED = re.compile(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")


def _decimal(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _ratio(numerator: Fraction, denominator: Fraction) -> Fraction | None:
    return None if denominator == 0 else numerator / denominator


def parse_number(text: str) -> Fraction | None:
    """Return the value of a squeezed numeric answer (no whitespace), or None if it is not one.

    >>> parse_number("-1,234.5"), parse_number("3\\\\frac{1}{2}"), parse_number("1/0")
    (Fraction(-2469, 2), Fraction(7, 2), None)
    """
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    if _PLAIN.fullmatch(text):
        return _decimal(text)
    if match := _SLASH.fullmatch(text):
        return _ratio(_decimal(match[1]), _decimal(match[2]))
    if match := _FRAC.fullmatch(text):
        value = _ratio(_decimal(match[2]), _decimal(match[3]))
        if value is None:
            return None
        return -value if match[1] == "-" else value
    if match := _MIXED.fullmatch(text):
        part = _ratio(Fraction(int(match[3])), Fraction(int(match[4])))
        if part is None:
            return None
        value = int(match[2]) + part
        return -value if match[1] == "-" else value
    return None


def _format_number(value: Fraction) -> str:
    """Write an integer as is, a terminating value as a decimal and any other as ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    rest, twos, fives = value.denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _clean_latex(text: str) -> str:
    """Apply rules 1 and 2 of the module docstring, keeping whitespace between words."""
    text = text.translate(_SPACES).translate(_SIGNS)
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    while True:
        # Innermost wrappers first, so nested ones unwrap one level per pass.
        unwrapped = _TEXT_WRAPPER.sub(r" \1", text)
        if unwrapped == text:
            return text
        text = unwrapped


def _squeeze(text: str) -> str:
    return "".join(text.split()).rstrip(_TRAILING_PUNCTUATION)


def _drop_unit(text: str) -> str:
    """Return the number before trailing unit words, or ``text`` unchanged if there is none."""
    words = text.rstrip(_TRAILING_PUNCTUATION).split()
    end = len(words)
    while end > 0 and _UNIT_WORD.fullmatch(words[end - 1]):
        end -= 1
    if 0 < end < len(words) and parse_number(_squeeze(" ".join(words[:end]))) is not None:
        return " ".join(words[:end])
    return text


def canonical_key(answer: str | None) -> str | None:
    """Map an answer to its bucket key by the rules of the module docstring; None if empty.

    >>> canonical_key("\\\\$8{,}000.00"), canonical_key("\\\\dfrac12")
    ('8000', '0.5')
    >>> canonical_key("-\\\\frac{2}{6}"), canonical_key("1/2"), canonical_key("0.50")
    ('-1/3', '0.5', '0.5')
    >>> canonical_key("50\\\\%"), canonical_key("12 \\\\text{ cm}."), canonical_key("x = 004")
    ('50', '12', '4')
    >>> canonical_key("4:30 \\\\text{ p.m.}"), canonical_key("\\\\left( 1, 2 \\\\right)")
    ('4:30p.m', '(1,2)')
    >>> canonical_key(" . ") is None
    True
    """
    key = answer
    # Removing one pattern can form another ("\frac\%12" becomes "\frac12"), so the rules
    # repeat until the key is stable, at most _MAX_PASSES times.
    for _ in range(_MAX_PASSES):
        if key is None:
            return None
        again = _key_pass(key)
        if again == key:
            break
        key = again
    return key


def _key_pass(answer: str) -> str | None:
    text = _clean_latex(answer)
    if match := _LEADING_VARIABLE.fullmatch(text):
        text = match[1]
    key = _squeeze(_drop_unit(text))
    if match := _CHOICE.fullmatch(key):
        key = match[1]
    if not key:
        return None
    value = parse_number(key)
    return key if value is None else _format_number(value)
