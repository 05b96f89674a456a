"""Worker pool that draws samples from an OpenAI-compatible server and majority-votes them."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from online.answers import extract_answer, vote

__all__ = ["BackendError", "BackendSettings", "SampleResult", "SamplerPool"]

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
    max_concurrency: int = Field(64, gt=0, description="backend calls in flight per replica")
    retries: int = Field(2, ge=0, le=10, description="retries after a failed call")
    backoff_s: float = Field(
        0.2, ge=0, description="first retry delay in seconds, doubled each time"
    )


class BackendError(Exception):
    """A backend call failed; ``status`` is the HTTP status, or None for a network error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


class SamplerPool:
    """One aiohttp session with bounded concurrency; call `start` inside the event loop."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)

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

    async def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("SamplerPool.start() was not awaited")
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        delay = self.settings.backoff_s
        for attempt in range(self.settings.retries + 1):
            try:
                async with self._semaphore, self._session.post(url, json=payload) as response:
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        return body
                    text = await response.text()
                    retryable = response.status == 429 or response.status >= 500
                    if not retryable or attempt == self.settings.retries:
                        raise BackendError(_error_message(text, response.status), response.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == self.settings.retries:
                    raise BackendError(f"backend call to {url} failed: {exc!r}") from exc
                logger.warning("backend call failed (%r); retry %d", exc, attempt + 1)
            await asyncio.sleep(delay * (1 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")

    async def sample(self, question: str, n: int, seed: int | None = None) -> SampleResult:
        """Draw ``n`` samples in one call (the server honours ``n``) and vote on their answers."""
        body = await self._call(self._payload(question, n, seed))
        choices = body.get("choices") or []
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
        )


def _error_message(text: str, status: int) -> str:
    """Return ``error.message`` of an OpenAI-style error body, else the start of the body."""
    import json

    try:
        parsed = json.loads(text)
        message = parsed["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return f"backend returned status {status}: {text[:200]}"
