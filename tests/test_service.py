"""The Serve application end to end: real questions through the gateway, controller and replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from online.datasets import load_dataset
from serve.api import MAX_BODY_BYTES
from serve.stream import stream_questions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

QUESTION = load_dataset("svamp")[0]


async def request(
    method: str, url: str, body: object = None, raw: bytes | None = None
) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        async with session.request(method, url, data=data) as response:
            return response.status, await response.json(content_type=None)


async def settled_stats(url: str) -> dict:
    """Return /v1/stats once the gateways' batched reports (every 50 ms) have arrived."""
    await asyncio.sleep(0.5)
    status, stats = await request("GET", f"{url}/v1/stats")
    assert status == 200
    return stats


async def test_health(service_url: str) -> None:
    status, body = await request("GET", f"{service_url}/healthz")
    assert status == 200
    assert body == {"status": "ok"}


async def test_solve_response_fields(service_url: str) -> None:
    status, body = await request(
        "POST", f"{service_url}/v1/solve", {"question": QUESTION.question, "id": "fields-1"}
    )
    assert status == 200, body
    assert body["id"] == "fields-1"
    assert body["answer"] is not None
    assert body["action"]["name"] == f"vote@{body['action']['samples']}"
    assert body["samples_used"] == body["action"]["samples"]
    assert body["cost"] == float(body["samples_used"])
    assert sum(body["votes"].values()) <= body["samples_used"]
    assert body["lambda"] >= 0


@pytest.fixture
def sequential_url(service_url: str, app_settings) -> Iterator[str]:
    """A second application under ``/seq`` that serves the sequential policy at budget 3.

    It is deleted after the test, so that other tests see one controller.
    """
    from conftest import free_port
    from ray import serve

    from serve.app import compose_app

    replay_port = free_port()
    settings = app_settings.model_copy(
        update={
            "backend": app_settings.backend.model_copy(
                update={"base_url": f"http://127.0.0.1:{replay_port}/v1"}
            ),
            "replay": app_settings.replay.model_copy(update={"port": replay_port}),
            "controller": app_settings.controller.model_copy(
                update={"budget": 3.0, "policy": "sequential", "state_path": None}
            ),
        }
    )
    serve.run(compose_app(settings), name="ttc-sequential", route_prefix="/seq")
    yield f"{service_url}/seq"
    serve.delete("ttc-sequential")


async def test_sequential_policy_holds_budget(sequential_url: str) -> None:
    questions = load_dataset("svamp")
    summary = await stream_questions(questions[:600], sequential_url, concurrency=8, progress=False)
    assert not summary.errors
    assert sum(summary.costs) / len(summary.costs) == pytest.approx(3.0, rel=0.03)
    assert sum(summary.correct) / len(summary.correct) > 0.8
    status, body = await request(
        "POST", f"{sequential_url}/v1/solve", {"question": QUESTION.question, "id": "seq-1"}
    )
    assert status == 200, body
    assert body["rounds"] >= 1
    assert body["samples_used"] == body["action"]["samples"] == body["cost"]
    assert sum(body["votes"].values()) <= body["samples_used"]
    stats = await settled_stats(sequential_url)
    assert stats["budget"] == 3.0
    assert stats["requests"] >= 601

    chat = {"model": "auto", "messages": [{"role": "user", "content": QUESTION.question}]}
    status, body = await request("POST", f"{sequential_url}/v1/chat/completions", chat)
    assert status == 200, body
    allocation = body["allocation"]
    assert allocation["rounds"] >= 1
    assert allocation["samples_used"] == allocation["action"]["samples"] == allocation["cost"]
    assert allocation["answer"] == QUESTION.gold
    assert body["choices"][0]["message"]["content"]


