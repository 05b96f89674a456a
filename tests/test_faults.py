"""Injected backend faults: the replay's bill, the worker pool's retries and the service's cost."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from online.samples import Question, Sample
from serve.faults import BILLED_SAMPLES_HEADER, FAULT_MODES, FaultInjector, FaultSettings
from serve.replay import ReplayBackend
from serve.sampler import BackendError, BackendSettings, PoolOverloaded, SamplerPool

pytestmark = pytest.mark.timeout(120)

QUESTION = Question(
    id="q1",
    question="How many legs do 3 spiders have?",
    gold="24",
    samples=tuple(Sample("24", text=f"Try {i}: 3 * 8. The answer is 24.") for i in range(12)),
)


async def start_server(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


async def sample_all(pool: SamplerPool, count: int, n: int) -> tuple[int, int, list[str]]:
    """Draw ``count`` requests of ``n``; return the billed samples, answered requests, errors."""
    billed = 0
    answered = 0
    errors = []
    for seed in range(count):
        try:
            result = await pool.sample(QUESTION.question, n, seed=seed)
        except BackendError as exc:
            billed += exc.billed_samples
            errors.append(str(exc))
        else:
            billed += result.billed_samples
            answered += 1
    return billed, answered, errors


# --- fault settings --------------------------------------------------------------------------


def test_fault_rates_over_one_rejected() -> None:
    with pytest.raises(ValueError, match=r"at most 1, got 1\.2"):
        FaultSettings(server_error_rate=0.6, timeout_rate=0.6)


def test_fault_draws_follow_rates() -> None:
    injector = FaultInjector(FaultSettings.spread(0.5, seed=3))
    draws = [injector.draw() for _ in range(10_000)]
    for mode in FAULT_MODES:
        assert draws.count(mode) / len(draws) == pytest.approx(0.1, abs=0.015), mode
    assert draws.count(None) / len(draws) == pytest.approx(0.5, abs=0.02)


def test_fault_draws_repeat_with_seed() -> None:
    first = FaultInjector(FaultSettings.spread(0.3, seed=7))
    second = FaultInjector(FaultSettings.spread(0.3, seed=7))
    assert [first.draw() for _ in range(200)] == [second.draw() for _ in range(200)]


def test_no_faults_by_default() -> None:
    injector = FaultInjector(FaultSettings.model_validate({}))
    assert not injector.enabled
    assert all(injector.draw() is None for _ in range(100))


def test_replay_cli_fault_flags() -> None:
    from serve.replay import _fault_settings, _parse_args

    args = _parse_args(["--dataset", "svamp", "--fault-rate", "0.1", "--timeout-rate", "0.05"])
    faults = _fault_settings(args)
    assert faults.server_error_rate == pytest.approx(0.02)
    assert faults.timeout_rate == pytest.approx(0.05)
    assert faults.total_rate == pytest.approx(0.13)


def test_replay_cli_rejects_rates_over_one() -> None:
    from serve.replay import main

    assert main(["--dataset", "svamp", "--fault-rate", "0.8", "--short-rate", "0.9"]) == 2


# --- replay backend with faults and the worker pool ------------------------------------------


@pytest.fixture
async def faulty_replay(request: pytest.FixtureRequest) -> AsyncIterator[ReplayBackend]:
    backend = ReplayBackend([QUESTION], seed=1, latency_ms=0, faults=request.param)
    await backend.start("127.0.0.1", 0)
    try:
        yield backend
    finally:
        await backend.stop()


def pool_settings(url: str, **kwargs: Any) -> BackendSettings:
    defaults: dict[str, Any] = {
        "base_url": f"{url}/v1",
        "timeout_s": 0.3,
        "deadline_s": 10.0,
        "retries": 6,
        "backoff_s": 0.001,
    }
    return BackendSettings.model_validate({**defaults, **kwargs})


@pytest.mark.parametrize(
    "faulty_replay",
    [
        pytest.param(
            FaultSettings.model_validate(
                {f"{mode}_rate": 0.4, "hang_s": 0.5, "retry_after_s": 0.01, "seed": 2}
            ),
            id=mode,
        )
        for mode in FAULT_MODES
    ]
    + [pytest.param(FaultSettings.spread(0.4, hang_s=0.5, retry_after_s=0.01), id="all")],
    indirect=True,
)
async def test_pool_counts_what_replay_billed(faulty_replay: ReplayBackend) -> None:
    pool = SamplerPool(pool_settings(faulty_replay.url))
    await pool.start()
    try:
        billed, answered, errors = await sample_all(pool, 30, 5)
    finally:
        await pool.close()
    stats = faulty_replay.stats()
    assert sum(stats["faults"].values()) > 0
    assert billed == stats["choices"]
    assert answered == 30, errors


@pytest.mark.parametrize(
    "faulty_replay", [FaultSettings(short_rate=1.0, seed=4)], indirect=True, ids=["short"]
)
async def test_short_reply_voted_as_it_is(faulty_replay: ReplayBackend) -> None:
    pool = SamplerPool(pool_settings(faulty_replay.url, retries=10))
    await pool.start()
    try:
        result = await pool.sample(QUESTION.question, 9, seed=1)
    finally:
        await pool.close()
    assert 1 <= result.samples_used < 9
    assert result.billed_samples == faulty_replay.stats()["choices"]
    assert sum(result.votes.values()) == result.samples_used


@pytest.mark.parametrize(
    "faulty_replay", [FaultSettings(malformed_rate=1.0)], indirect=True, ids=["malformed"]
)
async def test_malformed_replies_billed_in_error(faulty_replay: ReplayBackend) -> None:
    pool = SamplerPool(pool_settings(faulty_replay.url, retries=2))
    await pool.start()
    try:
        with pytest.raises(BackendError, match="not valid JSON") as caught:
            await pool.sample(QUESTION.question, 3)
    finally:
        await pool.close()
    assert caught.value.billed_samples == 9
    assert faulty_replay.stats()["choices"] == 9
    assert faulty_replay.stats()["completions"] == 3


@pytest.mark.parametrize(
    "faulty_replay", [FaultSettings(timeout_rate=1.0, hang_s=2.0)], indirect=True, ids=["hang"]
)
async def test_hanging_backend_stops_at_deadline(faulty_replay: ReplayBackend) -> None:
    pool = SamplerPool(pool_settings(faulty_replay.url, timeout_s=0.2, deadline_s=0.7))
    await pool.start()
    start = time.monotonic()
    try:
        with pytest.raises(BackendError, match="failed") as caught:
            await pool.sample(QUESTION.question, 3)
    finally:
        await pool.close()
    assert time.monotonic() - start < 1.5
    assert caught.value.billed_samples == 0


async def test_retry_after_is_honoured() -> None:
    calls: list[float] = []

    async def limited(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"}
            )
        body = {"choices": [{"message": {"content": "The answer is 7."}}], "usage": {}}
        return web.json_response(body)

    runner, url = await start_server(limited)
    pool = SamplerPool(BackendSettings(base_url=url, backoff_s=0.001))
    await pool.start()
    try:
        result = await pool.sample("anything", 1)
    finally:
        await pool.close()
        await runner.cleanup()
    assert result.answer == "7"
    assert result.attempts == 2
    assert calls[1] - calls[0] >= 0.95


async def test_retry_after_beyond_deadline_fails_at_once() -> None:
    async def limited(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "slow down"}}, status=429, headers={"retry-after-ms": "5000"}
        )

    runner, url = await start_server(limited)
    pool = SamplerPool(BackendSettings(base_url=url, deadline_s=1.0))
    await pool.start()
    start = time.monotonic()
    try:
        with pytest.raises(BackendError) as caught:
            await pool.sample("anything", 1)
    finally:
        await pool.close()
        await runner.cleanup()
    assert time.monotonic() - start < 0.5
    assert caught.value.status == 429
    assert caught.value.retry_after_s == pytest.approx(5.0)


async def test_unreadable_reply_without_header_billed_as_n() -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(text='{"choices": [', content_type="application/json")

    runner, url = await start_server(broken)
    pool = SamplerPool(BackendSettings(base_url=url, retries=1, backoff_s=0.001))
    await pool.start()
    try:
        with pytest.raises(BackendError) as caught:
            await pool.sample("anything", 4)
    finally:
        await pool.close()
        await runner.cleanup()
    assert caught.value.billed_samples == 8


async def test_billed_header_overrides_choices() -> None:
    async def billing(request: web.Request) -> web.Response:
        body = {"choices": [{"message": {"content": "The answer is 7."}}], "usage": {}}
        return web.json_response(body, headers={BILLED_SAMPLES_HEADER: "3"})

    runner, url = await start_server(billing)
    pool = SamplerPool(BackendSettings(base_url=url))
    await pool.start()
    try:
        result = await pool.sample("anything", 3)
    finally:
        await pool.close()
        await runner.cleanup()
    assert result.samples_used == 1
    assert result.billed_samples == 3


@pytest.fixture
async def gated_pool() -> AsyncIterator[tuple[SamplerPool, asyncio.Event]]:
    """A pool with 1 call slot and 1 waiting place, whose backend replies once released."""
    release = asyncio.Event()

    async def gated(request: web.Request) -> web.Response:
        await release.wait()
        body = {"choices": [{"message": {"content": "The answer is 7."}}], "usage": {}}
        return web.json_response(body)

    runner, url = await start_server(gated)
    pool = SamplerPool(BackendSettings(base_url=url, max_concurrency=1, max_queued=1))
    await pool.start()
    try:
        yield pool, release
    finally:
        release.set()
        await pool.close()
        await runner.cleanup()


async def test_full_pool_queue_rejects_at_once(
    gated_pool: tuple[SamplerPool, asyncio.Event],
) -> None:
    pool, release = gated_pool
    first = asyncio.create_task(pool.sample("first", 1))
    second = asyncio.create_task(pool.sample("second", 1))
    await asyncio.sleep(0.1)
    with pytest.raises(PoolOverloaded, match="waiting"):
        await pool.sample("third", 1)
    release.set()
    assert (await first).answer == "7"
    assert (await second).answer == "7"


async def test_idle_pool_burst_admits_slots_and_queue(
    gated_pool: tuple[SamplerPool, asyncio.Event],
) -> None:
    # Five requests in one event-loop step, none holding a slot yet: one slot and one waiting
    # place admit two, and the other three are rejected at once.
    pool, release = gated_pool
    burst = [asyncio.create_task(pool.sample(f"q{i}", 1)) for i in range(5)]
    await asyncio.sleep(0.1)
    release.set()
    outcomes = await asyncio.gather(*burst, return_exceptions=True)
    rejected = [o for o in outcomes if isinstance(o, PoolOverloaded)]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(rejected) == 3
    assert [o.answer for o in answered] == ["7", "7"]


async def test_retries_log_no_prompt_or_key(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_TEST_KEY", "sk-test-secret-value")

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    runner, url = await start_server(failing)
    settings = BackendSettings(base_url=url, api_key_env="TTC_TEST_KEY", backoff_s=0.001)
    pool = SamplerPool(settings)
    await pool.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="serve.sampler"), pytest.raises(BackendError):
            await pool.sample("a private question text", 1)
    finally:
        await pool.close()
        await runner.cleanup()
    assert caplog.records
    assert "private question" not in caplog.text
    assert "sk-test-secret-value" not in caplog.text


# --- the service under faults ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_thousand_questions_under_faults(service_url: str) -> None:
    """10% of backend calls fail, 2% in each mode: nothing is lost and the bill matches."""
    from ray import serve

    from serve.app import compose_app
    from serve.faults_check import check_faults, fault_app_settings, mixed_questions

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        replay_port = int(sock.getsockname()[1])
    faults = FaultSettings.spread(0.1, retry_after_s=0.2, seed=11)
    settings = fault_app_settings(faults, replay_port, latency_ms=1.0)
    serve.run(compose_app(settings), name="ttc-faults", route_prefix="/faults")
    try:
        check = await check_faults(
            f"{service_url}/faults",
            f"http://127.0.0.1:{replay_port}",
            mixed_questions(1000),
            mode="all",
            rate=0.1,
        )
    finally:
        serve.delete("ttc-faults")
    print(json.dumps(check.__dict__))
    assert check.faults_injected >= 50
    assert check.lost == 0
    assert check.answered + check.json_errors == 1000
    assert check.billed_samples == check.response_cost
    assert check.billed_samples == check.controller_cost
    assert abs(check.budget_error) <= 0.02
