"""``POST /v1/stream`` end to end: JSON Lines and msgpack through the gateway and the command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from online.datasets import load_dataset
from serve.api import MAX_QUESTION_CHARS
from serve.ingest import MAX_RECORD_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

UNKNOWN_QUESTION = "What is the airspeed of an unladen swallow?"


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def settled_stats(url: str) -> dict[str, Any]:
    """Return /v1/stats once the gateways' batched reports (every 50 ms) have arrived."""
    await asyncio.sleep(0.5)
    return await get_json(f"{url}/v1/stats")


async def post_stream(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/stream", data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


def record(question: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": question.id,
        "question": question.question,
        "gold": question.gold,
        "meta": question.meta,
        **fields,
    }


BAD_LINES = [
    "this line is not JSON",
    json.dumps([1, 2, 3]),
    json.dumps({"id": 7, "question": "How many?"}),
    json.dumps({"id": "no-question"}),
    json.dumps({"id": "too-long", "question": "q" * (MAX_QUESTION_CHARS + 1)}),
    json.dumps({"id": "too-large", "question": "q" * MAX_RECORD_BYTES}),
    json.dumps({"id": "unknown", "question": UNKNOWN_QUESTION}),
]
BAD_TYPES = {
    "invalid_json": 1,
    "invalid_request": 4,
    "record_too_large": 1,
    "backend_rejected": 1,
}


def test_thousand_questions_through_command(service_url: str, tmp_path: Path) -> None:
    """999 svamp questions, 1 math100 question and 7 bad records, streamed by the command.

    Every record gets a result, and the controller counts exactly the answered ones: the bad
    records bill nothing.
    """
    questions = [*load_dataset("svamp"), load_dataset("math100")[0]]
    lines = [json.dumps(record(q)) for q in questions]
    for offset, bad in enumerate(BAD_LINES):
        lines.insert(100 * offset + 50, bad)
    lines.insert(500, "")  # a blank line is skipped but counted in the line numbers
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"

    before = asyncio.run(settled_stats(service_url))
    budget = asyncio.run(get_json(f"{service_url}/v1/budget"))["budget"]
    started = time.perf_counter()
    command = [sys.executable, "-m", "serve.stream_file", str(path), "--url", service_url]
    result = subprocess.run(
        [*command, "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed_s = time.perf_counter() - started
    assert result.returncode == 1, result.stderr[-2000:]  # 1: some records got errors
    summary = json.loads(result.stdout)
    after = asyncio.run(settled_stats(service_url))

    assert summary["records"] == len(questions) + len(BAD_LINES) == 1007
    assert summary["answered"] == len(questions) == 1000
    assert summary["errors"] == BAD_TYPES
    assert summary["without_result"] == 0
    assert summary["error_cost"] == 0
    assert summary["answered_with_gold"] == 1000
    assert summary["accuracy"] > 0.75
    assert summary["mean_cost"] == pytest.approx(budget, rel=0.05)
    assert after["requests"] - before["requests"] == summary["answered"]
    assert after["in_flight"] == 0

    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 1007
    by_line = {r["line"]: r for r in results}
    assert len(by_line) == 1007
    blank = lines.index("") + 1
    assert blank not in by_line
    for number, line in enumerate(lines, start=1):
        if line in BAD_LINES:
            assert "error" in by_line[number], number
        elif line:
            answered = by_line[number]
            assert answered["id"] == json.loads(line)["id"]
            assert answered["cost"] == float(answered["samples_used"])
    print(f"1007 records streamed in {elapsed_s:.1f} s: {json.dumps(summary)}")


async def test_bad_records_name_field_and_value(service_url: str) -> None:
    body = "\n".join(BAD_LINES).encode() + b"\n"
    status, raw = await post_stream(service_url, body, "application/x-ndjson")
    assert status == 200
    results = {r["line"]: r for r in map(json.loads, raw.decode().splitlines())}
    assert sorted(results) == list(range(1, len(BAD_LINES) + 1))
    expected = {
        1: (None, "invalid_json", "record 1 is not valid JSON"),
        2: (None, "invalid_request", "record 2 must be an object (a map), got list"),
        3: (None, "invalid_request", "field 'id': Input should be a valid string, got 7"),
        4: ("no-question", "invalid_request", "field 'question' is required"),
        5: ("too-long", "invalid_request", f"at most {MAX_QUESTION_CHARS} characters"),
        6: (None, "record_too_large", f"exceeds the limit of {MAX_RECORD_BYTES} bytes"),
        7: ("unknown", "backend_rejected", repr(UNKNOWN_QUESTION)),
    }
    for line, (record_id, kind, words) in expected.items():
        assert results[line]["id"] == record_id, line
        assert results[line]["error"]["type"] == kind, line
        assert words in results[line]["error"]["message"], line
    assert results[7]["error"]["cost"] == 0.0


async def test_msgpack_stream(service_url: str) -> None:
    questions = load_dataset("math100")[:60]
    frames = [msgpack.packb(record(q)) for q in questions]
    frames.insert(10, msgpack.packb("not a map"))
    frames.insert(20, msgpack.packb({"id": "x", "question": 42}))
    status, raw = await post_stream(service_url, b"".join(frames), "application/msgpack")
    assert status == 200
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    results = list(unpacker)
    assert len(results) == 62
    errors = {r["line"]: r for r in results if "error" in r}
    assert sorted(errors) == [11, 21]
    assert "got str" in errors[11]["error"]["message"]
    assert errors[21]["id"] == "x"
    assert "field 'question'" in errors[21]["error"]["message"]
    assert "got 42" in errors[21]["error"]["message"]
    answered = [r for r in results if "error" not in r]
    assert {r["id"] for r in answered} == {q.id for q in questions}
    for result in answered:
        assert set(result) >= {"answer", "action", "samples_used", "cost", "lambda", "votes"}


async def test_msgpack_invalid_frame_ends_stream(service_url: str) -> None:
    question = load_dataset("svamp")[0]
    first = msgpack.packb({"id": "first", "question": question.question})
    status, raw = await post_stream(service_url, first + b"\xc1" + first, "application/msgpack")
    assert status == 200
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    results = sorted(unpacker, key=lambda r: r["line"])
    assert [r["line"] for r in results] == [1, 2]
    assert results[0]["id"] == "first"
    assert results[1]["error"]["type"] == "invalid_msgpack"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_wrong_content_type_gets_415(service_url: str, content_type: str) -> None:
    status, raw = await post_stream(service_url, b'{"id": "a", "question": "q"}\n', content_type)
    assert status == 415
    error = json.loads(raw)["error"]
    assert error["type"] == "unsupported_media_type"
    assert "header 'Content-Type'" in error["message"]
    assert repr(content_type) in error["message"]


async def test_results_arrive_before_body_ends(service_url: str) -> None:
    """The first result comes back while the client still holds the rest of the body."""
    questions = load_dataset("svamp")[:3]
    first_result = asyncio.Event()

    async def body():
        yield (json.dumps(record(questions[0])) + "\n").encode()
        await asyncio.wait_for(first_result.wait(), timeout=60)
        for question in questions[1:]:
            yield (json.dumps(record(question)) + "\n").encode()

    headers = {"Content-Type": "application/x-ndjson"}
    results = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{service_url}/v1/stream", data=body(), headers=headers) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        pending = b""
        async for chunk in response.content.iter_any():
            *lines, pending = (pending + chunk).split(b"\n")
            results.extend(json.loads(line) for line in lines)
            if results:
                first_result.set()
    assert results[0]["id"] == questions[0].id
    assert sorted(r["id"] for r in results) == sorted(q.id for q in questions)
