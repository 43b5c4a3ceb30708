"""Multi-line messages written as ``\"\"\"`` blocks, the same in the REPL and in script files."""
from __future__ import annotations

BLOCK = '"""'


def in_open_block(text: str) -> bool:
    """True while a ``\"\"\"`` block has been opened and not yet closed."""
    stripped = text.strip()
    if not stripped.startswith(BLOCK):
        return False
    return len(stripped) < 2 * len(BLOCK) or not stripped.endswith(BLOCK)


def unwrap_block(text: str) -> str:
    """The message inside a ``\"\"\"`` block (or the text itself when it is not one)."""
    stripped = text.strip()
    if stripped.startswith(BLOCK) and stripped.endswith(BLOCK) and len(stripped) >= 2 * len(BLOCK):
        return stripped[len(BLOCK):-len(BLOCK)].strip("\n")
    return text
