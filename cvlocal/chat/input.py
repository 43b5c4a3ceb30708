"""Reading what the user types: prompt_toolkit with history, wide-character editing and blocks.

prompt_toolkit measures East Asian wide characters by cell width, so cursor movement and
deletion in Chinese, Korean and Japanese text land on whole characters. Enter sends the line,
except inside a ``\"\"\"`` block, where it starts a new line until a line ends with ``\"\"\"``.
A bracketed paste (what terminals send for pasted text) is inserted whole, newlines included,
and sent with the next Enter.

Between prompts (while a reply streams) the terminal is in its ordinary cooked mode, which echoes
what is typed into the middle of the reply. :func:`typing_hidden` turns the echo off for that
time; the keys stay in the terminal's input queue and the next prompt reads them as before.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from cvlocal import ui
from cvlocal.chat.blocks import in_open_block, unwrap_block

PROMPT = ">>> "
CONTINUATION = "... "


def history_path() -> Path:
    """Where input history lives: $CVLOCAL_HISTORY, else $XDG_DATA_HOME/cvlocal/history."""
    explicit = os.environ.get("CVLOCAL_HISTORY")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "cvlocal" / "history"


def open_history() -> History:
    """A file history shared across sessions, or an in-memory one (with a warning) if unwritable."""
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return FileHistory(str(path))
    except OSError as err:
        ui.warn(f"{path}: input history cannot be saved ({err.strerror}); set CVLOCAL_HISTORY to a writable file")
        return InMemoryHistory()


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if in_open_block(buffer.text):
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:  # Alt-Enter: a new line without a block
        event.current_buffer.insert_text("\n")

    return bindings


class InputReader:
    """``read()`` returns one message (blocks unwrapped); raises EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C."""

    def __init__(self, history: History | None = None) -> None:
        self._session: PromptSession[str] = PromptSession(
            history=history if history is not None else open_history(),
            key_bindings=_key_bindings(),
            multiline=True,
            prompt_continuation=lambda width, line_number, soft_wrap: CONTINUATION,
            enable_history_search=False,
        )

    def read(self) -> str:
        return unwrap_block(self._session.prompt(PROMPT))

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question (not kept in the history); anything but y/yes, Ctrl-C or Ctrl-D is no."""
        try:
            answer = PromptSession[str](history=InMemoryHistory()).prompt(f"{question} [y/N] ")
        except (KeyboardInterrupt, EOFError):
            return False
        return answer.strip().lower() in ("y", "yes")


@contextmanager
def typing_hidden(stream: TextIO | None = None) -> Iterator[None]:
    """Keep keys typed in the meantime off the screen (no terminal echo); a no-op without a terminal.

    Only ECHO is cleared: Ctrl-C still sends SIGINT, and the typed text stays queued for the next
    prompt. The previous settings come back however the block ends.
    """
    stream = stream or sys.stdin
    try:
        import termios

        fd = stream.fileno()
        saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    except (ImportError, OSError, ValueError):  # no termios (Windows), or a closed or fake stream
        saved = None
    if saved is None:
        yield
        return
    quiet = list(saved)
    quiet[3] = saved[3] & ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
