"""The rich tables printed at the end of a run: figures against goals, then what was skipped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.config import SCENARIO_TITLES
from benchmarks.goals import format_value
from benchmarks.report import Skip

_MET = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}


def figures_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Each figure with its baseline, the ratio, the goal and whether it is met."""
    table = Table(title="omnibus bench", show_lines=False, header_style="bold")
    for name, justify in (
        ("scenario", "left"),
        ("subject", "left"),
        ("figure", "left"),
        ("value", "right"),
        ("baseline", "left"),
        ("baseline value", "right"),
        ("ratio", "right"),
        ("goal", "left"),
        ("met", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    previous = None
    for row in rows:
        scenario = row["scenario"]
        if previous is not None and scenario != previous:
            table.add_section()
        table.add_row(
            SCENARIO_TITLES.get(scenario, scenario) if scenario != previous else "",
            row["subject"],
            row["variant"],
            format_value(row["value"], row["unit"]),
            row["baseline"] or "-",
            "-"
            if row["baseline_value"] is None
            else format_value(row["baseline_value"], row["unit"]),
            "-" if row["ratio"] is None else f"{row['ratio']:.2f}x",
            row["goal"] or "-",
            _MET[row["met"]],
        )
        previous = scenario
    return table


def skipped_table(skipped: Sequence[Skip]) -> Table:
    """What did not run, and why."""
    table = Table(title="skipped", header_style="bold")
    table.add_column("scenario")
    table.add_column("subject")
    table.add_column("reason", overflow="fold")
    for skip in skipped:
        table.add_row(SCENARIO_TITLES.get(skip.scenario, skip.scenario), skip.subject, skip.reason)
    return table


def print_report(
    console: Console, rows: Sequence[dict[str, Any]], skipped: Sequence[Skip], notes: Sequence[str]
) -> None:
    """Print the figures table, the skipped table (if any) and closing notes."""
    console.print(figures_table(rows))
    if skipped:
        console.print(skipped_table(skipped))
    for note in notes:
        console.print(note)
