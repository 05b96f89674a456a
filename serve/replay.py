"""Replay backend: an OpenAI-compatible chat completions server that replies with recorded samples.

It serves questions of samples files (see `online.samples`) so that the allocator runs with no
API key and no GPU, and a client written for it works against vLLM or llama.cpp unchanged.

Endpoints:

- ``POST /v1/chat/completions`` returns ``n`` recorded samples of the question, drawn without
  replacement. The question is the content of the last ``user`` message, matched against the
  recorded question texts after collapsing runs of whitespace. Earlier messages, such as a
  system prompt, are ignored. ``n`` ranges from 1 to `MAX_N`. When ``n`` exceeds the number of
  recorded samples, the response has all of them (fewer ``choices`` than ``n``) and the header
  ``X-Replay-Samples-Available`` with the recorded count. ``temperature`` (>= 0), ``seed`` and
  ``max_tokens`` (>= 1) are validated, but ``max_tokens`` does not truncate a recorded reply.
  With ``honours_n=False`` the server acts like one that ignores ``n``: every call returns and
  bills one choice, whatever ``n`` requests.
  Requests with ``"stream": true`` are rejected because streaming is not implemented. Any
  ``model`` name is accepted and echoed back. Bodies over `MAX_BODY_BYTES` get a 413 error.
- ``GET /v1/models`` lists the served model name, ``GET /healthz`` returns ``ok``.
- ``GET /v1/replay/stats`` returns counters of requests, billed choices and tokens, errors by
  HTTP status and injected faults (see `ReplayBackend.stats`).

Faults: with `serve.faults.FaultSettings`, a seeded share of valid chat completion calls fails
with a 500, a hang past the client deadline, a 429 with ``Retry-After``, a truncated body or
fewer choices than asked for. Every 200 reply, readable or not, carries the billed choices in the
header ``X-Replay-Billed-Samples``; `serve.faults` lists what each fault bills.

Randomness: with a request ``seed``, the draw depends only on (server seed, request seed,
question id), so it repeats across requests, processes and restarts. Without one, the draw comes
from the server's generator, seeded with the server seed, in the order requests arrive.

Token counts: ``prompt_tokens`` is an estimate, the characters of all message contents divided by
`CHARS_PER_TOKEN` and rounded up. ``completion_tokens`` sums the recorded ``tokens`` of the
returned samples and uses the same estimate on the reply text of a sample without them.

Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: 400 for an invalid
body, 404 with code ``question_not_found`` for an unknown question, 404 and 405 for an unknown
route or method, 413 for an oversized body.

Run it with ``python -m serve.replay --dataset svamp --samples FILE --port 8100``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from online.answers import canonical_key, extract_answer
from online.datasets import DATASETS, load_dataset
from online.samples import Question, Sample, read_samples
from serve.faults import BILLED_SAMPLES_HEADER, FAULT_MODES, FaultInjector, FaultSettings

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MODEL_NAME",
    "MAX_BODY_BYTES",
    "MAX_N",
    "SAMPLES_AVAILABLE_HEADER",
    "ReplayBackend",
    "estimate_tokens",
    "main",
    "normalize_question",
    "reply_text",
    "synthesize_reply",
    "yields_answer",
]

logger = logging.getLogger(__name__)

MAX_N = 128
"""Largest ``n`` a request may ask for; larger values get a 400 error."""

CHARS_PER_TOKEN = 4
"""Characters per token in the token estimates (a rough average for English text)."""

DEFAULT_MODEL_NAME = "replay"
SAMPLES_AVAILABLE_HEADER = "X-Replay-Samples-Available"

_NO_ANSWER_REPLY = "I could not work out a final answer for this question."
_REPLY_LEAD = "Working through the problem step by step."
MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body accepted, in bytes."""

_MAX_ECHO_CHARS = 80


# --- reply texts and token estimates -------------------------------------------------------------


