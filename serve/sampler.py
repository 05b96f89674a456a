"""Worker pool that draws samples from an OpenAI-compatible server and majority-votes them."""

from __future__ import annotations

import asyncio
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

__all__ = ["BackendError", "BackendSettings", "PoolOverloaded", "SampleResult", "SamplerPool"]

logger = logging.getLogger(__name__)


class BackendSettings(BaseModel):
    """Connection and sampling settings of the LLM server."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("http://127.0.0.1:8100/v1", description="OpenAI-compatible base URL")
    model: str = Field("replay", description="model name sent with every call")
    api_key_env: str | None = Field(
        None, description="name of the environment variable that holds the API key"
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature")
    max_tokens: int | None = Field(None, gt=0, description="cap on tokens per sample")
    system_prompt: str | None = Field(None, description="optional system message")
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


class BackendError(Exception):
    """A request failed at the backend; ``status`` is the last HTTP status, or None.

    ``billed_samples`` is what the failed request's calls were billed (for example a reply whose
    body could not be parsed), and ``retry_after_s`` the backend's last ``Retry-After``.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        billed_samples: int = 0,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.billed_samples = billed_samples
        self.retry_after_s = retry_after_s


class PoolOverloaded(BackendError):
    """More than ``max_queued`` requests were waiting for a call slot; nothing was sent."""


@dataclass(frozen=True)
class SampleResult:
    """The vote over one request's samples."""

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


class SamplerPool:
    """One aiohttp session with bounded concurrency; call `start` inside the event loop."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._queued = 0

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

    async def _post(
        self, payload: dict[str, Any], timeout_s: float
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one call within ``timeout_s`` (waiting for a slot included); return the reply."""
        if self._session is None:
            raise RuntimeError("SamplerPool.start() was not awaited")
        if self._semaphore.locked() and self._queued >= self.settings.max_queued:
            raise PoolOverloaded(
                f"{self._queued} requests are waiting for one of "
                f"{self.settings.max_concurrency} backend call slots",
                retry_after_s=1.0,
            )
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._queued += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout_s)
        finally:
            self._queued -= 1
        try:
            timeout = aiohttp.ClientTimeout(total=max(timeout_s - (loop.time() - started), 0.001))
            async with self._session.post(url, json=payload, timeout=timeout) as response:
                return response.status, dict(response.headers), await response.read()
        finally:
            self._semaphore.release()

    async def _call(self, payload: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
        """Call until a reply with choices arrives; return it, the billed samples and attempts.

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
                status, headers, raw = await self._post(payload, timeout_s)
            except PoolOverloaded:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                message = f"backend call failed: {exc!r}"
            else:
                if status == 200:
                    body, message = _parse_reply(raw)
                    billed += _billed_samples(headers, body, payload["n"])
                    if body is not None:
                        return body, billed, attempt + 1
                elif status == 429 or status >= 500:
                    message = _error_message(raw.decode(errors="replace"), status)
                    retry_after_s = _retry_after_s(headers)
                else:
                    message = _error_message(raw.decode(errors="replace"), status)
                    raise BackendError(message, status, billed)

            delay = min(self.settings.backoff_s * 2**attempt, self.settings.max_backoff_s)
            delay *= 0.5 + random.random()
            if retry_after_s is not None:
                delay = max(delay, retry_after_s)
            if attempt == self.settings.retries or loop.time() + delay >= deadline:
                logger.warning("backend call failed after %d attempts: %s", attempt + 1, message)
                raise BackendError(message, status, billed, retry_after_s)
            logger.info("backend call failed (%s); retry %d in %.3f s", message, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def sample(self, question: str, n: int, seed: int | None = None) -> SampleResult:
        """Draw up to ``n`` samples in one call (the server honours ``n``) and vote on them.

        A reply with fewer than ``n`` choices is voted as it is, not topped up, and
        ``samples_used`` is the number voted. ``billed_samples`` counts the samples billed
        over all calls, retries included, and is the request's cost.
        """
        body, billed, attempts = await self._call(self._payload(question, n, seed))
        choices = body["choices"]
        texts = [str((c.get("message") or {}).get("content") or "") for c in choices]
        keys = [extract_answer(t) for t in texts]
        result = vote(keys)
        usage = body.get("usage") or {}
        return SampleResult(
            answer=result.answer,
            text=texts[result.index] if result.index is not None else None,
            votes=result.counts,
            samples_used=len(choices),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            keys=keys,
            texts=texts,
            billed_samples=billed,
            attempts=attempts,
        )


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
