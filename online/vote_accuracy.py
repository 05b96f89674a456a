"""Exact accuracy of a majority vote over a random k-subset of recorded samples.

The subset is drawn uniformly without replacement. Samples without an answer never win. Among
answers tied for the top count each wins with equal probability, which is what the worker pool's
rule (the first tied answer to appear wins) gives when samples arrive in random order.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

__all__ = ["group_answers", "vote_accuracy"]


def group_answers(
    answers: Sequence[str | None],
    correct: Sequence[bool | None],
    gold_match: Sequence[bool],
) -> tuple[list[int], list[bool], int]:
    """Group samples by answer key: return (count per group, group is correct, null count).

    A group is correct when most of its samples are marked correct; a sample's own ``correct``
    flag wins over ``gold_match`` (its answer compared with the gold answer).
    """
    counts: dict[str, int] = {}
    right: dict[str, int] = {}
    nulls = 0
    for answer, flag, match in zip(answers, correct, gold_match, strict=True):
        if answer is None:
            nulls += 1
            continue
        counts[answer] = counts.get(answer, 0) + 1
        is_right = match if flag is None else flag
        right[answer] = right.get(answer, 0) + int(is_right)
    keys = list(counts)
    return (
        [counts[k] for k in keys],
        [2 * right[k] > counts[k] for k in keys],
        nulls,
    )


def _win_probability(target: int, rivals: Sequence[int], nulls: int, k: int) -> float:
    """Probability that the group of size ``target`` wins a k-subset vote against ``rivals``."""
    total = sum(rivals) + nulls + target
    if k > total or target == 0:
        return 0.0
    favourable = 0.0
    for j in range(1, min(target, k) + 1):
        # ways[s][t]: choices of s samples from the rivals seen so far, each rival drawn at most
        # j times, t of them exactly j times (tied with the target).
        ways = [[0] * (len(rivals) + 1) for _ in range(k - j + 1)]
        ways[0][0] = 1
        for size in rivals:
            new = [[0] * (len(rivals) + 1) for _ in range(k - j + 1)]
            for s in range(k - j + 1):
                for t, w in enumerate(ways[s]):
                    if w == 0:
                        continue
                    for d in range(min(size, j, k - j - s) + 1):
                        new[s + d][t + (d == j)] += w * comb(size, d)
            ways = new
        for s in range(k - j + 1):
            rest = k - j - s
            if rest > nulls:
                continue
            for t, w in enumerate(ways[s]):
                if w:
                    favourable += comb(target, j) * w * comb(nulls, rest) / (t + 1)
    return favourable / comb(total, k)


def vote_accuracy(
    group_counts: Sequence[int], group_correct: Sequence[bool], nulls: int, k: int
) -> float:
    """Expected accuracy of a majority vote over ``k`` samples drawn without replacement.

    ``k`` larger than the number of samples is capped at that number.

    Parameters
    ----------
    group_counts
        Samples per distinct answer.
    group_correct
        Whether each answer is correct.
    nulls
        Samples with no answer.
    k
        Samples drawn.

    Examples
    --------
    Two samples say "a" (correct), one says "b". One draw is right with probability 2/3; with
    two draws, "a" wins outright when both are "a" (1/3) and half of the a-b ties (2/3 * 1/2):

    >>> round(vote_accuracy([2, 1], [True, False], 0, 1), 6)
    0.666667
    >>> round(vote_accuracy([2, 1], [True, False], 0, 2), 6)
    0.666667
    >>> vote_accuracy([2, 1], [True, False], 0, 3)
    1.0
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, sum(group_counts) + nulls)
    if k == 0:
        return 0.0
    accuracy = 0.0
    for g, (size, is_correct) in enumerate(zip(group_counts, group_correct, strict=True)):
        if is_correct:
            rivals = [c for h, c in enumerate(group_counts) if h != g]
            accuracy += _win_probability(size, rivals, nulls, k)
    return accuracy
