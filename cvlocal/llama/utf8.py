"""Turn a stream of token byte pieces into text without ever showing a broken character.

A token of a byte-level BPE or a SentencePiece byte-fallback vocabulary can end in the middle of
a multi-byte UTF-8 character (a CJK character is three bytes, often split over two or three
tokens). Decoding each piece on its own prints U+FFFD garbage; this keeps the incomplete tail of a
character until the bytes that finish it arrive. A reply cut by max_tokens or Ctrl-C can end inside
a character: those bytes are dropped, not turned into U+FFFD (which would also go back to the
model in the next prompt).
"""
from __future__ import annotations

import codecs


class Utf8Stream:
    """Feed bytes, get back only the complete characters so far.

    Invalid bytes (a model can emit any byte token) become U+FFFD instead of raising, because a
    chat must not crash on what the model says.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """The text that ``data`` completes; an unfinished character stays buffered."""
        return self._decoder.decode(data, final=False)

    def pending(self) -> int:
        """How many bytes are waiting for the rest of their character."""
        buffered, _ = self._decoder.getstate()
        return len(buffered)

    def flush(self) -> int:
        """End of stream: drop an unfinished character left over; returns how many bytes it had."""
        dropped = self.pending()
        self._decoder.reset()
        return dropped
