"""LoRA adapters on a llama-cpp-python model, loaded through llama.cpp's own C API.

Why not ``Llama(lora_path=...)``: in llama-cpp-python 0.3.36 it compares the handle returned by
``llama_adapter_lora_init`` with ``None``, but a refused adapter comes back as a NULL ctypes
pointer (falsy, not None), so a wrong adapter (another architecture, another model's shapes)
is "loaded" and the process crashes at the first evaluation. Here every handle is checked and
a refusal is one line naming the file. It also takes several adapters, each with its own
scale, and changes the scales later (a REPL's ``/set ratio``), which ``Llama`` cannot.

A scale change invalidates the KV cache (the keys and values were computed with the old
weights), so ``set_scales`` resets the model's token state and the next call re-evaluates the
prompt; it returns whether anything changed so callers can say so.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cvlocal.errors import UsageError
from cvlocal.llama.model import GGUF_MAGIC


@dataclass
class AdapterSpec:
    """One ``--adapter FILE[:RATIO]``: the file and its scale (the chat-vector ratio)."""

    path: Path
    scale: float = 1.0


def _finite_ratio(value: float, text: str | Path) -> float:
    """A ratio that is NaN or infinite would poison every logit: refuse it where it is written."""
    if not math.isfinite(value):
        raise UsageError(f"the ratio {value} in {text} is not a finite number", None, "Give a real number, e.g. :0.5 or @0.5.")
    return value


def parse_adapter_spec(text: str) -> AdapterSpec:
    """``FILE.gguf`` or ``FILE.gguf:RATIO`` (the last colon splits only if a number follows)."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head:
        try:
            ratio = float(tail)
        except ValueError:
            pass
        else:
            return AdapterSpec(Path(head), _finite_ratio(ratio, text))
    return AdapterSpec(Path(text), 1.0)


def check_adapter_file(path: Path) -> None:
    """Refuse a missing file or one that is not a GGUF before llama.cpp sees it."""
    if not path.is_file():
        raise UsageError("adapter file not found", path, "Pass a GGUF LoRA adapter made by `cvlocal extract BASE CHAT -o FILE.gguf`.")
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise UsageError("not a GGUF file", path, "Pass a GGUF LoRA adapter made by `cvlocal extract BASE CHAT -o FILE.gguf`.")


def load_lora(lib: Any, model_pointer: Any, path: Path) -> Any:
    """``llama_adapter_lora_init`` on a checked file; a one-line UsageError when llama.cpp refuses it."""
    check_adapter_file(path)
    handle = lib.llama_adapter_lora_init(model_pointer, str(path).encode("utf-8"))
    if not handle:  # a NULL pointer: llama.cpp refused it (its log line says why)
        raise UsageError(
            "llama.cpp refused this LoRA adapter (another architecture or model shapes, or not an adapter)", path,
            "Use an adapter extracted from this model's base and chat models.",
        )
    return handle


def set_lora(lib: Any, ctx: Any, handles: Sequence[Any], scales: Sequence[float], path: Path) -> None:
    """Attach ``handles`` at ``scales`` to a context (``llama_set_adapters_lora``: the context's whole set).

    The one-at-a-time ``Llama`` and the batched decoder's context both go through here, so a ratio
    means the same on both paths.
    """
    n = len(handles)
    array = (lib.llama_adapter_lora_p_ctypes * n)(*handles)
    values = (ctypes.c_float * n)(*[float(s) for s in scales])
    if lib.llama_set_adapters_lora(ctx, array, n, values):
        raise UsageError("llama.cpp could not attach the adapters", path, "Check the log above.")


class Adapters:
    """The adapters attached to one ``Llama`` and their current scales."""

    def __init__(self, llm: Any, specs: Sequence[AdapterSpec]) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.paths: list[Path] = []
        self.scales: list[float] = []
        self._handles: list[Any] = []
        for spec in specs:
            self._load(spec)
        if self._handles:
            self._apply()

    def _load(self, spec: AdapterSpec) -> None:
        path = Path(spec.path)
        handle = load_lora(self._lib, self.llm._model.model, path)

        def free(handle: Any = handle) -> None:
            self._lib.llama_adapter_lora_free(handle)

        self.llm._stack.callback(free)  # runs before the model and context are freed (LIFO)
        self._handles.append(handle)
        self.paths.append(path)
        self.scales.append(float(spec.scale))

    def _apply(self) -> None:
        set_lora(self._lib, self.llm._ctx.ctx, self._handles, self.scales, self.paths[0])

    def set_scales(self, scales: Sequence[float]) -> bool:
        """Set every adapter's scale; True if one changed (the KV cache is then dropped)."""
        if len(scales) != len(self._handles):
            raise ValueError(f"{len(scales)} scales for {len(self._handles)} adapters")
        new = [float(s) for s in scales]
        if new == self.scales:
            return False
        self.scales = new
        self._apply()
        self.llm.reset()
        return True

    def set_scale(self, index: int, scale: float) -> bool:
        """Set adapter ``index`` (0-based); True if it changed."""
        if not 0 <= index < len(self.scales):
            raise IndexError(f"no adapter {index + 1} (there are {len(self.scales)})")
        scales = list(self.scales)
        scales[index] = float(scale)
        return self.set_scales(scales)

    def describe(self) -> list[dict[str, Any]]:
        """``[{"id": 0, "path": ..., "scale": ...}]``: llama-server's /lora-adapters shape."""
        return [{"id": i, "path": str(p), "scale": s} for i, (p, s) in enumerate(zip(self.paths, self.scales))]

    def __len__(self) -> int:
        return len(self._handles)


def open_model(model_path: str | Path, adapters: Sequence[AdapterSpec] = (), **kwargs: Any) -> tuple[Any, Adapters]:
    """``Llama(model_path, **kwargs)`` with ``adapters`` attached and checked; returns both.

    On a refused adapter the model is closed before the error propagates.
    """
    from cvlocal.llama.loader import llama_class

    for spec in adapters:
        check_adapter_file(Path(spec.path))
    llm = llama_class()(model_path=str(model_path), **kwargs)
    try:
        return llm, Adapters(llm, adapters)
    except BaseException:
        llm.close()
        raise


def parse_model_spec(text: str | Path) -> tuple[Path, list[AdapterSpec]]:
    """``CP.gguf+ADAPTER.gguf@RATIO[+...]`` to the model and its adapters (``@RATIO`` defaults to 1).

    A plain path is a model without adapters, so every command that takes a model takes a spec.
    """
    if Path(text).exists():  # a file whose own name holds a '+' is a model, not a spec
        return Path(text), []
    model, *rest = str(text).split("+")
    adapters = []
    for part in rest:
        head, sep, tail = part.rpartition("@")
        try:
            adapters.append(AdapterSpec(Path(head), _finite_ratio(float(tail), text)) if sep and head else AdapterSpec(Path(part), 1.0))
        except ValueError:
            raise UsageError(f"bad ratio {tail!r} in the model spec {text}", None, "Write CP.gguf+ADAPTER.gguf@RATIO, e.g. @0.5.") from None
    return Path(model), adapters
