"""Stream a file of questions through ``POST /v1/stream`` and summarise the results.

    python -m serve.stream_file questions.jsonl --url http://127.0.0.1:8000 --out results.jsonl

The file is JSON Lines, one ``{"id", "question", "metadata"?}`` object per line, or msgpack
maps one after another; ``.gz`` files are decompressed on the fly. Samples files, such as the
output of ``python -m offline export`` or the bundled ``online/data/*.jsonl.gz``, work as they
are: the service reads their ``meta`` as ``metadata`` and ignores ``gold`` and ``samples``.

The body is uploaded while the results are read. Each result is written to ``--out`` (one JSON
object per line) as it arrives, in the order the service finishes them. A progress bar counts
the results, and a JSON summary ends the run: records sent, answered, errors by type, mean
cost, and the accuracy against ``gold`` of the answered records that carry one.

Exit status: 0 when every record was answered, 1 when a record got an error or no result, 2 for
invalid arguments (including a URL whose host is not loopback), 3 when the service rejected the
request as a whole or could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack
from tqdm import tqdm

from online.answers import answers_match

__all__ = ["FileStreamSummary", "main", "stream_file"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "msgpack": "application/msgpack"}
CHUNK_BYTES = 64 * 1024


class StreamRequestError(RuntimeError):
    """The service rejected the stream request as a whole with an error status."""


@dataclass
class FileStreamSummary:
    """Counters of one run; ``golds`` maps a record's line to its gold answer until its result."""

    records: int = 0
    golds: dict[int, str] = field(default_factory=dict)
    answered: int = 0
    costs: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    error_cost: float = 0.0

    def add(self, result: dict[str, Any]) -> None:
        """Count one result of the stream."""
        gold = self.golds.pop(result.get("line") or 0, None)
        error = result.get("error")
        if error is not None:
            kind = str(error.get("type"))
            self.errors[kind] += 1
            self.error_examples.setdefault(kind, str(error.get("message"))[:300])
            self.error_cost += float(error.get("cost") or 0.0)
            return
        self.answered += 1
        self.costs.append(float(result["cost"]))
        if gold is not None:
            self.correct.append(answers_match(result.get("answer"), gold))

    def to_json(self, elapsed_s: float) -> dict[str, Any]:
        results = self.answered + sum(self.errors.values())
        return {
            "records": self.records,
            "answered": self.answered,
            "errors": dict(self.errors),
            "error_examples": dict(self.error_examples),
            "without_result": max(self.records - results, 0),
            "mean_cost": sum(self.costs) / len(self.costs) if self.costs else None,
            "error_cost": self.error_cost,
            "accuracy": sum(self.correct) / len(self.correct) if self.correct else None,
            "answered_with_gold": len(self.correct),
            "elapsed_s": round(elapsed_s, 3),
            "records_per_s": round(results / elapsed_s, 2) if elapsed_s > 0 else None,
        }


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.GzipFile(path, "rb") if path.suffix == ".gz" else path.open("rb")


def guess_format(path: Path) -> str:
    """Return ``msgpack`` for a ``.msgpack`` or ``.mpk`` file (``.gz`` allowed), else ``jsonl``.

    >>> guess_format(Path("questions.msgpack.gz")), guess_format(Path("svamp.jsonl"))
    ('msgpack', 'jsonl')
    """
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return "msgpack" if suffixes and suffixes[-1] in (".msgpack", ".mpk") else "jsonl"


def _gold_of(value: Any) -> str | None:
    gold = value.get("gold") if isinstance(value, dict) else None
    return None if gold is None else str(gold)


def scan_records(path: Path, file_format: str) -> tuple[int, dict[int, str]]:
    """Count the records of a file and collect their gold answers by line (or frame) number.

    Lines are numbered as the service numbers them: every line counts, and a blank line is not
    a record. A msgpack file is counted up to its first invalid frame, where the service stops.
    """
    golds: dict[int, str] = {}
    records = 0
    with _open(path) as fh:
        if file_format == "msgpack":
            unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False)
            try:
                for value in unpacker:
                    records += 1
                    gold = _gold_of(value)
                    if gold is not None:
                        golds[records] = gold
            except (ValueError, TypeError):
                records += 1  # the invalid frame gets an error result
            return records, golds
        for line, data in enumerate(fh, start=1):
            if not data.strip():
                continue
            records += 1
            try:
                gold = _gold_of(json.loads(data))
            except ValueError:
                continue
            if gold is not None:
                golds[line] = gold
    return records, golds


