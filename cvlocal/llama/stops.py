"""Stop strings in streamed text: hold back what might be the start of one.

Most templates stop on a token id, but the text formats (the plain ``User:``/``Assistant:``
fallback, llama-cpp-python's named formats) stop on strings that span several tokens. Text that
could still turn into a stop string must not be shown yet, and the stop string itself never is.
"""
from __future__ import annotations

from typing import Iterable


class StopScanner:
    """Feed text pieces; get back the text that is safe to show, and whether a stop was hit."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Safe text from ``text`` (plus what was held back); sets ``stopped`` at a stop string."""
        if self.stopped:
            return ""
        held = self._held + text
        if not self.stops:
            return held
        cut = min((i for i in (held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep:] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """End of generation: held-back text was not a stop after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        best = 0
        for stop in self.stops:
            # only positions holding the stop's first character can start a partial stop
            i = text.find(stop[0], max(0, len(text) - len(stop) + 1))
            while i != -1:
                if stop.startswith(text[i:]):
                    best = max(best, len(text) - i)
                    break
                i = text.find(stop[0], i + 1)
        return best
