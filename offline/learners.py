"""The learned and heuristic policies of the offline evaluation, as score matrices.

Every policy here produces ``scores[i, a]`` for held-out questions; `offline.pricing.PriceRule`
turns scores into actions at a price that spends the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction import DictVectorizer
from threadpoolctl import threadpool_limits

from offline.warmstart import fit_value_policy, predicted_values
from online.actions import ActionSpace

__all__ = [
    "DIFFICULTY_FEATURES",
    "OracleClassifier",
    "class_curves",
    "difficulty_scores",
    "guarded_scores",
    "value_scores",
]

DIFFICULTY_FEATURES = ("log_words", "numbers", "cue_compare", "cue_change", "level")


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
    """The Solve-then-Learn learner (Zhai et al., arXiv:2604.14853): gradient-boosted trees from
    cheap features to oracle actions (scikit-learn's ``HistGradientBoostingClassifier``).

    On svamp at budget 3 the trees gained about twice as much over uniform allocation as a River
    softmax regression did (+0.45 against +0.24 points). Boosting runs on one thread, because
    with two busy processes on two cores the spinning OpenMP threads made one fit take 4.5 s
    instead of 0.2 s.

    >>> clf = OracleClassifier(n_actions=3, iterations=20)
    >>> clf.fit([{"hard": 1.0}, {"hard": 0.0}] * 20, np.array([2, 0] * 20))
    >>> clf.predict_proba([{"hard": 1.0}, {"hard": 0.0}]).argmax(axis=1).tolist()
    [2, 0]
    """

    def __init__(
        self,
        n_actions: int,
        iterations: int = 100,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        seed: int = 0,
    ):
        self.n_actions = n_actions
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.seed = seed
        self.vectorizer_ = DictVectorizer(sparse=False)
        self.model_: HistGradientBoostingClassifier | None = None
        self.only_label_: int | None = None

    def fit(self, features: Sequence[dict[str, float]], labels: np.ndarray) -> None:
        x = self.vectorizer_.fit_transform(features)
        labels = np.asarray(labels, dtype=np.int64)
        if len(np.unique(labels)) < 2:
            # Boosting needs two classes. With one label seen, every question gets that label.
            self.only_label_ = int(labels[0])
            return
        self.model_ = HistGradientBoostingClassifier(
            max_iter=self.iterations,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            random_state=self.seed,
        )
        with threadpool_limits(limits=1):
            self.model_.fit(x, labels)

    def predict_proba(self, features: Sequence[dict[str, float]]) -> np.ndarray:
        """Return ``(n, n_actions)`` probabilities; actions never seen in training get 0."""
        out = np.zeros((len(features), self.n_actions))
        if self.model_ is None:
            out[:, self.only_label_ or 0] = 1.0
            return out
        with threadpool_limits(limits=1):
            proba = self.model_.predict_proba(self.vectorizer_.transform(features))
        out[:, self.model_.classes_] = proba
        return out


def class_curves(labels: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Return the mean accuracy curve of the training questions of each oracle action.

    Row ``c`` is the mean of ``accuracy`` over the questions labelled ``c``. An action that labels
    no training question gets the mean curve of all of them.

    >>> class_curves(np.array([0, 1, 1]), np.array([[1.0, 1.0], [0.2, 0.6], [0.4, 0.8]])).round(2)
    array([[1. , 1. ],
           [0.3, 0.7]])
    """
    curves = np.tile(accuracy.mean(axis=0), (accuracy.shape[1], 1))
    for c in np.unique(labels):
        curves[c] = accuracy[labels == c].mean(axis=0)
    return curves


def guarded_scores(expected: np.ndarray, prior: np.ndarray, guard: float) -> np.ndarray:
    """Return the guarded classifier's scores, ``(1 - guard) * expected + guard * prior``.

    ``expected`` is each question's expected accuracy per action under the classifier's
    belief (its probabilities times `class_curves`); ``prior`` is the mean accuracy curve of
    the training questions. ``guard = 1`` gives every question that mean curve, so the price
    reduces the policy to uniform allocation (mixing the actions on the curve's concave hull
    where the curve is not concave).
    """
    return (1 - guard) * expected + guard * prior[None, :]
