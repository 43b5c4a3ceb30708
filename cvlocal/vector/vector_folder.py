"""The chat-vector folder: ``chat - base`` as safetensors shards, plus what a merge needs later.

Layout (a HF-style folder so that the shards are read by the same code as any checkpoint)::

    chat_vector.json             format, provenance, architecture, dtype, chat template, stop tokens
    config.json                  the chat model's config (architecture checks)
    model*.safetensors (+index)  the vector, one tensor per model tensor
    chat_tokenizer/              the chat model's tokenizer files and generation_config.json
    extras/special_rows.safetensors  the chat model's embedding / lm_head rows for its special tokens
    README.md                    what this is and how it was made

Nothing here is pickled; a vector can be shared and loaded without trusting its author.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convert.checkpoint import Checkpoint, open_checkpoint
from convert.json_file import JsonObject
from convert.safetensors_format import read_header, read_tensor
from cvlocal.errors import UsageError

FORMAT = "cvlocal-chat-vector"
FORMAT_VERSION = 1
MANIFEST = "chat_vector.json"
TOKENIZER_DIR = "chat_tokenizer"
SPECIAL_ROWS = "extras/special_rows.safetensors"


@dataclass
class VectorFolder:
    """An opened chat-vector folder."""

    path: Path
    manifest: dict[str, Any]
    checkpoint: Checkpoint

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def fields(self) -> JsonObject:
        """The manifest with typed accessors (errors name chat_vector.json and the field)."""
        return JsonObject(self.manifest, self.path / MANIFEST)

    @property
    def chat_template(self) -> str | None:
        return self.fields.text("chat_template")

    def special_token_ids(self) -> list[int]:
        """The chat ids whose rows ``extras/special_rows.safetensors`` holds, in its row order."""
        info = self.fields.obj("special_rows")
        if info is None:
            return []
        out = []
        for token in info.objects("tokens"):
            i = token.integer("id")
            if i is None:
                raise token.error("id", "present (a token id)")
            out.append(i)
        return out

    def special_rows(self) -> dict[str, dict[int, torch.Tensor]]:
        """The stored chat rows: ``{"embed": {chat_id: row}, "lm_head": {chat_id: row}}``."""
        ids = self.special_token_ids()
        file = self.path / SPECIAL_ROWS
        if not ids or not file.is_file():
            return {}
        infos, _ = read_header(file)
        rows: dict[str, dict[int, torch.Tensor]] = {}
        for kind in ("embed", "lm_head"):
            if kind in infos:
                if len(infos[kind].shape) != 2 or infos[kind].shape[0] != len(ids) or not infos[kind].dtype.is_floating_point:
                    raise UsageError(f"{kind} is {infos[kind].dtype}{list(infos[kind].shape)}, not {len(ids)} float rows (one per special_rows token of {MANIFEST})",
                                     file, "Re-extract the vector with `cvlocal extract`.")
                matrix = read_tensor(infos[kind])
                rows[kind] = {i: matrix[k] for k, i in enumerate(ids)}
        return rows


def is_vector_folder(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def open_vector_folder(path: str | Path) -> VectorFolder:
    """Open and validate a chat-vector folder (one-line error naming the file otherwise)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError("chat-vector folder not found", folder, "Pass a folder made by `cvlocal extract`.")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UsageError(f"not a chat-vector folder (no {MANIFEST})", folder, "Make one with `cvlocal extract BASE CHAT -o DIR`.")
    fields = JsonObject.read(manifest_path)
    if fields.raw("format") != FORMAT:
        raise UsageError("not a cvlocal chat-vector manifest", manifest_path, "Re-extract the vector with `cvlocal extract`.")
    version = fields.integer("format_version", 0)
    if version > FORMAT_VERSION:  # type: ignore[operator]
        raise UsageError(f"made by a newer cvlocal (format {version})", manifest_path, "Upgrade cvlocal.")
    for key in ("signature", "base", "chat"):
        fields.obj(key)
    vector = VectorFolder(folder, fields.data, open_checkpoint(folder))
    vector.chat_template  # noqa: B018  (checked now, not when the merge is under way)
    vector.special_token_ids()
    return vector


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
