"""Request models of the HTTP API and the JSON error responses, validated once at the edge.

Errors have the shape ``{"error": {"type", "message"}}``; the message names the field, the rule
and the value received.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "BudgetRequest",
    "ChatCompletionRequest",
    "ChatMessage",
    "ConfigRequest",
    "FeedbackRequest",
    "SolveRequest",
    "StreamRecord",
    "check_admin_token",
    "decode_body",
    "error_response",
    "json_body_schema",
    "parse_body",
    "validate_fields",
]

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted; larger bodies get 413."""

MAX_QUESTION_CHARS = 32_000
"""Maximum length of a question, in characters."""

Model = TypeVar("Model", bound=BaseModel)


class ApiError(Exception):
    """An error to return to the client as JSON with ``status``.

    ``cost`` is what a failed request was billed, sent as ``error.cost`` when not None.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        retry_after_s: int | None = None,
        cost: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.cost = cost


def error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    content: dict[str, Any] = {"type": error.kind, "message": error.message}
    if error.cost is not None:
        content["cost"] = error.cost
    return JSONResponse({"error": content}, status_code=error.status, headers=headers or None)


class SolveRequest(BaseModel):
    """``POST /v1/solve``."""

    model_config = ConfigDict(extra="ignore")

    question: str = Field(
        ..., min_length=1, max_length=MAX_QUESTION_CHARS, description="the question text"
    )
    id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="client id for feedback; generated if absent",
    )
    metadata: dict[str, Any] | None = Field(
        None, description="optional hints, such as a MATH 'level' from 1 to 5"
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain a non-space character")
        return value


class StreamRecord(SolveRequest):
    """One record of ``POST /v1/stream``: a `SolveRequest` whose ``id`` is required.

    ``metadata`` may also be sent as ``meta``, its name in samples files, so that the output of
    ``python -m offline export`` streams as it is. Other fields (``gold``, ``samples``) are
    ignored.
    """

    id: str = Field(
        ..., min_length=1, max_length=200, description="client id, echoed in the record's result"
    )
    metadata: dict[str, Any] | None = Field(
        None,
        validation_alias=AliasChoices("metadata", "meta"),
        description="optional hints, such as a MATH 'level' from 1 to 5",
    )


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: the correct answer of an earlier request, when known."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., min_length=1, max_length=200, description="id of an earlier /v1/solve")
    correct_answer: str | None = Field(None, max_length=10_000, description="the gold answer")


class BudgetRequest(BaseModel):
    """``PUT /v1/budget``: the new mean cost per request, in the service's cost unit."""

    model_config = ConfigDict(extra="ignore")

    budget: float = Field(
        ..., gt=0, allow_inf_nan=False, strict=True, description="mean cost per request"
    )


