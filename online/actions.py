"""The action space: draw ``k`` samples and majority-vote them, for k in a small set."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_SAMPLE_COUNTS", "Action", "ActionSpace"]

DEFAULT_SAMPLE_COUNTS: tuple[int, ...] = (1, 3, 5, 9, 15)


@dataclass(frozen=True)
class Action:
    """Draw ``samples`` samples and vote; ``name`` is what the API reports."""

    name: str
    samples: int


@dataclass(frozen=True)
class ActionSpace:
    """Ordered, increasing sample counts; action ``j`` draws ``sample_counts[j]`` samples.

    >>> space = ActionSpace((1, 3, 5))
    >>> space[1]
    Action(name='vote@3', samples=3)
    """

    sample_counts: tuple[int, ...] = DEFAULT_SAMPLE_COUNTS

    def __post_init__(self) -> None:
        counts = tuple(self.sample_counts)
        if not counts:
            raise ValueError("sample_counts must not be empty")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in counts):
            raise ValueError(f"sample_counts must be positive integers, got {counts!r}")
        if any(b <= a for a, b in itertools.pairwise(counts)):
            raise ValueError(f"sample_counts must be strictly increasing, got {counts!r}")
        object.__setattr__(self, "sample_counts", counts)

    @classmethod
    def from_counts(cls, counts: Sequence[int]) -> ActionSpace:
        return cls(tuple(counts))

    def __len__(self) -> int:
        return len(self.sample_counts)

    def __getitem__(self, index: int) -> Action:
        k = self.sample_counts[index]
        return Action(name=f"vote@{k}", samples=k)

    @property
    def names(self) -> list[str]:
        return [f"vote@{k}" for k in self.sample_counts]

    @property
    def max_samples(self) -> int:
        return self.sample_counts[-1]
