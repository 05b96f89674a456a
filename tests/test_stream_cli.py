"""The streaming client's argument checks, which reject bad values before any request."""

from __future__ import annotations

import pytest

from serve.stream import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://allocator.invalid:8000"], "loopback host, got 'allocator.invalid'"),
        (["--repeat", "0"], "--repeat must be at least 1, got 0"),
        (["--concurrency", "0"], "--concurrency must be at least 1, got 0"),
    ],
)
def test_bad_arguments_rejected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
