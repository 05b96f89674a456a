"""Value-prediction policy: predict each action's accuracy, then take the Lagrangian argmax.

One River linear regression per action learns ``p(a | features)`` on standardised features.
The decision ``argmax_a p(a) - lambda * c(a)`` follows the price, so one model serves every
budget and the dual controller can steer its mean cost.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence

import numpy as np
from river import linear_model, optim, preprocessing

from online.actions import ActionSpace
from online.lagrangian import lagrangian_argmax

__all__ = ["ValuePolicy"]


class ValuePolicy:
    """Predict per-action accuracy with River models and decide at a price.

    Parameters
    ----------
    actions
        The action space; action ``j`` costs ``actions.sample_counts[j]`` samples.
    learning_rate
        SGD step of each regression.
    l2
        L2 penalty of each regression.
    prior
        Starting intercept per action, typically the mean accuracy of each action.
    shrinkage
        Weight of the models against ``prior`` in predictions: 0 predicts ``prior`` for every
        question (uniform allocation), 1 trusts the models fully. A guard chosen on
        validation folds, because weak features make full trust lose to uniform allocation.

    Examples
    --------
    >>> policy = ValuePolicy(ActionSpace((1, 3)), learning_rate=0.02)
    >>> for _ in range(200):
    ...     policy.learn_one({"hard": 1.0}, [0.2, 0.6])
    ...     policy.learn_one({"hard": 0.0}, [0.9, 0.9])
    >>> policy.decide_one({"hard": 1.0}, 0.05), policy.decide_one({"hard": 0.0}, 0.05)
    (1, 0)
    """

    def __init__(
        self,
        actions: ActionSpace,
        learning_rate: float = 0.001,
        l2: float = 1e-3,
        prior: Sequence[float] | None = None,
        shrinkage: float = 1.0,
    ) -> None:
        self.actions = actions
        self.learning_rate = learning_rate
        self.l2 = l2
        self.prior = tuple(prior) if prior is not None else (0.5,) * len(actions)
        if len(self.prior) != len(actions):
            raise ValueError(f"prior must have {len(actions)} entries, got {len(self.prior)}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
        self.shrinkage = shrinkage
        self.costs = np.asarray(actions.sample_counts, dtype=float)
        self.scaler_ = preprocessing.StandardScaler()
        self.models_ = [
            linear_model.LinearRegression(
                optimizer=optim.SGD(learning_rate),
                l2=l2,
                intercept_init=start,
                intercept_lr=learning_rate,
            )
            for start in self.prior
        ]

    def predict_values_one(self, x: Mapping[str, float]) -> np.ndarray:
        """Return the predicted accuracy of every action, in [0, 1] and non-decreasing.

        A larger action can always ignore its extra samples' signal only in expectation, so
        predictions are made non-decreasing along the actions (a running maximum); a tie then
        goes to the cheaper action.
        """
        return self._values_from_raw(self._predict_raw_one(x))

    def _predict_raw_one(self, x: Mapping[str, float]) -> list[float]:
        # `transform_one` builds a new dict and leaves ``x`` as it is.
        xs = self.scaler_.transform_one(x)
        return [model.predict_one(xs) for model in self.models_]

    def _values_from_raw(self, raw: Sequence[float]) -> np.ndarray:
        prior = np.asarray(self.prior)
        values = prior + self.shrinkage * (np.asarray(raw) - prior)
        return np.maximum.accumulate(np.clip(values, 0.0, 1.0))

    def decide_one(self, x: Mapping[str, float], lambda_: float) -> int:
        """Return the index of the action to take at price ``lambda_``.

        The decision equals ``lagrangian_argmax(self.predict_values_one(x), self.costs,
        lambda_)``. For finite predictions it is computed on Python floats with the same
        operations in the same order, because on five numbers numpy's fixed cost per call
        made up about 40% of the decision's time.
        """
        if lambda_ < 0 or not math.isfinite(lambda_):
            raise ValueError(f"lambda_ must be a finite non-negative number, got {lambda_!r}")
        raw = self._predict_raw_one(x)
        if not all(map(math.isfinite, raw)):
            return int(lagrangian_argmax(self._values_from_raw(raw), self.costs, lambda_))
        best, best_score, running = 0, -math.inf, -math.inf
        for j, (start, prediction, cost) in enumerate(
            zip(self.prior, raw, self.actions.sample_counts, strict=True)
        ):
            value = min(max(start + self.shrinkage * (prediction - start), 0.0), 1.0)
            running = max(running, value)
            score = running - lambda_ * float(cost)
            # Strictly greater, so a tie goes to the cheaper action, as in `lagrangian_argmax`.
            if score > best_score:
                best, best_score = j, score
        return best

    def learn_one(self, x: Mapping[str, float], values: Sequence[float]) -> None:
        """Update the models with the accuracy of every action on one question."""
        if len(values) != len(self.models_):
            raise ValueError(f"values must have {len(self.models_)} entries, got {len(values)}")
        self.scaler_.learn_one(dict(x))
        xs = self.scaler_.transform_one(dict(x))
        for model, value in zip(self.models_, values, strict=True):
            model.learn_one(xs, float(value))

    def learn_partial_one(
        self, x: Mapping[str, float], values: Mapping[int, float], lambda_: float = 0.0
    ) -> None:
        """Update only the models of the actions in ``values`` (action index to accuracy).

        ``lambda_`` is accepted for the policies' common interface and not used.
        """
        bad = [j for j in values if not 0 <= j < len(self.models_)]
        if bad:
            raise ValueError(f"action indices must be in [0, {len(self.models_)}), got {bad}")
        self.scaler_.learn_one(dict(x))
        xs = self.scaler_.transform_one(dict(x))
        for j, value in values.items():
            self.models_[j].learn_one(xs, float(value))

    def to_bytes(self) -> bytes:
        """Serialise the policy. Load only bytes you wrote yourself: this is a pickle."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(blob: bytes) -> ValuePolicy:
        """Restore a policy written by `to_bytes` (a pickle: trusted input only)."""
        policy = pickle.loads(blob)
        if not isinstance(policy, ValuePolicy):
            raise TypeError(f"expected a pickled ValuePolicy, got {type(policy).__name__}")
        return policy
