"""Fault injection of the replay backend: which fault, if any, hits each chat completion call.

Each call draws one seeded uniform number and falls into at most one fault mode, so the rates
add up and ``sum(rates) <= 1``. The modes, and what the replay backend bills for each (a real
provider bills the samples it generated, whether or not the client could use them):

==================  ===========================================================  ===========
mode                reply                                                        billed
==================  ===========================================================  ===========
``server_error``    500 with an OpenAI-style error body                          nothing
``timeout``         no reply for ``hang_s`` seconds (past the client deadline),  nothing
                    then 504
``rate_limit``      429 with ``Retry-After`` (seconds, rounded up) and           nothing
                    ``retry-after-ms``
``malformed``       200 whose JSON body is cut off partway                       all samples
``short``           200 with fewer choices than were available, possibly none    the choices
==================  ===========================================================  ===========

The billed samples of every 200 reply, readable or not, are sent in the header
`BILLED_SAMPLES_HEADER`, so a client can count the cost of a body it could not parse.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BILLED_SAMPLES_HEADER", "FAULT_MODES", "FaultInjector", "FaultMode", "FaultSettings"]

BILLED_SAMPLES_HEADER = "X-Replay-Billed-Samples"

FaultMode = Literal["server_error", "timeout", "rate_limit", "malformed", "short"]
FAULT_MODES: tuple[FaultMode, ...] = ("server_error", "timeout", "rate_limit", "malformed", "short")


class FaultSettings(BaseModel):
    """Rates of the injected faults, as fractions of chat completion calls."""

    model_config = ConfigDict(extra="forbid")

    server_error_rate: float = Field(0.0, ge=0, le=1, description="fraction answered with 500")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="fraction left hanging for hang_s")
    rate_limit_rate: float = Field(
        0.0, ge=0, le=1, description="fraction answered with 429 and Retry-After"
    )
    malformed_rate: float = Field(
        0.0, ge=0, le=1, description="fraction answered with a truncated JSON body"
    )
    short_rate: float = Field(
        0.0, ge=0, le=1, description="fraction answered with fewer choices than available"
    )
    hang_s: float = Field(
        5.0, gt=0, le=3600, description="seconds a timeout fault waits before its 504"
    )
    retry_after_s: float = Field(
        1.0, ge=0, le=3600, description="delay sent in Retry-After of a 429, in seconds"
    )
    seed: int = Field(0, description="seed of the fault draws")

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultSettings:
        total = self.total_rate
        if total > 1:
            raise ValueError(f"the fault rates must add up to at most 1, got {total:g}")
        return self

    @classmethod
    def spread(cls, rate: float, **kwargs: float) -> FaultSettings:
        """Spread a total ``rate`` evenly over all fault modes.

        >>> FaultSettings.spread(0.1).timeout_rate
        0.02
        """
        share = rate / len(FAULT_MODES)
        rates = {f"{mode}_rate": share for mode in FAULT_MODES}
        return cls.model_validate({**rates, **kwargs})

    @property
    def total_rate(self) -> float:
        """Fraction of calls that get any fault."""
        return sum(self.rate(mode) for mode in FAULT_MODES)

    def rate(self, mode: FaultMode) -> float:
        return float(getattr(self, f"{mode}_rate"))


class FaultInjector:
    """Seeded draws of `FaultSettings`: `draw` returns the fault of the next call, or None.

    >>> injector = FaultInjector(FaultSettings(short_rate=1.0))
    >>> injector.draw(), injector.short_count(9) < 9
    ('short', True)
    """

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)

    @property
    def enabled(self) -> bool:
        return self.settings.total_rate > 0

    def draw(self) -> FaultMode | None:
        if not self.enabled:
            return None
        point = self._rng.random()
        for mode in FAULT_MODES:
            point -= self.settings.rate(mode)
            if point < 0:
                return mode
        return None

    def short_count(self, available: int) -> int:
        """Return how many of ``available`` choices a short reply keeps: 0 to ``available - 1``."""
        return self._rng.randrange(max(available, 1))
