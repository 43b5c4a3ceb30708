"""Where the arithmetic runs. Reading and writing always stay on the host."""
from __future__ import annotations

import torch

from cvlocal.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a torch device, refusing one that is not there.

    ``auto`` prefers CUDA, then Apple's MPS, then the CPU. MPS has no float64 but the merge only
    needs float32, which it supports.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}", fix="Use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but torch sees no CUDA device", fix="Use --device cpu or install a CUDA build of torch.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"no CUDA device {device.index} (torch sees {torch.cuda.device_count()})", fix="Pick an existing index.")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UsageError("--device mps asked for, but MPS is not available", fix="Use --device cpu.")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}", fix="Use auto, cpu, cuda, cuda:N or mps.")
    return device


DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "f32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "f16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``--dtype`` value to a torch dtype (None keeps the inputs' dtype)."""
    if name is None:
        return None
    try:
        return DTYPE_NAMES[name.strip().lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}", fix="Use bfloat16, float16 or float32.") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling config.json uses)."""
    return str(dtype).removeprefix("torch.")
