"""Read a Hugging Face checkpoint folder one tensor at a time.

``open_checkpoint(path)`` validates the folder up front (config.json, the weight index, every
safetensors header, every file's length) so that bad input fails before any work, then serves
tensors by name. Safetensors are read with one ``readinto`` per tensor; ``pytorch_model*.bin``
files go through ``torch.load(weights_only=True, mmap=True)``, which refuses arbitrary pickles
and maps the file instead of loading it.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from convert.errors import ConvertError
from convert.hub_cache import model_folder
from convert.json_file import JsonObject
from convert.safetensors_format import TensorInfo, read_header, read_rows, read_tensor, row_count

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)


def _inside(folder: Path, name: str, index_path: Path) -> Path:
    """The file an index names, refusing a name that leaves the checkpoint folder.

    The check is on the name as written, not on where it resolves: in the hub cache a folder's
    files are symlinks into ``../../blobs/``, and a symlink named inside the folder is the
    folder's file whatever it points to. A name that is absolute or climbs out (``../x``) is
    refused even if it happens to land back inside.
    """
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or os.path.isabs(name) or ".." in parts or "\\" in name:
        raise ConvertError(f"index names a file outside the folder: {name!r}", index_path, "Fix the weight_map so that it names files in the folder.")
    candidate = folder / name
    if not candidate.is_file():
        raise ConvertError(f"index names a missing file: {name!r}", index_path, "Copy the missing shard into the folder or re-download it.")
    return candidate


@dataclass
class Checkpoint:
    """An opened HF folder: config, tensor directory, and a reader for one tensor at a time."""

    path: Path
    config: dict[str, Any]
    infos: dict[str, TensorInfo] = field(default_factory=dict)
    bin_files: dict[str, Path] = field(default_factory=dict)
    index_file: Path | None = None
    _handles: dict[Path, BinaryIO] = field(default_factory=dict, repr=False)
    _bin_cache: tuple[Path, dict[str, torch.Tensor]] | None = field(default=None, repr=False)

    # -- what it holds -------------------------------------------------------------------
    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    @property
    def text_config(self) -> dict[str, Any]:
        """The language-model part of the config (the config itself for plain LMs)."""
        return self.config.get("text_config") or self.config

    def names(self) -> list[str]:
        """Tensor names in storage order (file by file, offset by offset)."""
        return list(self.infos) if self.infos else list(self.bin_files)

    def __contains__(self, name: str) -> bool:
        return name in self.infos or name in self.bin_files

    def dtype(self, name: str) -> torch.dtype:
        if name in self.infos:
            return self.infos[name].dtype
        return self._bin_tensor(name).dtype

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.infos:
            return self.infos[name].shape
        return tuple(self._bin_tensor(name).shape)

    def nbytes(self, name: str) -> int:
        if name in self.infos:
            return self.infos[name].nbytes
        t = self._bin_tensor(name)
        return t.numel() * t.element_size()

    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self.names())

    def tokenizer_files(self) -> list[Path]:
        return [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]

    # -- reading -------------------------------------------------------------------------
    def read(self, name: str) -> torch.Tensor:
        """One tensor, as a fresh CPU tensor owned by the caller."""
        if name in self.infos:
            info = self.infos[name]
            handle = self._handles.get(info.file)
            if handle is None:
                handle = self._handles[info.file] = open(info.file, "rb")
            return read_tensor(info, handle)
        if name in self.bin_files:
            return self._bin_tensor(name).clone()
        raise KeyError(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor's leading dimension, reading only those bytes."""
        if name in self.infos:
            info = self.infos[name]
            handle = self._handles.get(info.file)
            if handle is None:
                handle = self._handles[info.file] = open(info.file, "rb")
            return read_rows(info, start, stop, handle)
        if name in self.bin_files:
            t = self._bin_tensor(name)
            return (t[start:stop] if t.dim() else t).clone()
        raise KeyError(name)

    def rows(self, name: str) -> int:
        """Rows along the leading dimension (a scalar counts as one)."""
        return row_count(self.shape(name))

    def tensors(self, piece_bytes: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor in storage order, one at a time.

        With ``piece_bytes``, a tensor larger than that comes as consecutive runs of whole rows
        under its name (the converter takes a tensor in row pieces), so an 8B model's 1 GB
        embedding is never held whole: peak memory stays flat as models grow.
        """
        for name in self.names():
            shape = self.shape(name)
            rows = row_count(shape)
            row_bytes = (math.prod(shape[1:]) if len(shape) > 1 else 1) * self.dtype(name).itemsize
            if piece_bytes is None or name not in self.infos or rows <= 1 or rows * row_bytes <= piece_bytes:
                yield name, self.read(name)
                continue
            step = max(1, piece_bytes // max(row_bytes, 1))
            for start in range(0, rows, step):
                yield name, self.read_rows(name, start, min(rows, start + step))

    def _bin_tensor(self, name: str) -> torch.Tensor:
        path = self.bin_files[name]
        if self._bin_cache is None or self._bin_cache[0] != path:
            self._bin_cache = (path, load_bin(path))
        return self._bin_cache[1][name]

    def fingerprint(self) -> str:
        """A short hash of config.json and the tensor directory (names, dtypes, shapes).

        Cheap (no weight bytes are read) and stable across copies of the same checkpoint; it is
        what provenance records say an input was.
        """
        h = hashlib.sha256()
        h.update((self.path / "config.json").read_bytes())
        for name in sorted(self.names()):
            h.update(f"{name}:{self.dtype(name)}:{list(self.shape(name))};".encode())
        return h.hexdigest()[:16]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._bin_cache = None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model*.bin`` state dict, memory-mapped, through the weights-only unpickler."""
    fix = "Convert it to safetensors with a tool you trust, or re-download it."
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
        raise ConvertError(f"the weights-only loader refused this pickle ({first[:120]})", path, fix) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ConvertError(f"corrupted or truncated PyTorch file ({err.__class__.__name__})", path, fix) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError("not a state dict of tensors", path, fix)
    return state


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.json, or a one-line ConvertError saying what is wrong with the folder."""
    if not folder.exists():
        raise ConvertError("folder not found", folder, "Check the path.")
    if not folder.is_dir():
        raise ConvertError("not a folder", folder, "Pass the checkpoint folder (the one with config.json).")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConvertError("no config.json", folder, "Pass a Hugging Face model folder that has config.json.")
    return check_config(JsonObject.read(config_path)).data


# config.json fields read as counts (by the merge's compatibility check and the converter).
CONFIG_COUNTS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "vocab_size", "max_position_embeddings", "sliding_window")


def check_config(config: JsonObject) -> JsonObject:
    """The fields of config.json that code reads, checked for type (each may be absent or null).

    A multimodal config's ``text_config`` is checked the same way.
    """
    archs = config.raw("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise config.error("architectures", "a list of class names", archs)
    for part in (config, config.obj("text_config")):
        if part is None:
            continue
        for key in CONFIG_COUNTS:
            part.integer(key, high=1 << 40)
        for key in ("rope_theta", "rms_norm_eps", "partial_rotary_factor"):
            part.number(key)
        for key in ("rope_scaling", "rope_parameters"):
            part.obj(key)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            part.integers(key, low=-1)  # -1 is an old spelling of "none"
    return config


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open and validate a HF checkpoint folder. Raises ConvertError with a one-line fix.

    ``path`` may also be a hub repo id or ``models--ORG--NAME`` folder already in the local hub
    cache (``convert.hub_cache``); ``Checkpoint.path`` is then the snapshot folder.
    """
    folder = model_folder(path)
    ckpt = Checkpoint(path=folder, config=read_config(folder))

    if (folder / SAFETENSORS_INDEX).is_file():
        index_path = folder / SAFETENSORS_INDEX
        weight_map = _weight_map(index_path)
        ckpt.index_file = index_path
        for file_name in dict.fromkeys(weight_map.values()):
            infos, _ = read_header(_inside(folder, file_name, index_path))
            ckpt.infos.update(infos)
        missing = sorted(set(weight_map) - set(ckpt.infos))
        if missing:
            raise ConvertError(f"index lists {len(missing)} tensors absent from the shards (first: {missing[0]!r})", index_path, "Re-download the shards.")
        return ckpt
    single = sorted(folder.glob("*.safetensors"))
    if single:
        if len(single) > 1:
            raise ConvertError(f"{len(single)} safetensors files but no {SAFETENSORS_INDEX}", folder, "Add the index file that came with the shards.")
        ckpt.infos.update(read_header(single[0])[0])
        return ckpt
    if (folder / BIN_INDEX).is_file():
        index_path = folder / BIN_INDEX
        ckpt.index_file = index_path
        for name, file_name in _weight_map(index_path).items():
            ckpt.bin_files[name] = _inside(folder, file_name, index_path)
        _check_bin_names(ckpt)
        return ckpt
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if len(bins) == 1:
        for name in load_bin(bins[0]):
            ckpt.bin_files[name] = bins[0]
        return ckpt
    raise ConvertError("no weights (model.safetensors, an index, or pytorch_model.bin)", folder, "Pass a folder with the model's weight files.")


def _weight_map(index_path: Path) -> dict[str, str]:
    weight_map = JsonObject.read(index_path).obj("weight_map")
    if weight_map is None or not weight_map.keys():
        raise ConvertError("no weight_map in the index", index_path, "Re-download the index file.")
    return {name: weight_map.text(name) or "" for name in weight_map.keys()}


def _check_bin_names(ckpt: Checkpoint) -> None:
    """Open each .bin once so a refused pickle or a missing tensor fails before any work."""
    by_file: dict[Path, list[str]] = {}
    for name, file in ckpt.bin_files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        state = load_bin(file)
        absent = [n for n in names if n not in state]
        if absent:
            raise ConvertError(f"index lists tensors absent from this file (first: {absent[0]!r})", file, "Re-download the shards.")
