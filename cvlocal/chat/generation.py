"""The token loop shared by chat turns and raw completions, with what it measures.

It wraps ``Llama.generate`` (which keeps the KV cache for the prefix a new prompt shares with the
last one) and adds what a chat needs: stop on end-of-turn ids and stop strings, whole UTF-8
characters only, Ctrl-C that ends the reply instead of the program, and timings taken from
llama.cpp's own performance counters (how many prompt tokens it really evaluated).
"""
from __future__ import annotations

import signal
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

from cvlocal.llama.stops import StopScanner
from cvlocal.llama.facts import perf_decoded_tokens, perf_reset
from cvlocal.llama.sampling import Sampling
from cvlocal.llama.utf8 import Utf8Stream

FinishReason = Literal["stop", "length", "interrupted"]


@dataclass
class Generated:
    """What one generation produced and how fast; ``token_ids`` are the reply's tokens (no stop token)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    new_prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    prompt_rate: float
    gen_rate: float
    total_s: float
    token_ids: list[int]


class Interrupt:
    """A Ctrl-C flag: a SIGINT while armed ends the reply at the next token.

    A handler that sets a flag (instead of raising KeyboardInterrupt inside a llama.cpp call) leaves
    the model state consistent, so the conversation can go on after the interrupted reply. Arming
    nests: the REPL arms it from the moment a message is sent, so a Ctrl-C that comes before the
    first token still stops that reply; the generation loop's own arming then changes nothing.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._depth = 0

    @contextmanager
    def armed(self) -> Iterator["Interrupt"]:
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.event.clear()
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            if self.event.is_set():  # a second Ctrl-C while stopping: give up as Python would
                raise KeyboardInterrupt
            self.event.set()

        signal.signal(signal.SIGINT, on_sigint)
        self._depth = 1
        try:
            yield self
        finally:
            self._depth = 0
            signal.signal(signal.SIGINT, previous)

    @property
    def requested(self) -> bool:
        """A Ctrl-C came while armed; it stays set after disarming, until the next arming."""
        return self.event.is_set()


_PIECES: "weakref.WeakKeyDictionary[Any, dict[int, bytes]]" = weakref.WeakKeyDictionary()


def token_bytes(llm: Any) -> Callable[[int], bytes]:
    """A function giving a token's bytes, remembered per model (detokenizing through ctypes each
    time is the largest per-token cost of the loop, and a reply repeats most of its tokens)."""
    cache = _PIECES.setdefault(llm, {})

    def piece(token: int) -> bytes:
        data = cache.get(token)
        if data is None:
            data = cache[token] = llm.detokenize([token])
        return data

    return piece


def context_size(llm: Any) -> int:
    """Tokens the model can hold: the smaller of llama.cpp's context and llama-cpp-python's buffers.

    llama.cpp rounds the context up (to a multiple of 256), but llama-cpp-python sizes its token
    buffer by the requested ``n_ctx``; going past the smaller one crashes, so that is the limit.
    """
    return min(int(llm.n_ctx()), int(llm.input_ids.shape[0]))


def generate_text(
    llm: Any,
    prompt_tokens: Sequence[int],
    *,
    sampling: Sampling,
    max_tokens: int,
    stop_ids: frozenset[int] | set[int],
    stop_texts: Sequence[str] = (),
    on_text: Callable[[str], None] | None = None,
    strip_leading: bool = False,
    interrupt: Interrupt | None = None,
) -> Generated:
    """Generate after ``prompt_tokens`` until a stop id, a stop string, ``max_tokens`` or Ctrl-C.

    ``on_text`` receives the reply as it grows, in pieces that never split a character and never
    contain (the start of) a stop string. An unfinished character at the end (the reply was cut by
    ``max_tokens`` or Ctrl-C inside it) is dropped from the text, and the tokens that held only its
    bytes from ``token_ids``. ``strip_leading`` drops the space a SentencePiece model
    puts before the first word of a reply.
    """
    interrupt = interrupt or Interrupt()
    piece = token_bytes(llm)
    utf8 = Utf8Stream()
    scanner = StopScanner(stop_texts)
    pieces: list[str] = []
    leading = strip_leading

    def emit(text: str) -> None:
        nonlocal leading
        if leading:
            text = text.lstrip()
            if not text:
                return
            leading = False
        if text:
            pieces.append(text)
            if on_text is not None:
                on_text(text)

    finish: FinishReason = "length"
    completion = 0
    reply_ids: list[int] = []
    unfinished = 0  # trailing reply tokens that only started a character not yet complete
    sampled = 0
    new_prompt = 0
    t_first = t_last = None
    llm.set_seed(sampling.seed)
    perf_reset(llm)
    t0 = time.perf_counter()
    with interrupt.armed():
        tokens = llm.generate(
            list(prompt_tokens),
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            typical_p=1.0,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            reset=True,
        )
        try:
            if max_tokens <= 0:
                finish = "length"
            else:
                for token in tokens:
                    sampled += 1
                    t_last = time.perf_counter()
                    if t_first is None:
                        t_first = t_last
                        new_prompt = perf_decoded_tokens(llm)
                    if token in stop_ids:
                        finish = "stop"
                        break
                    completion += 1
                    reply_ids.append(int(token))
                    data = piece(token)
                    before = utf8.pending()
                    emit(scanner.feed(utf8.feed(data)))
                    if utf8.pending() == before + len(data) and data:
                        unfinished += 1  # every byte of it waits for the rest of a character
                    else:
                        unfinished = 0
                    if scanner.stopped:
                        finish = "stop"
                        break
                    if interrupt.requested:
                        finish = "interrupted"
                        break
                    if completion >= max_tokens:
                        finish = "length"
                        break
        except KeyboardInterrupt:
            finish = "interrupted"
        finally:
            tokens.close()
    if not scanner.stopped:
        if utf8.flush() and unfinished:
            # a cut inside a character: its bytes are dropped, so are the tokens that held only them
            del reply_ids[len(reply_ids) - unfinished:]
        emit(scanner.flush())
    t_end = time.perf_counter()
    ttft = (t_first - t0) if t_first is not None else t_end - t0
    gen_time = (t_last - t_first) if (t_first is not None and t_last is not None) else 0.0
    return Generated(
        text="".join(pieces),
        finish_reason=finish,
        prompt_tokens=len(prompt_tokens),
        new_prompt_tokens=new_prompt,
        completion_tokens=completion,
        ttft_s=ttft,
        prompt_rate=new_prompt / ttft if ttft > 0 else 0.0,
        gen_rate=(sampled - 1) / gen_time if gen_time > 0 and sampled > 1 else 0.0,
        total_s=t_end - t0,
        token_ids=reply_ids,
    )


def generate_whole(llm: Any, prompt_tokens: Sequence[int], **settings: Any) -> Generated:
    """:func:`generate_text` for batch callers that keep what they generate (a continuation, a
    guard's verdict): a Ctrl-C at any moment of the call raises KeyboardInterrupt, including one
    that lands after the last token, so a run asked to stop never records another result."""
    interrupt = Interrupt()
    generated = generate_text(llm, prompt_tokens, interrupt=interrupt, **settings)
    if generated.finish_reason == "interrupted" or interrupt.requested:
        raise KeyboardInterrupt
    return generated
