"""Labels from the stream: what each action would have scored, from samples already drawn.

A request that drew ``n`` samples reveals the accuracy of every action with ``k <= n``: the
exact expected accuracy of a ``k``-vote over a random subset of those samples, against a
reference answer. The reference is the gold answer when feedback supplies one, else the vote of
all ``n`` samples (a pseudo-label, useful only when ``n`` is large, as for exploration probes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from online.actions import ActionSpace
from online.answers import canonical_key, vote
from online.imitation import ImitationPolicy
from online.policy import ValuePolicy
from online.vote_accuracy import group_answers, vote_accuracy

__all__ = ["Learner", "action_labels"]


def action_labels(
    keys: Sequence[str | None], reference: str | None, actions: ActionSpace
) -> dict[int, float]:
    """Return ``{action index: accuracy}`` for the actions that ``keys`` can label.

    >>> action_labels(["4", "4", "5"], "4", ActionSpace((1, 3, 5)))
    {0: 0.6666666666666666, 1: 1.0}
    """
    if reference is None:
        return {}
    counts, correct, nulls = group_answers(
        keys, [None] * len(keys), [k is not None and k == reference for k in keys]
    )
    return {
        j: vote_accuracy(counts, correct, nulls, k)
        for j, k in enumerate(actions.sample_counts)
        if k <= len(keys)
    }


class Learner:
    """Applies labels from feedback and exploration probes to a policy.

    ``lambda_`` is the price when the request was decided; the imitation policy learns the
    oracle's action at that price, the value policy ignores it.
    """

    def __init__(self, policy: ValuePolicy | ImitationPolicy) -> None:
        self.policy = policy
        self.labels_ = 0

    def learn_from_gold(
        self,
        features: Mapping[str, float],
        keys: Sequence[str | None],
        gold: str,
        lambda_: float = 0.0,
    ) -> dict[int, float]:
        """Train on the samples of one request against its gold answer; return the labels."""
        labels = action_labels(keys, canonical_key(gold), self.policy.actions)
        self._apply(features, labels, lambda_)
        return labels

    def learn_from_probe(
        self, features: Mapping[str, float], keys: Sequence[str | None], lambda_: float = 0.0
    ) -> dict[int, float]:
        """Train on a probe's samples against their own majority (a pseudo-label)."""
        labels = action_labels(keys, vote(keys).answer, self.policy.actions)
        self._apply(features, labels, lambda_)
        return labels

    def _apply(
        self, features: Mapping[str, float], labels: Mapping[int, float], lambda_: float
    ) -> None:
        if labels:
            self.policy.learn_partial_one(features, labels, lambda_)
            self.labels_ += 1
