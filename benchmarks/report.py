"""What a run measured: measurements, skipped parts and checks, saved as JSON.

A :class:`Measurement` is one number of one subject (a backend such as ``redis``, or a baseline
such as ``starlette`` or ``redis-py``) in one scenario.  Goals and ratios are derived from the
measurements afterwards (:mod:`benchmarks.goals`), so the JSON keeps the raw figures and the
derived rows side by side.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = 1
BASELINES = (
    "starlette", "redis-py", "aio-pika", "faststream-redis", "faststream-rabbit", "sqlite3",
    "direct", "arq", "asyncpg",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Measurement:
    """One figure: ``value`` in ``unit`` for ``subject`` in ``scenario``/``variant``."""

    scenario: str
    subject: str
    variant: str
    value: float
    unit: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """(scenario, subject, variant): unique within a report."""
        return (self.scenario, self.subject, self.variant)

    @property
    def is_baseline(self) -> bool:
        """True for the raw clients, the bare endpoint and the peer framework."""
        return self.subject in BASELINES


@dataclass(frozen=True, slots=True)
class Skip:
    """A part of the run that did not happen, and why."""

    scenario: str
    subject: str
    reason: str


@dataclass(slots=True)
class Report:
    """Everything one run produced, in the order it was measured."""

    config: dict[str, Any]
    machine: dict[str, Any]
    command: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def add(
        self, scenario: str, subject: str, variant: str, value: float, unit: str, **details: Any
    ) -> Measurement:
        """Record one figure, replacing an earlier one with the same key."""
        measurement = Measurement(scenario, subject, variant, float(value), unit, details)
        self.measurements = [m for m in self.measurements if m.key != measurement.key]
        self.measurements.append(measurement)
        return measurement

    def skip(self, scenario: str, subject: str, reason: str) -> None:
        """Record that ``scenario`` did not run for ``subject``."""
        self.skipped.append(Skip(scenario, subject, reason))

    def get(self, scenario: str, subject: str, variant: str) -> Measurement | None:
        """The measurement with this key, if it was taken."""
        for measurement in self.measurements:
            if measurement.key == (scenario, subject, variant):
                return measurement
        return None

    def to_json(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The JSON document: raw measurements plus the derived table ``rows``."""
        return {
            "schema": SCHEMA,
            "started": _iso(self.started),
            "finished": _iso(self.finished or time.time()),
            "duration_s": round((self.finished or time.time()) - self.started, 1),
            "command": self.command,
            "config": self.config,
            "machine": self.machine,
            "measurements": [asdict(m) for m in self.measurements],
            "figures": rows,
            "skipped": [asdict(s) for s in self.skipped],
            "checks": self.checks,
            "plots": self.plots,
        }


def combine(reports: list[Report]) -> Report:
    """One report of several runs of the same phases: each figure is the median of its runs.

    The details kept are those of the run whose value is the (lower) median, plus ``runs``: every
    run's value, in order.  Skips of any run are kept once; checks come from the last run.
    """
    if len(reports) == 1:
        return reports[0]
    first, last = reports[0], reports[-1]
    merged = Report(config=first.config, machine=first.machine, command=first.command)
    merged.started, merged.finished = first.started, last.finished
    keys = list(dict.fromkeys(m.key for report in reports for m in report.measurements))
    for key in keys:
        taken = [m for report in reports if (m := report.get(*key)) is not None]
        values = [m.value for m in taken]
        median = statistics.median(values)
        middle = min(taken, key=lambda m: (abs(m.value - median), m.value))
        details = {**middle.details, "runs": [round(v, 3) for v in values]}
        merged.add(*key, median, middle.unit, **details)
    seen: set[tuple[str, str, str]] = set()
    for report in reports:
        for skip in report.skipped:
            if (skip.scenario, skip.subject, skip.reason) not in seen:
                seen.add((skip.scenario, skip.subject, skip.reason))
                merged.skipped.append(skip)
    merged.checks = dict(last.checks)
    return merged


def load_measurements(document: dict[str, Any]) -> list[Measurement]:
    """The measurements of a saved JSON document."""
    return [Measurement(**m) for m in document["measurements"]]


def save_json(document: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write a timestamped file and ``latest.json`` under ``output``; return both paths."""
    output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    stamped = output / f"bench-{stamp}.json"
    latest = output / "latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
