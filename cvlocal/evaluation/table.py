"""The side-by-side table a person reads at the end of ``cvlocal eval``: one column per model.

Rows are the headline metrics of each suite pooled over the languages run (the per-language
tables are in report.md); the best model per row is bold green, and a dim note under the table
says which toxicity scorer produced the numbers, because a lexicon and a classifier disagree.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cvlocal.evaluation.report import table_rows


def results_table(report: dict[str, Any], lang: str = "all") -> Table:
    """A rich Table of the report for one language (``all`` = pooled)."""
    title = "cvlocal eval" + ("" if lang == "all" else f" ({lang})")
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("suite", style="dim")
    table.add_column("metric")
    for model in report["models"]:
        table.add_column(model["name"], justify="right", overflow="fold")
    previous = None
    for row in table_rows(report, lang):
        cells = [f"[bold green]{v}[/]" if i in row["best"] else v for i, v in enumerate(row["values"])]
        table.add_row(row["suite"] if row["suite"] != previous else "", row["label"], *cells)
        previous = row["suite"]
    table.caption = f"toxicity scorer: {report['scorer']['description']}"
    return table


def print_table(report: dict[str, Any], console: Console) -> None:
    """Print the pooled table, and a per-language one when a single language was run."""
    langs = report["settings"]["langs"]
    console.print(results_table(report, langs[0] if len(langs) == 1 else "all"))
