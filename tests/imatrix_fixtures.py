"""A session-cached importance matrix of the tiny Llama-2 chat model, for the quantize tests.

``tiny_imatrix`` is computed once per session by ``cvlocal.imatrix`` on ``CALIBRATION_TEXT``
(``CTX``-token windows, ``CHUNKS`` of them) and written in llama.cpp's GGUF imatrix format; treat
the file as read-only. Import the fixture into a test module to use it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

CALIBRATION_TEXT = ("The slow train stops at every village; the baker waves, the river shines, and the children count the bridges. " * 12)
CTX = 32
CHUNKS = 4

__all__ = ["CALIBRATION_TEXT", "CTX", "CHUNKS", "tiny_imatrix"]


@pytest.fixture(scope="session")
def tiny_imatrix(tiny_family, tmp_path_factory) -> Path:
    from convert.imatrix_file import write_imatrix_gguf
    from cvlocal.imatrix.collect import compute_imatrix

    root = tmp_path_factory.mktemp("imatrix")
    text = root / "story.txt"
    text.write_text(CALIBRATION_TEXT, encoding="utf-8")
    out = root / "imatrix.gguf"
    write_imatrix_gguf(compute_imatrix(tiny_family("llama2").chat, text_files=[text], ctx=CTX, chunks=CHUNKS).matrix, out)
    return out
