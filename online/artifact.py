"""The warm-start artifact: what the offline solve hands to the service (msgpack).

Fields: format version, cost unit, action sample counts, the budget it was solved at, the
oracle's price ``lambda_star`` there, the value policy with its cost curve and price scale,
other policies (the budget-aware imitation policy and the sequential policy) with theirs, and
where it was trained. Each policy is a pickle inside the msgpack map, so load artifacts only
from sources you trust.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from online.actions import ActionSpace
from online.cost_curve import CostCurve
from online.imitation import ImitationPolicy
from online.policy import ValuePolicy
from online.sequential import SequentialPolicy

__all__ = ["DEFAULT_ARTIFACT", "POLICY_KINDS", "PolicyEntry", "WarmStart"]

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "data" / "warmstart.msgpack"
_FORMAT = 1


POLICY_KINDS = ("value", "imitation", "sequential")
AnyPolicy = ValuePolicy | ImitationPolicy | SequentialPolicy


@dataclass
class PolicyEntry:
    """A served policy with its mean cost against the price on the training questions."""

    policy: AnyPolicy
    cost_curve: CostCurve
    price_scale: float


def _curve_to_msgpack(curve: CostCurve) -> dict[str, list[float]]:
    return {"lambdas": list(curve.lambdas), "costs": list(curve.costs)}


def _curve_from_msgpack(raw: dict[str, Any]) -> CostCurve:
    return CostCurve.from_points(raw["lambdas"], raw["costs"])


def _load_policy(blob: bytes, kind: str) -> AnyPolicy:
    policy = pickle.loads(blob)
    if kind == "value" and isinstance(policy, ValuePolicy):
        return policy
    if kind == "imitation" and isinstance(policy, ImitationPolicy):
        return policy
    if kind == "sequential" and isinstance(policy, SequentialPolicy):
        return policy
    raise ValueError(f"policy {kind!r} in artifact is a {type(policy).__name__}")


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
    extra_policies: dict[str, PolicyEntry] = field(default_factory=dict)

    def entry(self, kind: str) -> PolicyEntry:
        """Return the policy ``kind`` ("value" or one of ``extra_policies``) with its curve."""
        if kind == "value":
            return PolicyEntry(self.policy, self.cost_curve, self.price_scale)
        if kind not in self.extra_policies:
            known = ", ".join(["value", *self.extra_policies])
            raise KeyError(f"policy {kind!r} is not in the artifact; it has: {known}")
        return self.extra_policies[kind]

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
                "extra_policies": {
                    kind: {
                        "pickle": entry.policy.to_bytes(),
                        "cost_curve": _curve_to_msgpack(entry.cost_curve),
                        "price_scale": entry.price_scale,
                    }
                    for kind, entry in self.extra_policies.items()
                },
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
            extra_policies={
                kind: PolicyEntry(
                    _load_policy(entry["pickle"], kind),
                    _curve_from_msgpack(entry["cost_curve"]),
                    float(entry["price_scale"]),
                )
                for kind, entry in raw.get("extra_policies", {}).items()
                if kind in POLICY_KINDS
            },
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
