"""The GGUF a sweep point evaluates, built inside the cache under a content-addressed name.

* a ratio point with ``via="merge"``: the exact merge streamed straight to GGUF (``merge_models``
  with a ``.gguf`` output: no HF folder in between), named by the point's key;
* a ratio point with ``via="adapter"``: no merge at all; the CP GGUF and the chat vector as a LoRA
  adapter (both built once and shared by every point) at the point's ratio, as the model spec
  ``CP.gguf+ADAPTER.gguf@R`` that the evaluation loads;
* the references: the CP and the chat model converted to the same type.

A point's own GGUF is removed after its evaluation unless ``keep``; the shared adapter files stay
(they are what every adapter point reads). Files are written under a temporary name and renamed
when complete, so an interrupted build never leaves a file that looks finished.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from cvlocal.sweep.point import PointTask

ADAPTER_TYPE = "f16"


def _models_dir(task: PointTask) -> Path:
    folder = Path(task.cache_dir) / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _short(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def _build_once(path: Path, build: Callable[[Path], None]) -> int:
    """Build ``path`` through a temporary name unless it exists; bytes written (0 when cached).
    Two workers building the same file both finish and the rename of the second is harmless."""
    from cvlocal.outputs.atomic import partial_path

    if path.is_file():
        return 0
    tmp = partial_path(path, f"build{path.suffix}")  # names its owner's PID: a killed build is found stale
    try:
        build(tmp)
        size = tmp.stat().st_size
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return size


def _convert(folder: str, out: Path, task: PointTask) -> None:
    from convert import convert_checkpoint

    convert_checkpoint(folder, out, outtype=task.outtype, threads=task.threads)


def reference_path(task: PointTask, which: str) -> Path:
    """Where the CP or chat model converted to ``task.outtype`` lives in the cache."""
    fingerprint = task.fingerprints[0] if which == "cp" else task.fingerprints[-1]
    return _models_dir(task) / f"{which}-{_short(fingerprint, task.outtype)}-{task.outtype}.gguf"


def adapter_path(task: PointTask) -> Path:
    return _models_dir(task) / f"adapter-{_short(*task.fingerprints[1:], task.rank, ADAPTER_TYPE)}-lora.gguf"


def point_path(task: PointTask) -> Path:
    return _models_dir(task) / f"point-{task.model_key}-{task.outtype}.gguf"


def _merge(task: PointTask, out: Path) -> None:
    from cvlocal.vector.merge import merge_models

    if task.vectors:
        vectors = [(Path(v), r) for v, r in zip(task.vectors, task.ratios)]
        merge_models(Path(task.cp), out, vectors=vectors, embeddings=task.embeddings,
                     special_tokens=task.special_tokens, outtype=task.outtype, device="cpu",
                     threads=task.threads, quiet=True)
    else:
        merge_models(Path(task.cp), out, base=Path(task.base), chat=Path(task.chat), ratio=task.ratios[0],
                     embeddings=task.embeddings, special_tokens=task.special_tokens, outtype=task.outtype,
                     device="cpu", threads=task.threads, quiet=True)


def _extract(task: PointTask, out: Path) -> None:
    from cvlocal.vector.lora_extract import extract_lora

    extract_lora(Path(task.base), Path(task.chat), out, rank=task.rank, outtype=ADAPTER_TYPE, device="cpu",
                 quiet=True)


def build_point_model(task: PointTask) -> tuple[str, int]:
    """The model spec the evaluation loads for this point, and the bytes written to build it."""
    if task.kind == "cp":
        path = reference_path(task, "cp")
        return str(path), _build_once(path, lambda out: _convert(task.cp, out, task))
    if task.kind == "chat":
        path = reference_path(task, "chat")
        return str(path), _build_once(path, lambda out: _convert(str(task.chat), out, task))
    if task.via == "adapter":
        cp = reference_path(task, "cp")
        written = _build_once(cp, lambda out: _convert(task.cp, out, task))
        adapter = adapter_path(task)
        written += _build_once(adapter, lambda out: _extract(task, out))
        return f"{cp}+{adapter}@{task.ratios[0]!r}", written
    path = point_path(task)
    return str(path), _build_once(path, lambda out: _merge(task, out))


def remove_stale_builds(cache_dir: Path) -> list[Path]:
    """Partial GGUFs left by a build that was killed (SIGKILL, power loss), so the disk stays bounded.
    Only for a cache this host alone writes: a PID names a process of this machine."""
    from cvlocal.outputs.atomic import remove_stale_partials

    return remove_stale_partials(Path(cache_dir) / "gguf")


def discard_point_model(task: PointTask, model: str) -> None:
    """Remove the point's own GGUF (never the shared CP GGUF or adapter an adapter sweep reads)."""
    if task.via == "adapter" and task.kind != "chat":
        return
    path = Path(model)
    if path.parent == _models_dir(task) and path.is_file():
        path.unlink()
