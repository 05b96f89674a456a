"""Start the allocator (Ray Serve and the replay backend) on free loopback ports for benchmarks.

    python benchmarks/_service.py --latency-ms 10 --hold-s 600

starts the default application, prints its URL and keeps it up for ``--hold-s`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import _report


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_settings(replay_port: int, latency_ms: float, budget: float = 4.0, **extra: Any) -> Any:
    """Settings of ``configs/config.yaml`` with the replay backend on ``replay_port``;
    ``extra`` sets other top-level fields of `AppSettings`, such as ``feedback_memory``."""
    from serve.settings import AppSettings

    return AppSettings.model_validate(
        {
            "backend": {"base_url": f"http://127.0.0.1:{replay_port}/v1"},
            "replay": {"port": replay_port, "latency_ms": latency_ms},
            "controller": {"budget": budget},
            **extra,
        }
    )


@contextlib.contextmanager
def ray_serve(num_cpus: int = 2) -> Iterator[int]:
    """Start a local Ray instance and Serve's HTTP proxy on a free port; yield the port."""
    import ray
    from ray import serve

    http_port = free_port()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield http_port
    finally:
        serve.shutdown()
        ray.shutdown()


def run_allocator(latency_ms: float, budget: float = 4.0, name: str = "ttc", **extra: Any) -> None:
    """Deploy the allocator application on the running Serve instance at route ``/``."""
    from ray import serve

    from serve.app import compose_app

    settings = app_settings(free_port(), latency_ms, budget, **extra)
    serve.run(compose_app(settings), name=name, route_prefix="/")


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Wait until ``GET {url}/healthz`` returns 200, or raise `TimeoutError`."""
    from urllib.error import URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urlopen(f"{url}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not return 200 within {timeout_s:g} s")


def service_processes() -> dict[int, str]:
    """Return the pid and name of the Ray workers, raylet and GCS server this process started.

    Ray sets each worker's process title, e.g. ``ray::ServeReplica:ttc:Gateway``, so the title
    names the deployment. Only descendants of this process are listed, so Ray instances that
    other users run on the same machine are left out, and so are Ray's Python helpers (log
    monitor, agents) and any other child process.
    """
    import psutil

    out = {}
    for child in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            name = os.path.basename(argv[0]) if argv else child.name()
            if name.startswith("ray::") or name in ("raylet", "gcs_server"):
                out[child.pid] = name
    return out


def machine_info() -> dict[str, Any]:
    """Describe the machine, with the Ray version that ran the service."""
    import ray

    return _report.machine_info(ray=ray.__version__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=10.0, help="replay delay per call")
    parser.add_argument("--budget", type=float, default=4.0, help="starting budget")
    parser.add_argument("--hold-s", type=float, default=600.0, help="seconds to keep it up")
    args = parser.parse_args()
    # Ray's shutdown runs in the `finally` of `ray_serve` only if SIGTERM raises here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with ray_serve() as port:
        run_allocator(args.latency_ms, args.budget)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        print(url, flush=True)
        time.sleep(args.hold_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
