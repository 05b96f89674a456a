"""The headless load-test runner: thresholds, loopback-only hosts, and a short run."""

from __future__ import annotations

import doctest
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "loadtest" / "run.py"


def load_runner() -> ModuleType:
    """Import loadtest/run.py without running it; it imports Locust only inside `main`."""
    spec = importlib.util.spec_from_file_location("loadtest_run", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_runner(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_runner_doctests() -> None:
    result = doctest.testmod(load_runner())
    assert result.attempted > 0
    assert result.failed == 0


def test_budget_error_uses_run_deltas() -> None:
    runner = load_runner()
    before = {"requests": 100, "mean_cost": 5.0, "budget": 4.0}
    after = {
        "requests": 300,
        "mean_cost": 4.5,
        "budget": 4.0,
        "requests_since_budget": 300,
        "mean_cost_since_budget": 4.5,
    }
    result = runner.budget_error(before, after)
    assert result["basis"] == "run"
    assert result["requests"] == 200
    assert result["mean_cost"] == pytest.approx(4.25)
    assert result["budget_error"] == pytest.approx(0.0625)


def test_budget_error_after_retarget_uses_since_change() -> None:
    runner = load_runner()
    before = {"requests": 100, "mean_cost": 4.0, "budget": 4.0}
    after = {
        "requests": 300,
        "mean_cost": 3.5,
        "budget": 2.0,
        "requests_since_budget": 50,
        "mean_cost_since_budget": 2.1,
    }
    result = runner.budget_error(before, after)
    assert result["basis"] == "since_last_budget_change"
    assert result["requests"] == 50
    assert result["budget_error"] == pytest.approx(0.05)


def test_failed_retarget_fails_run() -> None:
    runner = load_runner()
    args = runner.parse_args(["--host", "http://127.0.0.1:1"])
    summary = {
        "failures": 0,
        "requests": 100,
        "retargets": [{"elapsed_s": 5.0, "budget": 0.5, "error": "HTTP Error 422"}],
        "solve": {"requests": 100, "p95_ms": 50.0},
        "budget": {"budget_error": 0.001, "mean_cost": 4.004, "budget": 4.0},
    }
    failed = runner.check_thresholds(summary, args)
    assert len(failed) == 1
    assert "--retarget to 0.5 failed" in failed[0]


@pytest.mark.parametrize(
    "host",
    [
        "http://10.0.0.1:8000",
        "http://example.com",
        "http://127.0.0.1.example.com:8000",
        "http://[::2]:8000",
        "ftp://127.0.0.1:8000",
        "127.0.0.1:8000",
    ],
)
def test_non_loopback_host_rejected(host: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_runner("--host", host, "--users", "1", "--run-time", "1s", "--out", str(out))
    assert result.returncode == 2
    assert repr(host) in result.stderr
    assert "loopback" in result.stderr
    # The runner stops before Locust starts, so it wrote nothing.
    assert not out.exists()


@pytest.mark.parametrize("host", ["http://127.0.0.1:1", "http://localhost:1/", "http://[::1]:1"])
def test_loopback_host_accepted(host: str) -> None:
    runner = load_runner()
    args = runner.parse_args(["--host", host])
    assert args.host == host.rstrip("/")


@pytest.mark.parametrize(
    ("text", "seconds"), [("15", 15.0), ("15s", 15.0), ("5m", 300.0), ("1h30m", 5400.0)]
)
def test_run_time_parsed(text: str, seconds: float) -> None:
    assert load_runner().duration_s(text) == seconds


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_runner_passes_then_fails_threshold(service_url: str, tmp_path: Path) -> None:
    out = tmp_path / "pass"
    args = ["--host", service_url, "--users", "4", "--run-time", "15s", "--max-requests", "2000"]
    result = run_runner(*args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"]
    assert summary["failures"] == 0
    assert summary["solve"]["requests"] > 20
    assert summary["budget"]["basis"] == "run"
    # Every request that Locust counted reached the controller's totals.
    assert summary["budget"]["requests"] == summary["solve"]["requests"]
    assert summary["budget"]["budget_error"] <= 0.01
    assert summary["solve"]["p50_ms"] <= summary["solve"]["p95_ms"] <= summary["solve"]["p99_ms"]
    stats_rows = (out / "locust_stats.csv").read_text().splitlines()
    assert any(row.startswith("POST,/v1/solve,") for row in stats_rows)

    # No service replies within a microsecond, so this p95 threshold fails.
    out = tmp_path / "fail"
    result = run_runner(*args, "--max-p95-ms", "0.001", "--out", str(out))
    assert result.returncode == 1
    assert "--max-p95-ms" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["passed"]
    assert summary["failures"] == 0
