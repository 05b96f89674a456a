"""Worker pool against real HTTP servers on loopback: the replay backend and a flaky server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from online.samples import Question, Sample
from serve.replay import ReplayBackend
from serve.sampler import BackendError, BackendSettings, SamplerPool

pytestmark = pytest.mark.timeout(30)

QUESTION = Question(
    id="q1",
    question="How many legs do 3 spiders have?",
    gold="24",
    samples=(
        Sample("24", text="8 legs each, 3 * 8. The answer is 24."),
        Sample("24", text="The answer is 24."),
        Sample("21", text="The answer is 21."),
        Sample(None, text="I cannot tell."),
    ),
)


@pytest.fixture
async def replay_url() -> AsyncIterator[str]:
    backend = ReplayBackend([QUESTION], seed=1, latency_ms=0)
    await backend.start("127.0.0.1", 0)
    try:
        yield backend.url
    finally:
        await backend.stop()


async def test_sample_votes_over_all_recorded(replay_url: str) -> None:
    pool = SamplerPool(BackendSettings(base_url=f"{replay_url}/v1"))
    await pool.start()
    try:
        result = await pool.sample(QUESTION.question, 4, seed=5)
    finally:
        await pool.close()
    assert result.samples_used == 4
    assert result.votes == {"24": 2, "21": 1}
    assert result.answer == "24"
    assert result.text is not None and "24" in result.text
    assert result.completion_tokens > 0


async def test_sample_more_than_recorded_bills_what_arrived(replay_url: str) -> None:
    pool = SamplerPool(BackendSettings(base_url=f"{replay_url}/v1"))
    await pool.start()
    try:
        result = await pool.sample(QUESTION.question, 9)
    finally:
        await pool.close()
    assert result.samples_used == 4


async def test_unknown_question_is_not_retried(replay_url: str) -> None:
    pool = SamplerPool(BackendSettings(base_url=f"{replay_url}/v1", retries=3, backoff_s=0))
    await pool.start()
    try:
        with pytest.raises(BackendError) as caught:
            await pool.sample("What is the capital of the moon?", 1)
    finally:
        await pool.close()
    assert caught.value.status == 404


async def test_server_error_is_retried() -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.json_response({"error": {"message": "boom"}}, status=503)
        return web.json_response(
            {"choices": [{"message": {"content": "The answer is 7."}}], "usage": {}}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pool = SamplerPool(BackendSettings(base_url=f"http://127.0.0.1:{port}/v1", backoff_s=0.01))
    await pool.start()
    try:
        result = await pool.sample("anything", 1)
    finally:
        await pool.close()
        await runner.cleanup()
    assert calls["n"] == 2
    assert result.answer == "7"


async def test_missing_api_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTC_TEST_KEY", raising=False)
    pool = SamplerPool(BackendSettings(api_key_env="TTC_TEST_KEY"))
    with pytest.raises(RuntimeError, match="TTC_TEST_KEY"):
        await pool.start()


def test_backend_settings_reject_unknown_field() -> None:
    with pytest.raises(ValueError, match="base_ur"):
        BackendSettings.model_validate({"base_ur": "http://127.0.0.1:1/v1"})