def _read_chunks(path: Path) -> Iterator[bytes]:
    with _open(path) as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


async def _upload(path: Path) -> AsyncIterator[bytes]:
    for chunk in _read_chunks(path):
        yield chunk
        await asyncio.sleep(0)  # lets the reader of the results run between chunks


async def _results(response: aiohttp.ClientResponse, file_format: str) -> AsyncIterator[Any]:
    """Decode the results as they arrive: JSON lines, or msgpack maps."""
    if file_format == "msgpack":
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        async for chunk in response.content.iter_any():
            unpacker.feed(chunk)
            for result in unpacker:
                yield result
        return
    pending = b""
    async for chunk in response.content.iter_any():
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


async def stream_file(
    path: Path,
    url: str,
    file_format: str,
    out: Path | None = None,
    progress: bool = True,
    timeout_s: float = 120.0,
) -> FileStreamSummary:
    """Upload ``path`` to ``POST {url}/v1/stream`` and count the results as they arrive.

    Raises `StreamRequestError` when the service rejects the request as a whole, and
    `aiohttp.ClientError` when it cannot be reached. ``timeout_s`` bounds the wait for each
    read of the response, not the whole run.
    """
    summary = FileStreamSummary()
    summary.records, summary.golds = scan_records(path, file_format)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s)
    headers = {"Content-Type": MEDIA_TYPES[file_format]}
    bar = tqdm(total=summary.records, disable=not progress, unit="rec", dynamic_ncols=True)
    sink = out.open("w") if out is not None else None
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{url}/v1/stream", data=_upload(path), headers=headers) as response,
        ):
            if response.status != 200:
                body = await response.text()
                raise StreamRequestError(f"POST /v1/stream returned {response.status}: {body}")
            async for result in _results(response, file_format):
                summary.add(result)
                if sink is not None:
                    sink.write(json.dumps(result) + "\n")
                bar.update()
                if summary.costs and bar.n % 20 == 0:
                    bar.set_postfix(
                        cost=f"{sum(summary.costs) / len(summary.costs):.2f}",
                        errors=sum(summary.errors.values()),
                    )
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return summary


def loopback_url(value: str, option: str = "--url") -> str:
    """Return ``value`` without a trailing slash; raise `argparse.ArgumentTypeError`, naming
    ``option``, unless it is an http(s) URL whose host is 127.0.0.1, localhost or [::1]."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise argparse.ArgumentTypeError(
            f"invalid {option} {value!r}: only a loopback URL is accepted, such as "
            "http://127.0.0.1:8000, http://localhost:8000 or http://[::1]:8000"
        )
    return value.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve.stream_file", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", type=Path, help="JSON Lines or msgpack file of records (.gz ok)")
    parser.add_argument(
        "--url", type=loopback_url, default="http://127.0.0.1:8000", help="service base URL"
    )
    parser.add_argument(
        "--format",
        choices=sorted(MEDIA_TYPES),
        help="encoding of the file, sent as it is; by default msgpack for .msgpack and .mpk "
        "files and jsonl for others",
    )
    parser.add_argument("--out", type=Path, help="write each result as a JSON line to this file")
    parser.add_argument("--summary-out", type=Path, help="also write the JSON summary here")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=120.0,
        help="maximum wait for the next bytes of the response, in seconds",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.file.is_file():
        print(f"error: file {str(args.file)!r} not found", file=sys.stderr)
        return 2
    if not args.timeout_s > 0:
        print(f"error: --timeout-s must be positive, got {args.timeout_s}", file=sys.stderr)
        return 2
    file_format = args.format or guess_format(args.file)
    start = time.perf_counter()
    try:
        summary = asyncio.run(
            stream_file(
                args.file,
                args.url,
                file_format,
                out=args.out,
                progress=not args.no_progress,
                timeout_s=args.timeout_s,
            )
        )
    except (StreamRequestError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        print(f"error: {exc or type(exc).__name__}", file=sys.stderr)
        return 3
    result = summary.to_json(time.perf_counter() - start)
    text = json.dumps(result, indent=2)
    print(text)
    if args.summary_out:
        args.summary_out.write_text(text + "\n")
    return 0 if result["answered"] == result["records"] else 1


if __name__ == "__main__":
    sys.exit(main())
