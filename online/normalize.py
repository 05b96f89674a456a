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

The rules repeat until the key is stable, so the key of a key is the key itself. `equivalent`
compares keys that these rules cannot decide with math-verify, in a child Python process that is
killed when a comparison runs past its time limit.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

__all__ = ["DEFAULT_TIMEOUT", "canonical_key", "equivalent", "parse_number"]

logger = logging.getLogger(__name__)

#: Seconds one math-verify comparison may take before it counts as undecided.
DEFAULT_TIMEOUT = 5.0
# Seconds the child process may take to start and import math-verify (about 1 s when measured).
_START_TIMEOUT = 60.0
_CACHE_SIZE = 10_000

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


def _serve_equivalence() -> None:
    """Read ``[answer, gold]`` JSON lines on stdin and write a verdict line, 1 or 0, for each.

    This runs in the child process. Its first line out is "ready", or "missing" when math-verify
    cannot be imported. Anything else printed to stdout is sent to stderr instead.
    """
    replies = sys.stdout
    sys.stdout = sys.stderr
    try:
        import math_verify
    except ImportError:
        print("missing", file=replies, flush=True)
        return
    # The parent enforces the time limits, so math-verify's own, based on signal.alarm, are off
    # and its warning about that is silenced.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        answer, gold = json.loads(line)
        try:
            gold_parsed = math_verify.parse(f"${gold}$", parsing_timeout=None)
            answer_parsed = math_verify.parse(f"${answer}$", parsing_timeout=None)
            verdict = math_verify.verify(gold_parsed, answer_parsed, timeout_seconds=None)
        except Exception:
            verdict = False  # math-verify raises on some LaTeX it cannot read: no match
        print(1 if verdict else 0, file=replies, flush=True)


_CHILD_CODE = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from online.normalize import _serve_equivalence; _serve_equivalence()"
)


class _EquivalenceWorker:
    """A math-verify child process shared by the threads of this process, started on first use.

    The child is a fresh interpreter, not a multiprocessing one, so it never re-runs the caller's
    main module.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._available = importlib.util.find_spec("math_verify") is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._cache: dict[tuple[str, str], bool] = {}

    def forget_after_fork(self) -> None:
        """Drop the parent's child process and lock in a forked process, which starts its own."""
        self._lock = threading.Lock()
        self._process = None

    def close(self) -> None:
        """Stop the child process: it exits when its stdin closes, or is killed after 1 s."""
        with self._lock:
            if self._process is None:
                return
            if self._process.stdin is not None:
                self._process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1.0)
            self._stop()

    def _read_line(self, timeout: float) -> str | None:
        """Return the child's next output line, or None on time-out or exit."""
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            data += chunk
        return data.decode().strip()

    def _start(self) -> bool:
        root = str(Path(__file__).resolve().parent.parent)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE.format(root=root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if self._read_line(_START_TIMEOUT) == "ready":
            return True
        logger.warning("math-verify could not be started; comparing plain keys only")
        self._available = False
        self._stop()
        return False

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
        self._process = None

    def _ask(self, answer: str, gold: str, timeout: float) -> bool | None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps([answer, gold]).encode() + b"\n")
            self._process.stdin.flush()
        except OSError:
            return None
        reply = self._read_line(timeout)
        return None if reply is None else reply == "1"

    def compare(self, answer: str, gold: str, timeout: float) -> bool | None:
        with self._lock:
            if (answer, gold) in self._cache:
                return self._cache[(answer, gold)]
            if not self._available or (self._process is None and not self._start()):
                return None
            verdict = self._ask(answer, gold, timeout)
            if verdict is None:
                logger.warning(
                    "math-verify gave no verdict on %r against %r within %.1f s; restarting it",
                    answer,
                    gold,
                    timeout,
                )
                self._stop()
                return None
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[(answer, gold)] = verdict
            return verdict


_WORKER = _EquivalenceWorker()
atexit.register(_WORKER.close)
os.register_at_fork(after_in_child=_WORKER.forget_after_fork)


def equivalent(answer: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool | None:
    """Return math-verify's verdict on two keys, or None without a verdict.

    None means math-verify is not installed, did not start, or took longer than ``timeout``
    seconds (the child process is then killed and restarted on the next call). Calls from
    several threads run one at a time, and time spent waiting for another call is not counted.
    """
    return _WORKER.compare(answer, gold, timeout)
