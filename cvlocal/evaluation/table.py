"""The side-by-side table a person reads at the end of ``cvlocal eval``: one column per model.

Rows are the headline metrics of each suite pooled over the languages run (the per-language
tables are in report.md), each value with its 95% interval. The best model per row is bold green
only when a paired test says it beats the others (:mod:`cvlocal.evaluation.compare`); differences
that may be noise are listed under the table, and a dim note says which toxicity scorer produced
the numbers, because a lexicon and a classifier disagree.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cvlocal.evaluation.report import SIGNIFICANCE_NOTE, noise_warnings, table_rows, test_cell


def results_table(report: dict[str, Any], lang: str = "all") -> Table:
    """A rich Table of the report for one language (``all`` = pooled)."""
    title = "cvlocal eval" + ("" if lang == "all" else f" ({lang})")
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("suite", style="dim")
    table.add_column("metric")
    for model in report["models"]:
        table.add_column(model["name"], justify="right", overflow="fold")
    paired = len(report["models"]) > 1
    if paired:
        table.add_column("paired test", style="dim", overflow="fold", no_wrap=True)
    previous = None
    for row in table_rows(report, lang):
        cells = [f"[bold green]{v}[/]" if i in row["best"] else v for i, v in enumerate(row["values"])]
        if paired:
            cells.append(test_cell(row, short=True) or "–")
        table.add_row(row["suite"] if row["suite"] != previous else "", row["label"], *cells)
        previous = row["suite"]
    table.caption = f"{SIGNIFICANCE_NOTE}\ntoxicity scorer: {report['scorer']['description']}"
    return table


def print_table(report: dict[str, Any], console: Console) -> None:
    """Print the pooled table, and a per-language one when a single language was run."""
    langs = report["settings"]["langs"]
    lang = langs[0] if len(langs) == 1 else "all"
    console.print(results_table(report, lang))
    for warning in noise_warnings(report, lang):
        console.print(f"[yellow]may be noise:[/] {warning}", highlight=False)
    agreement = report.get("judge_agreement")
    if agreement:
        from cvlocal.evaluation.report import judge_agreement_lines

        console.print("judge agreement: " + " ".join(judge_agreement_lines(agreement)), highlight=False)
