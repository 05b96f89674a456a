"""Convert the raw public data sets into the bundled samples files of ``online/data``."""

from __future__ import annotations

import argparse
import builtins
import json
import logging
import math
import numbers
import os
import queue
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from offline.aqua import PREAMBLE as aqua_preamble
from offline.aqua import Choice, ProgramValue, nearest_letter, read_ans, read_choice
from online.answers import canonical_key, extract_answer, vote
from online.samples import Question, Sample, write_samples

__all__ = [
    "RAW_FILES",
    "RUNTIMES",
    "AquaReport",
    "ConversionError",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "convert_aqua",
    "convert_gsm8k",
    "convert_gsm8k_gpt3",
    "convert_math100",
    "convert_math500",
    "convert_svamp",
    "format_number",
    "main",
]

logger = logging.getLogger(__name__)

#: Raw file of each data set, relative to the ``--raw`` folder.
RAW_FILES: dict[str, str] = {
    "svamp": "pot_svamp_sc/svamp_sc_s0_e-1_11_08_14_02.jsonl",
    "aqua": "pot_aqua_sc/aqua_sc_s0_e-1_11_07_20_49.jsonl",
    "math100": "qwen25math_maj8_example/math_cot_100.jsonl",
    "gsm8k": "gsm8k_openai/test.jsonl",
    "gsm8k_gpt3": "gsm8k_openai/example_model_solutions.jsonl",
    "math500": "math500_levels/math500.jsonl",
}

#: Output file name of each data set (the names `online.datasets` expects).
OUT_FILES: dict[str, str] = {name: f"{name}.jsonl.gz" for name in RAW_FILES}

_MIB = 1024 * 1024
_AQUA_WALL_SECONDS = 60.0
_REPO_ROOT = Path(__file__).resolve().parent.parent
# Audit events that stop a sandboxed program: network access and starting other programs.
_BLOCKED_EVENTS = frozenset(
    {
        "socket.__new__",
        "socket.bind",
        "socket.connect",
        "socket.getaddrinfo",
        "socket.sendto",
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
    }
)


class ConversionError(ValueError):
    """A raw record does not have the expected shape; the message names file, line and field."""


class SandboxError(RuntimeError):
    """A sandbox worker process died or could not be started."""


# ---------------------------------------------------------------------------------------------
# Sandbox: worker side (runs inside the worker process, one forked child per program)


def _block_event(event: str, args: tuple[Any, ...]) -> None:
    if event in _BLOCKED_EVENTS:
        raise PermissionError(f"sandboxed program may not use {event}")


def _numeric_result(namespace: dict[str, Any]) -> tuple[int | float | None, str | None]:
    """Return ``(value, None)`` for a finite real ``ans``, else ``(None, reason)``."""
    if "ans" not in namespace:
        return None, "left ans unset"
    ans = namespace["ans"]
    if isinstance(ans, bool) or not isinstance(ans, numbers.Real):
        return None, f"left ans of type {type(ans).__name__}"
    if isinstance(ans, numbers.Integral):
        return int(ans), None
    value = float(ans)
    if not math.isfinite(value):
        return None, "left ans not finite"
    return value, None


def _child(code: str, out_fd: int, cpu_seconds: int, memory_bytes: int, runtime: _Runtime) -> None:
    """Set the limits of the forked child, run ``code`` in a fresh namespace, write the result.

    The runtime's preamble runs first, in the same namespace and under the same limits. Writes
    one JSON array ``[value, reason]`` to ``out_fd``. The caller ends the process with
    ``os._exit`` afterwards, so the worker's state is never flushed or run twice.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    sys.addaudithook(_block_event)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    result: tuple[Any, str | None]
    try:
        if runtime.preamble:
            exec(compile(runtime.preamble, "<preamble>", "exec"), namespace)
        exec(compile(code, "<program>", "exec"), namespace)
    except MemoryError:
        result = None, "exceeded the memory limit"
    except BaseException as exc:
        result = None, f"raised {type(exc).__name__}"
    else:
        try:
            result = runtime.read_result(namespace)
        except MemoryError:
            result = None, "exceeded the memory limit"
        except BaseException as exc:
            result = None, f"left an ans that could not be read ({type(exc).__name__})"
    try:
        payload = json.dumps(result)
    except ValueError:
        payload = json.dumps([None, "left ans too large to report"])
    os.write(out_fd, payload.encode("utf-8"))


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Read ``fd`` to end of file; return the bytes and whether ``deadline`` passed first."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def _run_in_child(
    code: str, cpu_seconds: int, memory_bytes: int, wall_seconds: float, runtime: _Runtime
) -> tuple[Any, str | None]:
    """Fork a child for one program and wait for its report, at most ``wall_seconds``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            _child(code, write_fd, cpu_seconds, memory_bytes, runtime)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        data, late = _read_until(read_fd, time.monotonic() + wall_seconds)
    finally:
        os.close(read_fd)
    if late:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if late:
        return None, "exceeded the wall-clock limit"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return None, "exceeded the CPU-time limit"
        return None, f"was killed by {signal.Signals(sig).name}"
    try:
        value, reason = json.loads(data)
    except ValueError:
        return None, "exited without a report"
    return value, reason


