"""Option checks every command runs before any work (the output-path policy is ``cvlocal.outputs.overlap``)."""
from __future__ import annotations

from cvlocal.errors import UsageError


def at_least(flag: str, value: int | None, minimum: int = 1) -> None:
    """Refuse a count option below ``minimum`` (None means the default and passes)."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} {value} must be at least {minimum}", fix=f"Pass {flag} N with N >= {minimum}, or leave it out.")
