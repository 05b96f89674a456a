"""The service with token prices against a replay server that ignores ``n``, under faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from conftest import free_port
from test_metrics import EXPORT_WAIT_S, samples_of

from online.datasets import load_dataset
from serve.faults import FaultSettings
from serve.settings import AppSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

QUESTIONS = load_dataset("svamp")[:12]
INPUT_PRICE = 0.5
OUTPUT_PRICE = 2.0
APPLICATION = "ttc-priced"


@pytest.fixture(scope="module")
def priced_url(service_url: str) -> Iterator[str]:
    """An application whose backend ignores n, with prices and 15% of calls failing with 500."""
    from ray import serve

    from serve.app import compose_app

    replay_port = free_port()
    settings = AppSettings.model_validate(
        {
            "backend": {
                "base_url": f"http://127.0.0.1:{replay_port}/v1",
                "honours_n": False,
                "price_per_1k_input_tokens": INPUT_PRICE,
                "price_per_1k_output_tokens": OUTPUT_PRICE,
                "backoff_s": 0.01,
                "retries": 3,
            },
            "replay": {
                "port": replay_port,
                "latency_ms": 1,
                "honours_n": False,
                "faults": FaultSettings(server_error_rate=0.15, seed=5).model_dump(),
            },
        }
    )
    serve.run(compose_app(settings), name=APPLICATION, route_prefix="/priced")
    try:
        yield f"{service_url}/priced"
    finally:
        serve.delete(APPLICATION)


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, data=json.dumps(body).encode()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def money_of(usage: dict[str, int]) -> float:
    return (usage["prompt_tokens"] * INPUT_PRICE + usage["completion_tokens"] * OUTPUT_PRICE) / 1000


async def test_money_in_replies_and_metrics(priced_url: str) -> None:
    import ray

    async with aiohttp.ClientSession() as session:
        solved = [
            await post(session, f"{priced_url}/v1/solve", {"question": q.question})
            for q in QUESTIONS
        ]
        chat_body = {
            "model": "auto",
            "messages": [{"role": "user", "content": QUESTIONS[0].question}],
        }
        chat = await post(session, f"{priced_url}/v1/chat/completions", chat_body)

        for reply in solved:
            assert reply["money"] == pytest.approx(money_of(reply["usage"]))
            assert reply["money"] > 0
            # One call per sample, each with the whole prompt; a failed call adds nothing.
            assert reply["usage"]["prompt_tokens"] % reply["samples_used"] == 0
            # A 500 bills nothing, so the cost is the samples voted.
            assert reply["cost"] == reply["samples_used"]
            assert sum(reply["votes"].values()) <= reply["samples_used"]
        assert any(reply["samples_used"] > 1 for reply in solved)
        assert chat["allocation"]["money"] == pytest.approx(money_of(chat["usage"]))

        port = ray.nodes()[0]["MetricsExportPort"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXPORT_WAIT_S
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                found = samples_of(await response.text(), APPLICATION)
            money_counts = found.get("ray_ttc_request_money_count", [])
            retries = found.get("ray_ttc_backend_retries_total", [])
            if (money_counts and retries) or loop.time() > deadline:
                break
            await asyncio.sleep(1.0)

    solve_count = [s for s in money_counts if s.labels["route"] == "solve"]
    assert sum(s.value for s in solve_count) == len(QUESTIONS)
    # The histogram's _sum is made of bucket midpoints in Ray 2.60; the counter is exact.
    money_total = [s for s in found["ray_ttc_money_total"] if s.labels["route"] == "solve"]
    assert sum(s.value for s in money_total) == pytest.approx(sum(r["money"] for r in solved))
    assert sum(s.value for s in retries) >= 1
    print(
        json.dumps(
            {
                "requests": len(solved),
                "samples": sum(r["samples_used"] for r in solved),
                "cost": sum(r["cost"] for r in solved),
                "money": sum(r["money"] for r in solved),
                "retries": sum(s.value for s in retries),
            }
        )
    )
