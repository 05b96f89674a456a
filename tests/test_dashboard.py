"""The HTML page of /v1/stats: format choice, the page without and with history, the route."""

from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser

import aiohttp
import pytest

from online.datasets import load_dataset
from online.history import ControllerHistory
from serve.api import ApiError
from serve.dashboard import PLOT_POINTS, merge_points, render_stats_page, stats_format

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
STATS = {
    "requests": 40,
    "total_cost": 150.0,
    "mean_cost": 3.75,
    "window_mean_cost": 3.8,
    "budget": 4.0,
    "lambda": 0.0123,
    "unit": "samples",
    "in_flight": 2,
    "requests_since_budget": 40,
    "mean_cost_since_budget": 3.75,
    "actions": {"vote@9": 10, "vote@1": 5, "vote@3": 25},
    "active_sources": 2,
    "sources": {"a": 20, "b": 20},
}


def synthetic_history(points: int) -> list[dict]:
    history = ControllerHistory(interval_s=1.0, max_points=3600)
    counts = {"vote@1": 0, "vote@3": 0, "vote@9": 0}
    for i in range(points):
        counts["vote@1"] += i % 3
        counts["vote@3"] += 2
        counts["vote@9"] += i % 2
        state = {"lambda": 0.01 + 0.001 * (i % 7), "window_mean_cost": 3.9, "budget": 4.0}
        history.observe(state, counts, now_s=1_800_000_000.0 + i)
    return history.points()


class _Elements(HTMLParser):
    """Collect start tags with their attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Elements:
    elements = _Elements()
    elements.feed(page)
    elements.close()
    return elements


@pytest.mark.parametrize(
    ("format_", "accept", "expected"),
    [
        (None, BROWSER_ACCEPT, "html"),
        (None, "text/html", "html"),
        (None, None, "json"),
        (None, "*/*", "json"),
        (None, "application/json", "json"),
        (None, "application/json, text/html;q=0.5", "json"),
        (None, "text/html;q=0.9, application/json;q=0.5", "html"),
        (None, "text/html;q=0", "json"),
        (None, "text/html;q=oops", "json"),
        ("json", BROWSER_ACCEPT, "json"),
        ("html", "application/json", "html"),
    ],
)
def test_stats_format_choice(format_: str | None, accept: str | None, expected: str) -> None:
    assert stats_format(format_, accept) == expected


@pytest.mark.parametrize("bad", ["xml", "", "HTML"])
def test_unknown_format_names_field(bad: str) -> None:
    with pytest.raises(ApiError) as caught:
        stats_format(bad, BROWSER_ACCEPT)
    assert caught.value.status == 422
    assert caught.value.message == f"field 'format': must be 'json' or 'html', got {bad!r}"


def test_page_without_history_says_so() -> None:
    page = render_stats_page({**STATS, "requests": 0, "actions": {}}, [])
    elements = parse(page.html)
    assert "<svg" not in page.html
    assert "No history yet" in page.html
    assert ("meta", {"http-equiv": "refresh", "content": "5"}) in elements.tags


def test_page_plots_history_as_inline_svg() -> None:
    page = render_stats_page(STATS, synthetic_history(120))
    elements = parse(page.html)
    tags = [tag for tag, _ in elements.tags]
    assert tags.count("svg") == 1
    assert "script" not in tags
    assert ("meta", {"http-equiv": "refresh", "content": "5"}) in elements.tags
    # matplotlib writes each text drawn as paths with a comment holding the string.
    for label in ("lambda", "samples per request", "budget", "share of requests", "vote@9"):
        assert f"<!-- {label} -->" in page.html, label
    assert page.render_ms > 0


def test_page_loads_nothing_external() -> None:
    page = render_stats_page(STATS, synthetic_history(30))
    for tag, attrs in parse(page.html).tags:
        assert "src" not in attrs, tag
        href = attrs.get("href") or attrs.get("xlink:href") or ""
        assert href.startswith(("#", "?")) or not href, (tag, href)
    assert not re.search(r"url\((?!#)", page.html)
    assert "@import" not in page.html


def test_page_shows_current_figures() -> None:
    page = render_stats_page(STATS, synthetic_history(3))
    text = " ".join(parse(page.html).text)
    assert "0.0123" in text
    assert "4 samples per request" in text
    assert "vote@1 5, vote@3 25, vote@9 10" in text
    assert "2027-01-15 08:00:02 UTC" in text  # the latest point, 1_800_000_002 s after 1970


def test_page_escapes_action_names() -> None:
    stats = {**STATS, "actions": {"<b>vote@3</b>": 1}}
    page = render_stats_page(stats, [])
    assert "<b>vote@3</b>" not in page.html
    assert "&lt;b&gt;vote@3&lt;/b&gt;" in page.html


def test_merge_points_keeps_action_totals() -> None:
    history = synthetic_history(3 * PLOT_POINTS + 7)
    merged = merge_points(history, PLOT_POINTS)
    assert len(merged) <= PLOT_POINTS
    assert merged[-1]["time_s"] == history[-1]["time_s"]
    for name in ("vote@1", "vote@3", "vote@9"):
        total = sum(p["actions"].get(name, 0) for p in history)
        assert sum(p["actions"].get(name, 0) for p in merged) == total, name
    assert merge_points(history[:10], PLOT_POINTS) == history[:10]


QUESTION = load_dataset("svamp")[0]


async def fetch(url: str, accept: str | None = None) -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers["Content-Type"], await response.text()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_stats_route_formats(service_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        body = json.dumps({"question": QUESTION.question}).encode()
        async with session.post(f"{service_url}/v1/solve", data=body) as response:
            assert response.status == 200
    # The controller takes a history point at most once a second, at a gateway's report.
    await asyncio.sleep(1.5)

    status, content_type, page = await fetch(f"{service_url}/v1/stats", BROWSER_ACCEPT)
    assert status == 200
    assert content_type.startswith("text/html")
    assert "<svg" in page
    assert "<!-- share of requests -->" in page

    status, content_type, page = await fetch(f"{service_url}/v1/stats?format=html")
    assert status == 200
    assert content_type.startswith("text/html")

    for url, accept in (
        (f"{service_url}/v1/stats", None),
        (f"{service_url}/v1/stats?format=json", BROWSER_ACCEPT),
    ):
        status, content_type, text = await fetch(url, accept)
        assert status == 200
        assert content_type == "application/json"
        assert json.loads(text)["requests"] >= 1

    status, _, text = await fetch(f"{service_url}/v1/stats?format=xml", BROWSER_ACCEPT)
    assert status == 422
    assert json.loads(text)["error"]["message"] == (
        "field 'format': must be 'json' or 'html', got 'xml'"
    )