def normalize_question(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends: the lookup key.

    >>> normalize_question("  How many\\n apples?  ")
    'How many apples?'
    """
    return " ".join(text.split())


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of a text: characters / `CHARS_PER_TOKEN`, rounded up.

    >>> estimate_tokens("The answer is 42.")
    5
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def yields_answer(text: str, answer: str | None) -> bool:
    """Return True when ``extract_answer(text)`` is the recorded answer or its canonical key.

    Both are accepted because a recorded answer need not be in canonical form ("8,000"), and
    samples files may have been keyed under earlier key rules.

    >>> yields_answer("The answer is 8,000.", "8,000")
    True
    """
    key = extract_answer(text)
    return key == answer or key == canonical_key(answer)


def synthesize_reply(answer: str | None) -> str:
    """Build a short reply that `yields_answer` the given answer.

    A null answer gives a reply with no digits and no answer marker. An answer that no template
    round-trips, such as one containing ``\\boxed``, gets the "The answer is" form with its
    canonical key.
    """
    key = canonical_key(answer)
    if answer is None or key is None:
        return _NO_ANSWER_REPLY
    stripped = answer.strip()
    candidates = (
        f"{_REPLY_LEAD} The answer is {stripped}.",
        f"{_REPLY_LEAD} The answer is {key}.",
        f"{_REPLY_LEAD} So the answer is \\boxed{{{stripped}}}.",
        f"{_REPLY_LEAD} So the answer is \\boxed{{{key}}}.",
    )
    for text in candidates:
        if yields_answer(text, answer):
            return text
    logger.debug("no reply template yields answer %r", answer)
    return candidates[1]


def reply_text(sample: Sample) -> str:
    """Return the reply served for a sample: its recorded text if that yields its answer.

    A recorded text that does not satisfy `yields_answer` is replaced by a synthesized reply,
    so a client that votes on `extract_answer` always counts the recorded answer.
    """
    if sample.text is not None and yields_answer(sample.text, sample.answer):
        return sample.text
    return synthesize_reply(sample.answer)


# --- request body --------------------------------------------------------------------------------


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[_ContentPart] | None = None

    def text(self) -> str:
        """Return the text content, joining the text parts of a list content by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if p.type == "text" and p.text)


class _ChatRequest(BaseModel):
    """The fields of an OpenAI chat completion request that the replay backend reads."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(strict=True)] | None = None
    messages: Annotated[list[_Message], Field(min_length=1)]
    n: Annotated[int, Field(strict=True, ge=1, le=MAX_N)] | None = None
    temperature: Annotated[float, Field(strict=True, ge=0.0)] | None = None
    seed: Annotated[int, Field(strict=True)] | None = None
    max_tokens: Annotated[int, Field(strict=True, ge=1)] | None = None
    stream: Annotated[bool, Field(strict=True)] | None = None


_FIELD_NAMES = frozenset(
    [*_ChatRequest.model_fields, *_Message.model_fields, *_ContentPart.model_fields]
)


class _RequestError(Exception):
    """A client error that the middleware turns into an OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type


def _echo(value: Any) -> str:
    """Return ``repr(value)`` cut to `_MAX_ECHO_CHARS` for an error message."""
    text = repr(value)
    if len(text) > _MAX_ECHO_CHARS:
        return text[: _MAX_ECHO_CHARS - 3] + "..."
    return text


def _param_path(loc: Sequence[int | str]) -> str:
    """Format a pydantic error location as ``messages[0].content``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _validation_error(exc: ValidationError) -> _RequestError:
    """Turn the first pydantic error into a 400 that names the field and the value."""
    first = exc.errors(include_url=False)[0]
    # A union such as ``content: str | list[...]`` adds the member type to the location.
    loc = [part for part in first["loc"] if isinstance(part, int) or part in _FIELD_NAMES]
    param = _param_path(loc) or None
    if first["type"] == "missing":
        message = f"missing required field '{param}'"
    else:
        message = f"invalid value for '{param}': {first['msg']}, got {_echo(first['input'])}"
    return _RequestError(400, message, param=param, code=first["type"])


def _parse_request(body: bytes) -> _ChatRequest:
    """Parse and validate a request body. Raises `_RequestError` (400) naming the field."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _RequestError(
            400, f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(raw, dict):
        raise _RequestError(
            400,
            f"request body must be a JSON object, got {type(raw).__name__}",
            code="invalid_json",
        )
    try:
        request = _ChatRequest.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if request.stream:
        raise _RequestError(
            400,
            "streaming is not supported by the replay backend, got stream=true",
            param="stream",
            code="unsupported_value",
        )
    return request


