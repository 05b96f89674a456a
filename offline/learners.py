"""The learned and heuristic policies of the offline evaluation, as score matrices.

Every policy here produces ``scores[i, a]`` for held-out questions; `offline.pricing.PriceRule`
turns scores into actions at a price that spends the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import linear_model, optim, preprocessing

from offline.warmstart import fit_value_policy, predicted_values
from online.actions import ActionSpace

__all__ = [
    "DIFFICULTY_FEATURES",
    "OracleClassifier",
    "blend_with_uniform",
    "difficulty_scores",
    "value_scores",
]

DIFFICULTY_FEATURES = ("log_words", "numbers", "cue_compare", "cue_change", "level")
_FLOOR = 1e-9


def difficulty_scores(
    train_features: Sequence[dict[str, float]],
    test_features: Sequence[dict[str, float]],
    train_accuracy: np.ndarray,
    strength: float = 0.5,
) -> np.ndarray:
    """Heuristic: the training mean accuracy curve, its gains scaled by a difficulty proxy.

    The proxy is the sum of the standardised ``DIFFICULTY_FEATURES`` (longer questions, more
    numbers, comparisons, changes over time, higher MATH level), standardised again. A question
    with proxy ``d`` scores ``mean[a] + strength * d * (mean[a] - mean[0])``, so harder
    questions value extra samples more.
    """

    def proxy(rows: Sequence[dict[str, float]]) -> np.ndarray:
        return np.array([[x.get(name, 0.0) for name in DIFFICULTY_FEATURES] for x in rows])

    train, test = proxy(train_features), proxy(test_features)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    raw_train = ((train - mean) / std).sum(axis=1)
    raw_test = ((test - mean) / std).sum(axis=1)
    spread = raw_train.std() or 1.0
    d = (raw_test - raw_train.mean()) / spread
    curve = train_accuracy.mean(axis=0)
    gains = curve - curve[0]
    return curve[None, :] + strength * d[:, None] * gains[None, :]


def value_scores(
    train_features: Sequence[dict[str, float]],
    train_accuracy: np.ndarray,
    test_features: Sequence[dict[str, float]],
    actions: ActionSpace,
    shrinkages: Sequence[float],
    epochs: int,
    seed: int,
) -> dict[float, np.ndarray]:
    """Train the value policy once; return its predicted values at every shrinkage."""
    policy = fit_value_policy(train_features, train_accuracy, actions, epochs=epochs, seed=seed)
    out = {}
    for shrinkage in shrinkages:
        policy.shrinkage = shrinkage
        out[shrinkage] = predicted_values(policy, test_features)
    return out


class OracleClassifier:
    """The Solve-then-Learn learner (Zhai et al., arXiv:2604.14853): a River softmax regression
    from cheap features to oracle actions.

    >>> clf = OracleClassifier(n_actions=2, epochs=30)
    >>> clf.fit([{"hard": 1.0}, {"hard": 0.0}] * 20, np.array([1, 0] * 20))
    >>> clf.predict_proba([{"hard": 1.0}]).argmax(axis=1).tolist()
    [1]
    """

    def __init__(
        self, n_actions: int, epochs: int = 10, learning_rate: float = 0.05, seed: int = 0
    ):
        self.n_actions = n_actions
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.seed = seed
        self.scaler_ = preprocessing.StandardScaler()
        self.model_ = linear_model.SoftmaxRegression(optimizer=optim.SGD(learning_rate))

    def fit(self, features: Sequence[dict[str, float]], labels: np.ndarray) -> None:
        for x in features:
            self.scaler_.learn_one(dict(x))
        scaled = [self.scaler_.transform_one(dict(x)) for x in features]
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            for i in rng.permutation(len(scaled)):
                self.model_.learn_one(scaled[i], int(labels[i]))

    def predict_proba(self, features: Sequence[dict[str, float]]) -> np.ndarray:
        """Return ``(n, n_actions)`` probabilities; actions never seen in training get 0."""
        out = np.zeros((len(features), self.n_actions))
        for i, x in enumerate(features):
            proba = self.model_.predict_proba_one(self.scaler_.transform_one(dict(x)))
            for label, p in proba.items():
                out[i, int(label)] = p
        return out


def blend_with_uniform(proba: np.ndarray, uniform: np.ndarray, guard: float) -> np.ndarray:
    """Scores of the guarded classifier: log of ``(1 - guard) * proba + guard * uniform``.

    ``uniform`` is the action distribution of uniform allocation at the budget; ``guard = 1``
    gives every question the same scores, so the price reduces the policy to uniform allocation.
    """
    mixed = (1 - guard) * proba + guard * uniform[None, :]
    return np.log(np.maximum(mixed, _FLOOR))
