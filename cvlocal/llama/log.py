"""llama.cpp's log, captured one way for the whole process.

llama.cpp has one process-wide log callback. Setting it in several places (as the chat, the
release checks and the loader used to) means whoever set it last wins, and a nested capture
restores the wrong one. Here the callback is installed once and routes each line to the innermost
active :class:`LogCapture` (or, when none is active, to llama-cpp-python's own printer, so
``verbose`` keeps its meaning). Captures nest and are per thread, so a server thread loading a
model does not steal lines from the main thread's capture.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

WARN = 3  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
ERROR = 4
CONT = 5


class LogCapture:
    """The lines llama.cpp logged, with their levels (continuations joined to their line).

    ``problems()`` is what a failed load explains itself with.
    """

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


_local = threading.local()
_installed: list[Any] = []  # keeps the ctypes callback alive for as long as llama.cpp may call it
_install_lock = threading.Lock()


def _stack() -> list[LogCapture]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _install() -> None:
    """Route llama.cpp's log through the router (set again each time: older code elsewhere may have
    put llama-cpp-python's printer back in the meantime)."""
    import llama_cpp

    with _install_lock:
        if _installed:
            llama_cpp.llama_log_set(_installed[0], ctypes.c_void_p(0))
            return
        from llama_cpp import _logger

        fallback = _logger.llama_log_callback
        last = [0]

        @llama_cpp.llama_log_callback
        def route(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            stack = getattr(_local, "stack", None)
            if stack:
                stack[-1].add(int(level), text.decode("utf-8", errors="replace"))
                return
            # Outside a capture: llama-cpp-python's printer when it is verbose, else warnings and errors only
            # (its printer alone would print every info line until some Llama(verbose=False) quiets it).
            shown = level if level != CONT else last[0]
            last[0] = shown
            if _logger.logger.isEnabledFor(logging.DEBUG) or shown in (WARN, ERROR):
                fallback(level, text, user_data)

        llama_cpp.llama_log_set(route, ctypes.c_void_p(0))
        _installed.append(route)


@contextmanager
def captured_log() -> Iterator[LogCapture]:
    """Collect llama.cpp's log lines of this thread while the block runs."""
    _install()
    capture = LogCapture()
    stack = _stack()
    stack.append(capture)
    try:
        yield capture
    finally:
        stack.remove(capture)
