"""Worker pool that draws samples from an OpenAI-compatible server and majority-votes them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from online.answers import extract_answer, vote
from serve.faults import BILLED_SAMPLES_HEADER

__all__ = [
    "BackendError",
    "BackendSettings",
    "PoolOverloaded",
    "SampleResult",
    "SamplerPool",
    "call_seed",
]

logger = logging.getLogger(__name__)


class BackendSettings(BaseModel):
    """Connection, sampling and price settings of the LLM server."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("http://127.0.0.1:8100/v1", description="OpenAI-compatible base URL")
    model: str = Field("replay", description="model name sent with every call")
    api_key_env: str | None = Field(
        None, description="name of the environment variable that holds the API key"
    )
    honours_n: bool = Field(
        True,
        description="the server returns n choices per call; when false, a request for k "
        "samples makes k concurrent calls with n = 1",
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature")
    max_tokens: int | None = Field(None, gt=0, description="cap on tokens per sample")
    system_prompt: str | None = Field(None, description="optional system message")
    price_per_1k_input_tokens: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="price of 1,000 prompt tokens, in any currency unit; unset adds nothing",
    )
    price_per_1k_output_tokens: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="price of 1,000 completion tokens, in the same unit as the input price",
    )
    timeout_s: float = Field(60.0, gt=0, description="deadline of one backend call in seconds")
    deadline_s: float = Field(
        120.0,
        gt=0,
        description="deadline of one request in seconds, over all its calls, retries and waits",
    )
    max_concurrency: int = Field(64, gt=0, description="backend calls in flight per replica")
    # NOTE: with max_concurrency + max_queued below the gateway's max_ongoing_requests (256),
    # overload meets this bound, which replies in JSON, before Ray Serve's plain-text one.
    max_queued: int = Field(
        128,
        ge=0,
        description="requests waiting for a free call slot per replica; more get PoolOverloaded",
    )
    retries: int = Field(2, ge=0, le=10, description="retries after a failed call")
    backoff_s: float = Field(
        0.2, ge=0, description="first retry delay in seconds, doubled each time, with jitter"
    )
    max_backoff_s: float = Field(10.0, ge=0, description="longest retry delay in seconds")

    @property
    def priced(self) -> bool:
        """True when at least one token price is set, so requests report their money cost."""
        return (
            self.price_per_1k_input_tokens is not None
            or self.price_per_1k_output_tokens is not None
        )

    def money(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Return the money cost of the token counts at the set prices, or None when unpriced.

        An unset price counts as 0 when the other one is set.

        >>> settings = BackendSettings(
        ...     price_per_1k_input_tokens=0.5, price_per_1k_output_tokens=2.0
        ... )
        >>> settings.money(prompt_tokens=400, completion_tokens=1500)
        3.2
        >>> BackendSettings().money(400, 1500) is None
        True
        """
        if not self.priced:
            return None
        input_price = self.price_per_1k_input_tokens or 0.0
        output_price = self.price_per_1k_output_tokens or 0.0
        return (prompt_tokens * input_price + completion_tokens * output_price) / 1000


class BackendError(Exception):
    """A request failed at the backend; ``status`` is the last HTTP status, or None.

    ``billed_samples`` is what the failed request's calls were billed (for example a reply whose
    body could not be parsed), ``retry_after_s`` the backend's last ``Retry-After`` and
    ``retries`` the attempts made after each call's first.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        billed_samples: int = 0,
        retry_after_s: float | None = None,
        retries: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.billed_samples = billed_samples
        self.retry_after_s = retry_after_s
        self.retries = retries


class PoolOverloaded(BackendError):
    """More than ``max_queued`` requests were waiting for a call slot; nothing was sent."""


@dataclass(frozen=True)
class SampleResult:
    """The vote over one request's samples.

    ``prompt_tokens`` and ``completion_tokens`` add up the usage of every reply that was read.
    ``calls`` is the number of calls the request was split into (1 when the server honours
    ``n``), and ``attempts`` the calls sent over all of them, retries included. ``retries``
    counts the attempts after each call's first, including those of calls that finally failed.
    """

    answer: str | None
    text: str | None
    votes: dict[str, int]
    samples_used: int
    prompt_tokens: int
    completion_tokens: int
    keys: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    billed_samples: int = 0
    attempts: int = 1
    calls: int = 1
    retries: int = 0


