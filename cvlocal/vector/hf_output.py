"""Writing a HF checkpoint folder as a stream of row chunks: sharded safetensors plus an index.

Shards are planned up front from the known output shapes (``plan_shards``), so every header is
written before its data and nothing is buffered. Names and the index follow what
``save_pretrained`` writes, so transformers loads the result as it loads any checkpoint.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch

from convert.safetensors_format import StreamingWriter, element_size
from cvlocal.errors import UsageError
from cvlocal.vector.pipeline import Chunk, plan_chunks, run_pipeline
from cvlocal.vector.progress_sink import tensor_progress

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as transformers uses; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match or match.group(2) not in _UNITS:
        raise UsageError(f"bad size {text!r}", fix="Use a number with a unit, e.g. 5GB, 500MB or 2GiB.")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise UsageError(f"bad size {text!r}", fix="The shard size must be positive.")
    return size


TensorPlan = list[tuple[str, torch.dtype, tuple[int, ...]]]


def tensor_bytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * element_size(dtype)


def plan_shards(tensors: TensorPlan, max_bytes: int) -> list[TensorPlan]:
    """Greedy shards in tensor order; a tensor larger than the limit gets a shard of its own."""
    shards: list[TensorPlan] = [[]]
    size = 0
    for entry in tensors:
        nbytes = tensor_bytes(entry[1], entry[2])
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardedWriter:
    """Receives row chunks in plan order and spreads them over the planned shards."""

    def __init__(self, folder: Path, tensors: TensorPlan, max_bytes: int) -> None:
        self.folder = folder
        self.shards = plan_shards(tensors, max_bytes)
        self.files = shard_names(len(self.shards))
        self.where = {name: i for i, shard in enumerate(self.shards) for name, _, _ in shard}
        self.total = sum(tensor_bytes(d, s) for _, d, s in tensors)
        self._current: StreamingWriter | None = None
        self._index = -1

    def write_rows(self, name: str, rows: torch.Tensor) -> None:
        shard = self.where[name]
        if shard != self._index:
            if self._current is not None:
                self._current.close()
            self._index = shard
            plan = {n: (d, s) for n, d, s in self.shards[shard]}
            self._current = StreamingWriter(self.folder / self.files[shard], plan, {"format": "pt"})
        assert self._current is not None
        self._current.write_rows(name, rows)

    def close(self) -> list[str]:
        """Finish the last shard and write the index when there are several; return file names."""
        if self._current is not None:
            self._current.close()
        for i in range(self._index + 1, len(self.shards)):  # shards of empty tensors only
            StreamingWriter(self.folder / self.files[i], {n: (d, s) for n, d, s in self.shards[i]}, {"format": "pt"}).close()
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": {n: self.files[i] for n, i in self.where.items()}}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return self.files

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()


def stream_to_folder(
    folder: Path,
    tensors: TensorPlan,
    max_bytes: int,
    read: Callable[[Chunk], Any],
    compute: Callable[[Chunk, Any], torch.Tensor],
    description: str,
    quiet: bool,
) -> list[str]:
    """Run the pipeline over ``tensors`` into sharded safetensors in ``folder``, with a progress bar."""
    writer = ShardedWriter(folder, tensors, max_bytes)
    with tensor_progress(description, writer.total, len(tensors), quiet) as advance:
        def write(chunk: Chunk, rows: torch.Tensor) -> None:
            writer.write_rows(chunk.name, rows)
            advance(rows.numel() * rows.element_size(), chunk.last)
        try:
            run_pipeline(plan_chunks((n, s) for n, _, s in tensors), read, compute, write)
        except BaseException:
            writer.abort()
            raise
    return writer.close()
