"""The gateway's Prometheus metrics, read from the metrics export port of the test Ray instance."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from online.datasets import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUESTION = load_dataset("svamp")[0]

# Ray pushes metrics from the replicas to the node's exporter every few seconds (7.3 s measured
# on a 2-core machine with Ray 2.60), so the test polls for up to this long.
EXPORT_WAIT_S = 60.0


async def post(session: aiohttp.ClientSession, url: str, body: dict) -> int:
    async with session.post(url, data=json.dumps(body).encode()) as response:
        await response.read()
        return response.status


def samples_of(text: str, application: str) -> dict[str, list[Sample]]:
    """Return the exported ``ray_ttc_*`` samples of one Serve application, by sample name."""
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name.startswith("ray_ttc_")
                and sample.labels.get("application") == application
            ):
                found.setdefault(sample.name, []).append(sample)
    return found


async def test_metrics_exported(service_url: str) -> None:
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    chat = {"model": "auto", "messages": [{"role": "user", "content": QUESTION.question}]}
    async with aiohttp.ClientSession() as session:
        assert await post(session, f"{service_url}/v1/chat/completions", chat) == 200
        unknown = {"question": "What is the airspeed of a swallow?"}
        assert await post(session, f"{service_url}/v1/solve", unknown) == 422

        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXPORT_WAIT_S
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                found = samples_of(await response.text(), "ttc")
            chat_requests = [
                s for s in found.get("ray_ttc_requests_total", []) if s.labels["route"] == "chat"
            ]
            rejected = [
                s
                for s in found.get("ray_ttc_backend_errors_total", [])
                if s.labels["error_type"] == "backend_rejected"
            ]
            # The gauge follows the controller's reply to a report, up to 50 ms after a request.
            moving_cost = [s.value for s in found.get("ray_ttc_moving_cost", [])]
            counted = any(value > 0 for value in moving_cost)
            if (chat_requests and rejected and counted) or loop.time() > deadline:
                break
            await asyncio.sleep(1.0)

    assert chat_requests, sorted(found)
    assert all(s.labels["action"].startswith("vote@") for s in chat_requests)
    assert sum(s.value for s in chat_requests) >= 1
    assert sum(s.value for s in rejected) >= 1
    assert any(s.value >= 1 for s in found["ray_ttc_request_cost_count"])
    assert any(s.value >= 1 for s in found["ray_ttc_request_latency_ms_count"])
    assert all(s.value > 0 for s in found["ray_ttc_budget"])
    assert all(s.value >= 0 for s in found["ray_ttc_lambda"])
    assert any(value > 0 for value in moving_cost), moving_cost
