"""Errors the CLI turns into one line on stderr.

``UsageError`` (exit 2) is bad usage or bad input: it must name the file and the fix.
``WorkError`` (exit 1) is a failure of the work itself on good input.
``convert.errors.ConvertError`` (the library's bad input) is treated as bad input too (exit 2),
but the two are separate classes: the library knows nothing of cvlocal's flags and policy, and
cvlocal code that catches the library's errors does not catch its own usage errors by accident.
"""
from __future__ import annotations

from pathlib import Path

from convert.errors import one_line


class UsageError(Exception):
    """Bad usage or bad input (exit 2), in the library's one-line form: ``PATH: what. fix``."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(one_line(message, path, fix))


class WorkError(Exception):
    """The work failed on good input (exit 1)."""

    exit_code = 1
