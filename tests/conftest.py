"""Shared fixtures: a real Ray Serve application with the replay backend, on loopback ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_own_replay(settings: Any, **controller: Any) -> Any:
    """Return a copy of ``settings`` whose replay backend has a free port of its own, with
    ``controller`` replacing fields of the controller settings."""
    replay_port = free_port()
    return settings.model_copy(
        update={
            "backend": settings.backend.model_copy(
                update={"base_url": f"http://127.0.0.1:{replay_port}/v1"}
            ),
            "replay": settings.replay.model_copy(update={"port": replay_port}),
            "controller": settings.controller.model_copy(update=controller),
        }
    )


@pytest.fixture(scope="session")
def state_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state") / "controller.msgpack"


@pytest.fixture(scope="session")
def app_settings(state_path: Path) -> Any:
    """Settings of the test application: the defaults of ``configs/config.yaml`` on free ports."""
    from serve.settings import AppSettings

    replay_port = free_port()
    return AppSettings.model_validate(
        {
            "backend": {"base_url": f"http://127.0.0.1:{replay_port}/v1"},
            "replay": {"port": replay_port, "latency_ms": 2},
            "controller": {
                "budget": 4.0,
                "state_path": str(state_path),
                "snapshot_interval_s": 0,
            },
        }
    )


@pytest.fixture(scope="session")
def service_url(app_settings: Any) -> Iterator[str]:
    """Start the application in a local Ray instance and return its base URL."""
    import ray
    from ray import serve

    from serve.app import compose_app

    http_port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(compose_app(app_settings), name="ttc", route_prefix="/")
        yield f"http://127.0.0.1:{http_port}"
    finally:
        serve.shutdown()
        ray.shutdown()


ADMIN_TOKEN = "test-admin-token-5f2c"


@pytest.fixture(scope="session")
def admin_token() -> str:
    """Admin token of the `tight_service_url` application."""
    return ADMIN_TOKEN


@pytest.fixture(scope="module")
def tight_service_url(service_url: str) -> Iterator[str]:
    """A second application with tight queue bounds, a slow backend and an admin token.

    It lives for one test module, so later modules see only the shared application.

    The gateway takes 4 requests at a time and queues 2 more. Its worker pool makes 1 backend
    call at a time and lets 1 more request wait, and each call takes 400 ms.
    """
    from ray import serve
    from ray.serve.config import BackpressureConfig

    from serve.app import compose_app
    from serve.settings import AppSettings

    replay_port = free_port()
    settings = AppSettings.model_validate(
        {
            "backend": {
                "base_url": f"http://127.0.0.1:{replay_port}/v1",
                "max_concurrency": 1,
                "max_queued": 1,
            },
            "replay": {"port": replay_port, "latency_ms": 400},
        }
    )
    options = {
        "max_ongoing_requests": 4,
        "max_queued_requests": 2,
        "backpressure_config": BackpressureConfig(retry_after_s=1),
        "ray_actor_options": {
            "num_cpus": 0,
            "runtime_env": {"env_vars": {"TTC_ADMIN_TOKEN": ADMIN_TOKEN}},
        },
    }
    serve.run(
        compose_app(settings, gateway_options=options), name="ttc-tight", route_prefix="/tight"
    )
    try:
        yield f"{service_url}/tight"
    finally:
        serve.delete("ttc-tight")
