"""Showing a reply while it is generated, and once it is done.

In a terminal the growing reply is shown as plain text in a live region that follows its last
lines (so a long reply is read as it grows, not cut at the screen's bottom); when it is finished
the region is cleared and the reply is printed again as rendered markdown. rich measures wide
(CJK) characters by their cell width, so wrapping and clearing stay exact. Without a terminal the
text is written as it comes, nothing else.
"""
from __future__ import annotations

from typing import Callable, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from cvlocal.session import Turn


FENCES = ("```", "~~~")


def keep_line_breaks(text: str) -> str:
    """Markdown with every line break kept (a hard break), except inside fenced code.

    Markdown joins consecutive lines into one paragraph; a chat reply's line breaks (a poem, an
    address, CJK lines that must not get a space between them) are meant as written.
    """
    lines = text.split("\n")
    out = []
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(FENCES):
            fenced = not fenced
        elif not fenced and line.strip() and i + 1 < len(lines) and lines[i + 1].strip():
            line = line.rstrip() + "  "
        out.append(line)
    return "\n".join(out)


class LiveReply:
    """A live region showing the tail of the reply being generated, then its markdown rendering."""

    def __init__(self, console: Console, refresh_per_second: float = 12.0) -> None:
        self.console = console
        self.refresh_per_second = refresh_per_second
        self._parts: list[str] = []

    def _tail(self) -> RenderableType:
        text = "".join(self._parts)
        height = max(3, self.console.size.height - 2)
        lines = self.console.render_lines(Text(text), self.console.options, pad=False)
        if len(lines) > height:
            lines = lines[-height:]
        rows: list[RenderableType] = []
        for line in lines:
            row = Text()
            for segment in line:
                row.append(segment.text, segment.style)
            rows.append(row)
        return Group(*rows)

    def run(self, produce: Callable[[Callable[[str], None]], Turn]) -> Turn:
        """Call ``produce(on_text)`` while showing its text; print the final markdown afterwards."""
        self._parts = []
        live = Live(console=self.console, get_renderable=self._tail, refresh_per_second=self.refresh_per_second,
                    transient=True, redirect_stdout=False, redirect_stderr=False)
        with live:
            turn = produce(self._parts.append)
        if turn.text:
            self.console.print(Markdown(keep_line_breaks(turn.text)))
        return turn


class PlainReply:
    """Writes each piece of the reply as it comes (scripts, pipes): whole characters, flushed."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def run(self, produce: Callable[[Callable[[str], None]], Turn]) -> Turn:
        turn = produce(self.write)
        self.stream.write("\n")
        self.stream.flush()
        return turn


def turn_summary(turn: Turn) -> str:
    """One line under a reply: tokens, rates, time to first token, prompt reuse."""
    parts = [
        f"{turn.completion_tokens} tokens",
        f"{turn.gen_rate:.1f} tok/s",
        f"first token {turn.ttft_s * 1000:.0f} ms",
        f"prompt {turn.prompt_tokens} ({turn.new_prompt_tokens} new)",
    ]
    if turn.finish_reason != "stop":
        parts.append(turn.finish_reason)
    return " · ".join(parts)
