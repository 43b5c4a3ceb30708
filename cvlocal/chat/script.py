"""``cvlocal chat MODEL.gguf --script FILE``: a conversation from a file, without a terminal.

The file format: each non-blank line is one user message; a message over several lines is a
``\"\"\"`` block (from a line starting with ``\"\"\"`` to a line ending with ``\"\"\"``); a line
starting with ``/`` is a chat command (``/set temperature 0.7``, ``/system ...``, ``/clear``,
``/save out.json`` ...); ``//text`` is the message ``/text``. ``-`` reads the script from stdin.

The transcript goes to stdout: ``>>> message`` then the reply as it streams, or with ``--json``
one JSON document (the /save format, with per-turn measurements) at the end. Notes and command
output go to stderr so that stdout stays a clean transcript.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from rich.console import Console

from cvlocal import ui
from cvlocal.chat.blocks import BLOCK, in_open_block, unwrap_block
from cvlocal.chat.commands import EXIT, is_command, run_command
from cvlocal.chat.render import PlainReply, turn_summary
from cvlocal.chat.transcript import transcript_dict
from cvlocal.errors import UsageError
from cvlocal.session import ChatSession, Turn


@dataclass
class ScriptItem:
    """One entry of a script: a message or a command, with its line number for error messages."""

    text: str
    line: int

    @property
    def is_command(self) -> bool:
        return is_command(self.text)

    @property
    def message(self) -> str:
        return self.text[1:] if self.text.startswith("//") else self.text


def parse_script(text: str, path: str | Path = "<script>") -> list[ScriptItem]:
    """The messages and commands of a script file, in order."""
    items: list[ScriptItem] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.strip().startswith(BLOCK):
            start = i
            block = line
            while in_open_block(block):
                i += 1
                if i >= len(lines):
                    raise UsageError(f'the """ block opened on line {start + 1} is never closed', path=path,
                                     fix='End the block with a line ending in """')
                block += "\n" + lines[i]
            items.append(ScriptItem(unwrap_block(block), start + 1))
        else:
            items.append(ScriptItem(line.strip(), i + 1))
        i += 1
    return items


def read_script(path: str | Path) -> list[ScriptItem]:
    """Parse a script file (``-`` for stdin); a missing or undecodable file is a UsageError."""
    if str(path) == "-":
        return parse_script(sys.stdin.read(), "<stdin>")
    path = Path(path)
    if not path.is_file():
        raise UsageError("no such script file", path=path, fix="Give a text file with one message per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=path,
                         fix="Save the script as UTF-8") from err
    return parse_script(text, path)


class ScriptHost:
    """The command host of a script run: command output to stderr, replies to stdout (or kept for JSON)."""

    def __init__(self, session: ChatSession, model_path: Path, stdout: TextIO, as_json: bool, quiet: bool) -> None:
        self.session = session
        self.model_path = model_path
        self.out = Console(stderr=True, highlight=False, soft_wrap=True)
        self.as_json = as_json
        self.quiet = quiet
        self.stdout = stdout
        self._plain = PlainReply(stdout)

    def confirm(self, question: str) -> bool:
        """A script cannot be asked: the answer is no (``/save!`` replaces without asking)."""
        return False

    def show_reply(self, produce: Callable[[Callable[[str], None]], Turn]) -> Turn | None:
        turn = produce(lambda text: None) if self.as_json else self._plain.run(produce)
        if turn.finish_reason == "interrupted" or self.session.interrupt.requested:
            raise KeyboardInterrupt  # in a script, Ctrl-C ends the run, not just the reply (even after its last token)
        if turn.dropped_turns:
            ui.warn(f"dropped the {turn.dropped_turns} oldest exchange(s) from what the model sees, to fit the context "
                    f"of {self.session.n_ctx} tokens (the transcript keeps them)")
        if not self.quiet:
            ui.stderr.print(turn_summary(turn), style="dim", markup=False)
        return turn


def run_script(session: ChatSession, items: list[ScriptItem], *, model_path: Path, as_json: bool = False,
               quiet: bool = False, stdout: TextIO | None = None) -> int:
    """Play a script against a session; returns the exit status (0)."""
    stdout = stdout or sys.stdout
    host = ScriptHost(session, model_path, stdout, as_json, quiet)
    for item in items:
        if item.is_command:
            if run_command(host, item.text) is EXIT:
                break
            continue
        message = item.message
        if not as_json:
            stdout.write(f">>> {message}\n")
            stdout.flush()
        host.show_reply(lambda on_text, m=message: session.ask(m, on_text))
        if not as_json:
            stdout.write("\n")
    if as_json:
        stdout.write(json.dumps(transcript_dict(session), ensure_ascii=False, indent=2) + "\n")
    stdout.flush()
    return 0
