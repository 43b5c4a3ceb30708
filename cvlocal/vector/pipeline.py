"""The streaming loop: read the next chunk on the host while this one is computed, write behind.

Work is cut into chunks of whole rows (``plan_chunks``), small enough that a few of them in
flight cost a few hundred MB whatever the model size; the largest tensor (an 8B model's
embedding is 1 GB in bf16) is never held whole. Three stages run at once: a reader thread
(file reads release the GIL), the compute step in the calling thread (on the chosen device),
and a writer thread. Queues of depth two bound the memory; an error or Ctrl-C in any stage stops
all of them, every thread is joined, and the first error is re-raised in the caller.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

# Elements per chunk: 16 MB per bf16 input read; the float32 work is done in cache-sized blocks
# of it (``arithmetic.ChunkArithmetic``), not on chunk-sized temporaries.
CHUNK_ELEMENTS = 8 * 1024 * 1024
_DONE = object()


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of tensor ``name`` (``rows`` in all); ``last`` closes the tensor."""

    name: str
    start: int
    stop: int
    rows: int

    @property
    def last(self) -> bool:
        return self.stop == self.rows


def plan_chunks(shapes: Iterable[tuple[str, tuple[int, ...]]], chunk_elements: int = CHUNK_ELEMENTS) -> list[Chunk]:
    """Cut each tensor into runs of whole rows of at most ``chunk_elements`` (at least one row)."""
    chunks = []
    for name, shape in shapes:
        rows = shape[0] if shape else 1
        per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
        step = max(1, chunk_elements // max(per_row, 1))
        if rows == 0:
            chunks.append(Chunk(name, 0, 0, 0))
        for start in range(0, rows, step):
            chunks.append(Chunk(name, start, min(rows, start + step), rows))
    return chunks


class _Stage(threading.Thread):
    """A daemon thread that records the first exception so the caller can re-raise it."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as err:  # re-raised in the caller
            self.error = err


def _put(q: "queue.Queue[Any]", item: Any, stop: threading.Event, consumer: _Stage | None = None) -> bool:
    """Put unless stopped; a consumer that died makes this raise its error instead of waiting forever."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if consumer is not None and not consumer.is_alive():
                if consumer.error is not None:
                    raise consumer.error
                return False
    return False


def _get(q: "queue.Queue[Any]", stop: threading.Event, stage: _Stage | None) -> Any:
    """Take the next item; ``_DONE`` once stopped (queued items are dropped) or the producer ended."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stage is not None and not stage.is_alive():
                if stage.error is not None:
                    raise stage.error
                return _DONE
    return _DONE


@contextmanager
def compute_threads(device: torch.device) -> Iterator[None]:
    """Leave one core to the reader and writer threads while the CPU computes.

    torch's intra-op threads spin-wait; with as many of them as cores plus the two I/O threads the
    cores are oversubscribed, which measured slower on 2 cores than a single compute thread.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_pipeline(
    chunks: list[Chunk],
    read: Callable[[Chunk], Any],
    compute: Callable[[Chunk, Any], torch.Tensor],
    write: Callable[[Chunk, torch.Tensor], None],
    depth: int = 2,
) -> None:
    """Run read -> compute -> write over ``chunks`` with the three stages overlapping."""
    stop = threading.Event()
    inbox: queue.Queue[Any] = queue.Queue(maxsize=depth)
    outbox: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def reader() -> None:
        for chunk in chunks:
            if stop.is_set() or not _put(inbox, (chunk, read(chunk)), stop):
                return
        _put(inbox, _DONE, stop)

    def writer() -> None:
        while True:
            item = _get(outbox, stop, None)
            if item is _DONE:
                return
            write(*item)

    read_stage, write_stage = _Stage(reader, "cvlocal-read"), _Stage(writer, "cvlocal-write")
    read_stage.start()
    write_stage.start()
    try:
        while True:
            item = _get(inbox, stop, read_stage)
            if item is _DONE:
                break
            chunk, parts = item
            result = compute(chunk, parts)
            if write_stage.error is not None:
                raise write_stage.error
            if not _put(outbox, (chunk, result), stop, write_stage):
                break
            del item, parts, result
        if read_stage.error is not None:
            raise read_stage.error
        _put(outbox, _DONE, stop, write_stage)
        write_stage.join()
        if write_stage.error is not None:
            raise write_stage.error
    except BaseException:
        # Every wait in the stages polls ``stop``, so they end within one read or write; joining
        # without a timeout guarantees no thread outlives the call (a thread still inside torch at
        # interpreter exit aborts the process: "terminate called without an active exception").
        stop.set()
        read_stage.join()
        write_stage.join()
        raise
