"""Opening a GGUF on llama.cpp's low-level API, with the settings llama-cpp-python's ``Llama`` uses.

``Llama(model_path, n_ctx=...)`` does not use llama.cpp's context defaults: it turns flash
attention off (llama.cpp's default is "auto", reported in issue 14 to change a single sequence's logits), sets
the YaRN factors and the thread counts its own way and batches by ``min(n_ctx, 512)``. A context
made here copies those choices field by field, so one sequence decoded here gives the logits
``Llama`` gives, and several sequences decoded together are compared against the same thing.
"""
from __future__ import annotations

import multiprocessing
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cvlocal.errors import UsageError
from cvlocal.llama.log import captured_log
from cvlocal.llama.tokens import Vocab

GGUF_MAGIC = b"GGUF"
DEFAULT_BATCH = 512  # llama-cpp-python's n_batch and n_ubatch default

_backend_lock = threading.Lock()
_backend_ready: list[bool] = []


def check_gguf(path: str | Path) -> Path:
    """``path`` if it is a readable file that starts like a GGUF; a one-line UsageError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("no such GGUF file", path=path, fix="Give the path of a .gguf model")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise UsageError("not a GGUF file (bad magic)", path=path,
                             fix="Convert the model first with `cvlocal convert MODEL_DIR -o OUT.gguf`")
    return path


def llama_cpp_module() -> Any:
    """The ``llama_cpp`` module with llama.cpp's backend initialised (once per process)."""
    try:
        import llama_cpp
    except ImportError as err:
        raise UsageError(f"llama-cpp-python is not installed ({err})", fix="Run: pip install llama-cpp-python") from err
    with _backend_lock:
        if not _backend_ready:
            with captured_log():
                llama_cpp.llama_backend_init()
            _backend_ready.append(True)
    return llama_cpp


@dataclass(frozen=True)
class Threads:
    """Generation and prompt threads as ``Llama`` picks them when not given."""

    generate: int
    batch: int

    @classmethod
    def choose(cls, threads: int | None) -> "Threads":
        cpus = multiprocessing.cpu_count()
        return cls(threads or max(cpus // 2, 1), threads or cpus)


class Model:
    """A loaded GGUF (weights and vocabulary); contexts are made from it with :meth:`context_params`.

    ``adapters`` (:class:`cvlocal.llama.adapters.AdapterSpec`) are LoRA adapters loaded onto the
    weights here; a context attaches them at their scales (``adapter_handles``/``adapter_scales``),
    as ``Adapters`` does on a ``Llama``. They are freed before the model.
    """

    def __init__(self, path: str | Path, *, n_gpu_layers: int = 0, adapters: Sequence[Any] = ()) -> None:
        from llama_cpp import _internals

        from cvlocal.llama.adapters import check_adapter_file, load_lora

        self.path = check_gguf(path)
        self.adapter_paths: list[Path] = [Path(spec.path) for spec in adapters]
        self.adapter_scales: tuple[float, ...] = tuple(float(spec.scale) for spec in adapters)
        self.adapter_handles: list[Any] = []
        for adapter in self.adapter_paths:  # a missing adapter is refused before the model loads
            check_adapter_file(adapter)
        llama_cpp = llama_cpp_module()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP  # Llama's use_mmap=True, use_mlock=False
        with captured_log() as log:
            try:
                self.native = _internals.LlamaModel(path_model=str(self.path), params=params, verbose=False)
            except (ValueError, RuntimeError) as err:
                reason = "; ".join(log.problems()[-2:]) or str(err)
                raise UsageError(f"llama.cpp could not load the model ({reason})", path=self.path,
                                 fix="Check that the file is complete and was written by a recent converter") from err
        self.vocab = Vocab(self.native)
        try:
            with captured_log():
                for adapter in self.adapter_paths:
                    self.adapter_handles.append(load_lora(llama_cpp, self.pointer, adapter))
        except BaseException:
            self.close()
            raise

    @property
    def pointer(self) -> Any:
        """The ``llama_model *`` for low-level calls."""
        return self.native.model

    def n_ctx_train(self) -> int:
        return int(self.native.n_ctx_train())

    def weight_bytes(self) -> int:
        """Bytes of the model's tensors (llama.cpp's ``llama_model_size``)."""
        import llama_cpp

        return int(llama_cpp.llama_model_size(self.pointer))

    def kv_bytes_per_token(self) -> int:
        """Bytes of f16 K and V cache one token takes (all layers): what a context of N tokens costs."""
        import llama_cpp

        m = self.pointer
        n_head = max(int(llama_cpp.llama_model_n_head(m)), 1)
        head_dim = int(llama_cpp.llama_model_n_embd(m)) // n_head
        return 2 * 2 * int(llama_cpp.llama_model_n_layer(m)) * int(llama_cpp.llama_model_n_head_kv(m)) * head_dim

    def context_params(self, n_ctx: int, *, n_seq_max: int = 1, threads: int | None = None,
                       n_batch: int = DEFAULT_BATCH) -> Any:
        """``llama_context_params`` as ``Llama(n_ctx=n_ctx)`` fills them, for ``n_seq_max`` sequences.

        Each sequence gets its own KV stream (``kv_unified`` off) of ``n_ctx / n_seq_max`` cells, so
        a sequence's cells sit at the same places as when it is decoded alone.
        """
        import llama_cpp

        chosen = Threads.choose(threads)
        batch = min(n_ctx, n_batch)
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = batch
        p.n_ubatch = min(batch, DEFAULT_BATCH)
        p.n_seq_max = n_seq_max
        p.kv_unified = False
        p.n_threads = chosen.generate
        p.n_threads_batch = chosen.batch
        p.rope_scaling_type = llama_cpp.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
        p.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        p.attention_type = llama_cpp.LLAMA_ATTENTION_TYPE_UNSPECIFIED
        p.rope_freq_base = 0.0
        p.rope_freq_scale = 0.0
        p.yarn_ext_factor = -1.0
        p.yarn_attn_factor = 1.0
        p.yarn_beta_fast = 32.0
        p.yarn_beta_slow = 1.0
        p.yarn_orig_ctx = 0
        p.embeddings = False
        p.offload_kqv = True
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = False
        return p

    def close(self) -> None:
        handles, self.adapter_handles = getattr(self, "adapter_handles", []), []
        if handles:
            import llama_cpp

            for handle in handles:
                llama_cpp.llama_adapter_lora_free(handle)
        native, self.native = getattr(self, "native", None), None
        if native is not None:
            native.close()