@dataclass(frozen=True)
class _Runtime:
    """Preamble and ``ans`` reader that a worker runs around each program."""

    preamble: str
    read_result: Callable[[dict[str, Any]], tuple[Any, str | None]]


def _load_runtime(name: str) -> _Runtime:
    """Build the named runtime in a worker, importing what its programs need before forking."""
    if name == "plain":
        return _Runtime("", _numeric_result)
    # Imported once here: every forked child shares the loaded modules.
    import sympy  # noqa: F401

    return _Runtime(aqua_preamble, read_ans)


def _worker_main(
    cpu_seconds: int, memory_bytes: int, wall_seconds: float, runtime: str = "plain"
) -> None:
    """Serve batches on stdin/stdout: one JSON list of programs in, one list of results out."""
    loaded = _load_runtime(runtime)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        programs = json.loads(line)
        results = [
            _run_in_child(p, cpu_seconds, memory_bytes, wall_seconds, loaded) for p in programs
        ]
        stdout.write(json.dumps(results).encode("utf-8") + b"\n")
        stdout.flush()


# ---------------------------------------------------------------------------------------------
# Sandbox: parent side


#: Runtimes of the sandbox. "plain": no preamble, ``ans`` must be a finite real number.
#: "sympy": the AQuA-RAT preamble (SymPy and ``solve_it``), ``ans`` read by
#: `offline.aqua.read_ans` as ``[numbers, symbol names]``.
RUNTIMES = ("plain", "sympy")


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program: the value of ``ans`` in the runtime's form, or None and the reason.

    In the "plain" runtime the value is a finite real number.
    """

    value: Any
    failure: str | None = None


def _network_isolation() -> list[str]:
    """Return the command prefix that gives a child its own empty network namespace.

    Tries ``unshare --net`` (needs root) and then the same inside a new user namespace;
    returns an empty list when neither works here.
    """
    if shutil.which("unshare") is None:
        return []
    for prefix in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
        try:
            done = subprocess.run(
                [*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return []


class Sandbox:
    """A small pool of worker processes that run untrusted Python programs.

    Each worker runs in its own network namespace when ``unshare`` allows it (see
    `isolation`). Every program runs in a freshly forked child of a worker, in a fresh global
    namespace. The child gets ``RLIMIT_CPU`` = ``cpu_seconds`` (seconds) and ``RLIMIT_AS`` =
    ``memory_bytes`` (bytes), and is killed after ``wall_seconds`` of wall-clock time. An audit
    hook in the child blocks sockets and subprocesses. Workers start in a scratch directory
    that `close` removes. ``runtime`` is one of `RUNTIMES`. Use as a context manager.
    """

    def __init__(
        self,
        workers: int = 2,
        cpu_seconds: int = 2,
        memory_bytes: int = 512 * _MIB,
        wall_seconds: float = 10.0,
        runtime: str = "plain",
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        if cpu_seconds < 1:
            raise ValueError(f"cpu_seconds must be a whole number >= 1, got {cpu_seconds!r}")
        prefix = _network_isolation()
        if not prefix:
            logger.warning("unshare is not usable here: programs run without a network namespace")
        self.isolation = " ".join(prefix) if prefix else "audit hook only"
        self.runtime = runtime
        self._scratch = tempfile.mkdtemp(prefix="sandbox-")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": str(_REPO_ROOT),
        }
        if runtime != "plain":
            # One BLAS thread: NumPy's default thread buffers can exceed the address-space limit.
            env["OPENBLAS_NUM_THREADS"] = "1"
        start = (
            "from offline.convert import _worker_main; "
            f"_worker_main({cpu_seconds!r}, {memory_bytes!r}, {wall_seconds!r}, {runtime!r})"
        )
        self._procs = [
            subprocess.Popen(
                [*prefix, sys.executable, "-s", "-c", start],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=self._scratch,
                env=env,
            )
            for _ in range(workers)
        ]
        self._idle: queue.Queue[subprocess.Popen[bytes]] = queue.Queue()
        for proc in self._procs:
            self._idle.put(proc)

    def run(self, programs: Sequence[str]) -> list[RunResult]:
        """Run one batch of programs on one idle worker; results in the same order."""
        proc = self._idle.get()
        try:
            stdin, stdout = _pipes(proc)
            stdin.write(json.dumps(list(programs)).encode("utf-8") + b"\n")
            stdin.flush()
            line = stdout.readline()
        except BrokenPipeError:
            line = b""
        finally:
            self._idle.put(proc)
        if not line:
            raise SandboxError(f"sandbox worker {proc.pid} exited with code {proc.poll()!r}")
        return [RunResult(value, reason) for value, reason in json.loads(line)]

    def map(self, batches: Sequence[Sequence[str]]) -> Iterator[list[RunResult]]:
        """Run batches on all workers at once; yield their results in input order."""
        with ThreadPoolExecutor(max_workers=len(self._procs)) as pool:
            yield from pool.map(self.run, batches)

    def close(self) -> None:
        """Stop the workers and remove the scratch directory."""
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    if proc.stdin is None or proc.stdout is None:
        raise SandboxError(f"sandbox worker {proc.pid} has no pipes")
    return proc.stdin, proc.stdout


# ---------------------------------------------------------------------------------------------
# Conversions


def format_number(value: int | float) -> str:
    """Write a number rounded to 6 decimal places, without exponent or trailing zeros.

    >>> format_number(10 / 3), format_number(3.3333333), format_number(51.0)
    ('3.333333', '3.333333', '51')
    >>> format_number(-1e-9), format_number(2 * 10**20)
    ('0', '200000000000000000000')
    """
    if isinstance(value, int):
        return str(value)
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Return ``(line number, object)`` for each non-blank line of a raw JSON Lines file."""
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConversionError(f"{path}:{line_no}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ConversionError(f"{path}:{line_no}: expected an object, got {obj!r:.60}")
            rows.append((line_no, obj))
    return rows


def _field(path: Path, line_no: int, obj: dict[str, Any], name: str, kind: type) -> Any:
    """Return ``obj[name]``; raise `ConversionError` naming the field when it is not a ``kind``."""
    value = obj.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConversionError(
            f"{path}:{line_no}: field {name!r} must be {kind.__name__}, got {value!r:.80}"
        )
    return value


def _answer_line(result: RunResult) -> tuple[str | None, str]:
    """Return the bucket key of a program's result and the line appended to its text."""
    if result.value is None:
        # Nothing may follow "the answer is" but the period: extract_answer then finds no answer.
        return None, f"No answer was produced (the program {result.failure}), so the answer is ."
    rounded = format_number(result.value)
    return canonical_key(rounded), f"The answer is {rounded}."


@dataclass(frozen=True)
class SvampReport:
    """Figures measured while converting SVAMP."""

    questions: int
    programs: int
    failures: dict[str, int]
    majority_accuracy: float
    agrees_with_recorded: float
    isolation: str


def _svamp_sample(program: str, result: RunResult) -> Sample:
    key, last_line = _answer_line(result)
    text = program.rstrip() + "\n" + last_line
    if extract_answer(text) != key:
        raise ConversionError(
            f"extract_answer gives {extract_answer(text)!r} but the program's key is {key!r} "
            f"for the text {text[-200:]!r}"
        )
    return Sample(answer=key, text=text)


def _svamp_programs(path: Path, line_no: int, obj: dict[str, Any]) -> list[str]:
    """Return the ``generated`` programs of one raw SVAMP record."""
    programs = _field(path, line_no, obj, "generated", list)
    for j, program in enumerate(programs):
        if not isinstance(program, str):
            raise ConversionError(
                f"{path}:{line_no}: field 'generated[{j}]' must be str, got {program!r:.80}"
            )
    return programs


def _svamp_question(
    qid: str, path: Path, line_no: int, obj: dict[str, Any], runs: Sequence[RunResult]
) -> Question:
    """Build one SVAMP question from its raw record and the results of its programs."""
    programs = _svamp_programs(path, line_no, obj)
    samples = tuple(_svamp_sample(p, r) for p, r in zip(programs, runs, strict=True))
    passage = _field(path, line_no, obj, "passage", str).strip()
    text = passage + " " + _field(path, line_no, obj, "question", str).strip()
    gold = canonical_key(format_number(_field(path, line_no, obj, "answer", float)))
    return Question(qid, text, gold, samples, {"dataset": "svamp"})


def convert_svamp(raw_dir: Path, out_path: Path, sandbox: Sandbox) -> SvampReport:
    """Run every SVAMP program once in ``sandbox`` and write the samples file."""
    path = raw_dir / RAW_FILES["svamp"]
    rows = _read_jsonl(path)[1:]  # line 1 contains the few-shot prompt
    batches = [_svamp_programs(path, line_no, obj) for line_no, obj in rows]
    progress = tqdm(
        sandbox.map(batches), total=len(batches), desc="svamp", unit="question", mininterval=1.0
    )
    results = list(progress)

    questions: list[Question] = []
    failures: Counter[str] = Counter()
    correct = agree = 0
    for index, ((line_no, obj), runs) in enumerate(zip(rows, results, strict=True), start=1):
        question = _svamp_question(f"svamp-{index:04d}", path, line_no, obj, runs)
        questions.append(question)
        failures.update(r.failure for r in runs if r.failure is not None)
        winner = vote([s.answer for s in question.samples]).answer
        recorded = canonical_key(format_number(_field(path, line_no, obj, "executed", float)))
        correct += winner == question.gold
        agree += winner == recorded
    write_samples(questions, out_path)

    return SvampReport(
        questions=len(questions),
        programs=sum(len(b) for b in batches),
        failures=dict(failures.most_common()),
        majority_accuracy=correct / len(questions),
        agrees_with_recorded=agree / len(questions),
        isolation=sandbox.isolation,
    )


@dataclass(frozen=True)
class AquaReport:
    """Figures measured while converting AQuA-RAT."""

    questions: int
    programs: int
    null_answers: int
    failures: dict[str, int]
    majority_accuracy: float
    recorded_letters: int
    agrees_with_recorded: int
    recorded_values: int
    recorded_value_maps_to_recorded_letter: int
    isolation: str


def _aqua_answer(program: str, result: RunResult, choices: Sequence[Choice]) -> Sample:
    """Map one program's result to the nearest option and build its sample."""
    letter: str | None = None
    if result.value is None:
        failure = result.failure
    else:
        value = ProgramValue.from_json(result.value)
        letter = nearest_letter(value, choices)
        shown = ", ".join(format_number(x) for x in value.numbers)
        if value.symbols:
            names = ", ".join(sorted(value.symbols))
            shown = f"{shown} with the symbols {names} set to fixed test values"
            failure = f"left ans with the symbols {names}, which no option uses alike"
        else:
            failure = "left ans that no option can be compared with"
    if letter is None:
        # Nothing may follow "the answer is" but the period: extract_answer then finds no answer.
        last_line = f"No answer was produced (the program {failure}), so the answer is ."
    else:
        last_line = f"ans is {shown}, nearest to option {letter}. The answer is {letter}."
    text = program.lstrip("\n").rstrip() + "\n" + last_line
    if extract_answer(text) != letter:
        raise ConversionError(
            f"extract_answer gives {extract_answer(text)!r} but the program's letter is "
            f"{letter!r} for the text {text[-200:]!r}"
        )
    return Sample(answer=letter, text=text)


def _aqua_record(
    path: Path, line_no: int, obj: dict[str, Any]
) -> tuple[str, list[Choice], list[str]]:
    """Return the question text with its options, the parsed options and the programs."""
    options = _field(path, line_no, obj, "options", list)
    if len(options) != 5 or not all(isinstance(o, str) for o in options):
        raise ConversionError(
            f"{path}:{line_no}: field 'options' must be 5 strings, got {options!r:.200}"
        )
    try:
        choices = [read_choice(o) for o in options]
    except ValueError as exc:
        raise ConversionError(f"{path}:{line_no}: field 'options': {exc}") from None
    if [c.letter for c in choices] != list("ABCDE"):
        raise ConversionError(
            f"{path}:{line_no}: field 'options' must be lettered A to E in order, got {options!r}"
        )
    text = _field(path, line_no, obj, "question", str).strip() + "\n" + "\n".join(options)
    return text, choices, _svamp_programs(path, line_no, obj)


def _recorded_number(raw: Any) -> float | None:
    """Parse a recorded value such as ``"234.29"``; None for "None", tuples and expressions."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def convert_aqua(raw_dir: Path, out_path: Path, sandbox: Sandbox) -> AquaReport:
    """Run every AQuA-RAT program once in ``sandbox`` (runtime "sympy") and write the samples.

    Each sample's answer is the letter of the option nearest to the program's value (see
    `offline.aqua.nearest_letter`), or null. The gold is the recorded letter.
    """
    if sandbox.runtime != "sympy":
        raise ValueError(
            f"convert_aqua needs a sandbox with runtime 'sympy', got {sandbox.runtime!r}"
        )
    path = raw_dir / RAW_FILES["aqua"]
    # The few-shot prompt appears as a {"demonstration": ...} line more than once in the file.
    rows = [(line_no, obj) for line_no, obj in _read_jsonl(path) if "demonstration" not in obj]
    records = [_aqua_record(path, line_no, obj) for line_no, obj in rows]
    progress = tqdm(
        sandbox.map([programs for _, _, programs in records]),
        total=len(records),
        desc="aqua",
        unit="question",
        mininterval=1.0,
    )
    results = list(progress)

    questions: list[Question] = []
    failures: Counter[str] = Counter()
    correct = recorded_letters = agree = recorded_values = value_agree = 0
    for index, ((line_no, obj), (text, choices, programs), runs) in enumerate(
        zip(rows, records, results, strict=True), start=1
    ):
        samples = tuple(_aqua_answer(p, r, choices) for p, r in zip(programs, runs, strict=True))
        gold = _field(path, line_no, obj, "answer", str).strip()
        if gold not in "ABCDE" or len(gold) != 1:
            raise ConversionError(f"{path}:{line_no}: field 'answer' must be A to E, got {gold!r}")
        questions.append(Question(f"aqua-{index:03d}", text, gold, samples, {"dataset": "aqua"}))
        failures.update(r.failure for r in runs if r.failure is not None)
        winner = vote([s.answer for s in samples]).answer
        correct += winner == gold
        # The authors' pick: the most frequent value among their runs (`generated_prediction`),
        # mapped to a letter by asking code-davinci-002 for the closest option (`prediction`).
        recorded = obj.get("prediction")
        if isinstance(recorded, str) and recorded in ("A", "B", "C", "D", "E"):
            recorded_letters += 1
            agree += winner == recorded
            recorded_value = _recorded_number(obj.get("generated_prediction"))
            if recorded_value is not None:
                recorded_values += 1
                mapped = nearest_letter(ProgramValue((recorded_value,)), choices)
                value_agree += mapped == recorded
    write_samples(questions, out_path)

    return AquaReport(
        questions=len(questions),
        programs=sum(len(q.samples) for q in questions),
        null_answers=sum(s.answer is None for q in questions for s in q.samples),
        failures=dict(failures.most_common()),
        majority_accuracy=correct / len(questions),
        recorded_letters=recorded_letters,
        agrees_with_recorded=agree,
        recorded_values=recorded_values,
        recorded_value_maps_to_recorded_letter=value_agree,
        isolation=sandbox.isolation,
    )


def _math_level(path: Path, line_no: int, raw: Any) -> int:
    """Parse ``"Level 3"`` (or an int) into 3."""
    match = re.fullmatch(r"(?:Level\s*)?([1-5])", str(raw).strip())
    if match is None:
        raise ConversionError(
            f"{path}:{line_no}: field 'level' must be 'Level 1'..'Level 5', got {raw!r}"
        )
    return int(match.group(1))


def convert_math100(raw_dir: Path, out_path: Path) -> float:
    """Write the 100 MATH problems with their 8 recorded responses each.

    Returns the share of responses whose `extract_answer` equals the key of the recorded ``pred``.
    """
    path = raw_dir / RAW_FILES["math100"]
    questions: list[Question] = []
    same = total = 0
    for index, (line_no, obj) in enumerate(_read_jsonl(path), start=1):
        responses = _field(path, line_no, obj, "response", list)
        scores = _field(path, line_no, obj, "score", list)
        preds = _field(path, line_no, obj, "pred", list)
        if not len(responses) == len(scores) == len(preds):
            raise ConversionError(
                f"{path}:{line_no}: fields 'response', 'score', 'pred' differ in length: "
                f"{len(responses)}, {len(scores)}, {len(preds)}"
            )
        samples = tuple(
            Sample(answer=extract_answer(text), correct=bool(score), text=text)
            for text, score in zip(responses, scores, strict=True)
        )
        same += sum(s.answer == canonical_key(p) for s, p in zip(samples, preds, strict=True))
        total += len(samples)
        meta = {"dataset": "math100", "level": _math_level(path, line_no, obj.get("level"))}
        question = _field(path, line_no, obj, "question", str)
        gold = _field(path, line_no, obj, "gt", str)
        questions.append(Question(f"math100-{index:03d}", question, gold, samples, meta))
    write_samples(questions, out_path)
    return same / total


def convert_gsm8k(raw_dir: Path, out_path: Path) -> int:
    """Write the GSM8K test questions with the gold number after ``####``; return the count."""
    path = raw_dir / RAW_FILES["gsm8k"]
    questions: list[Question] = []
    for index, (line_no, obj) in enumerate(_read_jsonl(path), start=1):
        solution = _field(path, line_no, obj, "answer", str)
        parts = solution.split("####")
        if len(parts) != 2 or not parts[1].strip():
            raise ConversionError(
                f"{path}:{line_no}: field 'answer' must end in one '#### <number>', "
                f"got {solution[-80:]!r}"
            )
        question = _field(path, line_no, obj, "question", str)
        questions.append(
            Question(f"gsm8k-{index:04d}", question, parts[1].strip(), (), {"dataset": "gsm8k"})
        )
    return write_samples(questions, out_path)


#: The four GPT-3 solvers of ``example_model_solutions.jsonl``, in the order their samples take.
GPT3_SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
_FINAL_ANSWER = re.compile(r"A:\s*(.*?)\s*$")


def convert_gsm8k_gpt3(raw_dir: Path, out_path: Path) -> float:
    """Write GSM8K with one recorded solution from each of four GPT-3 solvers as its samples.

    The samples are the solutions of `GPT3_SOLVERS`, in that order: 6B and 175B models,
    fine-tuned, or fine-tuned and reranked by a verifier (Cobbe et al., 2021). A random subset
    of them is therefore a draw from the mixture of the four solvers, not from one model. Each
    sample's answer is the key of the text after the final ``A:``, and ``correct`` is the
    recorded ``is_correct``. The gold comes from ``test.jsonl``. Returns the share of samples whose
    answer matches the gold exactly when ``correct`` says so.
    """
    path = raw_dir / RAW_FILES["gsm8k_gpt3"]
    golds = raw_dir / RAW_FILES["gsm8k"]
    test = _read_jsonl(golds)
    solutions = _read_jsonl(path)
    if len(test) != len(solutions):
        raise ConversionError(
            f"{path} has {len(solutions)} lines but {golds} has {len(test)}; they must match"
        )
    questions: list[Question] = []
    agree = total = 0
    for index, ((line_no, obj), (_, gold_obj)) in enumerate(
        zip(solutions, test, strict=True), start=1
    ):
        question = _field(path, line_no, obj, "question", str)
        if question != gold_obj.get("question"):
            raise ConversionError(
                f"{path}:{line_no}: field 'question' differs from line {line_no} of {golds}"
            )
        gold = str(gold_obj["answer"]).split("####")[-1].strip()
        samples = []
        for solver in GPT3_SOLVERS:
            record = _field(path, line_no, obj, solver, dict)
            text = record.get("solution")
            correct = record.get("is_correct")
            if not isinstance(text, str) or not isinstance(correct, bool):
                raise ConversionError(
                    f"{path}:{line_no}: field '{solver}' needs a string 'solution' and a boolean "
                    f"'is_correct', got {record!r:.120}"
                )
            match = _FINAL_ANSWER.search(text.strip())
            answer = canonical_key(match.group(1)) if match else None
            samples.append(Sample(answer=answer, correct=correct))
            agree += (answer is not None and answer == canonical_key(gold)) == correct
            total += 1
        meta = {"dataset": "gsm8k_gpt3"}
        questions.append(Question(f"gsm8k-{index:04d}", question, gold, tuple(samples), meta))
    write_samples(questions, out_path)
    return agree / total


def convert_math500(raw_dir: Path, out_path: Path) -> int:
    """Write the MATH-500 problems with gold answer, level and subject; return the count."""
    path = raw_dir / RAW_FILES["math500"]
    questions: list[Question] = []
    for line_no, obj in _read_jsonl(path):
        meta = {
            "dataset": "math500",
            "level": _math_level(path, line_no, _field(path, line_no, obj, "level", int)),
            "subject": _field(path, line_no, obj, "subject", str),
        }
        questions.append(
            Question(
                _field(path, line_no, obj, "id", str),
                _field(path, line_no, obj, "problem", str),
                _field(path, line_no, obj, "answer", str),
                (),
                meta,
            )
        )
    return write_samples(questions, out_path)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m offline.convert", description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="folder that contains the raw sets")
    parser.add_argument("--out", type=Path, required=True, help="folder for the .jsonl.gz files")
    parser.add_argument(
        "--only", choices=sorted(RAW_FILES), action="append", help="convert only these sets"
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--cpu-seconds", type=int, default=2, help="CPU limit per program")
    parser.add_argument("--memory-mib", type=int, default=512, help="memory limit per program")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the bundled data files; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = args.only or sorted(RAW_FILES)
    for name in names:
        if not (args.raw / RAW_FILES[name]).is_file():
            raise SystemExit(
                f"--raw {args.raw}: file {RAW_FILES[name]} for {name} not found; "
                "pass the folder that contains the raw sets, or --only the sets it has"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for name in names:
        out_path = args.out / OUT_FILES[name]
        if name == "svamp":
            limits = {"cpu_seconds": args.cpu_seconds, "memory_bytes": args.memory_mib * _MIB}
            with Sandbox(workers=args.workers, **limits) as sandbox:
                logger.info("svamp: %s", convert_svamp(args.raw, out_path, sandbox))
        elif name == "aqua":
            limits = {"cpu_seconds": args.cpu_seconds, "memory_bytes": args.memory_mib * _MIB}
            # SymPy programs can use most of their CPU time. A long wall-clock limit lets the
            # CPU limit decide, so a busy machine does not change the results.
            limits["wall_seconds"] = _AQUA_WALL_SECONDS
            with Sandbox(workers=args.workers, runtime="sympy", **limits) as sandbox:
                logger.info("aqua: %s", convert_aqua(args.raw, out_path, sandbox))
        elif name == "math100":
            share = convert_math100(args.raw, out_path)
            logger.info("math100: extract_answer equals the recorded pred on %.4f", share)
        elif name == "gsm8k":
            logger.info("gsm8k: %d questions", convert_gsm8k(args.raw, out_path))
        elif name == "gsm8k_gpt3":
            share = convert_gsm8k_gpt3(args.raw, out_path)
            logger.info("gsm8k_gpt3: recorded is_correct matches the extracted key on %.4f", share)
        else:
            logger.info("math500: %d questions", convert_math500(args.raw, out_path))
        logger.info("wrote %s (%d bytes)", out_path, out_path.stat().st_size)
    logger.info("done in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
