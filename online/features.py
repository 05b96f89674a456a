"""Cheap features of a question's text, computed in microseconds before any sampling.

Features are a flat ``dict[str, float]`` as River models expect. Word buckets use CRC32, which,
unlike Python's ``hash``, is stable across processes.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = ["HASH_BUCKETS", "question_features"]

HASH_BUCKETS = 32

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z]+")
_LATEX = re.compile(r"\\[a-zA-Z]+")
_BUCKET_KEYS = tuple(f"word_{bucket:02d}" for bucket in range(HASH_BUCKETS))
_CUES: dict[str, tuple[str, ...]] = {
    "cue_add": ("more", "total", "altogether", "sum", "added", "together", "gained"),
    "cue_sub": ("left", "less", "fewer", "lost", "remaining", "gave", "difference", "spent"),
    "cue_mul": ("each", "times", "every", "per", "twice", "double"),
    "cue_div": ("share", "divided", "equally", "split", "average", "ratio", "half"),
    "cue_compare": ("than", "how many more", "how much more", "how many fewer"),
    "cue_change": ("now", "after", "before", "initially", "first", "then"),
}


def question_features(text: str, meta: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Return the features of one question; ``meta["level"]`` (1-5, MATH) is used when given.

    >>> f = question_features("Tom has 3 apples and buys 4 more. How many apples now?")
    >>> f["numbers"], f["cue_add"], f["cue_change"]
    (2.0, 1.0, 1.0)
    """
    lower = text.lower()
    words = _WORD.findall(lower)
    numbers = _NUMBER.findall(text)
    values = []
    for token in numbers:
        try:
            values.append(float(token.replace(",", "")))
        except ValueError:
            continue
    features: dict[str, float] = {
        "log_chars": math.log1p(len(text)),
        "log_words": math.log1p(len(words)),
        "numbers": float(len(numbers)),
        "distinct_numbers": float(len(set(numbers))),
        "log_max_number": math.log10(1.0 + max(values, default=0.0)),
        "decimals": float(sum("." in n for n in numbers)),
        "latex_commands": float(len(_LATEX.findall(text))),
        "dollars": float(text.count("$")),
        "sentences": float(max(1, text.count(".") + text.count("?") + text.count("!"))),
    }
    for name, cues in _CUES.items():
        features[name] = float(sum(map(lower.count, cues)))
    level = (meta or {}).get("level")
    if isinstance(level, int | float) and not isinstance(level, bool):
        features["level"] = float(level)
    # Set order depends on the string hash seed of the process. Sorting makes the order of the
    # keys, and of any sum over them, the same in every process.
    for word in sorted(set(words)):
        key = _bucket_key(word)
        features[key] = features.get(key, 0.0) + 1.0
    return features


@functools.lru_cache(maxsize=65_536)
def _bucket_key(word: str) -> str:
    """Return the feature name of the hash bucket of ``word``; cached, since words repeat."""
    return _BUCKET_KEYS[zlib.crc32(word.encode()) % HASH_BUCKETS]
