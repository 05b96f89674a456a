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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "BudgetRequest",
    "FeedbackRequest",
    "SolveRequest",
    "check_admin_token",
    "decode_body",
    "error_response",
    "json_body_schema",
    "parse_body",
]

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted; larger bodies get 413."""

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

    question: str = Field(..., min_length=1, max_length=32_000, description="the question text")
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
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        messages = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise ApiError(422, "invalid_request", messages) from None
