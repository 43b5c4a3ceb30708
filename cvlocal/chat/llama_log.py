"""Keep llama.cpp's log lines off the terminal while a model loads, and keep them for errors.

llama.cpp writes its warnings straight to stderr through llama-cpp-python's log callback (whose
level table predates ggml's current numbering, so ``verbose=False`` does not hide them). During a
load they would break the spinner; when a load fails they hold the reason. So the lines are
collected instead, and the caller decides what to show.
"""
from __future__ import annotations

import ctypes
from contextlib import contextmanager
from typing import Iterator

WARN = 3  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
ERROR = 4
CONT = 5


class LlamaLog:
    """The lines llama.cpp logged, with their levels (continuations joined to their line)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def add(self, level: int, text: str) -> None:
        if level == CONT and self.lines:
            last_level, last = self.lines[-1]
            self.lines[-1] = (last_level, last + text)
        else:
            self.lines.append((level, text))

    def problems(self) -> list[str]:
        """Warning and error lines, stripped, in order."""
        return [" ".join(text.split()) for level, text in self.lines if level in (WARN, ERROR) and text.strip()]


@contextmanager
def captured_llama_log() -> Iterator[LlamaLog]:
    """Collect llama.cpp's log while the block runs; llama-cpp-python's own printer comes back after."""
    import llama_cpp
    from llama_cpp import _logger

    log = LlamaLog()

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.add(int(level), text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield log
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
