"""Batched decoding: N prompts in, N streams out, several sequences in one llama.cpp context.

llama-cpp-python's ``Llama`` decodes one sequence at a time. Where decoding is bound by reading the
weights (most machines, most models), one ``llama_decode`` over several sequences reads them once
for all, so throughput grows with the batch. This is that loop on the low-level API:

* one context with ``n_seq_max`` sequences, each in its own KV stream of ``n_ctx_seq`` cells
  (``kv_unified`` off), so a sequence's cells sit where they would if it ran alone, and at f16 and
  q8_0 (the tests check it) its tokens are the ones the one-at-a-time path gives;
* each step builds one ``llama_batch``: the next token of every running sequence, or one prompt
  chunk (up to ``n_batch`` tokens) of a new sequence, taking turns, so prompt processing is
  interleaved with decoding instead of stalling it;
* continuous batching: a sequence that finishes (a stop id, a stop string, ``max_tokens``, or a
  cancel) is removed from the KV cache with ``llama_memory_seq_rm`` and its slot takes the next
  queued request at the next step;
* a new prompt that shares a long prefix with a running sequence (a system prompt, a template
  header) copies that sequence's cells (``llama_memory_seq_cp``) instead of evaluating them again;
* a prompt that does not fit one sequence's context is refused on its own (finish reason
  ``"refused"``), the other sequences go on;
* the model's LoRA adapters (``Model(adapters=...)``) are attached to the context at their scales,
  as on a ``Llama``. A context has one set of scales for all its sequences, so a request that asks
  for other scales (``Request.scales``) waits until the running sequences have finished, then the
  context switches (dropping every kept cell, computed with the old weights) and takes it; requests
  are admitted in arrival order, so none waits behind later ones.

Each sequence has its own sampler chain (:mod:`cvlocal.llama.sampling`) and its own UTF-8 and
stop-string state, so its text is what the one-at-a-time loop would stream.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from cvlocal.llama.stops import StopScanner
from cvlocal.llama.utf8 import Utf8Stream
from cvlocal.errors import WorkError
from cvlocal.llama.log import captured_log
from cvlocal.llama.model import DEFAULT_BATCH, Model
from cvlocal.llama.sampling import SamplerChain, SamplingParams

FinishReason = Literal["stop", "length", "cancelled", "refused"]
SHARE_PREFIX_MIN = 16  # shorter common prefixes are cheaper to evaluate than to copy a KV stream


@dataclass(frozen=True)
class Request:
    """One generation: prompt tokens and how to sample and when to stop.

    ``stop_ids`` end the reply (not part of it); with ``stop_at_eog`` llama.cpp's own
    end-of-generation tokens do too (as ``Llama.create_completion`` does). ``stop_texts`` end it at
    the string (never shown). ``strip_leading`` drops the space a SentencePiece model puts before
    the first word of a reply. ``tag`` is the caller's, handed back with every event.
    """

    prompt: Sequence[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_ids: frozenset[int] = frozenset()
    stop_texts: tuple[str, ...] = ()
    stop_at_eog: bool = True
    strip_leading: bool = False
    tag: Any = None
    affinity: Any = None  # requests with the same affinity prefer the same slot (its kept cells, see keep_finished)
    reuse_kept: bool = True  # False: evaluate the whole prompt even where a slot's kept cells match (Llama.reset())
    scales: tuple[float, ...] | None = None  # one per adapter of the model; None: the model's own scales


@dataclass
class Completion:
    """How one request ended: its text and tokens (no stop token), and what it cost."""

    tag: Any
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    reused_prompt_tokens: int = 0  # copied from another sequence's cells instead of evaluated
    error: str | None = None
    ttft_s: float = 0.0
    total_s: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Event:
    """New text of one request: ``token`` is the token it came from (None on an event that only
    ends the request, or flushes held-back text); ``done`` is set on the request's last event."""

    handle: "Handle"
    text: str = ""
    done: Completion | None = None
    token: int | None = None


