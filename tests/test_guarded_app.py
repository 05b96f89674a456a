"""A small application with tight bounds and an admin token, started once for both checks.

Overload: beyond the gateway's and the worker pool's bounds, requests get 503 at once. Security:
PUT /v1/budget needs the admin token.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from online.datasets import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

QUESTIONS = load_dataset("svamp")[:24]


async def solve(session: aiohttp.ClientSession, url: str, question: str) -> tuple[int, dict, str]:
    """POST one question; return the status, the Retry-After header and the body text."""
    async with session.post(f"{url}/v1/solve", json={"question": question}) as response:
        return response.status, dict(response.headers), await response.text()


async def burst(url: str, count: int) -> tuple[list[tuple[int, dict, str]], float]:
    """Send ``count`` questions at once and return the replies and the seconds they took."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()
        replies = await asyncio.gather(
            *(solve(session, url, q.question) for q in QUESTIONS[:count])
        )
        return replies, time.monotonic() - start


async def test_pool_overload_gets_json_503(tight_service_url: str) -> None:
    # Three requests 50 ms apart, so that Ray Serve's router does not count them together
    # against its queue bound. The first takes the pool's one call slot for 400 ms and the
    # second waits for it, so the pool itself rejects the third.
    async def staggered(session: aiohttp.ClientSession, i: int) -> tuple[int, dict, str]:
        await asyncio.sleep(0.05 * i)
        return await solve(session, tight_service_url, QUESTIONS[i].question)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        # One request first, so that no first-call setup delays the wave below.
        status, _, text = await solve(session, tight_service_url, QUESTIONS[0].question)
        assert status == 200, text
        replies = await asyncio.gather(*(staggered(session, i) for i in range(3)))
    statuses = [status for status, _, _ in replies]
    print(json.dumps({"statuses": statuses}))
    assert statuses == [200, 200, 503]
    _, headers, text = replies[2]
    assert "json" in headers["Content-Type"], text
    assert json.loads(text)["error"]["type"] == "overloaded"
    assert int(headers["Retry-After"]) >= 1


async def test_overload_answered_with_503(tight_service_url: str) -> None:
    replies, elapsed_s = await burst(tight_service_url, len(QUESTIONS))
    statuses = [status for status, _, _ in replies]
    rejected = [(headers, text) for status, headers, text in replies if status in (429, 503)]
    # The worker pool's bound replies in JSON, and Serve's queue bound in plain text.
    pool_rejections = [json.loads(t) for h, t in rejected if "json" in h["Content-Type"]]
    summary = {
        "statuses": sorted(statuses),
        "json_rejections": len(pool_rejections),
        "elapsed_s": round(elapsed_s, 2),
    }
    print(json.dumps(summary))
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(200) >= 1
    assert len(rejected) >= len(QUESTIONS) // 2, statuses
    for headers, _ in rejected:
        assert int(headers["Retry-After"]) >= 1
    assert all(body["error"]["type"] == "overloaded" for body in pool_rejections)
    # 2 backend calls of 400 ms at a time at most: the rejected requests did not wait for them.
    assert elapsed_s < 10


async def test_stream_waits_for_full_pool(tight_service_url: str) -> None:
    # Two requests fill the pool's one call slot and one waiting place. The stream's four
    # records, sent after them, are turned away at first, wait, and try again.
    body = "".join(
        json.dumps({"id": f"wait-{i}", "question": q.question}) + "\n"
        for i, q in enumerate(QUESTIONS[3:7])
    )
    headers = {"Content-Type": "application/x-ndjson"}

    async def blocker(session: aiohttp.ClientSession, i: int) -> int:
        await asyncio.sleep(0.05 * i)
        status, _, _ = await solve(session, tight_service_url, QUESTIONS[i].question)
        return status

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        status, _, text = await solve(session, tight_service_url, QUESTIONS[0].question)
        assert status == 200, text
        blockers = [asyncio.create_task(blocker(session, i)) for i in (1, 2)]
        await asyncio.sleep(0.2)
        async with session.post(
            f"{tight_service_url}/v1/stream", data=body, headers=headers
        ) as response:
            assert response.status == 200
            results = [json.loads(line) async for line in response.content if line.strip()]
        assert await asyncio.gather(*blockers) == [200, 200]
    assert sorted(r["id"] for r in results) == [f"wait-{i}" for i in range(4)]
    assert all("error" not in r for r in results), results


async def test_service_recovers_after_overload(tight_service_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, _, text = await solve(session, tight_service_url, QUESTIONS[0].question)
    assert status == 200, text


async def test_budget_change_needs_admin_token(tight_service_url: str, admin_token: str) -> None:
    url = f"{tight_service_url}/v1/budget"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with session.put(url, json={"budget": 2.0}, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"
                body = await response.json()
            assert body["error"]["type"] == "unauthorized"
            assert "Authorization" in body["error"]["message"]

        async with session.get(url) as response:
            assert response.status == 200
            assert (await response.json())["budget"] == 4.0

        headers = {"Authorization": f"Bearer {admin_token}"}
        async with session.put(url, json={"budget": 2.0}, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["budget"] == 2.0
        async with session.put(url, json={"budget": 4.0}, headers=headers) as response:
            assert response.status == 200
