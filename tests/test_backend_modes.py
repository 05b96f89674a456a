"""Worker pool against servers that honour ``n`` and servers that ignore it, on loopback.

Covers the split into ``n = 1`` calls, billing and voting over them, partial failures, the
concurrency bound, token prices and the API key staying out of the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from online.answers import extract_answer
from online.samples import Question, Sample
from serve.faults import BILLED_SAMPLES_HEADER
from serve.replay import CHARS_PER_TOKEN, ReplayBackend
from serve.sampler import (
    BackendError,
    BackendSettings,
    PoolOverloaded,
    SamplerPool,
    call_seed,
)
from serve.settings import AppSettings

pytestmark = pytest.mark.timeout(30)

# 20 recorded samples with distinct texts: 12 yield 7, 5 yield 8, 3 yield no answer (no digit).
ANSWERS = ["7"] * 12 + ["8"] * 5 + [None] * 3
QUESTION = Question(
    id="toy-marbles",
    question="Ann has 3 red and 4 blue marbles. How many marbles does she have?",
    gold="7",
    samples=tuple(
        Sample(
            answer,
            tokens=20 + i,
            text=f"Attempt {i}: the answer is {answer}."
            if answer
            else f"Unsure, variant {'xyz'[i % 3]}.",
        )
        for i, answer in enumerate(ANSWERS)
    ),
)
PROMPT_TOKENS = math.ceil(len(QUESTION.question) / CHARS_PER_TOKEN)
SECRET = "sk-test-9f8e7d6c5b4a"

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def start_server(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


def reply(text: str = "The answer is 7.", prompt_tokens: int = 10) -> web.Response:
    body = {
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5},
    }
    return web.json_response(body)


@pytest.fixture
async def replay(request: pytest.FixtureRequest) -> AsyncIterator[ReplayBackend]:
    """A replay server on a free port; the parameter is its ``honours_n``."""
    backend = ReplayBackend([QUESTION], seed=3, latency_ms=0, honours_n=request.param)
    await backend.start("127.0.0.1", 0)
    try:
        yield backend
    finally:
        await backend.stop()


async def draw(settings: BackendSettings, n: int, seed: int | None = 11) -> Any:
    pool = SamplerPool(settings)
    await pool.start()
    try:
        return await pool.sample(QUESTION.question, n, seed=seed)
    finally:
        await pool.close()


# --- both modes against the replay server ------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 15])
@pytest.mark.parametrize("pool_honours_n", [True, False], ids=["pool-n", "pool-split"])
@pytest.mark.parametrize("replay", [True, False], indirect=True, ids=["replay-n", "replay-1"])
async def test_modes_bill_and_vote(replay: ReplayBackend, pool_honours_n: bool, k: int) -> None:
    settings = BackendSettings(base_url=f"{replay.url}/v1", honours_n=pool_honours_n)
    result = await draw(settings, k)
    stats = replay.stats()

    split = not pool_honours_n and k > 1
    expected_samples = 1 if (pool_honours_n and not replay.honours_n) else k
    assert result.samples_used == expected_samples
    assert result.calls == (k if split else 1)
    assert stats["requests"] == result.calls
    assert result.billed_samples == expected_samples
    assert stats["choices"] == expected_samples
    assert result.retries == 0

    assert result.keys == [extract_answer(text) for text in result.texts]
    counted = Counter(key for key in result.keys if key is not None)
    assert result.votes == dict(counted)
    if counted:
        assert result.votes[result.answer] == max(counted.values())
    assert result.prompt_tokens == stats["prompt_tokens"] == PROMPT_TOKENS * result.calls
    assert result.completion_tokens == stats["completion_tokens"]


@pytest.mark.parametrize("replay", [True], indirect=True)
async def test_split_calls_draw_with_replacement(replay: ReplayBackend) -> None:
    """15 one-sample calls draw independently; one call with n=15 draws without replacement."""
    split = await draw(BackendSettings(base_url=f"{replay.url}/v1", honours_n=False), 15)
    again = await draw(BackendSettings(base_url=f"{replay.url}/v1", honours_n=False), 15)
    single = await draw(BackendSettings(base_url=f"{replay.url}/v1"), 15)
    assert len(set(single.texts)) == 15
    assert 1 < len(set(split.texts)) <= 15
    assert again.texts == split.texts


@pytest.mark.parametrize("replay", [False], indirect=True)
async def test_split_over_recorded_samples(replay: ReplayBackend) -> None:
    """A server that ignores n still gives as many samples as calls, beyond the recorded 20."""
    settings = BackendSettings(base_url=f"{replay.url}/v1", honours_n=False, max_concurrency=8)
    result = await draw(settings, 30)
    assert result.samples_used == 30
    assert result.billed_samples == replay.stats()["choices"] == 30
    assert sum(result.votes.values()) == sum(key is not None for key in result.keys)


# --- calls as the server receives them------------------------------------------------------------


async def test_split_calls_send_n_one_and_derived_seeds() -> None:
    received: list[dict[str, Any]] = []

    async def spy(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return reply()

    runner, url = await start_server(spy)
    try:
        await draw(BackendSettings(base_url=url, honours_n=False), 5, seed=42)
        seeded = list(received)
        received.clear()
        await draw(BackendSettings(base_url=url, honours_n=False), 3, seed=None)
    finally:
        await runner.cleanup()
    assert [body["n"] for body in seeded] == [1] * 5
    assert sorted(body["seed"] for body in seeded) == sorted(call_seed(42, i) for i in range(5))
    assert len({body["seed"] for body in seeded}) == 5
    assert all("seed" not in body for body in received)
    assert len(received) == 3


async def test_one_sample_is_one_call_either_way() -> None:
    received: list[dict[str, Any]] = []

    async def spy(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return reply()

    runner, url = await start_server(spy)
    try:
        await draw(BackendSettings(base_url=url, honours_n=False), 1, seed=9)
        await draw(BackendSettings(base_url=url, honours_n=True), 1, seed=9)
    finally:
        await runner.cleanup()
    assert [(body["n"], body["seed"]) for body in received] == [(1, 9), (1, 9)]


# --- partial and total failures ----------------------------------------------------------------


async def test_failed_calls_billed_and_others_voted() -> None:
    """Calls 1 and 3 always get an unreadable body billed 1; the other 3 succeed."""
    failing = {call_seed(5, 1), call_seed(5, 3)}

    async def flaky(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if body["seed"] in failing:
            return web.Response(
                text='{"choices": [', headers={BILLED_SAMPLES_HEADER: "1"}, status=200
            )
        return reply(f"The answer is {body['seed'] % 2}.")

    runner, url = await start_server(flaky)
    settings = BackendSettings(base_url=url, honours_n=False, retries=1, backoff_s=0.001)
    try:
        result = await draw(settings, 5, seed=5)
    finally:
        await runner.cleanup()
    assert result.samples_used == 3
    assert result.calls == 5
    assert result.billed_samples == 3 + 2 * 2
    assert result.retries == 2
    assert result.attempts == 3 + 2 * 2
    assert sum(result.votes.values()) == 3
    assert result.prompt_tokens == 3 * 10


async def test_all_calls_failing_raise_with_bill() -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(text='{"choices": [', headers={BILLED_SAMPLES_HEADER: "1"})

    runner, url = await start_server(broken)
    settings = BackendSettings(base_url=url, honours_n=False, retries=2, backoff_s=0.001)
    try:
        with pytest.raises(BackendError, match="all 4 backend calls failed") as caught:
            await draw(settings, 4)
    finally:
        await runner.cleanup()
    assert not isinstance(caught.value, PoolOverloaded)
    assert caught.value.billed_samples == 4 * 3
    assert caught.value.retries == 4 * 2


async def test_all_calls_rejected_keep_status() -> None:
    calls = {"n": 0}

    async def rejecting(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.json_response({"error": {"message": "no such question"}}, status=404)

    runner, url = await start_server(rejecting)
    settings = BackendSettings(base_url=url, honours_n=False, retries=3, backoff_s=0.001)
    try:
        with pytest.raises(BackendError, match="no such question") as caught:
            await draw(settings, 3)
    finally:
        await runner.cleanup()
    assert caught.value.status == 404
    assert caught.value.billed_samples == 0
    assert calls["n"] == 3


# --- the concurrency bound ---------------------------------------------------------------------


async def test_split_calls_stay_within_max_concurrency() -> None:
    in_flight = {"now": 0, "peak": 0}

    async def slow(request: web.Request) -> web.Response:
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        await asyncio.sleep(0.02)
        in_flight["now"] -= 1
        return reply()

    runner, url = await start_server(slow)
    pool = SamplerPool(BackendSettings(base_url=url, honours_n=False, max_concurrency=2))
    await pool.start()
    try:
        results = await asyncio.gather(*(pool.sample("q", 9, seed=i) for i in range(3)))
    finally:
        await pool.close()
        await runner.cleanup()
    assert [r.samples_used for r in results] == [9, 9, 9]
    assert in_flight["peak"] == 2


@contextlib.asynccontextmanager
async def gated_split_pool(
    max_queued: int,
) -> AsyncIterator[tuple[SamplerPool, asyncio.Event, asyncio.Event]]:
    """Yield a one-slot pool of ``n: 1`` calls, the event set by the backend's first call, and
    the event that releases its replies."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def gated(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return reply()

    runner, url = await start_server(gated)
    settings = BackendSettings(
        base_url=url, honours_n=False, max_concurrency=1, max_queued=max_queued
    )
    pool = SamplerPool(settings)
    await pool.start()
    try:
        yield pool, arrived, release
    finally:
        release.set()
        await pool.close()
        await runner.cleanup()


