"""The exception every bad input in ``convert`` raises.

Callers (the cvlocal CLI) turn it into one line on stderr and exit status 2, so the message must
name the file at fault and say how to fix it, and must fit on one line.
"""
from __future__ import annotations

from pathlib import Path


def one_line(message: str, path: str | Path | None = None, fix: str | None = None) -> str:
    """``PATH: what. fix`` on one line (whitespace runs, newlines included, become one space)."""
    text = f"{path}: {message}" if path is not None else message
    if fix:
        text = f"{text.rstrip('.')}. {fix}"
    return " ".join(text.split())


class ConvertError(Exception):
    """Bad input: a missing, corrupt or unsupported file. ``str(err)`` is the one-line message."""

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(one_line(message, path, fix))
