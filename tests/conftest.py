"""Shared fixtures: a real Ray Serve application with the replay backend, on loopback ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def service_url() -> Iterator[str]:
    """Start the application as ``configs/config.yaml`` does, on free loopback ports."""
    import ray
    from ray import serve

    from serve.app import build_app

    http_port, replay_port = free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        app = build_app(
            {
                "backend": {"base_url": f"http://127.0.0.1:{replay_port}/v1"},
                "replay": {"port": replay_port, "latency_ms": 2},
                "controller": {"budget": 4.0},
            }
        )
        serve.run(app, name="ttc", route_prefix="/")
        yield f"http://127.0.0.1:{http_port}"
    finally:
        serve.shutdown()
        ray.shutdown()
