"""Errors the CLI turns into one line on stderr.

``UsageError`` (exit 2) is bad usage or bad input: it must name the file and the fix.
``WorkError`` (exit 1) is a failure of the work itself on good input.
``convert.errors.ConvertError`` is treated as bad input too (exit 2).
"""
from __future__ import annotations

from pathlib import Path

from convert.errors import ConvertError


class UsageError(ConvertError):
    """Bad usage or bad input (exit 2). Same one-line form as ConvertError: ``PATH: what. fix``."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None) -> None:
        super().__init__(message, path, fix)


class WorkError(Exception):
    """The work failed on good input (exit 1)."""

    exit_code = 1
