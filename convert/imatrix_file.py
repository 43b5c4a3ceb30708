"""Importance-matrix files: llama.cpp's GGUF imatrix format (and the legacy ``.dat``), read and written.

An importance matrix holds, for every weight matrix the quantizer uses, the sum of squared input
activations per input channel (``<tensor>.in_sum2``, F32, ``ne = [n_in, n_mat]``) and the number of
activation rows summed (``<tensor>.counts``, F32, ``ne = [1, n_mat]``; ``n_mat`` is 1 for a dense
layer, the expert count for MoE). The metadata is ``general.type = imatrix``,
``imatrix.datasets`` (string array), ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32): the
key and tensor names of tools/imatrix/imatrix.cpp (``save_imatrix``) and common/imatrix-loader.cpp,
so ``llama-quantize --imatrix`` reads our files and we read theirs.

The quantizer is given ``in_sum2 / counts`` per channel (1 where a count is 0), exactly what
llama-quantize's ``load_imatrix`` computes. The legacy ``.dat`` stores that mean times ``ncall``
(the chunk count) with ``ncall`` itself. Files are written through the ``gguf`` package (gguf-py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from convert.errors import ConvertError

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
_FIX = "Compute a matrix for this model (cvlocal imatrix or llama-imatrix) and pass that file."


@dataclass
class Imatrix:
    """Sums of squared activations per input channel and their token counts, by GGUF weight name."""

    sums: dict[str, np.ndarray]     # name -> float32 [n_mat, n_in]
    counts: dict[str, np.ndarray]   # name -> float32 [n_mat]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False            # read from a .dat (sums already means x ncall, counts = ncall)

    def names(self) -> list[str]:
        return sorted(self.sums)

    def quantizer_data(self) -> dict[str, np.ndarray]:
        """What llama-quantize hands llama.cpp per tensor: the mean square per channel (1 where unseen)."""
        out: dict[str, np.ndarray] = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].astype(np.float64)
            # Unseen matrices get 1 (llama.cpp's choice); a legacy entry with ncall 0 keeps its values.
            mean = sums.astype(np.float64) if self.legacy else np.ones_like(sums, dtype=np.float64)
            seen = counts > 0
            mean[seen] = sums[seen].astype(np.float64) / counts[seen, None]
            out[name] = np.ascontiguousarray(mean.astype(np.float32).reshape(-1))
        return out


def write_imatrix_gguf(matrix: Imatrix, path: str | Path) -> None:
    """Write ``matrix`` at ``path`` in llama.cpp's GGUF imatrix format (tensors in sorted name order)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    # llama-imatrix writes no general.architecture: an imatrix belongs to no architecture.
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(KEY_DATASETS, list(matrix.datasets))
    writer.add_uint32(KEY_CHUNK_COUNT, int(matrix.chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(matrix.chunk_size))
    for name in matrix.names():
        sums = np.ascontiguousarray(matrix.sums[name], dtype=np.float32)
        counts = np.ascontiguousarray(matrix.counts[name], dtype=np.float32).reshape(sums.shape[0], 1)
        writer.add_tensor(name + SUM_SUFFIX, sums)
        writer.add_tensor(name + COUNT_SUFFIX, counts)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_imatrix_dat(matrix: Imatrix, path: str | Path) -> None:
    """Write the legacy format of llama-imatrix ``--output-format dat`` (``save_imatrix_legacy``)."""
    chunk = max(int(matrix.chunk_size), 1)
    parts: list[bytes] = []
    names = [n for n in matrix.names() if float(matrix.counts[n].max(initial=0)) > 0]
    parts.append(struct.pack("<i", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        sums = matrix.sums[name].astype(np.float64)
        counts = matrix.counts[name].astype(np.float64)
        ncall = int((int(counts.max()) + chunk - 1) // chunk)
        values = np.where(counts[:, None] > 0, sums / np.where(counts > 0, counts, 1)[:, None] * ncall, float(ncall))
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, sums.size), values.astype("<f4").tobytes()]
    dataset = (matrix.datasets[-1] if matrix.datasets else "").encode("utf-8")
    parts += [struct.pack("<i", int(matrix.chunk_count)), struct.pack("<i", len(dataset)), dataset]
    Path(path).write_bytes(b"".join(parts))


def read_imatrix(path: str | Path) -> Imatrix:
    """Read a GGUF or legacy ``.dat`` imatrix, refusing anything malformed with a one-line ConvertError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ConvertError(f"cannot read the importance matrix ({err.strerror})", path, _FIX) from None
    matrix = _read_gguf(path) if magic == b"GGUF" else _read_dat(path)
    if not matrix.sums:
        raise ConvertError("the importance matrix has no entries", path, _FIX)
    for name, sums in matrix.sums.items():
        if not np.isfinite(sums).all() or not np.isfinite(matrix.counts[name]).all():
            raise ConvertError(f"the importance matrix has non-finite values (NaN or Inf) for {name}", path, _FIX)
        if (sums < 0).any() or (matrix.counts[name] < 0).any():
            raise ConvertError(f"the importance matrix has negative sums of squares or counts for {name}", path, _FIX)
    return matrix


def _read_gguf(path: Path) -> Imatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as err:  # gguf-py raises ValueError, struct.error, IndexError... on damaged files
        raise ConvertError(f"not a readable GGUF file ({' '.join(str(err).split())[:120] or type(err).__name__})", path, _FIX) from None
    fields = reader.fields
    kind = _string_field(fields.get(KEY_TYPE))
    if kind != "imatrix":
        what = f"general.type is {kind!r}" if kind else "no general.type"
        raise ConvertError(f"not an importance matrix ({what}; a model GGUF?)", path, _FIX)
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in fields]
    if missing:
        raise ConvertError(f"the importance matrix lacks {', '.join(missing)}", path, _FIX)
    datasets_field = fields[KEY_DATASETS]
    datasets = [bytes(datasets_field.parts[i]).decode("utf-8", errors="replace") for i in datasets_field.data]
    tensors = {t.name: t for t in reader.tensors}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tname, t in tensors.items():
        if not tname.endswith(SUM_SUFFIX):
            continue
        name = tname[: -len(SUM_SUFFIX)]
        c = tensors.get(name + COUNT_SUFFIX)
        if c is None:
            raise ConvertError(f"the importance matrix has sums but no counts for {name}", path, _FIX)
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or c.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ConvertError(f"the sums and counts for {name} must be F32", path, _FIX)
        n_in = int(t.shape[0])
        n_mat = int(t.n_elements) // max(n_in, 1)
        if int(c.n_elements) != n_mat or n_in * n_mat != int(t.n_elements):
            raise ConvertError(f"the counts for {name} do not match its sums ({c.n_elements} counts for {n_mat} matrices)", path, _FIX)
        sums[name] = np.array(t.data, dtype=np.float32).reshape(n_mat, n_in)
        counts[name] = np.array(c.data, dtype=np.float32).reshape(n_mat)
    orphans = [n[: -len(COUNT_SUFFIX)] for n in tensors if n.endswith(COUNT_SUFFIX) and n[: -len(COUNT_SUFFIX)] not in sums]
    if orphans:
        raise ConvertError(f"the importance matrix has counts but no sums for {orphans[0]}", path, _FIX)
    return Imatrix(sums, counts, datasets, int(fields[KEY_CHUNK_COUNT].parts[-1][0]), int(fields[KEY_CHUNK_SIZE].parts[-1][0]))


def _string_field(f: Any) -> str | None:
    if f is None or not f.data:
        return None
    try:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    except (IndexError, TypeError):
        return None


def _read_dat(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ConvertError("the importance matrix is truncated (or not an imatrix file)", path, _FIX)
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > 1_000_000:
        raise ConvertError("not an importance matrix (neither GGUF nor llama.cpp's legacy .dat)", path, _FIX)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 1 or length > 4096:
            raise ConvertError("not an importance matrix (bad entry name length)", path, _FIX)
        (raw,) = take(f"<{length}s")
        ncall, nval = take("<ii")
        if nval < 1 or ncall < 0:
            raise ConvertError("not an importance matrix (bad entry size)", path, _FIX)
        values = np.array(take(f"<{nval}f"), dtype=np.float32)
        name = raw.decode("utf-8", errors="replace")
        sums[name] = values.reshape(1, nval)
        counts[name] = np.array([ncall], dtype=np.float32)
    chunk_count, datasets = 0, []
    if pos < len(data):
        (chunk_count,) = take("<i")
        if pos < len(data):
            (length,) = take("<i")
            if length > 0:
                (raw,) = take(f"<{length}s")
                datasets = [raw.decode("utf-8", errors="replace")]
    return Imatrix(sums, counts, datasets, chunk_count, 0, legacy=True)


def check_against_model(matrix: Imatrix, tensors: Mapping[str, tuple[int, ...]], where: Path) -> int:
    """Refuse a matrix made for another model; return how many of the model's tensors it covers.

    ``tensors`` maps GGUF tensor names to GGML shapes (``ne``: row length first). Every entry must
    name a tensor of the model whose row length times expert count equals the entry's size (what
    llama.cpp's quantizer checks, and aborts on, only when it reaches that tensor).
    """
    covered = 0
    for name, sums in matrix.sums.items():
        shape = tensors.get(name)
        if shape is None:
            raise ConvertError(f"the importance matrix has an entry for {name}, which this model does not have: it was made for another model", where, _FIX)
        expected = int(shape[0]) * (int(shape[2]) if len(shape) > 2 else 1)
        if sums.size != expected:
            raise ConvertError(
                f"the importance matrix entry for {name} has {sums.size} values, the model's tensor needs {expected}: it was made for another model",
                where, _FIX,
            )
        covered += 1
    return covered
