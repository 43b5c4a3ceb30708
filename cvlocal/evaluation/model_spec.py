"""Model specs for ``cvlocal eval``: a GGUF, or ``CP.gguf+ADAPTER.gguf@RATIO`` (a CP model with a LoRA adapter).

The spec is parsed by ``cvlocal.llama.adapters.parse_model_spec``; here it is checked before any
model loads and fingerprinted (model, adapters and ratios), so cached generations of one ratio are
never reused for another.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from cvlocal.evaluation.files import file_fingerprint, require_gguf
from cvlocal.llama.adapters import check_adapter_file, parse_model_spec


def require_model_spec(spec: str | Path) -> Path:
    """The model's path after checking it and every adapter of the spec (one-line errors)."""
    model, adapters = parse_model_spec(spec)
    require_gguf(model, "model")
    for adapter in adapters:
        check_adapter_file(adapter.path)
    return model


def model_fingerprint(spec: str | Path) -> str:
    """The model's file fingerprint, or (with adapters) a hash of every file's and ratio's."""
    model, adapters = parse_model_spec(spec)
    if not adapters:
        return file_fingerprint(model)
    digest = hashlib.sha256(file_fingerprint(model).encode())
    for adapter in adapters:
        digest.update(f"+{file_fingerprint(adapter.path)}@{adapter.scale!r}".encode())
    return digest.hexdigest()[:16]


def model_stem(spec: str | Path) -> str:
    """A short label: ``cp`` or ``cp+chat-lora@0.5``."""
    model, adapters = parse_model_spec(spec)
    return "+".join([model.stem, *(f"{a.path.stem}@{a.scale:g}" for a in adapters)])


def model_bytes(spec: str | Path) -> int:
    """Bytes of the model and its adapters."""
    model, adapters = parse_model_spec(spec)
    return model.stat().st_size + sum(a.path.stat().st_size for a in adapters)
