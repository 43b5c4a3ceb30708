"""Session-cached tiny GGUF files made by our converter from the ``tiny_family`` models.

Use from any test (after ``from tests.gguf_fixtures import *`` in conftest.py)::

    def test_something(tiny_gguf):
        path = tiny_gguf("llama3", "q8_0")                 # the chat model, Q8_0
        cp = tiny_gguf("qwen2", "f16", extended=True)      # the extended-vocabulary CP model
        base = tiny_gguf("mistral", "q4_k_m", which="base")

``which`` is "base", "chat" or "cp"; by default "chat", or "cp" when ``extended`` (only the CP
model has an extended vocabulary). Each (kind, outtype, extended, which) is converted once per
session; treat the files as read-only.
"""
from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["tiny_gguf"]


@pytest.fixture(scope="session")
def tiny_gguf(tiny_family, tmp_path_factory):
    from convert import write_gguf

    cache: dict[tuple[str, str, bool, str], Path] = {}

    def get(kind: str, outtype: str = "f16", extended: bool = False, which: str | None = None) -> Path:
        which = which or ("cp" if extended else "chat")
        if which not in ("base", "chat", "cp"):
            raise ValueError(f"which must be base, chat or cp, not {which!r}")
        key = (kind, outtype.lower(), extended, which)
        if key not in cache:
            family = tiny_family(kind, extended)
            folder = tmp_path_factory.mktemp(f"gguf-{kind}-{which}{'-ext' if extended else ''}-{outtype}")
            name = f"{kind}-{which}{'-ext' if extended else ''}-{outtype.lower()}.gguf"
            cache[key] = write_gguf(getattr(family, which), folder / name, outtype)
        return cache[key]

    return get
