"""Admin token on settings changes, and where secrets and prompts may appear."""

from __future__ import annotations

import aiohttp
import pytest
from starlette.requests import Request

from serve.api import ApiError, check_admin_token
from serve.settings import AppSettings, ReplaySettings

TOKEN = "s3cret-token"


def request_with(headers: dict[str, str]) -> Request:
    raw = [(key.lower().encode(), value.encode()) for key, value in headers.items()]
    return Request({"type": "http", "method": "PUT", "path": "/v1/budget", "headers": raw})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_admin_token_rejects(headers: dict[str, str]) -> None:
    with pytest.raises(ApiError) as caught:
        check_admin_token(request_with(headers), TOKEN)
    assert caught.value.status == 401
    assert "Authorization" in caught.value.message
    assert TOKEN not in caught.value.message


def test_admin_token_accepts_bearer() -> None:
    check_admin_token(request_with({"Authorization": f"Bearer {TOKEN}"}), TOKEN)
    check_admin_token(request_with({"authorization": f"bearer {TOKEN}"}), TOKEN)


def test_no_admin_token_configured_allows_all() -> None:
    check_admin_token(request_with({}), None)


def test_service_and_replay_bind_loopback_by_default() -> None:
    assert ReplaySettings.model_validate({}).host == "127.0.0.1"
    assert AppSettings.model_validate({}).backend.base_url.startswith("http://127.0.0.1:")


@pytest.mark.integration
@pytest.mark.timeout(300)
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
