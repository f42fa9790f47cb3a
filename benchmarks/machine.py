"""The machine a run measured on, and what /proc says about a process (RSS, CPU seconds)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = (
    "omnibus",
    "redis",
    "hiredis",
    "aio-pika",
    "faststream",
    "uvicorn",
    "starlette",
    "aiohttp",
    "uvloop",
    "httptools",
    "orjson",
)
_TICKS = os.sysconf("SC_CLK_TCK")


def describe_machine(brokers: dict[str, str]) -> dict[str, Any]:
    """Cores, memory, CPU model, OS, Python, package and broker versions."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpuinfo_field("model name"),
        "memory_gb": round(_meminfo_kb("MemTotal") / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {name: _version(name) for name in PACKAGES},
        "brokers": dict(brokers),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass(frozen=True, slots=True)
class ProcStat:
    """One reading of a process: CPU seconds so far, resident and peak resident memory."""

    cpu_seconds: float
    rss_mb: float
    peak_rss_mb: float


def read_proc(pid: int) -> ProcStat:
    """Read /proc/<pid>/stat (utime + stime) and /proc/<pid>/status (VmRSS, VmHWM)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    status = _status_kb(Path(f"/proc/{pid}/status").read_text())
    return ProcStat(cpu, status.get("VmRSS", 0) / 1024, status.get("VmHWM", 0) / 1024)


def _status_kb(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[name] = int(parts[0])
    return values


def _cpuinfo_field(name: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kb(name: str) -> int:
    try:
        return _status_kb(Path("/proc/meminfo").read_text()).get(name, 0)
    except OSError:
        return 0


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
