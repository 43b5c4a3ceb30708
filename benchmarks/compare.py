"""Output equality across tools: merged safetensors tensor by tensor, GGUF tensor data byte by byte.

Readers are independent of cvlocal on purpose: merged folders are read with the ``safetensors``
package, GGUF files with the ``gguf`` package's ``GGUFReader``. One tensor is held at a time, so
comparing 1.1B-parameter outputs costs a few hundred MB.

The exact merge is recomputed here as plain torch arithmetic, ``bf16(float32(cp) + r *
(float32(chat) - float32(base)))``, rounded once: the truth each tool is held against.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch


@dataclass
class TensorDiff:
    """How two sets of tensors differ."""

    tensors: int = 0
    tensors_equal: int = 0
    elements: int = 0
    elements_differ: int = 0
    max_abs_diff: float = 0.0
    only_left: list[str] = field(default_factory=list)
    only_right: list[str] = field(default_factory=list)
    type_mismatch: list[str] = field(default_factory=list)
    first_differ: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return (self.tensors > 0 and self.tensors == self.tensors_equal and not self.only_left
                and not self.only_right and not self.type_mismatch)

    def summary(self) -> str:
        if self.identical:
            return f"identical: {self.tensors}/{self.tensors} tensors bit-equal"
        parts = [f"{self.tensors_equal}/{self.tensors} tensors bit-equal"]
        if self.elements:
            parts.append(f"{self.elements_differ:,} of {self.elements:,} elements differ "
                         f"({100 * self.elements_differ / self.elements:.3f}%), max |diff| {self.max_abs_diff:.3g}")
        if self.only_left or self.only_right:
            parts.append(f"{len(self.only_left)} tensors only left, {len(self.only_right)} only right")
        if self.type_mismatch:
            parts.append(f"{len(self.type_mismatch)} with another type or shape (e.g. {self.type_mismatch[0]})")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        d = asdict(self)
        for key in ("only_left", "only_right", "type_mismatch", "first_differ"):
            d[key] = d[key][:10]
        d["identical"] = self.identical
        d["summary"] = self.summary()
        return d


# --------------------------------------------------------------------------- safetensors


class SafetensorsFolder:
    """Tensors of an HF folder (every ``*.safetensors`` in it), read one at a time."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.files = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(f), "pt") as handle:
                for name in handle.keys():
                    self.files[name] = f
        self._open = safe_open

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> torch.Tensor:
        with self._open(str(self.files[name]), "pt") as handle:
            return handle.get_tensor(name)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, for bit-exact comparison (NaN-safe, -0 vs +0 told apart)."""
    t = t.contiguous().view(-1)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.int8}[t.element_size()])


def _compare_tensor(diff: TensorDiff, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    diff.tensors += 1
    if a.dtype != b.dtype or a.shape != b.shape:
        diff.type_mismatch.append(f"{name}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        return
    n = a.numel()
    differ = int((_bits(a) != _bits(b)).sum())
    diff.elements += n
    diff.elements_differ += differ
    if differ == 0:
        diff.tensors_equal += 1
    else:
        diff.max_abs_diff = max(diff.max_abs_diff, float((a.float() - b.float()).abs().max()))
        if len(diff.first_differ) < 10:
            diff.first_differ.append(name)


def compare_folders(left: Path, right: Path) -> TensorDiff:
    """Compare the tensors of two merged folders, name by name."""
    a, b = SafetensorsFolder(left), SafetensorsFolder(right)
    diff = TensorDiff()
    names_a, names_b = set(a.names()), set(b.names())
    diff.only_left = sorted(names_a - names_b)
    diff.only_right = sorted(names_b - names_a)
    for name in sorted(names_a & names_b):
        _compare_tensor(diff, name, a.get(name), b.get(name))
    return diff


def exact_merge(cp: Path, base: Path, chat: Path, ratio: float) -> Iterator[tuple[str, torch.Tensor]]:
    """The exact merge, one tensor at a time: float32 arithmetic rounded once to the CP's dtype."""
    c, b, h = SafetensorsFolder(cp), SafetensorsFolder(base), SafetensorsFolder(chat)
    for name in c.names():
        t_cp = c.get(name)
        exact = t_cp.float() + ratio * (h.get(name).float() - b.get(name).float())
        yield name, exact.to(t_cp.dtype)


def compare_with_exact(folder: Path, cp: Path, base: Path, chat: Path, ratio: float) -> TensorDiff:
    """Compare a merged folder with the exact merge recomputed here."""
    return compare_merges({"out": folder}, cp, base, chat, ratio)["out"]


def compare_merges(folders: dict[str, Path], cp: Path, base: Path, chat: Path, ratio: float,
                   pairs: list[tuple[str, str]] = ()) -> dict[str, TensorDiff]:
    """Compare several merged folders with the exact merge, and chosen pairs of them with each other.

    One pass over the inputs: each exact tensor is computed once and every output is read once,
    whatever the number of comparisons. Keys of the result: each folder's name (against the
    exact merge) and ``"A vs B"`` for each pair.
    """
    outs = {name: SafetensorsFolder(folder) for name, folder in folders.items()}
    diffs = {name: TensorDiff() for name in outs} | {f"{a} vs {b}": TensorDiff() for a, b in pairs}
    expected: set[str] = set()
    for name, exact in exact_merge(cp, base, chat, ratio):
        expected.add(name)
        tensors = {key: out.get(name) for key, out in outs.items() if name in out.files}
        for key, tensor in tensors.items():
            _compare_tensor(diffs[key], name, tensor, exact)
        for a, b in pairs:
            if a in tensors and b in tensors:
                _compare_tensor(diffs[f"{a} vs {b}"], name, tensors[a], tensors[b])
    for key, out in outs.items():
        have = set(out.names())
        diffs[key].only_left = sorted(have - expected)
        diffs[key].only_right = sorted(expected - have)
    return diffs


# --------------------------------------------------------------------------- GGUF


def compare_gguf(left: Path, right: Path) -> TensorDiff:
    """Compare the tensors of two GGUF files: names, types, shapes and data bytes."""
    import numpy as np
    from gguf import GGUFReader

    a, b = GGUFReader(str(left)), GGUFReader(str(right))
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    diff = TensorDiff()
    diff.only_left = sorted(set(ta) - set(tb))
    diff.only_right = sorted(set(tb) - set(ta))
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        diff.tensors += 1
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            diff.type_mismatch.append(f"{name}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}")
            continue
        bx = np.asarray(x.data).view(np.uint8).reshape(-1)
        by = np.asarray(y.data).view(np.uint8).reshape(-1)
        diff.elements += int(x.n_elements)
        if bx.shape == by.shape and np.array_equal(bx, by):
            diff.tensors_equal += 1
        elif len(diff.first_differ) < 10:
            diff.first_differ.append(name)
    return diff


def gguf_metadata_keys(left: Path, right: Path) -> dict[str, list[str]]:
    """Metadata keys found in only one of two GGUF files (informative: writers differ in extras)."""
    from gguf import GGUFReader

    ka = {k for k in GGUFReader(str(left)).fields if not k.startswith("GGUF.")}
    kb = {k for k in GGUFReader(str(right)).fields if not k.startswith("GGUF.")}
    return {"only_left": sorted(ka - kb), "only_right": sorted(kb - ka)}


if __name__ == "__main__":
    import sys

    x, y = Path(sys.argv[1]), Path(sys.argv[2])
    result = compare_gguf(x, y) if x.suffix == ".gguf" else compare_folders(x, y)
    print(json.dumps(result.as_dict(), indent=2))
