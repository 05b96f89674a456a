"""What every benchmark's JSON file records besides its figures: when, how and on what it ran."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
from typing import Any


def run_header() -> dict[str, Any]:
    """Return the local date and time and the command line of this run."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def machine_info(**versions: str) -> dict[str, Any]:
    """Describe the machine: CPU model, cores, memory, platform, Python, load and ``versions``."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        **versions,
    }


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` as indented JSON with a final newline."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
        handle.write("\n")
