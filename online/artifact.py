"""The warm-start artifact: what the offline solve hands to the service (msgpack).

Fields: format version, cost unit, action sample counts, the budget it was solved at, the
oracle's price ``lambda_star`` there, the served policy's cost curve and price scale, the
serialised policy, and where it was trained. The policy is a pickle inside the msgpack map,
so load artifacts only from sources you trust, like any pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from online.actions import ActionSpace
from online.cost_curve import CostCurve
from online.policy import ValuePolicy

__all__ = ["DEFAULT_ARTIFACT", "WarmStart"]

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "data" / "warmstart.msgpack"
_FORMAT = 1


@dataclass
class WarmStart:
    """Everything the service needs to start warm."""

    actions: ActionSpace
    unit: str
    budget: float
    lambda_star: float
    price_scale: float
    cost_curve: CostCurve
    policy: ValuePolicy
    trained_on: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "format": _FORMAT,
                "actions": list(self.actions.sample_counts),
                "unit": self.unit,
                "budget": self.budget,
                "lambda_star": self.lambda_star,
                "price_scale": self.price_scale,
                "cost_curve": {
                    "lambdas": list(self.cost_curve.lambdas),
                    "costs": list(self.cost_curve.costs),
                },
                "policy": {"kind": "value", "pickle": self.policy.to_bytes()},
                "trained_on": self.trained_on,
                "metrics": self.metrics,
            }
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> WarmStart:
        raw: Any = msgpack.unpackb(blob)
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise ValueError(f"not a warm-start artifact of format {_FORMAT}")
        policy = raw["policy"]
        if policy.get("kind") != "value":
            raise ValueError(f"unknown policy kind {policy.get('kind')!r} in artifact")
        return cls(
            actions=ActionSpace(tuple(raw["actions"])),
            unit=raw["unit"],
            budget=float(raw["budget"]),
            lambda_star=float(raw["lambda_star"]),
            price_scale=float(raw["price_scale"]),
            cost_curve=CostCurve.from_points(
                raw["cost_curve"]["lambdas"], raw["cost_curve"]["costs"]
            ),
            policy=ValuePolicy.from_bytes(policy["pickle"]),
            trained_on=list(raw.get("trained_on", [])),
            metrics=dict(raw.get("metrics", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path | None = None) -> WarmStart:
        """Read an artifact; ``None`` reads the one shipped with the package."""
        target = Path(path) if path is not None else DEFAULT_ARTIFACT
        if not target.exists():
            raise FileNotFoundError(
                f"warm-start artifact {target} not found; "
                "build it with 'python -m offline warmstart'"
            )
        return cls.from_bytes(target.read_bytes())
