"""Whole characters and stop strings in a streamed reply (no model needed)."""
from __future__ import annotations

import random

import pytest

from cvlocal.llama.stops import StopScanner
from cvlocal.llama.utf8 import Utf8Stream

TEXT = "臺灣的天氣很好。한국어 문장입니다。日本語のテキスト🙂 mixed ASCII"


def feed_all(chunks: list[bytes]) -> list[str]:
    stream = Utf8Stream()
    out = [stream.feed(c) for c in chunks]
    assert stream.flush() == 0  # the whole text: nothing unfinished at the end
    return out


def test_every_byte_alone_gives_whole_characters_only() -> None:
    data = TEXT.encode("utf-8")
    pieces = feed_all([data[i:i + 1] for i in range(len(data))])
    assert "".join(pieces) == TEXT
    assert "\ufffd" not in "".join(pieces)
    # each character appears exactly when its last byte arrives: pieces are single characters or empty
    assert [p for p in pieces if p] == list(TEXT)


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_mid_character(seed: int) -> None:
    data = TEXT.encode("utf-8")
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), 25))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    # the test is only meaningful if some chunk really ends inside a character
    assert any(_splits_character(c) for c in chunks)
    pieces = feed_all(chunks)
    assert "".join(pieces) == TEXT


def _splits_character(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_pending_counts_the_unfinished_character() -> None:
    stream = Utf8Stream()
    ch = "臺".encode("utf-8")
    assert stream.feed(ch[:1]) == "" and stream.pending() == 1
    assert stream.feed(ch[1:2]) == "" and stream.pending() == 2
    assert stream.feed(ch[2:]) == "臺" and stream.pending() == 0


def test_invalid_bytes_become_replacement_not_an_error() -> None:
    stream = Utf8Stream()
    assert stream.feed(b"ok\xff") + stream.feed(b"\xe8A") == "ok\ufffd\ufffdA"


def test_a_character_cut_at_the_end_is_dropped_not_replaced() -> None:
    """Issue 12: the bytes of a character cut by max_tokens or Ctrl-C are dropped (they were U+FFFD)."""
    stream = Utf8Stream()
    text = stream.feed("ok臺".encode()) + stream.feed("灣".encode()[:2])
    assert text == "ok臺"
    assert stream.flush() == 2 and stream.pending() == 0
    assert stream.feed("灣".encode()) == "灣"  # the stream starts clean again


def test_stop_string_split_over_pieces_is_never_shown() -> None:
    scanner = StopScanner(["\nUser:"])
    shown = "".join(scanner.feed(ch) for ch in "你好！\nUser: next question")
    assert shown == "你好！"
    assert scanner.stopped
    assert scanner.flush() == ""


def test_text_that_only_looks_like_a_stop_is_released() -> None:
    scanner = StopScanner(["<|im_end|>"])
    shown = [scanner.feed(p) for p in ["a <", "|im", "_e"]]
    assert "".join(shown) == "a "  # "<|im_e" may still become the stop
    assert scanner.feed("x") == "<|im_ex"
    assert scanner.feed(" end <|im") == " end "
    assert scanner.flush() == "<|im"
    assert not scanner.stopped


def test_no_stops_passes_everything() -> None:
    scanner = StopScanner([])
    assert scanner.feed("abc") == "abc" and scanner.flush() == ""


def test_markdown_rendering_keeps_the_reply_line_breaks() -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    from cvlocal.chat.render import keep_line_breaks

    reply = "床前明月光\n疑是地上霜\n\n```\ncode line 1\ncode line 2\n```\n**done**"
    console = Console(width=40, record=True, color_system=None)
    console.print(Markdown(keep_line_breaks(reply)))
    lines = [line.strip() for line in console.export_text().splitlines() if line.strip()]
    assert lines == ["床前明月光", "疑是地上霜", "code line 1", "code line 2", "done"]
    plain = Console(width=40, record=True, color_system=None)
    plain.print(Markdown(reply))
    assert "床前明月光 疑是地上霜" in plain.export_text()  # what markdown alone would show
