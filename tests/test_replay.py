"""Tests of the replay backend, over HTTP against servers started on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from online.answers import canonical_key, extract_answer
from online.datasets import DATASETS, dataset_path
from online.samples import Question, Sample, read_samples, write_samples
from serve.faults import BILLED_SAMPLES_HEADER
from serve.replay import (
    MAX_BODY_BYTES,
    MAX_N,
    SAMPLES_AVAILABLE_HEADER,
    ReplayBackend,
    reply_text,
    synthesize_reply,
)

pytestmark = pytest.mark.timeout(20)

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)

APPLES = "Tom has 3 apples and buys 4 more. How many apples does he have?"
PENS = "A box holds 12 pens. How many pens are in 2 boxes?"
TRAIN = "A train travels 60 km in 1 hour. How far does it go in 5 hours?"

QUESTIONS = [
    Question(
        id="toy-apples",
        question=APPLES,
        gold="7",
        samples=(
            Sample("7", tokens=31, text="First: 3 + 4 = 7. The answer is 7."),
            Sample("7", tokens=28, text="Second: adding gives 7. The answer is 7."),
            Sample("12", tokens=40, text="Third: 3 * 4 = 12. The answer is 12."),
            Sample("1", tokens=25, text="Fourth: 4 - 3 = 1. The answer is 1."),
            Sample("7", tokens=33, text="Fifth: so we get \\boxed{7}"),
            Sample("7", tokens=30, text="Sixth: he has 7 apples. The answer is 7."),
        ),
        meta={"dataset": "toy"},
    ),
    Question(
        id="toy-pens",
        question=PENS,
        gold="24",
        samples=(
            Sample("24", tokens=20),
            Sample(None, tokens=15),
            Sample("0.50"),
        ),
        meta={"dataset": "toy"},
    ),
    Question(
        id="toy-train",
        question=TRAIN,
        gold="300",
        # The recorded text yields 6, not the recorded answer, so a reply is synthesized.
        samples=(Sample("300", tokens=12, text="I think it is 6."), Sample("300", tokens=9)),
        meta={"dataset": "toy"},
    ),
]


def chat_body(question: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "replay", "messages": [{"role": "user", "content": question}]}
    body.update(fields)
    return body


async def post_chat(
    session: aiohttp.ClientSession, url: str, body: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST a chat completion (JSON, or raw bytes when ``body`` is bytes)."""
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(f"{url}/v1/chat/completions", **kwargs) as resp:
        payload = await resp.json(content_type=None)
        return resp.status, payload, dict(resp.headers)


def contents(payload: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] for c in payload["choices"]]


@pytest.fixture
def samples_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.jsonl"
    write_samples(QUESTIONS, path)
    return path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as client:
        yield client


async def started(backend: ReplayBackend) -> ReplayBackend:
    await backend.start("127.0.0.1", 0)
    return backend


@pytest.fixture
async def backend(samples_file: Path) -> AsyncIterator[ReplayBackend]:
    server = await started(ReplayBackend.from_files([samples_file], seed=0, latency_ms=0))
    yield server
    await server.stop()


# --- drawing samples --------------------------------------------------------------------------


async def test_n_honoured_without_repeats(backend, session):
    status, payload, _ = await post_chat(session, backend.url, chat_body(APPLES, n=4))
    assert status == 200
    texts = contents(payload)
    assert len(texts) == 4
    assert len(set(texts)) == 4
    assert [c["index"] for c in payload["choices"]] == [0, 1, 2, 3]


async def test_n_equal_to_recorded_returns_each_once(backend, session):
    recorded = {s.text for s in QUESTIONS[0].samples}
    status, payload, headers = await post_chat(session, backend.url, chat_body(APPLES, n=6))
    assert status == 200
    assert sorted(contents(payload)) == sorted(recorded)
    assert SAMPLES_AVAILABLE_HEADER not in headers


async def test_n_defaults_to_one(backend, session):
    body = chat_body(APPLES)
    status, payload, _ = await post_chat(session, backend.url, body)
    assert status == 200
    assert len(payload["choices"]) == 1


async def test_n_beyond_recorded_returns_all(backend, session):
    status, payload, headers = await post_chat(session, backend.url, chat_body(PENS, n=10))
    assert status == 200
    assert len(payload["choices"]) == 3
    assert len(set(contents(payload))) == 3
    assert headers[SAMPLES_AVAILABLE_HEADER] == "3"