def _error_body(error: _RequestError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


# --- backend -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A served question with the reply text and billed tokens of each recorded sample."""

    question: Question
    texts: tuple[str, ...]
    tokens: tuple[int, ...]


def _load_datasets(names: Iterable[str]) -> list[Question]:
    """Read bundled data sets in order; raise `ValueError` for a set without samples."""
    questions: list[Question] = []
    for name in names:
        if name in DATASETS and not DATASETS[name].has_samples:
            with_samples = ", ".join(n for n, d in sorted(DATASETS.items()) if d.has_samples)
            raise ValueError(
                f"dataset {name!r} has no recorded samples to replay. "
                f"Datasets with samples: {with_samples}"
            )
        questions.extend(load_dataset(name))
    return questions


def _make_entry(question: Question, replies: dict[tuple[str | None, str | None], str]) -> _Entry:
    """Build the served entry of a question, reusing and filling the ``replies`` cache."""
    texts = []
    for sample in question.samples:
        cache_key = (sample.text, sample.answer)
        if cache_key not in replies:
            replies[cache_key] = reply_text(sample)
            if sample.text is not None and replies[cache_key] != sample.text:
                logger.debug(
                    "question %s: recorded text does not yield answer %r, synthesizing a reply",
                    question.id,
                    sample.answer,
                )
        texts.append(replies[cache_key])

    tokens = tuple(
        s.tokens if s.tokens is not None else estimate_tokens(t)
        for s, t in zip(question.samples, texts, strict=True)
    )
    return _Entry(question, tuple(texts), tokens)


def _check_non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


class ReplayBackend:
    """Questions index, seeded sampler, latency settings and billing counters of a replay server.

    Questions without recorded samples are skipped. When several questions share a text (after
    whitespace is collapsed), the first one is served. Raises `ValueError` when no question has
    samples or a setting is invalid.
    """

    def __init__(
        self,
        questions: Iterable[Question],
        *,
        seed: int = 0,
        latency_ms: float = 10.0,
        latency_per_sample_ms: float = 0.0,
        model_name: str = DEFAULT_MODEL_NAME,
        faults: FaultSettings | None = None,
        honours_n: bool = True,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        self.seed = seed
        self.latency_ms = _check_non_negative("latency_ms", latency_ms)
        self.latency_per_sample_ms = _check_non_negative(
            "latency_per_sample_ms", latency_per_sample_ms
        )
        self.model_name = model_name
        self.honours_n = bool(honours_n)
        self._index = self._build_index(questions)
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._counts: Counter[str] = Counter()
        self._errors: Counter[int] = Counter()
        self._faults = FaultInjector(faults or FaultSettings.model_validate({}))
        self._injected: Counter[str] = Counter()

    # construction

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], **kwargs: Any) -> ReplayBackend:
        """Serve the questions of samples files in the order given, with ``kwargs`` for __init__."""
        questions: list[Question] = []
        for path in paths:
            questions.extend(read_samples(path))
        return cls(questions, **kwargs)

    @classmethod
    def from_datasets(cls, names: Iterable[str], **kwargs: Any) -> ReplayBackend:
        """Serve bundled data sets (see `online.datasets.DATASETS`), with ``kwargs`` for __init__.

        Raises `ValueError` for a question-only set, `KeyError` for an unknown name and
        `FileNotFoundError` when a bundled file is absent.
        """
        return cls(_load_datasets(names), **kwargs)

    @staticmethod
    def _build_index(questions: Iterable[Question]) -> dict[str, _Entry]:
        index: dict[str, _Entry] = {}
        duplicates = 0
        without_samples = 0
        # Recorded samples often repeat a reply word for word, so each distinct
        # (text, answer) pair goes through answer extraction once.
        replies: dict[tuple[str | None, str | None], str] = {}

        for question in questions:
            if not question.samples:
                without_samples += 1
                continue
            key = normalize_question(question.question)
            if key in index:
                duplicates += 1
                logger.debug(
                    "skipping question %s: same text as %s, which is served",
                    question.id,
                    index[key].question.id,
                )
                continue
            index[key] = _make_entry(question, replies)

        synthesized = sum(
            1 for (text, _), reply in replies.items() if text is not None and reply != text
        )
        if duplicates:
            logger.info("skipped %d questions whose text repeats an earlier one", duplicates)
        if without_samples:
            logger.info("skipped %d questions without recorded samples", without_samples)
        if synthesized:
            logger.warning(
                "%d distinct recorded texts do not yield their recorded answer, so synthesized "
                "replies are served for them",
                synthesized,
            )
        if not index:
            raise ValueError(
                f"no question with recorded samples to serve, got {without_samples} without"
            )
        return index

    @property
    def question_count(self) -> int:
        """Number of distinct questions served."""
        return len(self._index)

    # sampling

    def _draw(self, entry: _Entry, n: int, request_seed: int | None) -> list[int]:
        """Return ``min(n, recorded)`` distinct sample indices in random order."""
        count = min(n, len(entry.texts))
        if request_seed is None:
            rng = self._rng
        else:
            material = f"{self.seed}\x00{request_seed}\x00{entry.question.id}".encode()
            rng = random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))
        return rng.sample(range(len(entry.texts)), count)

    # counters

    def stats(self) -> dict[str, Any]:
        """Return the counters since the backend was created.

        They are ``requests`` (chat completion requests received),
        ``completions`` (answered with 200, including truncated bodies), ``choices`` (the billed
        samples), ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` billed over
        those, ``short_completions`` (fewer choices than ``n``), ``abandoned`` (replies not
        billed because the client had disconnected before they were sent), ``errors`` by HTTP
        status over all routes, and ``faults`` injected by mode.
        """
        return {
            "requests": self._counts["requests"],
            "completions": self._counts["completions"],
            "choices": self._counts["choices"],
            "prompt_tokens": self._counts["prompt_tokens"],
            "completion_tokens": self._counts["completion_tokens"],
            "total_tokens": self._counts["prompt_tokens"] + self._counts["completion_tokens"],
            "short_completions": self._counts["short_completions"],
            "abandoned": self._counts["abandoned"],
            "errors": {str(status): n for status, n in sorted(self._errors.items())},
            "faults": {mode: self._injected[mode] for mode in FAULT_MODES},
        }

    # HTTP handlers

    def make_app(self) -> web.Application:
        """Build an aiohttp application serving this backend. All its apps share the counters."""
        app = web.Application(middlewares=[self._error_middleware], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/healthz", self._handle_health)
        app.router.add_get("/v1/replay/stats", self._handle_stats)
        return app

    @web.middleware
    async def _error_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Turn every error into an OpenAI-style JSON body and count it by status."""
        try:
            return await handler(request)
        except _RequestError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
            message = f"{exc.reason}: {request.method} {request.path}"
            if exc.status == 413:
                message = f"request body exceeds the maximum of {MAX_BODY_BYTES} bytes"
            error = _RequestError(exc.status, message, code=codes.get(exc.status))
        except Exception as exc:
            logger.exception("replay request %s %s failed", request.method, request.path)
            error = _RequestError(
                500, f"internal error: {type(exc).__name__}", error_type="server_error"
            )
        self._errors[error.status] += 1
        if error.status != 500:
            logger.debug(
                "replay request %s %s rejected: %s", request.method, request.path, error.message
            )
        return web.json_response(_error_body(error), status=error.status)

    async def _handle_chat(self, request: web.Request) -> web.Response:
        self._counts["requests"] += 1
        chat = _parse_request(await request.read())
        entry = self._lookup(chat.messages)
        n = 1 if chat.n is None or not self.honours_n else chat.n
        picks = self._draw(entry, n, chat.seed)
        fault = self._faults.draw()
        if fault is not None:
            self._injected[fault] += 1
        if fault in ("server_error", "timeout", "rate_limit"):
            return await self._failed_reply(fault)
        if fault == "short":
            picks = picks[: self._faults.short_count(len(picks))]

        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": entry.texts[j]},
                "finish_reason": "stop",
            }
            for i, j in enumerate(picks)
        ]
        prompt_chars = sum(len(m.text()) for m in chat.messages)
        prompt_tokens = math.ceil(prompt_chars / CHARS_PER_TOKEN)
        completion_tokens = sum(entry.tokens[j] for j in picks)

        delay_ms = self.latency_ms + self.latency_per_sample_ms * len(picks)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)

        if request.transport is None or request.transport.is_closing():
            # The client gave up (its deadline passed) before the reply was ready: not billed.
            self._counts["abandoned"] += 1
            raise _RequestError(499, "client disconnected before the reply", code="abandoned")

        headers = {BILLED_SAMPLES_HEADER: str(len(picks))}
        if len(picks) < n:
            headers[SAMPLES_AVAILABLE_HEADER] = str(len(entry.texts))
            self._counts["short_completions"] += 1
        self._counts["completions"] += 1
        self._counts["choices"] += len(picks)
        self._counts["prompt_tokens"] += prompt_tokens
        self._counts["completion_tokens"] += completion_tokens
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model if chat.model else self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if fault == "malformed":
            text = json.dumps(body)
            return web.Response(
                text=text[: len(text) // 2], content_type="application/json", headers=headers
            )
        return web.json_response(body, headers=headers)

    async def _failed_reply(self, fault: str) -> web.Response:
        """Reply to a call hit by an unbilled fault: a 500, a 429, or a hang and then a 504."""
        settings = self._faults.settings
        headers: dict[str, str] = {}
        if fault == "timeout":
            await asyncio.sleep(settings.hang_s)
            status, message = 504, f"injected fault: no reply for {settings.hang_s:g} s"
        elif fault == "rate_limit":
            status, message = 429, "injected fault: rate limit reached, retry later"
            headers = {
                "Retry-After": str(math.ceil(settings.retry_after_s)),
                "retry-after-ms": str(round(settings.retry_after_s * 1000)),
            }
        else:
            status, message = 500, "injected fault: internal server error"
        self._errors[status] += 1
        error = _RequestError(status, message, code=fault, error_type="server_error")
        return web.json_response(_error_body(error), status=status, headers=headers)

    def _lookup(self, messages: Sequence[_Message]) -> _Entry:
        """Find the question of the last user message. Raises `_RequestError` 400 or 404."""
        users = [m for m in messages if m.role == "user"]
        if not users:
            roles = [m.role for m in messages]
            raise _RequestError(
                400, f"messages contain no user message, got roles {roles}", param="messages"
            )
        text = normalize_question(users[-1].text())
        if not text:
            raise _RequestError(
                400, "the last user message has no text content, got ''", param="messages"
            )
        entry = self._index.get(text)
        if entry is None:
            logger.debug("no recorded question for prompt %r", text[:200])
            raise _RequestError(
                404,
                f"no recorded question matches the last user message, got {_echo(text)}",
                param="messages",
                code="question_not_found",
            )
        return entry

    async def _handle_models(self, request: web.Request) -> web.Response:
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "replay"}
        return web.json_response({"object": "list", "data": [model]})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    # server lifecycle

    async def start(
        self, host: str = "127.0.0.1", port: int = 8100, *, shutdown_timeout_s: float = 5.0
    ) -> web.AppRunner:
        """Start serving in the running event loop and return the runner; port 0 picks a free one.

        Raises `RuntimeError` when already started and `OSError` when the address is in use.
        """
        if self._runner is not None:
            raise RuntimeError(f"replay backend already serving on port {self.port}")
        runner = web.AppRunner(
            self.make_app(), access_log=None, shutdown_timeout=shutdown_timeout_s
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info(
            "replay backend serving %d questions as model %r on %s",
            len(self._index),
            self.model_name,
            self.url,
        )
        return runner

    async def stop(self) -> None:
        """Stop serving, waiting up to the shutdown timeout for requests in flight.

        Calling it when not serving does nothing.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        logger.info("replay backend stopped")

    @property
    def port(self) -> int:
        """Bound TCP port. Raises `RuntimeError` when not serving."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("replay backend is not serving")
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        """Base URL of the server, such as ``http://127.0.0.1:8100``. Raises when not serving."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("replay backend is not serving")
        host = str(self._runner.addresses[0][0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serve.replay",
        description="Serve recorded LLM samples through an OpenAI-compatible chat API.",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME",
        help="bundled data set with samples to serve (repeatable): "
        + ", ".join(n for n, d in DATASETS.items() if d.has_samples),
    )
    parser.add_argument(
        "--samples",
        action="append",
        default=[],
        metavar="FILE",
        type=Path,
        help="samples file to serve (repeatable); read after the --dataset sets",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8100, help="TCP port, 0 for a free one (default %(default)s)"
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=10.0,
        help="delay added to every completion, in milliseconds (default %(default)s)",
    )
    parser.add_argument(
        "--latency-per-sample-ms",
        type=float,
        default=0.0,
        help="extra delay per returned choice, in milliseconds (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="server seed of the sampler (default %(default)s)"
    )
    faults = parser.add_argument_group(
        "fault injection", "fractions of valid chat completion calls that fail, from 0 to 1"
    )
    faults.add_argument(
        "--fault-rate",
        type=float,
        default=None,
        help="total fault rate, spread evenly over all modes; the per-mode flags override it",
    )
    for mode in FAULT_MODES:
        faults.add_argument(
            f"--{mode.replace('_', '-')}-rate",
            type=float,
            default=None,
            help=FaultSettings.model_fields[f"{mode}_rate"].description,
        )
    faults.add_argument(
        "--hang-s", type=float, default=5.0, help="hang of a timeout fault, in seconds"
    )
    faults.add_argument(
        "--retry-after-s", type=float, default=1.0, help="Retry-After of a 429 fault, in seconds"
    )
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument(
        "--ignore-n",
        action="store_true",
        help="return and bill one choice per call whatever n requests, as some servers do",
    )
    parser.add_argument(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        help="model name listed by /v1/models (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.dataset and not args.samples:
        parser.error("nothing to serve: give at least one --dataset or --samples")
    return args


def _fault_settings(args: argparse.Namespace) -> FaultSettings:
    """Build the fault settings from the command line; raise `ValidationError` when invalid."""
    extra: dict[str, float] = {
        "hang_s": args.hang_s,
        "retry_after_s": args.retry_after_s,
        "seed": args.fault_seed,
    }
    for mode in FAULT_MODES:
        rate = getattr(args, f"{mode}_rate")
        if rate is not None:
            extra[f"{mode}_rate"] = rate
    return FaultSettings.spread(args.fault_rate or 0.0, **extra)


async def _serve(backend: ReplayBackend, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await backend.start(host, port)
    try:
        await stop.wait()
    finally:
        await backend.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the replay server from the command line; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        faults = _fault_settings(args)
    except ValidationError as exc:
        logger.error("invalid fault settings: %s", exc)
        return 2
    settings: dict[str, Any] = {
        "seed": args.seed,
        "latency_ms": args.latency_ms,
        "latency_per_sample_ms": args.latency_per_sample_ms,
        "model_name": args.model_name,
        "faults": faults,
        "honours_n": not args.ignore_n,
    }
    try:
        questions = _load_datasets(args.dataset)
        for path in args.samples:
            questions.extend(read_samples(path))
        backend = ReplayBackend(questions, **settings)
    except (KeyError, ValueError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        logger.error("cannot start the replay backend: %s", message)
        return 2
    try:
        asyncio.run(_serve(backend, args.host, args.port))
    except OSError as exc:
        logger.error("cannot serve on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
