"""Streaming ingestion for ``POST /v1/stream``: decode records, solve them, encode results.

A body is JSON Lines (``application/x-ndjson``) or a concatenation of msgpack maps
(``application/msgpack``), one question per record. `read_records` decodes it chunk by chunk,
`solve_records` solves at most ``concurrency`` records at a time and yields their results as
they finish, and `encode_results` writes each result in the request's encoding.

Limits:

- A record larger than `MAX_RECORD_BYTES` gets a ``record_too_large`` error. In JSON Lines the
  rest of its line is skipped unread and the stream goes on. A msgpack frame has no length
  prefix, so the next frame cannot be found without reading the frame whole. A frame larger
  than the limit therefore ends the stream after that error, and so does a frame that is not
  valid msgpack (``invalid_msgpack``).
- After ``max_records`` records the next one gets a ``too_many_records`` error, the records in
  flight finish, and the stream ends without reading the rest of the body.

``line`` in a result is the record's 1-based line number in JSON Lines (a blank line counts but
gets no result) and its frame number in msgpack.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serve.api import MAX_BODY_BYTES, ApiError, StreamRecord, validate_fields

__all__ = [
    "JSON_LINES",
    "MAX_RECORD_BYTES",
    "MSGPACK",
    "RawRecord",
    "RecordStreamResponse",
    "encode_results",
    "error_result",
    "media_type_of",
    "read_records",
    "solve_records",
]

logger = logging.getLogger(__name__)

JSON_LINES = "application/x-ndjson"
MSGPACK = "application/msgpack"

MAX_RECORD_BYTES = MAX_BODY_BYTES
"""Largest record accepted, in bytes: the body limit of ``POST /v1/solve``."""

Solver = Callable[[StreamRecord, int], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class RawRecord:
    """A decoded record before validation: ``value``, or the ``error`` that decoding raised.

    ``final`` marks an error after which the body cannot be read further.
    """

    line: int
    value: Any = None
    error: ApiError | None = None
    final: bool = False


def media_type_of(content_type: str | None) -> str:
    """Return `JSON_LINES` or `MSGPACK` for a Content-Type header; raise `ApiError` 415 else.

    >>> media_type_of("application/x-ndjson; charset=utf-8")
    'application/x-ndjson'
    """
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in (JSON_LINES, MSGPACK):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"header 'Content-Type' must be {JSON_LINES} or {MSGPACK}, got {content_type!r}",
        )
    return media_type


def error_result(record_id: Any, line: int | None, error: ApiError) -> dict[str, Any]:
    """Return the result of a record that failed; ``id`` is None unless it was a string.

    ``line`` is None only for a failure that is not tied to one record.
    """
    content: dict[str, Any] = {"type": error.kind, "message": error.message}
    if error.cost is not None:
        content["cost"] = error.cost
    return {
        "id": record_id if isinstance(record_id, str) else None,
        "line": line,
        "error": content,
    }


def _too_large(line: int, size: int, limit: int, final: bool = False) -> RawRecord:
    error = ApiError(
        413,
        "record_too_large",
        f"record {line}: {size} bytes or more exceeds the limit of {limit} bytes",
    )
    return RawRecord(line, error=error, final=final)


def _decode_json_line(line: int, data: bytes) -> RawRecord:
    try:
        return RawRecord(line, value=json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        error = ApiError(400, "invalid_json", f"record {line} is not valid JSON: {exc}")
        return RawRecord(line, error=error)


async def _read_json_lines(
    chunks: AsyncIterator[bytes], max_record_bytes: int
) -> AsyncIterator[RawRecord]:
    pending = bytearray()
    line = 0
    skipping = False  # inside a line that was too large, until its newline
    async for chunk in chunks:
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not skipping and len(pending) + len(piece) > max_record_bytes:
                line += 1
                yield _too_large(line, len(pending) + len(piece), max_record_bytes)
                pending.clear()
                skipping = True
            elif not skipping:
                pending += piece
            if end < 0:
                break
            start = end + 1
            if skipping:
                skipping = False
                continue
            line += 1
            if pending.strip():
                yield _decode_json_line(line, bytes(pending))
            pending.clear()
    if not skipping and pending.strip():
        yield _decode_json_line(line + 1, bytes(pending))


async def _read_msgpack(
    chunks: AsyncIterator[bytes], max_record_bytes: int
) -> AsyncIterator[RawRecord]:
    # The unpacker buffers at most one incomplete frame (checked below) plus one fed piece.
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, max_buffer_size=2 * max_record_bytes
    )
    fed = 0
    frame_start = 0
    frame = 0
    async for chunk in chunks:
        for offset in range(0, len(chunk), max_record_bytes):
            piece = chunk[offset : offset + max_record_bytes]
            unpacker.feed(piece)
            fed += len(piece)
            while True:
                try:
                    value = next(unpacker)
                except StopIteration:
                    break
                except (ValueError, TypeError) as exc:
                    message = (
                        f"record {frame + 1} is not valid msgpack ({type(exc).__name__}: {exc}); "
                        "the records after it cannot be read"
                    )
                    error = ApiError(400, "invalid_msgpack", message)
                    yield RawRecord(frame + 1, error=error, final=True)
                    return
                frame += 1
                size = unpacker.tell() - frame_start
                frame_start = unpacker.tell()
                if size > max_record_bytes:
                    # Final whether or not the frame arrived whole, so that the outcome does
                    # not depend on how the body was split into chunks.
                    yield _too_large(frame, size, max_record_bytes, final=True)
                    return
                yield RawRecord(frame, value=value)
            if fed - frame_start > max_record_bytes:
                yield _too_large(frame + 1, fed - frame_start, max_record_bytes, final=True)
                return
    if fed > frame_start:
        message = f"the body ends inside record {frame + 1} after {fed - frame_start} bytes"
        yield RawRecord(frame + 1, error=ApiError(400, "invalid_msgpack", message), final=True)


def read_records(
    chunks: AsyncIterator[bytes], media_type: str, max_record_bytes: int = MAX_RECORD_BYTES
) -> AsyncIterator[RawRecord]:
    """Decode the records of a body, reading a chunk only when the records before it are taken.

    Memory is bounded by one chunk plus ``max_record_bytes`` (twice that for msgpack).
    """
    if media_type == MSGPACK:
        return _read_msgpack(chunks, max_record_bytes)
    return _read_json_lines(chunks, max_record_bytes)


def _validate(raw: RawRecord) -> StreamRecord | dict[str, Any]:
    """Return the validated record, or the error result of a record that is not valid."""
    if raw.error is not None:
        return error_result(None, raw.line, raw.error)
    if not isinstance(raw.value, dict):
        kind = "null" if raw.value is None else type(raw.value).__name__
        message = f"record {raw.line} must be an object (a map), got {kind}"
        return error_result(None, raw.line, ApiError(422, "invalid_request", message))
    try:
        return validate_fields(raw.value, StreamRecord)
    except ApiError as exc:
        return error_result(raw.value.get("id"), raw.line, exc)


_END = object()


async def solve_records(
    records: AsyncIterator[RawRecord],
    solve: Solver,
    concurrency: int,
    max_records: int,
    detached: set[asyncio.Task[Any]],
) -> AsyncIterator[dict[str, Any]]:
    """Solve the records, at most ``concurrency`` at a time, and yield results as they finish.

    ``solve(record, line)`` returns the record's result and does not raise. The next record is
    read only while fewer than ``concurrency`` records are being solved or waiting for the
    reader, and at most ``concurrency`` results wait in the output queue, so a reader that stops
    reading stops the intake. When the reader goes away, the records being solved run to the end
    (their cost is billed) in tasks kept in ``detached``, and their results are dropped.
    """
    results: asyncio.Queue[Any] = asyncio.Queue(maxsize=concurrency)
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def solve_one(record: StreamRecord, line: int) -> None:
        try:
            solving = asyncio.ensure_future(solve(record, line))
            detached.add(solving)
            solving.add_done_callback(detached.discard)
            # Shielded, so that a reader going away cancels the wait and not the solve.
            result = await asyncio.shield(solving)
            await results.put(result)
        finally:
            slots.release()

    async def intake() -> None:
        count = 0
        try:
            async for raw in records:
                count += 1
                if count > max_records:
                    message = f"the stream has more than {max_records} records; the rest is unread"
                    error = ApiError(413, "too_many_records", message)
                    await results.put(error_result(None, raw.line, error))
                    break
                checked = _validate(raw)
                if isinstance(checked, dict):
                    await results.put(checked)
                    if raw.final:
                        break
                    continue
                await slots.acquire()
                task = asyncio.create_task(solve_one(checked, raw.line))
                running.add(task)
                task.add_done_callback(running.discard)
        except ClientDisconnect:
            logger.info("stream client disconnected after %d records", count)
        except Exception:
            logger.exception("reading the stream failed after %d records", count)
            error = ApiError(500, "internal_error", "reading the body failed; see the service log")
            await results.put(error_result(None, None, error))
        if running:
            await asyncio.wait(set(running))
        await results.put(_END)

    reader = asyncio.create_task(intake())
    try:
        while True:
            item = await results.get()
            if item is _END:
                break
            yield item
        await reader  # raises what the intake raised
    finally:
        if not reader.done():
            reader.cancel()
            logger.info("stream closed by the reader with %d records being solved", len(running))
        for task in list(running):
            task.cancel()


async def encode_results(
    results: AsyncIterator[dict[str, Any]], media_type: str
) -> AsyncIterator[bytes]:
    """Encode each result as one JSON line or one msgpack map."""
    async for result in results:
        if media_type == MSGPACK:
            yield msgpack.packb(result)
        else:
            yield json.dumps(result, separators=(",", ":")).encode() + b"\n"


class RecordStreamResponse(StreamingResponse):
    """A `StreamingResponse` that leaves ``receive`` to the handler reading the request body.

    Starlette's `StreamingResponse` listens on ``receive`` for a disconnect when the server
    speaks ASGI HTTP spec below 2.4 (uvicorn, and so Ray Serve's proxy, report 2.3), which would
    take body chunks from `read_records`. Here a disconnect shows up in `read_records` while the
    body is read, and as the cancellation of the handler after it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            raise ClientDisconnect() from None
        if self.background is not None:
            await self.background()
