"""PNG plots of a run: throughput per scenario and subject, latency percentiles per backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.report import Measurement  # noqa: E402

THROUGHPUT_PANELS = (
    ("ingest", ("single",), "publish ingest, single"),
    ("ingest", ("bulk",), "publish ingest, bulk of 100"),
    ("e2e", ("single",), "end-to-end, single"),
    ("e2e", ("bulk", "pipelined", "confirms"), "end-to-end, bulk (raw clients: two processes)"),
    ("bus", ("consume+ack",), "bus only: consume + ack"),
)
PERCENTILES = ("p50", "p90", "p99", "max")
# Each backend next to the baselines it is compared with.
PLOT_ORDER = (
    "starlette", "memory", "sqlite", "redis", "redis-py", "faststream-redis",
    "rabbitmq", "aio-pika", "faststream-rabbit",
)  # fmt: skip
_BASELINE_COLOUR = "#9e9e9e"
_BACKEND_COLOUR = "#1f77b4"


def write_plots(measurements: Sequence[Measurement], output: Path) -> list[Path]:
    """Write throughput.png and latency.png under ``output``; return the files written."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    throughput = _throughput_plot(measurements, output / "throughput.png")
    if throughput is not None:
        written.append(throughput)
    latency = _latency_plot(measurements, output / "latency.png")
    if latency is not None:
        written.append(latency)
    return written


def _throughput_plot(measurements: Sequence[Measurement], path: Path) -> Path | None:
    panels = []
    for scenario, variants, title in THROUGHPUT_PANELS:
        rows = [m for m in measurements if m.scenario == scenario and m.variant in variants]
        rows.sort(key=_plot_rank)
        if rows:
            panels.append((title, rows))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 + 1.6 * len(panels)), squeeze=False)
    for ax, (title, rows) in zip(axes[:, 0], panels, strict=True):
        labels = [m.subject for m in rows]
        values = [m.value for m in rows]
        colours = [_BASELINE_COLOUR if m.is_baseline else _BACKEND_COLOUR for m in rows]
        bars = ax.barh(labels, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("messages / s", fontsize=8)
        ax.invert_yaxis()
        ax.margins(x=0.18)
        ax.tick_params(labelsize=8)
    fig.suptitle("omnibus throughput (grey: baselines in the same run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_rank(measurement: Measurement) -> int:
    if measurement.subject in PLOT_ORDER:
        return PLOT_ORDER.index(measurement.subject)
    return len(PLOT_ORDER)


def _latency_plot(measurements: Sequence[Measurement], path: Path) -> Path | None:
    latency = [m for m in measurements if m.scenario == "latency" and m.variant in PERCENTILES]
    subjects = list(dict.fromkeys(m.subject for m in latency))
    if not subjects:
        return None
    width = 0.8 / len(PERCENTILES)
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, percentile in enumerate(PERCENTILES):
        values = []
        for subject in subjects:
            found = [m.value for m in latency if (m.subject, m.variant) == (subject, percentile)]
            values.append(found[0] if found else 0.0)
        positions = [i + offset * width for i in range(len(subjects))]
        bars = ax.bar(positions, values, width, label=percentile)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=2)
    ax.axhline(2.0, color="green", linestyle="--", linewidth=0.8, label="p50 goal 2 ms")
    ax.axhline(5.0, color="red", linestyle="--", linewidth=0.8, label="p99 goal 5 ms")
    ax.set_xticks([i + width * (len(PERCENTILES) - 1) / 2 for i in range(len(subjects))])
    ax.set_xticklabels(subjects)
    ax.set_ylabel("publish -> app receive, ms")
    ax.set_yscale("log")
    ax.set_title("latency at a fixed rate (log scale)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