async def test_stream_holds_budget_then_retarget(service_url: str) -> None:
    questions = load_dataset("svamp")
    first = await stream_questions(questions[:400], service_url, concurrency=8, progress=False)
    assert not first.errors
    assert sum(first.costs) / len(first.costs) == pytest.approx(4.0, rel=0.05)
    assert sum(first.correct) / len(first.correct) > 0.75

    status, body = await request("PUT", f"{service_url}/v1/budget", {"budget": 2.0})
    assert status == 200, body
    assert body["budget"] == 2.0
    second = await stream_questions(questions[400:800], service_url, concurrency=8, progress=False)
    assert not second.errors
    assert sum(second.costs) / len(second.costs) == pytest.approx(2.0, rel=0.08)

    stats = await settled_stats(service_url)
    assert stats["budget"] == 2.0
    assert stats["requests"] >= 800
    assert set(stats["actions"]) <= {"vote@1", "vote@3", "vote@5", "vote@9", "vote@15"}
    status, _ = await request("PUT", f"{service_url}/v1/budget", {"budget": 4.0})
    assert status == 200


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "field"),
    [
        ("/v1/solve", "POST", {"question": ""}, 422, "question"),
        ("/v1/solve", "POST", {"question": "   "}, 422, "question"),
        ("/v1/solve", "POST", {}, 422, "question"),
        ("/v1/solve", "POST", {"question": 7}, 422, "question"),
        ("/v1/solve", "POST", [1, 2], 422, "object"),
        ("/v1/budget", "PUT", {"budget": 0}, 422, "budget"),
        ("/v1/budget", "PUT", {"budget": -1}, 422, "budget"),
        ("/v1/budget", "PUT", {"budget": "abc"}, 422, "budget"),
        ("/v1/budget", "PUT", {"budget": "4"}, 422, "budget"),
        ("/v1/budget", "PUT", {"budget": 0.5}, 422, "cheapest action"),
        ("/v1/budget", "PUT", {}, 422, "budget"),
        ("/v1/feedback", "POST", {"correct_answer": "3"}, 422, "id"),
    ],
)
async def test_bad_input_names_field(
    service_url: str, path: str, method: str, body: object, status: int, field: str
) -> None:
    got, payload = await request(method, f"{service_url}{path}", body)
    assert got == status, payload
    assert field in payload["error"]["message"]
    assert payload["error"]["type"]


async def test_nan_budget_rejected(service_url: str) -> None:
    status, payload = await request("PUT", f"{service_url}/v1/budget", raw=b'{"budget": NaN}')
    assert status == 422
    assert "budget" in payload["error"]["message"]
    status, body = await request("GET", f"{service_url}/v1/budget")
    assert body["budget"] > 0


async def test_non_json_body_rejected(service_url: str) -> None:
    status, payload = await request("POST", f"{service_url}/v1/solve", raw=b"question=hello")
    assert status == 400
    assert payload["error"]["type"] == "invalid_json"


async def test_oversized_body_rejected_and_service_keeps_serving(service_url: str) -> None:
    big = json.dumps({"question": "x" * (MAX_BODY_BYTES + 10)}).encode()
    status, payload = await request("POST", f"{service_url}/v1/solve", raw=big)
    assert status == 413
    assert str(MAX_BODY_BYTES) in payload["error"]["message"]
    status, body = await request("POST", f"{service_url}/v1/solve", {"question": QUESTION.question})
    assert status == 200, body


async def test_unknown_question_is_client_error(service_url: str) -> None:
    before = await settled_stats(service_url)
    for _ in range(5):
        status, payload = await request(
            "POST", f"{service_url}/v1/solve", {"question": "What is the airspeed of a swallow?"}
        )
        assert status == 422
        assert payload["error"]["type"] == "backend_rejected"
    after = await settled_stats(service_url)
    # Nothing was billed: the price and the counters are as before.
    assert after["lambda"] == pytest.approx(before["lambda"], rel=1e-9, abs=1e-12)
    assert after["requests"] == before["requests"]
    assert after["in_flight"] == 0


async def test_feedback(service_url: str) -> None:
    status, payload = await request("POST", f"{service_url}/v1/feedback", {"id": "never-sent"})
    assert status == 404
    assert "never-sent" in payload["error"]["message"]

    _, before = await request("GET", f"{service_url}/v1/stats")
    status, solved = await request(
        "POST", f"{service_url}/v1/solve", {"question": QUESTION.question, "id": "fb-1"}
    )
    assert status == 200
    status, payload = await request(
        "POST", f"{service_url}/v1/feedback", {"id": "fb-1", "correct_answer": QUESTION.gold}
    )
    assert status == 202, payload
    assert payload["correct"] == (solved["answer"] == "51")
    _, after = await request("GET", f"{service_url}/v1/stats")
    assert after["feedback"]["with_answer"] == before["feedback"]["with_answer"] + 1

    status, payload = await request("POST", f"{service_url}/v1/feedback", {"id": "fb-1"})
    assert status == 202
    assert payload["correct"] is None


