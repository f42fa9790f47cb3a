"""``--profile``: py-spy samples the sidecars while the HTTP phases run.

Each sidecar gets ``py-spy record --format raw`` (collapsed stacks, one ``frame;frame;... count``
line per distinct stack) written to ``profile-<backend>-<phase>-<role>.txt`` in the results
directory; the report keeps the functions with the most samples on top of the stack (self time)
and the omnibus functions with the most samples anywhere in the stack (inclusive time).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_RATE = 200  # samples per second
_ENTRY_POINTS = ("<module> (", "main (runtime/")
OURS = ("/bus/", "/runtime/", "/components/", "/state/", "/invoke/")


def py_spy() -> str | None:
    """The py-spy binary (the ``bench`` extra installs it beside the interpreter)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    """One running ``py-spy record``; :meth:`finish` stops it and summarises the samples."""

    output: Path
    popen: subprocess.Popen[bytes]

    @classmethod
    def start(cls, pid: int, output: Path) -> Recording:
        """Start sampling ``pid`` (raises RuntimeError without py-spy)."""
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install 'omnibus[bench]')")
        argv = [binary, "record", "--pid", str(pid), "--format", "raw", "--nonblocking"]
        argv += ["--rate", str(SAMPLE_RATE), "--output", str(output)]
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return cls(output, popen)

    def finish(self, top: int = 12) -> dict[str, Any]:
        """Stop sampling (SIGINT makes py-spy write its file) and summarise it."""
        self.popen.send_signal(signal.SIGINT)
        try:
            _, err = self.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        if not self.output.exists():
            return {"error": err.decode(errors="replace").strip()[-300:] or "no samples written"}
        return summarise(self.output.read_text(), top) | {"file": str(self.output)}


def summarise(collapsed: str, top: int = 12) -> dict[str, Any]:
    """Samples, the top self-time frames and the top inclusive omnibus frames, in percent."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";")]
        self_counts[frames[-1]] += count
        for frame in set(frames):
            if frame.startswith(_ENTRY_POINTS):
                continue  # in every stack: says nothing
            if any(part in frame for part in ("bus/", "runtime/", "components/")):
                inclusive[frame] += count

    def percent(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / max(total, 1), 1)] for name, n in counter.most_common(top)]

    return {"samples": total, "self": percent(self_counts), "inclusive": percent(inclusive)}


def _short(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in OURS:
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    else:
        path = "/".join(path.split("/")[-2:])
    return f"{name} ({path})"