class Handle:
    """A submitted request; :meth:`cancel` ends it at the next step (finish reason ``"cancelled"``)."""

    def __init__(self, number: int, request: Request) -> None:
        self.number = number
        self.request = request
        self.cancelled = False
        self.completion: Completion | None = None
        self.seq: int | None = None

    @property
    def tag(self) -> Any:
        return self.request.tag

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Slot:
    """A sequence in the context: its tokens, how far they are evaluated, its sampler and text state."""

    seq: int
    handle: Handle
    sampler: SamplerChain
    max_tokens: int
    tokens: list[int]
    n_past: int = 0
    reused: int = 0
    next_token: int | None = None
    generated: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    scanner: StopScanner = field(default_factory=lambda: StopScanner(()))
    leading: bool = False
    t0: float = 0.0
    t_first: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.handle.request.prompt)

    @property
    def prefilling(self) -> bool:
        return self.n_past < self.prompt_len


class BatchedDecoder:
    """Decode many requests together in one context of ``n_seq`` sequences of ``n_ctx_seq`` tokens.

    Use :meth:`run` for a list of requests, or :meth:`submit` and :meth:`events` (or :meth:`step`)
    to stream. Not thread-safe: one thread drives it.

    ``keep_finished``: a finished sequence's cells stay in its (free) slot, as ``Llama`` keeps its
    last prompt and reply, and the next request placed there reuses the longest common prefix
    (``Llama.generate``'s rule). A dialogue's next turn then continues from the KV cells its
    last reply was decoded into, as on the one-at-a-time path, instead of evaluating that reply again
    as a prompt (which gives slightly different cells: prompt chunks and single-token steps do not
    run the same kernels). Memory stays bounded (at most ``n_seq`` streams); off, a finished
    sequence's cells are freed at once.
    """

    def __init__(self, model: Model, *, n_seq: int, n_ctx_seq: int, threads: int | None = None,
                 n_batch: int = DEFAULT_BATCH, share_prefix_min: int = SHARE_PREFIX_MIN,
                 keep_finished: bool = False) -> None:
        import llama_cpp

        if n_seq < 1 or n_ctx_seq < 1:
            raise ValueError("n_seq and n_ctx_seq must be at least 1")
        self._lib = llama_cpp
        self.model = model
        self.vocab = model.vocab
        self.n_seq = n_seq
        self.n_ctx_seq = n_ctx_seq
        self.share_prefix_min = share_prefix_min
        params = model.context_params(n_ctx_seq * n_seq, n_seq_max=n_seq, threads=threads, n_batch=n_batch)
        self.n_batch = int(params.n_batch)
        with captured_log() as log:
            self.ctx = llama_cpp.llama_init_from_model(model.pointer, params)
        if not self.ctx:
            reason = "; ".join(log.problems()[-2:]) or "llama_init_from_model failed"
            raise WorkError(f"llama.cpp could not make a context for {n_seq} x {n_ctx_seq} tokens ({reason})")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.scales: tuple[float, ...] = tuple(model.adapter_scales)
        if model.adapter_handles:
            self._attach(self.scales)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._n_vocab = self.vocab.n_vocab()
        self._slots: list[_Slot | None] = [None] * n_seq
        self.keep_finished = keep_finished
        self._kept: list[list[int]] = [[] for _ in range(n_seq)]  # tokens a free slot's cells still hold
        self._owner: list[Any] = [None] * n_seq  # affinity of the slot's last request
        self._freed_at: list[int] = [0] * n_seq  # decode call count when the slot was last freed (LRU)
        self._queue: deque[Handle] = deque()
        self._done: list[Event] = []
        self._submitted = 0
        self.decode_calls = 0
        self._prefill_turn = True

    # ----- submitting -----
    def submit(self, request: Request) -> Handle:
        """Queue a request; it starts when a slot is free. A prompt that cannot fit is refused at once."""
        handle = Handle(self._submitted, request)
        self._submitted += 1
        prompt = len(request.prompt)
        if prompt == 0:
            self._finish_unstarted(handle, "refused", "the prompt is empty")
        elif request.scales is not None and len(request.scales) != len(self.scales):
            self._finish_unstarted(handle, "refused", f"{len(request.scales)} adapter scales for a model with "
                                                      f"{len(self.scales)} adapters")
        elif prompt >= self.n_ctx_seq:
            self._finish_unstarted(handle, "refused", f"the prompt needs {prompt} tokens but a sequence's context "
                                                      f"holds {self.n_ctx_seq}")
        else:
            self._queue.append(handle)
        return handle

    @property
    def busy(self) -> bool:
        """Whether anything is queued, running or not yet reported."""
        return bool(self._queue or self._done or any(self._slots))

    def running(self) -> int:
        return sum(s is not None for s in self._slots)

    # ----- the loop -----
    def step(self) -> list[Event]:
        """Admit queued requests into free slots, decode one batch, sample; the events it produced."""
        events, self._done = self._done, []
        for slot in list(filter(None, self._slots)):
            if slot.handle.cancelled:
                events.append(self._finish(slot, "cancelled"))
        self._admit()
        n, outputs = self._fill_batch()
        if n == 0:
            return events
        result = self._lib.llama_decode(self.ctx, self._batch)
        self.decode_calls += 1
        if result != 0:
            raise WorkError(f"llama_decode failed with code {result} on a batch of {n} tokens")
        now = time.perf_counter()
        for index, slot in outputs:
            token = slot.sampler.sample(self.ctx, index)
            if slot.t_first is None:
                slot.t_first = now
            events.extend(self._take(slot, token))
        return events

    def events(self) -> Iterator[Event]:
        """Step until everything submitted has finished, yielding events as they come."""
        while self.busy:
            yield from self.step()

    def run(self, requests: Iterable[Request], on_event: Callable[[Event], None] | None = None) -> list[Completion]:
        """Decode all ``requests`` (at most ``n_seq`` at a time); their completions in request order."""
        handles = [self.submit(r) for r in requests]
        for event in self.events():
            if on_event is not None:
                on_event(event)
        return [h.completion for h in handles]  # type: ignore[misc]

    # ----- KV bookkeeping, for callers that check memory -----
    def seq_pos_max(self, seq: int) -> int:
        """The last position sequence ``seq`` holds in the KV cache; -1 when it holds none."""
        return int(self._lib.llama_memory_seq_pos_max(self.memory, seq))

    def close(self) -> None:
        for slot in filter(None, self._slots):
            slot.sampler.close()
        self._slots = [None] * self.n_seq
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            self._lib.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> "BatchedDecoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- internals -----
    def _admit(self) -> None:
        while self._queue and None in self._slots:
            handle = self._queue[0]
            if handle.cancelled:
                self._queue.popleft()
                self._finish_unstarted(handle, "cancelled", None)
                continue
            scales = handle.request.scales
            wanted = tuple(self.model.adapter_scales) if scales is None else tuple(float(s) for s in scales)
            if wanted != self.scales:
                if any(self._slots):
                    return  # other scales: after the running group (in arrival order, nothing overtakes it)
                self._switch_scales(wanted)
            self._queue.popleft()
            self._start(self._pick_slot(handle.request), handle)

    def _attach(self, scales: tuple[float, ...]) -> None:
        from cvlocal.llama.adapters import set_lora

        set_lora(self._lib, self.ctx, self.model.adapter_handles, scales, self.model.adapter_paths[0])

    def _switch_scales(self, scales: tuple[float, ...]) -> None:
        """New adapter scales for the (idle) context; every kept cell was computed with the old ones."""
        self._attach(scales)
        self.scales = scales
        for seq, kept in enumerate(self._kept):
            if kept:
                self._lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
                self._kept[seq] = []

    def _pick_slot(self, request: Request) -> int:
        """A free slot: the one whose kept cells share the longest prefix with the prompt (when that is
        worth it), else the last slot of the request's affinity, else an empty one, else the one freed
        longest ago (a kept conversation is overwritten last)."""
        free = [seq for seq, slot in enumerate(self._slots) if slot is None]
        prompt = request.prompt

        def shared(seq: int) -> int:
            kept, n = self._kept[seq], 0
            top = min(len(kept), len(prompt))
            while n < top and kept[n] == prompt[n]:
                n += 1
            return n

        best = max(free, key=shared)
        if request.reuse_kept and shared(best) >= self.share_prefix_min:
            return best
        mine = [seq for seq in free if request.affinity is not None and self._owner[seq] == request.affinity]
        empty = [seq for seq in free if not self._kept[seq]]
        return (mine or empty or sorted(free, key=lambda seq: self._freed_at[seq]))[0]

    def _start(self, seq: int, handle: Handle) -> None:
        request = handle.request
        room = self.n_ctx_seq - len(request.prompt)
        slot = _Slot(seq=seq, handle=handle, sampler=SamplerChain(self._n_vocab, SamplingParams.like(request.sampling)),
                     max_tokens=min(request.max_tokens, room), tokens=[int(t) for t in request.prompt],
                     scanner=StopScanner(request.stop_texts), leading=request.strip_leading,
                     t0=time.perf_counter())
        handle.seq = seq
        self._slots[seq] = slot
        self._owner[seq] = request.affinity
        kept, self._kept[seq] = self._kept[seq], []
        if kept and not request.reuse_kept:
            self._lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        elif kept:
            n = 0
            while n < min(len(kept), slot.prompt_len) and kept[n] == slot.tokens[n]:
                n += 1
            n = min(n, slot.prompt_len - 1)  # the last prompt token is evaluated again: its logits are needed
            self._lib.llama_memory_seq_rm(self.memory, seq, n if n > 0 else -1, -1)
            slot.n_past = slot.reused = max(n, 0)
        if slot.max_tokens <= 0:
            self._done.append(self._finish(slot, "length"))

    def _share_prefix(self, slot: _Slot) -> None:
        """Copy the longest evaluated prefix a running sequence has in common with this prompt."""
        best, donor = 0, None
        limit = slot.prompt_len - 1  # the last prompt token is always evaluated: its logits are needed
        for other in filter(None, self._slots):
            if other is slot or other.n_past < self.share_prefix_min:
                continue
            n = 0
            top = min(limit, other.n_past)
            while n < top and other.tokens[n] == slot.tokens[n]:
                n += 1
            if n > best:
                best, donor = n, other
        if donor is None or best < self.share_prefix_min:
            return
        # Across KV streams llama.cpp copies the donor's whole stream, then the tail is dropped.
        self._lib.llama_memory_seq_cp(self.memory, donor.seq, slot.seq, -1, -1)
        self._lib.llama_memory_seq_rm(self.memory, slot.seq, best, -1)
        slot.n_past = slot.reused = best

    def _fill_batch(self) -> tuple[int, list[tuple[int, _Slot]]]:
        """The next batch; (tokens, [(logit index, slot)]).

        Either the next token of every running sequence, or one prompt chunk of one new sequence,
        alternating when both wait (so a new prompt never stalls the running ones for long). With one
        KV stream per sequence llama.cpp splits a mixed batch into the same two passes anyway (its
        equal split takes one token per sequence, then the rest of the chunk), so nothing is lost, and
        a chunk alone is cut exactly where ``Llama.eval`` cuts it (every ``n_batch`` tokens).
        """
        b = self._batch
        slots = [s for s in self._slots if s is not None]
        ready = [s for s in slots if s.next_token is not None]
        prefilling = [s for s in slots if s.prefilling]
        outputs: list[tuple[int, _Slot]] = []
        n = 0
        if prefilling and (not ready or self._prefill_turn):
            slot = prefilling[0]
            if slot.n_past == 0:  # its turn comes after earlier prompts are in: share with them
                self._share_prefix(slot)
            start = slot.n_past
            chunk = slot.tokens[start:min(slot.prompt_len, start + self.n_batch)]
            for n, token in enumerate(chunk):
                self._put(n, token, start + n, slot.seq, False)
            n = len(chunk)
            slot.n_past += n
            if not slot.prefilling:
                b.logits[n - 1] = True
                outputs.append((n - 1, slot))
        else:
            for n, slot in enumerate(ready):
                self._put(n, slot.next_token, slot.n_past, slot.seq, True)  # type: ignore[arg-type]
                outputs.append((n, slot))
                slot.tokens.append(slot.next_token)  # type: ignore[arg-type]
                slot.n_past += 1
                slot.next_token = None
            n = len(ready)
        self._prefill_turn = bool(prefilling) and not self._prefill_turn
        b.n_tokens = n
        return n, outputs

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _take(self, slot: _Slot, token: int) -> list[Event]:
        """Handle a sampled token: stop, or add it to the reply and queue it for the next batch."""
        request = slot.handle.request
        if token in request.stop_ids or (request.stop_at_eog and self.vocab.is_end_of_generation(token)):
            return [self._finish(slot, "stop")]
        slot.generated.append(token)
        text = self._emit(slot, slot.scanner.feed(slot.utf8.feed(self.vocab.piece(token))))
        events = [Event(slot.handle, text, token=token)]
        if slot.scanner.stopped:
            events.append(self._finish(slot, "stop"))
        elif len(slot.generated) >= slot.max_tokens:
            events.append(self._finish(slot, "length"))
        else:
            slot.next_token = token
        return events

    @staticmethod
    def _emit(slot: _Slot, text: str) -> str:
        if slot.leading:
            text = text.lstrip()
            if not text:
                return ""
            slot.leading = False
        if text:
            slot.pieces.append(text)
        return text

    def _finish(self, slot: _Slot, reason: FinishReason) -> Event:
        """End a running sequence: flush its text, free its KV cells and its slot."""
        tail = ""
        if not slot.scanner.stopped:
            slot.utf8.flush()  # a reply cut inside a character drops its bytes, as the chat does
            tail = self._emit(slot, slot.scanner.flush())
        if self.keep_finished:
            self._kept[slot.seq] = slot.tokens[:slot.n_past]
        else:
            self._lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        slot.sampler.close()
        self._slots[slot.seq] = None
        self._freed_at[slot.seq] = self.decode_calls
        end = time.perf_counter()
        completion = Completion(
            tag=slot.handle.tag, text="".join(slot.pieces), token_ids=list(slot.generated), finish_reason=reason,
            prompt_tokens=slot.prompt_len, reused_prompt_tokens=slot.reused,
            ttft_s=((slot.t_first or end) - slot.t0), total_s=end - slot.t0)
        slot.handle.completion = completion
        return Event(slot.handle, tail, completion)

    def _finish_unstarted(self, handle: Handle, reason: FinishReason, error: str | None) -> None:
        """End a request that never got a slot; reported at the next step."""
        completion = Completion(tag=handle.tag, text="", token_ids=[], finish_reason=reason,
                                prompt_tokens=len(handle.request.prompt), error=error)
        handle.completion = completion
        self._done.append(Event(handle, "", completion))


def decode_all(model: Model, requests: Sequence[Request], *, n_seq: int, n_ctx_seq: int,
               threads: int | None = None) -> list[Completion]:
    """Convenience: one decoder for ``requests``, closed afterwards."""
    with BatchedDecoder(model, n_seq=n_seq, n_ctx_seq=n_ctx_seq, threads=threads) as decoder:
        return decoder.run(requests)