async def test_n_ignored_when_not_honoured(samples_file, session):
    server = await started(
        ReplayBackend.from_files([samples_file], seed=0, latency_ms=0, honours_n=False)
    )
    try:
        status, payload, headers = await post_chat(session, server.url, chat_body(APPLES, n=5))
        invalid, _, _ = await post_chat(session, server.url, chat_body(APPLES, n=MAX_N + 1))
    finally:
        await server.stop()
    assert status == 200
    assert len(payload["choices"]) == 1
    assert headers[BILLED_SAMPLES_HEADER] == "1"
    assert SAMPLES_AVAILABLE_HEADER not in headers
    assert invalid == 400
    stats = server.stats()
    assert stats["choices"] == 1
    assert stats["short_completions"] == 0
    assert payload["usage"]["completion_tokens"] == stats["completion_tokens"]


async def test_n_at_maximum_accepted(backend, session):
    status, payload, headers = await post_chat(session, backend.url, chat_body(APPLES, n=MAX_N))
    assert status == 200
    assert len(payload["choices"]) == 6
    assert headers[SAMPLES_AVAILABLE_HEADER] == "6"


async def test_same_seed_same_draw(backend, session):
    _, first, _ = await post_chat(session, backend.url, chat_body(APPLES, n=3, seed=7))
    _, second, _ = await post_chat(session, backend.url, chat_body(APPLES, n=3, seed=7))
    assert contents(first) == contents(second)


async def test_seeded_draw_repeats_across_servers(samples_file, session):
    draws: list[list[list[str]]] = []
    for _ in range(2):
        server = await started(ReplayBackend.from_files([samples_file], seed=5, latency_ms=0))
        try:
            # An unseeded request in between must not change the seeded draws.
            await post_chat(session, server.url, chat_body(APPLES, n=2))
            draws.append(
                [
                    contents(
                        (await post_chat(session, server.url, chat_body(APPLES, n=3, seed=s)))[1]
                    )
                    for s in range(5)
                ]
            )
        finally:
            await server.stop()
    assert draws[0] == draws[1]


async def test_request_seed_changes_draw(backend, session):
    draws = set()
    for request_seed in range(10):
        body = chat_body(APPLES, n=3, seed=request_seed)
        _, payload, _ = await post_chat(session, backend.url, body)
        draws.add(tuple(contents(payload)))
    # 10 seeds over 120 ordered draws: all equal would mean the seed is ignored.
    assert len(draws) > 1


async def test_server_seed_changes_draw(samples_file, session):
    draws = []
    for server_seed in (1, 2):
        server = await started(
            ReplayBackend.from_files([samples_file], seed=server_seed, latency_ms=0)
        )
        try:
            draws.append(
                [
                    contents(
                        (await post_chat(session, server.url, chat_body(APPLES, n=3, seed=s)))[1]
                    )
                    for s in range(5)
                ]
            )
        finally:
            await server.stop()
    assert draws[0] != draws[1]


async def test_unseeded_draws_follow_arrival_order(samples_file, session):
    sequences = []
    for _ in range(2):
        server = await started(ReplayBackend.from_files([samples_file], seed=3, latency_ms=0))
        try:
            sequence = []
            for question in (APPLES, PENS, APPLES, APPLES):
                _, payload, _ = await post_chat(session, server.url, chat_body(question, n=2))
                sequence.append(contents(payload))
            sequences.append(sequence)
        finally:
            await server.stop()
    assert sequences[0] == sequences[1]


# --- reply texts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "",
        "51",
        "-5",
        "8,000",
        "0.50",
        "1/2",
        "\\frac{1}{2}",
        "x^2+1",
        "(1, 2)",
        "\\text{Monday}",
    ],
)
def test_synthesized_reply_yields_answer(answer):
    assert extract_answer(synthesize_reply(answer)) == canonical_key(answer)


def test_null_answer_reply_has_no_digits():
    text = synthesize_reply(None)
    assert not re.search(r"\d", text)
    assert extract_answer(text) is None


def assert_yields_recorded(text: str, sample: Sample) -> None:
    """Check that a reply votes for the recorded answer, or its canonical key if not canonical."""
    key = extract_answer(text)
    assert key in (sample.answer, canonical_key(sample.answer)), (text, sample)