@dataclass(frozen=True)
class _Reply:
    """A call's readable reply, with the samples billed over its attempts."""

    body: dict[str, Any]
    billed: int
    attempts: int


@dataclass
class _Admission:
    """A request's place in the pool's queue and the count of its calls that wait for a slot.

    The place is reserved at admission and passes to the request's first call, so requests
    admitted in the same event-loop step count against ``max_queued`` at once.
    """

    waiting: int = 1
    place_reserved: bool = True


def call_seed(seed: int, index: int) -> int:
    """Return the seed of call ``index`` of a request split into ``n = 1`` calls.

    Call 0 keeps the request's seed, so a request for one sample sends the same seed either
    way. Later calls get a 32-bit hash of (seed, index), so their samples differ from one
    another and from the sequential policy's rounds, which send ``seed + round``.

    >>> call_seed(42, 0)
    42
    >>> call_seed(42, 1) == call_seed(42, 1) != call_seed(42, 2)
    True
    """
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


class SamplerPool:
    """One aiohttp session with bounded concurrency; call `start` inside the event loop.

    At most ``max_concurrency`` calls are in flight, whether a request makes one call or, when
    the server ignores ``n``, one call per sample. A request is admitted or rejected as a whole.
    """

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._queued = 0
        self._calls_in_flight = 0

    async def start(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key_env:
            key = os.environ.get(self.settings.api_key_env)
            if not key:
                raise RuntimeError(
                    f"environment variable {self.settings.api_key_env} named by "
                    "backend.api_key_env is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _payload(self, question: str, n: int, seed: int | None) -> dict[str, Any]:
        messages = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": self.settings.system_prompt})
        messages.append({"role": "user", "content": question})
        payload: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "n": n,
            "temperature": self.settings.temperature,
        }
        if self.settings.max_tokens is not None:
            payload["max_tokens"] = self.settings.max_tokens
        if seed is not None:
            payload["seed"] = seed
        return payload

    def _check_queue(self) -> None:
        """Raise `PoolOverloaded` when waiting requests fill the free slots and the queue.

        Requests admitted in one event-loop step have not taken a slot yet, so they count as
        waiting. A burst into an idle pool thus gets ``max_concurrency + max_queued`` places.
        """
        free = self.settings.max_concurrency - self._calls_in_flight
        if self._queued >= free + self.settings.max_queued:
            raise PoolOverloaded(
                f"{self._queued} requests are waiting for one of "
                f"{self.settings.max_concurrency} backend call slots",
                retry_after_s=1.0,
            )

    def _admit(self) -> _Admission:
        """Admit a request, holding its place in the queue; raise `PoolOverloaded` if full."""
        self._check_queue()
        self._queued += 1
        return _Admission()

    def _release(self, admission: _Admission) -> None:
        """Give up the place a request holds when none of its calls took it over."""
        if admission.place_reserved:
            admission.place_reserved = False
            self._leave_queue(admission)

    def _leave_queue(self, admission: _Admission) -> None:
        admission.waiting -= 1
        if admission.waiting == 0:
            self._queued -= 1

    async def _post(
        self, payload: dict[str, Any], timeout_s: float, admission: _Admission, retry: bool
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one call within ``timeout_s`` (waiting for a slot included); return the reply.

        A retry whose request has no other call waiting must pass the queue check again, as a
        new request would, and may raise `PoolOverloaded`.
        """
        if self._session is None:
            raise RuntimeError("SamplerPool.start() was not awaited")
        if admission.place_reserved:
            admission.place_reserved = False
        else:
            if admission.waiting == 0:
                if retry:
                    self._check_queue()
                self._queued += 1
            admission.waiting += 1
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout_s)
        finally:
            self._leave_queue(admission)
        self._calls_in_flight += 1
        try:
            timeout = aiohttp.ClientTimeout(total=max(timeout_s - (loop.time() - started), 0.001))
            async with self._session.post(url, json=payload, timeout=timeout) as response:
                return response.status, dict(response.headers), await response.read()
        finally:
            self._calls_in_flight -= 1
            self._semaphore.release()

    async def _call(self, payload: dict[str, Any], admission: _Admission) -> _Reply:
        """Call until a reply with choices arrives; return it with the samples billed.

        Retries 429, 5xx, network errors, timeouts and replies without readable choices, with
        exponential backoff and jitter, waiting at least the backend's ``Retry-After``, until
        ``retries`` or ``deadline_s`` run out. Raises `BackendError` with the billed samples.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deadline_s
        billed = 0
        for attempt in range(self.settings.retries + 1):
            remaining = deadline - loop.time()
            timeout_s = min(self.settings.timeout_s, remaining)
            status: int | None = None
            retry_after_s: float | None = None
            try:
                status, headers, raw = await self._post(payload, timeout_s, admission, attempt > 0)
            except PoolOverloaded as exc:
                raise PoolOverloaded(
                    str(exc), None, billed, exc.retry_after_s, retries=attempt
                ) from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                message = f"backend call failed: {exc!r}"
            else:
                if status == 200:
                    body, message = _parse_reply(raw)
                    billed += _billed_samples(headers, body, payload["n"])
                    if body is not None:
                        return _Reply(body, billed, attempt + 1)
                elif status == 429 or status >= 500:
                    message = _error_message(raw.decode(errors="replace"), status)
                    retry_after_s = _retry_after_s(headers)
                else:
                    message = _error_message(raw.decode(errors="replace"), status)
                    raise BackendError(message, status, billed, retries=attempt)

            delay = min(self.settings.backoff_s * 2**attempt, self.settings.max_backoff_s)
            delay *= 0.5 + random.random()
            if retry_after_s is not None:
                delay = max(delay, retry_after_s)
            if attempt == self.settings.retries or loop.time() + delay >= deadline:
                logger.warning("backend call failed after %d attempts: %s", attempt + 1, message)
                raise BackendError(message, status, billed, retry_after_s, retries=attempt)
            logger.info("backend call failed (%s); retry %d in %.3f s", message, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def sample(self, question: str, n: int, seed: int | None = None) -> SampleResult:
        """Draw up to ``n`` samples and vote on them.

        When the server honours ``n`` this is one call. Otherwise it is ``n`` concurrent calls
        with ``n = 1``, each retried on its own and seeded with `call_seed` when ``seed`` is
        given. A short reply, or calls that finally fail while others return samples, leave
        fewer samples, which are voted as they are and not topped up. ``samples_used`` is the
        number voted. ``billed_samples`` counts the samples billed over all calls, retries and
        failed calls included, and is the request's cost.

        Raises `PoolOverloaded` when the queue is full (nothing sent), and `BackendError` with
        the billed samples when every call fails.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n!r}")
        if self.settings.honours_n or n == 1:
            payloads = [self._payload(question, n, seed)]
        else:
            seeds = [None if seed is None else call_seed(seed, i) for i in range(n)]
            payloads = [self._payload(question, 1, call_seed_) for call_seed_ in seeds]
        logger.debug("drawing %d samples in %d backend calls", n, len(payloads))
        admission = self._admit()
        try:
            if len(payloads) == 1:
                replies = [await self._call(payloads[0], admission)]
                return _vote_replies(replies, [])
            outcomes = await asyncio.gather(
                *(self._call(payload, admission) for payload in payloads), return_exceptions=True
            )
        finally:
            self._release(admission)

        replies = []
        errors: list[BackendError] = []
        for outcome in outcomes:
            if isinstance(outcome, _Reply):
                replies.append(outcome)
            elif isinstance(outcome, BackendError):
                errors.append(outcome)
            else:
                raise outcome
        if not replies:
            raise _all_failed(errors)
        if errors:
            logger.warning(
                "%d of %d backend calls failed, voting on the samples of the other %d: %s",
                len(errors),
                len(payloads),
                len(replies),
                errors[0],
            )
        return _vote_replies(replies, errors)


def _vote_replies(replies: list[_Reply], errors: list[BackendError]) -> SampleResult:
    """Vote on the choices of all replies, counting the bills and retries of failed calls."""
    texts = [
        str((choice.get("message") or {}).get("content") or "")
        for reply in replies
        for choice in reply.body["choices"]
    ]
    keys = [extract_answer(text) for text in texts]
    result = vote(keys)
    # NOTE: a billed reply whose body could not be read has no known usage, so the token counts
    # (and the money computed from them) leave it out while billed_samples counts it.
    usages = [reply.body.get("usage") or {} for reply in replies]
    attempts = sum(reply.attempts for reply in replies) + sum(e.retries + 1 for e in errors)
    calls = len(replies) + len(errors)
    return SampleResult(
        answer=result.answer,
        text=texts[result.index] if result.index is not None else None,
        votes=result.counts,
        samples_used=len(texts),
        prompt_tokens=sum(_token_count(usage, "prompt_tokens") for usage in usages),
        completion_tokens=sum(_token_count(usage, "completion_tokens") for usage in usages),
        keys=keys,
        texts=texts,
        billed_samples=sum(r.billed for r in replies) + sum(e.billed_samples for e in errors),
        attempts=attempts,
        calls=calls,
        retries=attempts - calls,
    )


def _all_failed(errors: list[BackendError]) -> BackendError:
    """Merge the errors of a request whose every call failed into one.

    The first error that is not `PoolOverloaded` gives the status and message, so the request
    is rejected as overloaded only when no call got past the queue. The billed samples and
    retries add up over all calls, and ``retry_after_s`` is the longest any call received.
    """
    if len(errors) == 1:
        return errors[0]
    sent = [e for e in errors if not isinstance(e, PoolOverloaded)]
    first = sent[0] if sent else errors[0]
    waits = [e.retry_after_s for e in errors if e.retry_after_s is not None]
    kind = BackendError if sent else PoolOverloaded
    return kind(
        f"all {len(errors)} backend calls failed, the first with: {first}",
        first.status,
        sum(e.billed_samples for e in errors),
        max(waits) if waits else None,
        retries=sum(e.retries for e in errors),
    )


def _token_count(usage: Any, key: str) -> int:
    """Return a token count of a reply's ``usage``, 0 when it is missing or not a number."""
    if not isinstance(usage, dict):
        return 0
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def _parse_reply(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Return a 200 reply's body when it is JSON with a non-empty list of choices, else why not."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"backend reply is not valid JSON: {exc}"
    if not isinstance(body, dict):
        return None, f"backend reply is not a JSON object, got {type(body).__name__}"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return None, f"backend reply has no choices, got {choices!r:.80}"
    if not all(isinstance(c, dict) for c in choices):
        return None, "backend reply has a choice that is not an object"
    return body, ""


def _billed_samples(headers: dict[str, str], body: dict[str, Any] | None, n: int) -> int:
    """Return the samples a 200 reply billed: the replay's header, else the choices received."""
    header = headers.get(BILLED_SAMPLES_HEADER)
    if header is not None and header.isdigit():
        return int(header)
    if body is not None:
        return len(body["choices"])
    # NOTE: a server without the billing header is assumed to have billed all n samples for an
    # unreadable body. The cost is then an upper bound, not the bill.
    return n


def _retry_after_s(headers: dict[str, str]) -> float | None:
    """Return the wait a 429 or 5xx requests: ``retry-after-ms``, else ``Retry-After``."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return max(float(lowered["retry-after-ms"]) / 1000, 0.0)
        value = lowered.get("retry-after")
        if value is None:
            return None
        if value.strip().isdigit():
            return float(value)
        moment = parsedate_to_datetime(value)
    except (ValueError, TypeError):
        return None
    return max((moment - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _error_message(text: str, status: int) -> str:
    """Return ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        parsed = json.loads(text)
        message = parsed["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return f"backend returned status {status}: {text[:200]}"