async def test_split_request_admitted_as_a_whole() -> None:
    """With one slot and no queue, a request's 5 calls all run; a second request is rejected."""
    async with gated_split_pool(max_queued=0) as (pool, arrived, release):
        first = asyncio.create_task(pool.sample("q", 5, seed=1))
        await asyncio.wait_for(arrived.wait(), 5)
        with pytest.raises(PoolOverloaded, match="waiting"):
            await pool.sample("q", 5, seed=2)
        release.set()
        result = await first
        after = await pool.sample("q", 2, seed=3)
    assert result.samples_used == 5
    assert after.samples_used == 2
    # The pool's count of waiting requests returns to 0, so no place in the queue leaks.
    assert pool._queued == 0


async def test_cancelled_split_request_frees_queue() -> None:
    async with gated_split_pool(max_queued=1) as (pool, arrived, release):
        task = asyncio.create_task(pool.sample("q", 6, seed=1))
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(20):
            if pool._queued == 0:
                break
            await asyncio.sleep(0.01)
        queued_after_cancel = pool._queued
        release.set()
        result = await pool.sample("q", 3, seed=2)
    assert queued_after_cancel == 0
    assert result.samples_used == 3


# --- token prices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "prompt", "completion", "expected"),
    [
        ({"price_per_1k_input_tokens": 1.0, "price_per_1k_output_tokens": 4.0}, 1000, 500, 3.0),
        ({"price_per_1k_input_tokens": 0.15, "price_per_1k_output_tokens": 0.6}, 200, 0, 0.03),
        ({"price_per_1k_output_tokens": 2.0}, 5000, 250, 0.5),
        ({"price_per_1k_input_tokens": 0.5}, 3000, 9999, 1.5),
        ({"price_per_1k_input_tokens": 0, "price_per_1k_output_tokens": 0}, 100, 100, 0.0),
    ],
)
def test_money_from_tokens(
    prices: dict[str, float], prompt: int, completion: int, expected: float
) -> None:
    assert BackendSettings(**prices).money(prompt, completion) == pytest.approx(expected)