def test_reply_text_yields_recorded_answer():
    for question in QUESTIONS:
        for sample in question.samples:
            assert_yields_recorded(reply_text(sample), sample)


def test_reply_text_keeps_matching_recorded_text():
    sample = QUESTIONS[0].samples[4]
    assert reply_text(sample) == sample.text


def test_reply_text_keeps_text_of_non_canonical_answer():
    sample = Sample("8,000", text="In total \\boxed{8,000} dollars.")
    assert reply_text(sample) == sample.text
    assert extract_answer(reply_text(sample)) == canonical_key("8,000")


def test_reply_text_replaces_mismatching_text():
    sample = QUESTIONS[2].samples[0]
    assert reply_text(sample) != sample.text
    assert extract_answer(reply_text(sample)) == "300"


async def test_served_replies_yield_recorded_answers(backend, session):
    for question in QUESTIONS:
        n = len(question.samples)
        status, payload, _ = await post_chat(
            session, backend.url, chat_body(question.question, n=n)
        )
        assert status == 200
        served = Counter(extract_answer(text) for text in contents(payload))
        recorded = Counter(canonical_key(s.answer) for s in question.samples)
        assert served == recorded, question.id


async def test_response_fields(backend, session):
    status, payload, headers = await post_chat(
        session,
        backend.url,
        chat_body(APPLES, model="my-model", n=2, temperature=0.7, max_tokens=5),
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert payload["id"].startswith("chatcmpl-")
    assert payload["object"] == "chat.completion"
    assert isinstance(payload["created"], int)
    assert payload["model"] == "my-model"
    for choice in payload["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "stop"


# --- usage ----------------------------------------------------------------------------------------


async def test_usage_sums_recorded_tokens(backend, session):
    tokens_by_text = {s.text: s.tokens for s in QUESTIONS[0].samples}
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": APPLES},
    ]
    body = {"model": "replay", "messages": messages, "n": 4}
    _, payload, _ = await post_chat(session, backend.url, body)
    usage = payload["usage"]
    prompt_chars = len("Answer briefly.") + len(APPLES)
    assert usage["prompt_tokens"] == math.ceil(prompt_chars / 4)
    assert usage["completion_tokens"] == sum(tokens_by_text[t] for t in contents(payload))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_usage_estimates_missing_tokens(backend, session):
    _, payload, _ = await post_chat(session, backend.url, chat_body(PENS, n=3))
    recorded = {extract_answer(synthesize_reply("24")): 20, None: 15}
    expected = 0
    for text in contents(payload):
        key = extract_answer(text)
        expected += recorded[key] if key in recorded else math.ceil(len(text) / 4)
    assert payload["usage"]["completion_tokens"] == expected


# --- lookup ---------------------------------------------------------------------------------------


async def test_lookup_collapses_whitespace(backend, session):
    question = "  Tom has 3 apples\nand buys 4   more.\tHow many apples does he have? \n"
    status, _, _ = await post_chat(session, backend.url, chat_body(question))
    assert status == 200


async def test_lookup_uses_last_user_message(backend, session):
    messages = [
        {"role": "system", "content": "Put the final answer in \\boxed{}."},
        {"role": "user", "content": PENS},
        {"role": "assistant", "content": "24"},
        {"role": "user", "content": APPLES},
    ]
    status, payload, _ = await post_chat(session, backend.url, {"messages": messages, "n": 6})
    assert status == 200
    assert sorted(contents(payload)) == sorted(s.text for s in QUESTIONS[0].samples)


async def test_lookup_accepts_content_parts(backend, session):
    parts = [{"type": "text", "text": APPLES}]
    body = {"model": "replay", "messages": [{"role": "user", "content": parts}]}
    status, _, _ = await post_chat(session, backend.url, body)
    assert status == 200


async def test_unknown_question_gives_404(backend, session):
    status, payload, _ = await post_chat(session, backend.url, chat_body("What is 2 + 2?"))
    assert status == 404
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "question_not_found"
    assert error["param"] == "messages"
    assert "What is 2 + 2?" in error["message"]


async def test_duplicate_text_first_file_wins(tmp_path, session, caplog):
    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.jsonl"
    write_samples([Question("a-1", APPLES, samples=(Sample("7", tokens=3),))], first)
    write_samples(
        [
            Question(
                "b-1",
                "Tom has 3 apples and buys 4 more.  How many apples does he have?",
                samples=(Sample("99", tokens=3),),
            )
        ],
        second,
    )
    with caplog.at_level(logging.INFO, logger="serve.replay"):
        server = await started(ReplayBackend.from_files([first, second], latency_ms=0))
    try:
        _, payload, _ = await post_chat(session, server.url, chat_body(APPLES, n=5))
        assert [extract_answer(t) for t in contents(payload)] == ["7"]
        assert server.question_count == 1
        assert "skipped 1 questions whose text repeats" in caplog.text
    finally:
        await server.stop()


# --- invalid requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, "x", 10**6, MAX_N + 1, 2.5, True])
async def test_invalid_n_gives_400(backend, session, n):
    status, payload, _ = await post_chat(session, backend.url, chat_body(APPLES, n=n))
    assert status == 400
    error = payload["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "n"
    assert f"got {n!r}" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.5),
        ("temperature", "hot"),
        ("seed", "abc"),
        ("max_tokens", 0),
        ("messages", []),
        ("messages", "hi"),
        ("model", 5),
    ],
)
async def test_invalid_field_gives_400(backend, session, field, value):
    status, payload, _ = await post_chat(session, backend.url, chat_body(APPLES, **{field: value}))
    assert status == 400
    assert payload["error"]["param"] == field
    assert f"got {value!r}" in payload["error"]["message"]


