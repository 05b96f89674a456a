"""Streaming ingestion without Ray: record decoding, validation, bounded solving, the client."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from serve.api import MAX_QUESTION_CHARS, ApiError, StreamRecord
from serve.ingest import (
    JSON_LINES,
    MSGPACK,
    RawRecord,
    encode_results,
    media_type_of,
    read_records,
    solve_records,
)
from serve.stream_file import guess_format, main, scan_records

CAP = 64


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def decode(data: bytes, media_type: str, size: int) -> list[tuple[Any, ...]]:
    records = read_records(chunked(data, size), media_type, max_record_bytes=CAP)
    return [
        (raw.line, raw.value, raw.error.kind if raw.error else None, raw.final)
        async for raw in records
    ]


def test_media_type_accepts_parameters() -> None:
    assert media_type_of("application/x-ndjson; charset=utf-8") == JSON_LINES
    assert media_type_of("Application/MsgPack") == MSGPACK


@pytest.mark.parametrize("content_type", ["application/json", "", None])
def test_media_type_rejects_others(content_type: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        media_type_of(content_type)
    assert caught.value.status == 415
    assert "Content-Type" in caught.value.message
    assert repr(content_type) in caught.value.message


JSON_BODY = (
    b'{"id":"a","question":"q"}\n'
    b"\n"
    b"[1]\n"
    b"not json\n"
    b'{"x":"' + b"y" * 100 + b'"}\r\n'
    b'{"id":"b","question":"r"}'
)


@pytest.mark.parametrize("size", [1, 3, 7, 64, 4096])
async def test_json_lines_same_for_any_chunking(size: int) -> None:
    decoded = await decode(JSON_BODY, JSON_LINES, size)
    assert decoded == [
        (1, {"id": "a", "question": "q"}, None, False),
        (3, [1], None, False),
        (4, None, "invalid_json", False),
        (5, None, "record_too_large", False),
        (6, {"id": "b", "question": "r"}, None, False),
    ]


async def test_json_line_too_large_names_limit() -> None:
    records = read_records(chunked(b"x" * 200 + b"\n", 50), JSON_LINES, max_record_bytes=CAP)
    [raw] = [raw async for raw in records]
    assert raw.error is not None
    assert raw.error.status == 413
    assert f"exceeds the limit of {CAP} bytes" in raw.error.message
    assert raw.error.message.startswith("record 1:")


MSGPACK_BODY = msgpack.packb({"id": "a", "question": "q"}) + msgpack.packb(5)


@pytest.mark.parametrize("size", [1, 5, 4096])
async def test_msgpack_frames_decoded(size: int) -> None:
    body = MSGPACK_BODY + msgpack.packb({"id": "b", "question": "r", "meta": {"level": 2}})
    decoded = await decode(body, MSGPACK, size)
    assert decoded == [
        (1, {"id": "a", "question": "q"}, None, False),
        (2, 5, None, False),
        (3, {"id": "b", "question": "r", "meta": {"level": 2}}, None, False),
    ]


@pytest.mark.parametrize(
    ("tail", "kind"),
    [
        (b"\xc1" + MSGPACK_BODY, "invalid_msgpack"),  # 0xc1 is never used in msgpack
        (b"\xa3\xff\xfe\xfd" + MSGPACK_BODY, "invalid_msgpack"),  # a str that is not UTF-8
        (MSGPACK_BODY[:-3], "invalid_msgpack"),  # the body ends inside a frame
        (msgpack.packb({"q": "y" * 100}) + MSGPACK_BODY, "record_too_large"),
    ],
)
@pytest.mark.parametrize("size", [1, 4096])
async def test_msgpack_error_ends_stream(tail: bytes, kind: str, size: int) -> None:
    decoded = await decode(MSGPACK_BODY + tail, MSGPACK, size)
    assert decoded[:2] == [(1, {"id": "a", "question": "q"}, None, False), (2, 5, None, False)]
    assert decoded[2:] == [(3, None, kind, True)]


def records_of(*values: Any) -> list[RawRecord]:
    return [RawRecord(line, value=value) for line, value in enumerate(values, start=1)]


async def from_list(records: list[RawRecord], pulled: list[int] | None = None):
    for raw in records:
        if pulled is not None:
            pulled.append(raw.line)
        yield raw


async def echo(record: StreamRecord, line: int) -> dict[str, Any]:
    return {"id": record.id, "line": line, "metadata": record.metadata}


async def collect(records: list[RawRecord], **options: Any) -> list[dict[str, Any]]:
    options = {"concurrency": 4, "max_records": 100, **options}
    stream = solve_records(from_list(records), echo, detached=set(), **options)
    return [result async for result in stream]


@pytest.mark.parametrize(
    ("value", "record_id", "words"),
    [
        ([1, 2], None, ["record 1 must be an object", "got list"]),
        (None, None, ["got null"]),
        ({"question": "q"}, None, ["field 'id' is required"]),
        ({"id": 7, "question": "q"}, None, ["field 'id'", "valid string", "got 7"]),
        ({"id": "x"}, "x", ["field 'question' is required"]),
        ({"id": "x", "question": ["q"]}, "x", ["field 'question'", 'got ["q"]']),
        ({"id": "x", "question": "  "}, "x", ["field 'question'", "non-space", 'got "  "']),
        (
            {"id": "x", "question": "q" * (MAX_QUESTION_CHARS + 1)},
            "x",
            ["field 'question'", f"at most {MAX_QUESTION_CHARS} characters", '"qqq'],
        ),
        ({"id": "x", "question": "q", "metadata": 3}, "x", ["field 'metadata'", "got 3"]),
    ],
)
async def test_invalid_record_gets_error(value: Any, record_id: str | None, words: list[str]):
    [result] = await collect(records_of(value))
    assert result["id"] == record_id
    assert result["line"] == 1
    assert result["error"]["type"] == "invalid_request"
    for word in words:
        assert word in result["error"]["message"]


async def test_meta_read_as_metadata() -> None:
    records = records_of(
        {"id": "a", "question": "q", "meta": {"level": 3}, "gold": "1", "samples": []},
        {"id": "b", "question": "q", "metadata": {"level": 4}},
    )
    results = sorted(await collect(records), key=lambda result: result["id"])
    assert results[0]["metadata"] == {"level": 3}
    assert results[1]["metadata"] == {"level": 4}


async def test_record_cap_stops_intake() -> None:
    pulled: list[int] = []
    records = records_of(*({"id": str(i), "question": "q"} for i in range(10)))
    stream = solve_records(from_list(records, pulled), echo, 4, max_records=3, detached=set())
    results = [result async for result in stream]
    assert sorted(r["line"] for r in results) == [1, 2, 3, 4]
    [error] = [r for r in results if "error" in r]
    assert error["line"] == 4
    assert error["error"]["type"] == "too_many_records"
    assert "more than 3 records" in error["error"]["message"]
    assert pulled == [1, 2, 3, 4]


async def test_decode_error_after_final_ends_stream() -> None:
    final = RawRecord(2, error=ApiError(400, "invalid_msgpack", "bad"), final=True)
    records = [*records_of({"id": "a", "question": "q"}), final, *records_of({"id": "c"})]
    results = await collect(records)
    assert sorted(r["line"] for r in results) == [1, 2]


async def test_bounded_in_flight_and_intake() -> None:
    """A reader that stops reading stops the intake; no more than N records solve at once."""
    concurrency = 4
    total = 200
    pulled: list[int] = []
    in_flight = 0
    peak = 0

    async def solve(record: StreamRecord, line: int) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return {"id": record.id, "line": line}

    records = records_of(*({"id": str(i), "question": "q"} for i in range(total)))
    stream = solve_records(from_list(records, pulled), solve, concurrency, total, set())
    first = await anext(stream)
    for _ in range(200):
        await asyncio.sleep(0)
    # Read but not written: results queued (N), solved records waiting to queue theirs (N),
    # the record waiting for a slot, and the first result taken by the reader.
    assert len(pulled) <= 2 * concurrency + 2
    rest = [result async for result in stream]
    assert len(rest) + 1 == total
    assert {r["line"] for r in [first, *rest]} == set(range(1, total + 1))
    assert peak <= concurrency


async def test_reader_gone_lets_solves_finish() -> None:
    release = asyncio.Event()
    finished: list[int] = []
    detached: set[asyncio.Task[Any]] = set()

    async def solve(record: StreamRecord, line: int) -> dict[str, Any]:
        if line > 1:
            await release.wait()
        finished.append(line)
        return {"id": record.id, "line": line}

    records = records_of(*({"id": str(i), "question": "q"} for i in range(10)))
    stream = solve_records(from_list(records), solve, 3, 10, detached)
    first = await anext(stream)
    assert first["line"] == 1
    await stream.aclose()
    assert len(detached) == 2  # records 2 and 3 were being solved
    release.set()
    await asyncio.wait_for(asyncio.gather(*detached), timeout=5)
    assert sorted(finished) == [1, 2, 3]


async def test_encode_results_round_trip() -> None:
    results = [{"id": "a", "line": 1, "cost": 3.0}, {"id": None, "line": 2, "error": {}}]

    async def source() -> AsyncIterator[dict[str, Any]]:
        for result in results:
            yield result

    lines = [chunk async for chunk in encode_results(source(), JSON_LINES)]
    assert [json.loads(line) for line in lines] == results
    assert all(line.endswith(b"\n") for line in lines)
    frames = b"".join([chunk async for chunk in encode_results(source(), MSGPACK)])
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(frames)
    assert list(unpacker) == results


def test_guess_format() -> None:
    assert guess_format(Path("q.msgpack")) == "msgpack"
    assert guess_format(Path("q.mpk.gz")) == "msgpack"
    assert guess_format(Path("q.jsonl.gz")) == "jsonl"
    assert guess_format(Path("q.txt")) == "jsonl"


def test_scan_numbers_lines_like_service(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl.gz"
    lines = [
        '{"id": "a", "question": "q", "gold": "1"}',
        "",
        "not json",
        '{"id": "b", "question": "q", "gold": 2}',
        '{"id": "c", "question": "q"}',
    ]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    records, golds = scan_records(path, "jsonl")
    assert records == 4
    assert golds == {1: "1", 4: "2"}


def test_scan_msgpack_stops_at_invalid_frame(tmp_path: Path) -> None:
    path = tmp_path / "q.msgpack"
    frames = [{"id": "a", "question": "q", "gold": "7"}, [1], {"id": "b", "question": "q"}]
    path.write_bytes(b"".join(msgpack.packb(f) for f in frames) + b"\xc1" + msgpack.packb({}))
    records, golds = scan_records(path, "msgpack")
    assert records == 4
    assert golds == {1: "7"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://10.1.2.3:8000"], "only a loopback URL"),
        (["--url", "ftp://127.0.0.1:8000"], "only a loopback URL"),
        (["--timeout-s", "0"], "--timeout-s must be positive, got 0.0"),
    ],
)
def test_client_bad_arguments(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "q"}\n')
    with pytest.raises(SystemExit) as exited:
        code = main([str(path), *argv])
        raise SystemExit(code)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_client_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl' not found" in capsys.readouterr().err
