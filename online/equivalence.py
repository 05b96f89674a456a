"""Answer equivalence by math-verify, for keys that plain normalisation cannot decide.

`equivalent` sends each comparison to a child Python process that runs math-verify and is
killed when a comparison runs past its time limit; it returns None when the library is missing
or the comparison timed out.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["DEFAULT_TIMEOUT", "equivalent"]

logger = logging.getLogger(__name__)

#: Seconds one math-verify comparison may take before it counts as undecided.
DEFAULT_TIMEOUT = 5.0
# Seconds the child process may take to start and import math-verify (about 1 s when measured).
_START_TIMEOUT = 60.0
_CACHE_SIZE = 10_000


def _serve_equivalence() -> None:
    """Read ``[answer, gold]`` JSON lines on stdin and write a verdict line, 1 or 0, for each.

    This runs in the child process. Its first line out is "ready", or "missing" when math-verify
    cannot be imported. Anything else printed to stdout is sent to stderr instead.
    """
    replies = sys.stdout
    sys.stdout = sys.stderr
    try:
        import math_verify
    except ImportError:
        print("missing", file=replies, flush=True)
        return
    # The parent enforces the time limits, so math-verify's own, based on signal.alarm, are off
    # and its warning about that is silenced.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        answer, gold = json.loads(line)
        try:
            gold_parsed = math_verify.parse(f"${gold}$", parsing_timeout=None)
            answer_parsed = math_verify.parse(f"${answer}$", parsing_timeout=None)
            verdict = math_verify.verify(gold_parsed, answer_parsed, timeout_seconds=None)
        except Exception:
            verdict = False  # math-verify raises on some LaTeX it cannot read: no match
        print(1 if verdict else 0, file=replies, flush=True)


_CHILD_CODE = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from online.equivalence import _serve_equivalence; _serve_equivalence()"
)


class _EquivalenceWorker:
    """A math-verify child process shared by the threads of this process, started on first use.

    The child is a fresh interpreter, not a multiprocessing one, so it never re-runs the caller's
    main module.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._available = importlib.util.find_spec("math_verify") is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._cache: dict[tuple[str, str], bool] = {}

    def forget_after_fork(self) -> None:
        """Drop the parent's child process and lock in a forked process, which starts its own."""
        self._lock = threading.Lock()
        self._process = None

    def close(self) -> None:
        """Stop the child process: it exits when its stdin closes, or is killed after 1 s."""
        with self._lock:
            if self._process is None:
                return
            if self._process.stdin is not None:
                self._process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1.0)
            self._stop()

    def _read_line(self, timeout: float) -> str | None:
        """Return the child's next output line, or None on time-out or exit."""
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            data += chunk
        return data.decode().strip()

    def _start(self) -> bool:
        root = str(Path(__file__).resolve().parent.parent)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE.format(root=root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if self._read_line(_START_TIMEOUT) == "ready":
            return True
        logger.warning("math-verify could not be started; comparing plain keys only")
        self._available = False
        self._stop()
        return False

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
        self._process = None

    def _ask(self, answer: str, gold: str, timeout: float) -> bool | None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps([answer, gold]).encode() + b"\n")
            self._process.stdin.flush()
        except OSError:
            return None
        reply = self._read_line(timeout)
        return None if reply is None else reply == "1"

    def compare(self, answer: str, gold: str, timeout: float) -> bool | None:
        with self._lock:
            if (answer, gold) in self._cache:
                return self._cache[(answer, gold)]
            if not self._available or (self._process is None and not self._start()):
                return None
            verdict = self._ask(answer, gold, timeout)
            if verdict is None:
                logger.warning(
                    "math-verify gave no verdict on %r against %r within %.1f s; restarting it",
                    answer,
                    gold,
                    timeout,
                )
                self._stop()
                return None
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[(answer, gold)] = verdict
            return verdict


_WORKER = _EquivalenceWorker()
atexit.register(_WORKER.close)
os.register_at_fork(after_in_child=_WORKER.forget_after_fork)


def equivalent(answer: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool | None:
    """Return math-verify's verdict on two keys, or None without a verdict.

    None means math-verify is not installed, did not start, or took longer than ``timeout``
    seconds (the child process is then killed and restarted on the next call). Calls from
    several threads run one at a time, and time spent waiting for another call is not counted.
    """
    return _WORKER.compare(answer, gold, timeout)