async def test_invalid_message_names_its_index(backend, session):
    body = {"messages": [{"role": "user", "content": APPLES}, {"role": "robot", "content": "x"}]}
    status, payload, _ = await post_chat(session, backend.url, body)
    assert status == 400
    assert payload["error"]["param"] == "messages[1].role"
    assert "got 'robot'" in payload["error"]["message"]


async def test_missing_messages_gives_400(backend, session):
    status, payload, _ = await post_chat(session, backend.url, {"model": "replay"})
    assert status == 400
    assert payload["error"]["param"] == "messages"
    assert "missing" in payload["error"]["message"]


async def test_no_user_message_gives_400(backend, session):
    body = {"messages": [{"role": "system", "content": APPLES}]}
    status, payload, _ = await post_chat(session, backend.url, body)
    assert status == 400
    assert payload["error"]["param"] == "messages"


@pytest.mark.parametrize("body", [b"not json", b'{"messages": [', b"", b"\xff\xfe\x00", b"[1, 2]"])
async def test_non_json_body_gives_400(backend, session, body):
    status, payload, _ = await post_chat(session, backend.url, body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["code"] == "invalid_json"


async def test_deeply_nested_json_gives_400(backend, session):
    status, _, _ = await post_chat(session, backend.url, b"[" * 100_000)
    assert status == 400


async def test_oversized_body_gives_413(backend, session):
    body = b'{"messages": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, payload, _ = await post_chat(session, backend.url, body)
    assert status == 413
    assert payload["error"]["code"] == "request_too_large"
    assert str(MAX_BODY_BYTES) in payload["error"]["message"]


async def test_stream_rejected(backend, session):
    status, payload, _ = await post_chat(session, backend.url, chat_body(APPLES, stream=True))
    assert status == 400
    assert payload["error"]["param"] == "stream"


async def test_unknown_route_and_method_give_json_errors(backend, session):
    async with session.get(f"{backend.url}/v1/completions/nothing") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
    async with session.get(f"{backend.url}/v1/chat/completions") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


# --- other endpoints and counters -----------------------------------------------------------------


async def test_models_and_health(backend, session):
    async with session.get(f"{backend.url}/v1/models") as resp:
        assert resp.status == 200
        models = await resp.json()
    assert [m["id"] for m in models["data"]] == ["replay"]
    async with session.get(f"{backend.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.text()) == "ok"


async def test_stats_match_responses(backend, session):
    prompt_tokens = 0
    completion_tokens = 0
    choices = 0
    for body in (chat_body(APPLES, n=2), chat_body(PENS, n=10), chat_body(TRAIN, n=1, seed=1)):
        status, payload, _ = await post_chat(session, backend.url, body)
        assert status == 200
        choices += len(payload["choices"])
        prompt_tokens += payload["usage"]["prompt_tokens"]
        completion_tokens += payload["usage"]["completion_tokens"]
    await post_chat(session, backend.url, chat_body("unknown question"))
    await post_chat(session, backend.url, chat_body(APPLES, n=0))
    await post_chat(session, backend.url, b"not json")
    async with session.get(f"{backend.url}/missing") as resp:
        assert resp.status == 404

    async with session.get(f"{backend.url}/v1/replay/stats") as resp:
        stats = await resp.json()
    assert stats["requests"] == 6
    assert stats["completions"] == 3
    assert stats["choices"] == choices == 2 + 3 + 1
    assert stats["prompt_tokens"] == prompt_tokens
    assert stats["completion_tokens"] == completion_tokens
    assert stats["total_tokens"] == prompt_tokens + completion_tokens
    assert stats["short_completions"] == 1
    assert stats["errors"] == {"400": 2, "404": 2}
    assert backend.stats() == stats


# --- latency and lifecycle ------------------------------------------------------------------------


async def test_latency_lower_bound(samples_file, session):
    server = await started(
        ReplayBackend.from_files([samples_file], latency_ms=120, latency_per_sample_ms=30)
    )
    try:
        start_s = time.monotonic()
        status, _, _ = await post_chat(session, server.url, chat_body(APPLES, n=3))
        elapsed_s = time.monotonic() - start_s
    finally:
        await server.stop()
    assert status == 200
    # 120 ms + 3 * 30 ms, less a few ms of event-loop clock resolution.
    assert elapsed_s >= 0.205


async def test_latency_does_not_block_loop(samples_file, session):
    server = await started(ReplayBackend.from_files([samples_file], latency_ms=1000))
    try:
        slow = asyncio.create_task(post_chat(session, server.url, chat_body(APPLES)))
        await asyncio.sleep(0.05)
        async with session.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
        assert not slow.done()
        status, _, _ = await slow
        assert status == 200
    finally:
        await server.stop()


async def test_stop_closes_port(samples_file, session):
    server = await started(ReplayBackend.from_files([samples_file], latency_ms=0))
    url = server.url
    with pytest.raises(RuntimeError, match="already serving"):
        await server.start("127.0.0.1", 0)
    await server.stop()
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{url}/healthz"):
            pass
    with pytest.raises(RuntimeError, match="not serving"):
        _ = server.port


def test_invalid_settings_rejected(samples_file):
    with pytest.raises(ValueError, match="latency_ms must be >= 0, got -1"):
        ReplayBackend.from_files([samples_file], latency_ms=-1)
    with pytest.raises(ValueError, match="seed must be an integer, got '1'"):
        ReplayBackend.from_files([samples_file], seed="1")
    with pytest.raises(ValueError, match="no question with recorded samples"):
        ReplayBackend([Question("q", "Only a question?")])


def test_question_only_dataset_rejected():
    question_only = next(name for name, d in DATASETS.items() if not d.has_samples)
    with pytest.raises(ValueError, match="no recorded samples"):
        ReplayBackend.from_datasets([question_only])


# --- command line and bundled data ----------------------------------------------------------------


@pytest.mark.integration
async def test_command_serves_and_stops(samples_file, session):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "serve.replay",
        "--samples",
        str(samples_file),
        "--port",
        "0",
        "--latency-ms",
        "0",
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        url = None
        for _ in range(20):
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=10)).decode()
            match = re.search(r"on (http://\S+)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None
        status, payload, _ = await post_chat(session, url, chat_body(APPLES, n=2))
        assert status == 200
        assert len(payload["choices"]) == 2
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0
    assert "stopped" in rest.decode()


BUNDLED = [name for name in ("svamp", "math100") if dataset_path(name).exists()]


@pytest.mark.timeout(60)
@pytest.mark.skipif(not BUNDLED, reason="bundled samples files are not in online/data yet")
async def test_bundled_datasets_replay(session):
    server = await started(ReplayBackend.from_datasets(BUNDLED, latency_ms=0))
    try:
        for name in BUNDLED:
            questions = read_samples(dataset_path(name))
            distinct = {s for q in questions for s in q.samples}
            for sample in distinct:
                assert_yields_recorded(reply_text(sample), sample)
            question = questions[0]
            status, payload, _ = await post_chat(
                session, server.url, chat_body(question.question, n=5)
            )
            assert status == 200
            recorded = {canonical_key(s.answer) for s in question.samples}
            assert {extract_answer(t) for t in contents(payload)} <= recorded
    finally:
        await server.stop()