def test_money_unpriced_is_none() -> None:
    settings = BackendSettings()
    assert not settings.priced
    assert settings.money(100, 100) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("price_per_1k_input_tokens", -0.5, "greater than or equal to 0"),
        ("price_per_1k_output_tokens", -1, "greater than or equal to 0"),
        ("price_per_1k_input_tokens", float("nan"), "finite number"),
        ("price_per_1k_output_tokens", float("inf"), "finite number"),
        ("price_per_1k_input_tokens", "cheap", "valid number"),
        ("honours_n", "sometimes", "valid boolean"),
    ],
)
def test_backend_settings_reject_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AppSettings.model_validate({"backend": {field: value}})
    text = str(caught.value)
    assert f"backend.{field}" in text
    assert message in text
    assert f"input_value={value!r}" in text


def test_api_key_value_not_accepted_in_config() -> None:
    with pytest.raises(ValidationError, match=r"backend\.api_key\n.*Extra inputs"):
        AppSettings.model_validate({"backend": {"api_key": SECRET}})


@pytest.mark.parametrize("replay", [False], indirect=True)
async def test_money_counts_every_call_prompt(replay: ReplayBackend) -> None:
    prices = {"price_per_1k_input_tokens": 0.2, "price_per_1k_output_tokens": 0.8}
    settings = BackendSettings(base_url=f"{replay.url}/v1", honours_n=False, **prices)
    result = await draw(settings, 5)
    stats = replay.stats()
    assert result.prompt_tokens == 5 * PROMPT_TOKENS
    expected = (stats["prompt_tokens"] * 0.2 + stats["completion_tokens"] * 0.8) / 1000
    money = settings.money(result.prompt_tokens, result.completion_tokens)
    assert money == pytest.approx(expected)
    assert money > 0


# --- the API key -------------------------------------------------------------------------------


@pytest.mark.parametrize("honours_n", [True, False])
async def test_debug_log_has_no_key(
    honours_n: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_TEST_BACKEND_KEY", SECRET)
    authorizations: list[str] = []

    async def keyed(request: web.Request) -> web.Response:
        authorizations.append(request.headers.get("Authorization", ""))
        return reply()

    runner, url = await start_server(keyed)
    settings = BackendSettings(
        base_url=url, api_key_env="TTC_TEST_BACKEND_KEY", honours_n=honours_n
    )
    try:
        with caplog.at_level(logging.DEBUG):
            result = await draw(settings, 3)
    finally:
        await runner.cleanup()
    assert result.samples_used == (1 if honours_n else 3)
    assert authorizations and set(authorizations) == {f"Bearer {SECRET}"}
    assert any(record.levelno == logging.DEBUG for record in caplog.records)
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(settings.model_dump())
