"""A ``Llama`` look-alike that many threads generate with at once, decoded together in one batch.

The chat session, raw completions and the evaluation drive llama-cpp-python's ``Llama.generate``
one token at a time. Rather than rewrite them for batching, each caller runs in its own thread on
a :class:`SharedLlama`: its ``generate`` submits the prompt to one :class:`BatchedDecoder` that a
single driver thread steps, and yields the tokens of that sequence as they are sampled. The callers'
own logic (templates, context fitting, stop ids and strings, UTF-8 handling, what they record) is
untouched, so their records are what the one-at-a-time path writes whenever the batched logits are
the one-at-a-time logits (f16, q8_0, q4_0 on CPU).

Only what those callers use is provided: ``tokenize``/``detokenize``, ``metadata``, ``n_vocab``,
``token_bos``/``token_eos``, ``_model``, ``n_ctx``, ``input_ids`` (for its length), ``ctx`` (for
llama.cpp's performance counters), ``set_seed`` and ``reset`` (per thread) and ``generate``. As
with ``Llama``, a thread's next prompt reuses the cells of its last prompt and reply where they
match, unless it called ``reset`` in between.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from cvlocal.llama.batch import BatchedDecoder, Handle, Request
from cvlocal.llama.model import Model
from cvlocal.llama.sampling import SamplingParams
from cvlocal.llama.tokens import Vocab

_END = None  # queued after a sequence's last token


class DecoderClosed(RuntimeError):
    """The shared decoder was closed while a caller was still generating."""


@dataclass
class _Pending:
    request: Request
    tokens: "queue.Queue[int | None]" = field(default_factory=queue.Queue)
    handle: Handle | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


class SharedLlama(Vocab):
    """``n_seq`` sequences of ``n_ctx`` tokens, fed by any number of threads (see the module doc)."""

    def __init__(self, model: Model, *, n_seq: int, n_ctx: int, threads: int | None = None) -> None:
        super().__init__(model.native)
        self.model = model
        self.model_path = str(model.path)
        # Finished sequences keep their cells, so a caller's next turn continues from them as on Llama.
        self.decoder = BatchedDecoder(model, n_seq=n_seq, n_ctx_seq=n_ctx, threads=threads, keep_finished=True)
        self.ctx = self.decoder.ctx
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)  # callers size their room by its length
        self._n_ctx = n_ctx
        self._local = threading.local()
        self._inbox: "queue.Queue[_Pending | None]" = queue.Queue()
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._driver = threading.Thread(target=self._drive, name="cvlocal-decoder", daemon=True)
        self._driver.start()

    # ----- what callers of Llama use (tokenize, detokenize, metadata, n_vocab, token_bos/eos: Vocab's) -----
    def n_ctx(self) -> int:
        return self._n_ctx

    def set_seed(self, seed: int) -> None:
        self._local.seed = int(seed)

    def set_adapter_scales(self, scales: Sequence[float] | None) -> None:
        """This thread's next generations use these LoRA scales (None: the model's own); see BatchedDecoder."""
        self._local.scales = None if scales is None else tuple(float(s) for s in scales)

    def reset(self) -> None:
        """As ``Llama.reset``: this thread's next generation evaluates its whole prompt."""
        self._local.fresh = True

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, **_: Any) -> Iterator[int]:
        """Tokens sampled after ``tokens``, as ``Llama.generate`` yields them (the caller stops it)."""
        params = SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                                repeat_penalty=repeat_penalty, seed=getattr(self._local, "seed", 0),
                                typical_p=typical_p, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty)
        prompt = [int(t) for t in tokens]
        fresh, self._local.fresh = getattr(self._local, "fresh", False), False
        # One thread is one conversation: its requests prefer the slot its last reply's cells are in.
        request = Request(prompt, max_tokens=max(self._n_ctx - len(prompt), 0), sampling=params, stop_at_eog=False,
                          affinity=threading.get_ident(), reuse_kept=not fresh,
                          scales=getattr(self._local, "scales", None))
        return self._stream(_Pending(request))

    def _stream(self, pending: _Pending) -> Iterator[int]:
        if self._closed.is_set():
            raise DecoderClosed("the shared decoder is closed")
        self._inbox.put(pending)
        try:
            while True:
                token = pending.tokens.get()
                if token is _END:
                    if self._error is not None:
                        raise DecoderClosed(f"the shared decoder stopped: {self._error}") from self._error
                    if self._closed.is_set() and (pending.handle is None or pending.handle.completion is None):
                        raise DecoderClosed("the shared decoder is closed")
                    return
                yield token
        finally:
            pending.cancel()  # the caller stopped (a stop id, max_tokens): free the slot now

    # ----- the driver thread -----
    def _drive(self) -> None:
        decoder = self.decoder
        waiting: dict[int, _Pending] = {}
        try:
            while True:
                if not self._admit(decoder, waiting):
                    break
                for event in decoder.step():
                    pending = waiting.get(event.handle.number)
                    if pending is None:
                        continue
                    if event.token is not None:
                        pending.tokens.put(event.token)
                    if event.done is not None:
                        pending.tokens.put(_END)
                        del waiting[event.handle.number]
        except BaseException as err:  # surface it in the callers instead of hanging them
            self._error = err
        finally:
            self._closed.set()
            for pending in waiting.values():
                pending.tokens.put(_END)
            while True:
                try:
                    left = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if left:
                    left.tokens.put(_END)

    def _admit(self, decoder: BatchedDecoder, waiting: dict[int, _Pending]) -> bool:
        """Submit what callers queued (waiting for one when the decoder is idle); False on close()."""
        block = not decoder.busy
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            handle = decoder.submit(item.request)
            item.handle = handle
            if item.cancelled:
                handle.cancel()
            waiting[handle.number] = item
            block = False

    def close(self) -> None:
        """Stop the driver (callers still generating get :class:`DecoderClosed`) and free the context."""
        if not self._closed.is_set():
            self._inbox.put(None)
        self._driver.join()
        self.decoder.close()

    def __enter__(self) -> "SharedLlama":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
