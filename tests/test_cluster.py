"""Two gateway replicas share one controller: requests spread over both and all are counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from online.datasets import load_dataset
from serve.stream import stream_questions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REQUESTS = 300


@pytest.fixture(scope="module")
def two_gateways_url(service_url: str, app_settings: Any) -> Iterator[str]:
    """An application under ``/two`` with two gateway replicas and its own controller."""
    from conftest import with_own_replay
    from ray import serve

    from serve.app import compose_app

    settings = with_own_replay(app_settings, state_path=None)
    app = compose_app(settings, gateway_options={"num_replicas": 2})
    serve.run(app, name="ttc-two", route_prefix="/two")
    try:
        yield f"{service_url}/two"
    finally:
        serve.delete("ttc-two")


async def stats_when_counted(url: str, requests: int, timeout_s: float = 10.0) -> dict:
    """Poll /v1/stats until the controller counts ``requests`` (reports arrive every 50 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{url}/v1/stats") as response:
                assert response.status == 200
                stats: dict = await response.json()
            if stats["requests"] >= requests or loop.time() > deadline:
                return stats
            await asyncio.sleep(0.1)


async def test_two_gateways_share_controller(two_gateways_url: str) -> None:
    questions = load_dataset("svamp")[:REQUESTS]
    summary = await stream_questions(questions, two_gateways_url, concurrency=16, progress=False)
    assert not summary.errors, summary.error_examples
    assert len(summary.costs) == REQUESTS

    stats = await stats_when_counted(two_gateways_url, REQUESTS)
    assert stats["requests"] == REQUESTS
    assert stats["total_cost"] == pytest.approx(sum(summary.costs))
    sources = stats["sources"]
    assert len(sources) == 2, sources
    assert all(count > 0 for count in sources.values()), sources
    assert sum(sources.values()) == REQUESTS
    assert stats["active_sources"] == 2
    assert stats["mean_cost"] == pytest.approx(4.0, rel=0.08)
