"""``cvlocal eval --parallel N``: a model's pending items generated N sequences at a time.

Each item still runs through :func:`cvlocal.evaluation.generate.generate_item` and the backend's
own ``complete``/``chat`` (the same templates, seeds, stops and records), each in its own worker
thread, on a :class:`cvlocal.llama.shared.SharedLlama`: their sequences are decoded together in one
llama.cpp context. Records come back in the order items finish and are cached at once (the cache is
keyed by item, so resume works as before). An item's ``seconds`` is the wall time since the
previous item finished, so that the report's items per minute stay wall-clock throughput; its own
start-to-end time is kept as ``latency_seconds``.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from cvlocal.evaluation.backend import LlamaBackend
from cvlocal.evaluation.generate import GenerationSettings, generate_item
from cvlocal.evaluation.suites import Item

MAX_PARALLEL = 8
KV_SHARE_OF_MEMORY = 0.25  # at most this share of the available memory goes to the KV cache
# Below this a step's arithmetic is so small that the batched loop's own per-token work (a thread
# per sequence, a sampler chain each, the hand-over between them) outweighs reading the weights
# once for all. Measured with `benchmarks/batched.py` on 2 cores at q8_0, eval --parallel 8 against
# --parallel 1: 0.57x on the demo's 1.3 MB model, 1.1x at 19 MB, 1.6x at 50 MB, 2.2x at 1.2 GB.
BATCH_MIN_MODEL_BYTES = 16 << 20
RecordHook = Callable[[Item, dict[str, Any]], None]


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable), or physical memory where that is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def choose_parallel(kv_bytes_per_token: int, ctx: int, memory: int | None = None,
                    model_bytes: int | None = None) -> int:
    """Sequences whose KV cache (``ctx`` tokens each) fits a quarter of the free memory, 1 to 8;
    1 for a model under :data:`BATCH_MIN_MODEL_BYTES`, which decodes faster one sequence at a time."""
    if model_bytes is not None and model_bytes < BATCH_MIN_MODEL_BYTES:
        return 1
    memory = available_memory() if memory is None else memory
    per_sequence = max(kv_bytes_per_token * ctx, 1)
    return max(1, min(MAX_PARALLEL, int(memory * KV_SHARE_OF_MEMORY) // per_sequence))


def batching_pays(model_path: Path) -> bool:
    """False for a GGUF under :data:`BATCH_MIN_MODEL_BYTES` (its file size: known before loading,
    so the default picks one path and loads the model once)."""
    try:
        return Path(model_path).stat().st_size >= BATCH_MIN_MODEL_BYTES
    except OSError:
        return True  # the loader reports the missing file


Job = TypeVar("Job")
Result = TypeVar("Result")


def run_on_shared(llm: Any, n_seq: int, jobs: Sequence[Job], work: Callable[[Job], Result],
                  on_done: Callable[[Job, Result], None], *, name: str) -> None:
    """``work(job)`` for every job on ``n_seq`` worker threads feeding one shared decoder ``llm``
    (:class:`cvlocal.llama.shared.SharedLlama`); ``on_done`` gets each result in this thread, in
    the order they finish. On any exception (Ctrl-C too) the queue is dropped and ``llm`` is closed,
    so the workers still generating get DecoderClosed and end, and the exception goes on."""
    queue = list(jobs)
    with ThreadPoolExecutor(max_workers=n_seq, thread_name_prefix=name) as pool:
        running: dict[Future[Result], Job] = {}
        try:
            while queue or running:
                while queue and len(running) < n_seq:
                    job = queue.pop(0)
                    running[pool.submit(work, job)] = job
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_done(running.pop(future), future.result())
        except BaseException:
            queue.clear()
            for future in running:
                future.cancel()
            llm.close()
            raise


def open_shared(model_path: Path, adapters: Sequence[Any], *, parallel: int | None, ctx: int, threads: int | None,
                n_gpu_layers: int) -> Any:
    """A :class:`cvlocal.llama.shared.SharedLlama` of ``parallel`` sequences of ``ctx`` tokens, or
    None where one at a time is the path: ``parallel`` 1, or unset and a GGUF under 16 MB, or unset
    and memory for one sequence only. The caller closes it and then ``.model``."""
    if parallel == 1 or (parallel is None and not batching_pays(model_path)):
        return None
    from cvlocal.llama.model import Model
    from cvlocal.llama.shared import SharedLlama

    model = Model(model_path, n_gpu_layers=n_gpu_layers, adapters=adapters)
    try:
        n_seq = parallel or choose_parallel(model.kv_bytes_per_token(), ctx, model_bytes=model.weight_bytes())
        if n_seq == 1:
            model.close()
            return None
        return SharedLlama(model, n_seq=n_seq, n_ctx=ctx, threads=threads)
    except BaseException:
        model.close()
        raise


class ParallelBackend(LlamaBackend):
    """The evaluation backend over a shared batched decoder; :meth:`generate_items` runs many items."""

    def __init__(self, llm: Any, *, chat_format: str | None, n_seq: int, path: Path | None = None) -> None:
        # super().__init__ is not called: the model is already open. ``path`` is the model spec
        # (CP.gguf+ADAPTER.gguf@R) the records are cached under.
        self.path = Path(path if path is not None else llm.model_path)
        self.llm = llm
        self.chat_format = chat_format
        self.template_warning = None
        self.n_seq = n_seq

    def generate_items(self, items: Sequence[Item], settings: GenerationSettings, on_record: RecordHook) -> None:
        """Generate ``items`` ``n_seq`` at a time; ``on_record`` gets each record in this thread."""
        last = time.perf_counter()

        def done(item: Item, record: dict[str, Any]) -> None:
            nonlocal last
            now = time.perf_counter()
            record["latency_seconds"] = record["seconds"]
            record["seconds"] = round(now - last, 4)
            last = now
            on_record(item, record)

        run_on_shared(self.llm, self.n_seq, items, lambda item: generate_item(self, item, settings), done,
                      name="cvlocal-eval")

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()
            llm.model.close()


def open_backend(path: Path, *, parallel: int | None, ctx: int, threads: int | None, n_gpu_layers: int,
                 chat_format: str | None) -> LlamaBackend:
    """``parallel`` sequences (None: as many as memory allows, up to 8, and one at a time for a GGUF
    under 16 MB); 1 is the one-at-a-time backend.

    A model spec with LoRA adapters (``CP.gguf+ADAPTER.gguf@R``) is batched too: the decoder's
    context carries the adapters at the spec's ratios, as the one-at-a-time ``Llama`` does.
    """
    from cvlocal.llama.adapters import parse_model_spec

    model_path, adapters = parse_model_spec(path)
    llm = open_shared(model_path, adapters, parallel=parallel, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers)
    if llm is None:
        return LlamaBackend(path, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers, chat_format=chat_format)
    return ParallelBackend(llm, chat_format=chat_format, n_seq=llm.decoder.n_seq, path=path)
