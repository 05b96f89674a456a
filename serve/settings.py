"""Settings of the Serve application, validated once when the application is built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.faults import FaultSettings
from serve.sampler import BackendSettings

__all__ = ["AppSettings", "ControllerSettings", "ReplaySettings"]


class ReplaySettings(BaseModel):
    """The replay backend started inside the application (the default LLM stand-in)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="start the replay server with the application")
    datasets: list[str] = Field(["svamp", "math100"], description="bundled sets to answer")
    samples: list[str] = Field([], description="extra samples files to answer")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8100, ge=1, le=65535, description="TCP port")
    latency_ms: float = Field(10.0, ge=0, description="delay per call in milliseconds")
    latency_per_sample_ms: float = Field(0.0, ge=0, description="extra delay per sample drawn")
    seed: int = Field(0, description="seed of the sample draws")
    honours_n: bool = Field(
        True,
        description="return n choices per call; false returns and bills one choice per call, "
        "like a server that ignores n",
    )
    faults: FaultSettings = Field(
        default_factory=FaultSettings,  # type: ignore[arg-type]
        description="injected faults; none by default",
    )


class ControllerSettings(BaseModel):
    """The dual controller.

    ``budget``, ``step_size`` and ``explore`` are the starting values of the live settings, which
    ``user_config`` and ``PUT /v1/config`` change while the service runs.
    """

    model_config = ConfigDict(extra="forbid")

    budget: float = Field(4.0, gt=0, allow_inf_nan=False, description="mean cost per request")
    step_size: float = Field(
        0.05, gt=0, allow_inf_nan=False, description="dual step, dimensionless"
    )
    explore: float = Field(
        0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description=(
            "fraction of requests that run the largest action as a probe and train the policy "
            "on the probe's majority; must be 0 for the sequential policy, which does not learn"
        ),
    )
    rule: Literal["additive", "multiplicative"] = Field("additive", description="update rule")
    window: int = Field(500, gt=0, description="requests in the moving mean cost")
    state_path: str | None = Field(
        None, description="msgpack snapshot file; restored at start, written on change"
    )
    snapshot_interval_s: float = Field(
        1.0,
        ge=0,
        description="minimum seconds between snapshots; 0 writes one with every cost report",
    )
    artifact: str | None = Field(None, description="warm-start artifact; None uses the bundled one")
    policy: Literal["value", "imitation", "sequential"] = Field(
        "value",
        description=(
            "served policy: value prediction, the classifier with the price as input, or "
            "sequential batches that stop when more samples would not pay at the price"
        ),
    )

    @model_validator(mode="after")
    def _sequential_does_not_probe(self) -> ControllerSettings:
        if self.policy == "sequential" and self.explore > 0:
            raise ValueError(
                f"explore must be 0 with policy 'sequential', which does not learn from probes, "
                f"got {self.explore!r}"
            )
        return self


class AppSettings(BaseModel):
    """Arguments of ``serve.app:build_app`` (the ``args`` of an application in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendSettings = Field(default_factory=BackendSettings)  # type: ignore[arg-type]
    replay: ReplaySettings = Field(default_factory=ReplaySettings)  # type: ignore[arg-type]
    controller: ControllerSettings = Field(default_factory=ControllerSettings)  # type: ignore[arg-type]
    seed_from_id: bool = Field(
        True,
        description="send the backend a seed derived from the request id, for repeatable draws",
    )
    feedback_memory: int = Field(
        10_000, ge=0, description="recent requests kept per gateway replica for /v1/feedback"
    )
    learn_from_feedback: bool = Field(
        True,
        description="train the policy on feedback with an answer and on exploration probes; "
        "when false, probes still run and are billed but train nothing",
    )
    explore_seed: int = Field(
        0,
        description="seed of the draws that pick probes; each gateway replica mixes in its rank",
    )
    report_interval_s: float = Field(
        0.05, gt=0, le=10, description="longest a gateway waits before reporting costs"
    )
    report_batch: int = Field(
        16, ge=1, description="finished requests that make a gateway report at once"
    )
    stream_concurrency: int = Field(
        32,
        ge=1,
        le=1024,
        description="records of one POST /v1/stream solved at a time; as many finished results "
        "may wait for the client before the stream stops reading its body",
    )
    stream_max_records: int = Field(
        100_000,
        ge=1,
        description="records one POST /v1/stream accepts; the next gets a too_many_records "
        "error and the stream ends",
    )
    admin_token_env: str = Field(
        "TTC_ADMIN_TOKEN",
        min_length=1,
        description="environment variable with the bearer token that PUT /v1/budget and PUT "
        "/v1/config require; when it is unset or empty, anyone may change the settings",
    )
