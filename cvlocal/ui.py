"""Progress bars and messages on stderr, silenced by --quiet.

stdout is kept for results (``--json`` summaries, transcripts), so everything a person watches
goes to stderr through one rich Console.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr = Console(stderr=True, highlight=False)


def say(message: str, quiet: bool = False) -> None:
    """A line of information for a person (stderr), unless quiet."""
    if not quiet:
        stderr.print(message)


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk sizes and model cards use)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def warn(message: str) -> None:
    """A warning is shown even with --quiet: it changes what the user should believe."""
    stderr.print(f"[yellow]warning:[/yellow] {message}")


def byte_progress(quiet: bool) -> Progress:
    """A bar for work measured in bytes: tensors done, bytes, rate and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=quiet,
        transient=False,
    )


def item_progress(quiet: bool) -> Progress:
    """A bar for work measured in items (prompts, types, steps): count, rate and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=quiet,
        transient=False,
    )


@contextmanager
def maybe_status(message: str, quiet: bool) -> Iterator[None]:
    """A spinner for a step whose length is unknown."""
    if quiet:
        yield
        return
    with stderr.status(message):
        yield
