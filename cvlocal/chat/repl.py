"""The interactive chat: read a message or a command, show the reply, repeat.

Ctrl-C while a reply is generated stops that reply (it stays in the conversation); Ctrl-C at the
prompt clears the line, and a second one in a row exits, as does Ctrl-D or /exit. Nothing else
ends the chat: a failing command or reply is reported in one line and the conversation goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.console import Console

from cvlocal.chat.commands import EXIT, is_command, run_command
from cvlocal.chat.input import InputReader, typing_hidden
from cvlocal.chat.render import LiveReply, turn_summary
from cvlocal.session import ChatSession, ContextFullError, Turn


class Repl:
    """The terminal host for commands: the session, a stdout console, live reply rendering."""

    def __init__(self, session: ChatSession, model_path: Path, console: Console | None = None,
                 reader: InputReader | None = None) -> None:
        self.session = session
        self.model_path = model_path
        self.out = console or Console(highlight=False)
        self.reader = reader or InputReader()
        self._live = LiveReply(self.out)

    def show_reply(self, produce: Callable[[Callable[[str], None]], Turn]) -> Turn | None:
        try:
            # Ctrl-C from now on stops this reply, not the chat; keys typed meanwhile are not echoed into it
            with self.session.interrupt.armed(), typing_hidden():
                turn = self._live.run(produce)
        except ContextFullError as err:
            self.out.print(f"error: {err}", style="red", markup=False)
            return None
        if turn.dropped_turns:
            self.out.print(f"(dropped the {turn.dropped_turns} oldest exchange(s) from what the model sees, to fit "
                           f"the context of {self.session.n_ctx} tokens; the system prompt stays, and the "
                           "conversation and /save keep every turn)", style="yellow", markup=False)
        if turn.finish_reason == "interrupted":
            self.out.print("(stopped; the partial reply is kept — /undo removes it, /regen redoes it)",
                           style="yellow", markup=False)
        self.out.print(turn_summary(turn), style="dim", markup=False)
        return turn

    def confirm(self, question: str) -> bool:
        return self.reader.confirm(question)

    def banner(self) -> None:
        s = self.session
        self.out.print(f"[bold]{self.model_path.name}[/bold] · template {s.template_source} · context {s.n_ctx} tokens")
        self.out.print('/help for commands · """ for multi-line · Ctrl-C stops a reply · Ctrl-D exits', markup=False,
                       style="dim")

    def run(self) -> int:
        """The read-reply loop; returns the exit status (0).

        Ctrl-C at the prompt is a key press that prompt_toolkit turns into KeyboardInterrupt; a
        Ctrl-C between two prompts (while a command runs, or a quick double tap) is a signal that
        can land anywhere, so any KeyboardInterrupt outside a reply counts as a Ctrl-C at the prompt.
        """
        self.banner()
        interrupted_once = False
        while True:
            try:
                text = self.reader.read()
                interrupted_once = False
                if not self._handle(text):
                    break
            except KeyboardInterrupt:
                if interrupted_once:
                    break
                interrupted_once = True
                try:
                    self.out.print("(Ctrl-C again or Ctrl-D to exit)", style="dim", markup=False)
                except KeyboardInterrupt:
                    break
            except EOFError:
                break
            except Exception as err:  # noqa: BLE001 - the conversation outlives any one failure
                interrupted_once = False
                self.out.print(f"error: {type(err).__name__}: {err} (the conversation is kept; /save it)",
                               style="red", markup=False)
        self.out.print("bye", style="dim")
        return 0

    def _handle(self, text: str) -> bool:
        """Run a command or send a message; False when the chat should end."""
        text_stripped = text.strip()
        if not text_stripped:
            return True
        if is_command(text_stripped):
            return run_command(self, text_stripped) is not EXIT
        message = text[1:] if text.startswith("//") else text
        self.show_reply(lambda on_text: self.session.ask(message, on_text))
        return True
