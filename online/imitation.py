"""Budget-aware imitation: a classifier of oracle actions with the price as an input.

Trained on oracle labels at a grid of prices, it predicts the action the oracle would take for
a question at the current price, so one model serves every budget the controller asks for.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping

import numpy as np
from river import linear_model, optim, preprocessing

from online.actions import ActionSpace

__all__ = ["ImitationPolicy"]

_PRICE_FLOOR = 1e-6


class ImitationPolicy:
    """River softmax regression from question features and ``log(lambda)`` to an action.

    Parameters
    ----------
    actions
        The action space.
    learning_rate
        SGD step of the softmax regression.

    Examples
    --------
    >>> policy = ImitationPolicy(ActionSpace((1, 3)), learning_rate=0.1)
    >>> for _ in range(300):
    ...     policy.learn_label_one({"hard": 1.0}, 0.001, 1)
    ...     policy.learn_label_one({"hard": 1.0}, 1.0, 0)
    >>> policy.decide_one({"hard": 1.0}, 0.001), policy.decide_one({"hard": 1.0}, 1.0)
    (1, 0)
    """

    def __init__(self, actions: ActionSpace, learning_rate: float = 0.05) -> None:
        self.actions = actions
        self.learning_rate = learning_rate
        self.costs = np.asarray(actions.sample_counts, dtype=float)
        self.scaler_ = preprocessing.StandardScaler()
        self.model_ = linear_model.SoftmaxRegression(optimizer=optim.SGD(learning_rate))

    @staticmethod
    def _with_price(x: Mapping[str, float], lambda_: float) -> dict[str, float]:
        out = dict(x)
        out["log_lambda"] = math.log(max(lambda_, _PRICE_FLOOR))
        return out

    def predict_proba_one(self, x: Mapping[str, float], lambda_: float) -> np.ndarray:
        """Return the probability of each action being the oracle's at price ``lambda_``."""
        xs = self.scaler_.transform_one(self._with_price(x, lambda_))
        out = np.zeros(len(self.actions))
        for label, p in self.model_.predict_proba_one(xs).items():
            out[int(label)] = p
        return out

    def decide_one(self, x: Mapping[str, float], lambda_: float) -> int:
        """Return the most likely oracle action; ties go to the cheaper action."""
        return int(np.argmax(self.predict_proba_one(x, lambda_)))

    def learn_label_one(self, x: Mapping[str, float], lambda_: float, label: int) -> None:
        """Learn that the oracle takes action ``label`` for ``x`` at price ``lambda_``."""
        if not 0 <= label < len(self.actions):
            raise ValueError(f"label must be in [0, {len(self.actions)}), got {label}")
        xp = self._with_price(x, lambda_)
        self.scaler_.learn_one(xp)
        self.model_.learn_one(self.scaler_.transform_one(xp), int(label))

    def learn_partial_one(
        self, x: Mapping[str, float], values: Mapping[int, float], lambda_: float = 0.0
    ) -> None:
        """Learn from the accuracy of actions, when every action is labelled (a probe).

        The label is the Lagrangian argmax of ``values`` at ``lambda_``; partial labels, which
        cover only the smaller actions, are skipped because their argmax is biased downwards.
        """
        if len(values) < len(self.actions):
            return
        scores = np.array([values[j] for j in range(len(self.actions))]) - lambda_ * self.costs
        self.learn_label_one(x, lambda_, int(np.argmax(scores)))

    def to_bytes(self) -> bytes:
        """Serialise the policy. Load only bytes you wrote yourself: this is a pickle."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
