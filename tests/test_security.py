"""Admin token checks and loopback defaults, without a running service."""

from __future__ import annotations

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