def test_locust_smoke(service_url: str, tmp_path) -> None:
    """A short headless Locust run against the service: every request succeeds."""
    locustfile = Path(__file__).resolve().parent.parent / "loadtest" / "locustfile.py"
    prefix = tmp_path / "locust"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--host",
            service_url,
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "8s",
            "--only-summary",
            "--csv",
            str(prefix),
            "--exit-code-on-error",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "locust_stats.csv").read_text().splitlines()
    solve_row = next(row for row in rows if row.startswith("POST,/v1/solve"))
    fields = solve_row.split(",")
    requests, failures = int(fields[2]), int(fields[3])
    assert requests > 10
    assert failures == 0


async def stats_after_restart(url: str, requests: int = 0) -> dict:
    """Poll /v1/stats for up to 60 s until a restarted controller counts ``requests``."""
    stats: dict = {}
    for _ in range(120):
        await asyncio.sleep(0.5)
        try:
            status, stats = await request("GET", f"{url}/v1/stats")
        except aiohttp.ClientError:
            continue
        if status == 200 and stats["requests"] >= requests:
            break
    assert stats, f"no reply from {url}/v1/stats within 60 s"
    return stats


def kill_controller() -> None:
    import ray

    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "DualController" in actor["name"]
    ]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


async def test_controller_restart_resumes_state(service_url: str, state_path: Path) -> None:
    questions = load_dataset("svamp")[800:900]
    summary = await stream_questions(questions, service_url, concurrency=4, progress=False)
    assert not summary.errors
    await asyncio.sleep(1.0)  # the fixture snapshots with every report, every 50 ms
    _, before = await request("GET", f"{service_url}/v1/stats")
    assert state_path.exists()

    kill_controller()

    after = await stats_after_restart(service_url)
    assert after["lambda"] == before["lambda"]
    assert after["requests"] == before["requests"]
    assert after["mean_cost"] == before["mean_cost"]
    assert after["budget"] == before["budget"]
    status, body = await request("POST", f"{service_url}/v1/solve", {"question": QUESTION.question})
    assert status == 200, body


async def test_controller_killed_mid_stream_loses_nothing(service_url: str) -> None:
    before = await settled_stats(service_url)
    questions = load_dataset("svamp")[:600]
    stream = asyncio.create_task(
        stream_questions(questions, service_url, concurrency=8, progress=False)
    )
    await asyncio.sleep(2.0)
    assert not stream.done()
    kill_controller()
    summary = await stream
    assert not summary.errors
    assert len(summary.costs) == 600

    # The gateway keeps its unreported costs until a restarted controller takes them.
    after = await stats_after_restart(service_url, requests=before["requests"] + 600)
    assert after["requests"] == before["requests"] + 600
    assert after["total_cost"] == pytest.approx(before["total_cost"] + sum(summary.costs))
    assert sum(summary.costs) / 600 == pytest.approx(after["budget"], rel=0.05)


async def test_user_config_retargets_without_restart(service_url: str, app_settings) -> None:
    from ray import serve

    from serve.app import compose_app

    _, before = await request("GET", f"{service_url}/v1/stats")
    serve.run(
        compose_app(app_settings, controller_user_config={"budget": 3.0, "step_size": 0.05}),
        name="ttc",
        route_prefix="/",
    )
    status, budget = await request("GET", f"{service_url}/v1/budget")
    assert status == 200
    assert budget["budget"] == 3.0
    _, after = await request("GET", f"{service_url}/v1/stats")
    # Same controller replica: the totals carried on.
    assert after["requests"] >= before["requests"]
    assert after["requests_since_budget"] == 0

    # An unchanged user_config does not undo a budget set through the API.
    status, _ = await request("PUT", f"{service_url}/v1/budget", {"budget": 4.0})
    assert status == 200
    serve.run(
        compose_app(app_settings, controller_user_config={"budget": 3.0, "step_size": 0.05}),
        name="ttc",
        route_prefix="/",
    )
    _, budget = await request("GET", f"{service_url}/v1/budget")
    assert budget["budget"] == 4.0