class ConfigRequest(BaseModel):
    """``PUT /v1/config``: new values of any of the controller's live settings.

    A field left out or null keeps its value. Unknown fields are rejected, so that a misspelt
    setting is not ignored.
    """

    model_config = ConfigDict(extra="forbid")

    budget: float | None = Field(
        None, gt=0, allow_inf_nan=False, strict=True, description="mean cost per request"
    )
    step_size: float | None = Field(
        None, gt=0, allow_inf_nan=False, strict=True, description="dual step, dimensionless"
    )
    explore: float | None = Field(
        None,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        strict=True,
        description="fraction of requests that run the largest action as a probe",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> ConfigRequest:
        if not self.changes():
            raise ValueError("set at least one of budget, step_size, explore")
        return self

    def changes(self) -> dict[str, float]:
        """Return the settings to change, without the fields left out."""
        return self.model_dump(exclude_none=True)


class ChatMessage(BaseModel):
    """One message of a chat completion request; only the text of ``content`` is read."""

    model_config = ConfigDict(extra="ignore")

    role: str = Field(..., min_length=1, description="system, user, assistant, tool or developer")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="the text, or a list of content parts of which only text parts count"
    )

    def text(self) -> str:
        """Return ``content`` as one string, joining the text parts of a list with newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = [part.get("text") for part in self.content if part.get("type") == "text"]
        return "\n".join(part for part in parts if isinstance(part, str))


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: the OpenAI request body, with ``model`` "auto".

    Sampling fields such as ``temperature`` or ``max_tokens`` are accepted and ignored, because
    the service sets them for the LLM server itself.
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., description="must be 'auto': the service chooses the samples to vote")
    messages: list[ChatMessage] = Field(
        ..., min_length=1, description="the conversation; the last user message is the question"
    )
    stream: bool | None = Field(None, description="streaming is not supported; false or absent")
    n: int | None = Field(None, description="choices to return; only 1 is supported")
    metadata: dict[str, Any] | None = Field(
        None,
        description="optional hints, such as a MATH 'level' from 1 to 5, as a number or a "
        "string of digits (the OpenAI client sends metadata values as strings)",
    )

    @field_validator("metadata")
    @classmethod
    def _level_as_number(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        level = (value or {}).get("level")
        if isinstance(level, str) and level.strip().isdigit():
            return {**(value or {}), "level": int(level)}
        return value

    @field_validator("model")
    @classmethod
    def _auto_only(cls, value: str) -> str:
        if value != "auto":
            raise ValueError("unknown model, the only model is 'auto'")
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("streaming is not supported; send false or leave it out")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only 1 choice is supported; the service votes the samples itself")
        return value

    def question(self) -> str:
        """Return the text of the last user message.

        Raises `ApiError` 422 when there is no user message, or its text is blank or longer than
        `MAX_QUESTION_CHARS`.
        """
        for message in reversed(self.messages):
            if message.role == "user":
                text = message.text()
                if not text.strip():
                    raise ApiError(
                        422,
                        "invalid_request",
                        "field 'messages': the last user message has no text",
                    )
                if len(text) > MAX_QUESTION_CHARS:
                    raise ApiError(
                        422,
                        "invalid_request",
                        f"field 'messages': the last user message has {len(text)} characters, "
                        f"more than {MAX_QUESTION_CHARS}",
                    )
                return text
        roles = [message.role for message in self.messages]
        raise ApiError(
            422,
            "invalid_request",
            f"field 'messages': no message with role 'user', got roles {roles}",
        )


def _describe(error: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in error.get("loc", ())) or "body"
    value = error.get("input")
    received = json.dumps(value) if _is_json(value) else repr(value)
    if len(received) > 80:
        received = received[:77] + "..."
    if error.get("type") == "missing":
        return f"field '{field}' is required"
    return f"field '{field}': {error.get('msg', 'invalid')}, got {received}"


def _is_json(value: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Return the OpenAPI ``requestBody`` of a route that reads ``model`` with `parse_body`."""
    schema = model.model_json_schema()
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def check_admin_token(request: Request, token: str | None) -> None:
    """Raise `ApiError` 401 unless the request sends ``Authorization: Bearer <token>``.

    With ``token`` None (no admin token configured) every request passes.
    """
    if token is None:
        return
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sent:
        raise ApiError(
            401,
            "unauthorized",
            "header 'Authorization' must be 'Bearer <admin token>' to change settings",
        )
    if not hmac.compare_digest(sent.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "header 'Authorization': the admin token is invalid")


async def read_body(request: Request) -> bytes:
    """Read the body, raising 413 as soon as it exceeds `MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(
            413, "request_too_large", f"body of {declared} bytes exceeds {MAX_BODY_BYTES} bytes"
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(
                413, "request_too_large", f"body exceeds the limit of {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, model: type[Model]) -> Model:
    """Read, decode and validate a JSON body; raise `ApiError` 400, 413 or 422 naming the field."""
    return decode_body(await read_body(request), model)


def decode_body(body: bytes, model: type[Model]) -> Model:
    """Decode and validate a JSON body; raise `ApiError` 400 or 422 naming the field."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(
            422, "invalid_request", f"body must be a JSON object, got {type(data).__name__}"
        )
    return validate_fields(data, model)


def validate_fields(data: dict[str, Any], model: type[Model]) -> Model:
    """Validate decoded fields; raise `ApiError` 422 whose message names each invalid field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        messages = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise ApiError(422, "invalid_request", messages) from None
