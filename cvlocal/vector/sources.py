"""The deltas a merge adds: ``chat - base`` read from a vector folder or computed on the fly.

Both kinds answer the same questions (tensor names and shapes, the chat side's tokenizer,
template, stop tokens and special-token rows) so the merge does not care which one it has. Each
delta is read on the host (``read``, in the prefetch thread) and combined in float32 on the
compute device (``arithmetic.ChunkArithmetic``), so the two steps of consecutive chunks overlap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convert.checkpoint import Checkpoint, open_checkpoint
from convert.json_file import JsonObject
from convert.tokenizer_facts import TokenizerFacts, read_tokenizer_facts
from cvlocal.vector import tokens as tk
from cvlocal.vector.roles import is_embedding, is_lm_head
from cvlocal.vector.vector_folder import VectorFolder, open_vector_folder


@dataclass
class DeltaSource:
    """One ``r * (chat - base)`` term of a merge."""

    label: str
    ratio: float
    vector: VectorFolder | None = None
    base: Checkpoint | None = None
    chat: Checkpoint | None = None
    _chat_facts: TokenizerFacts | None = field(default=None, repr=False)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_vector(cls, path: Path, ratio: float) -> "DeltaSource":
        return cls(label=str(path), ratio=ratio, vector=open_vector_folder(path))

    @classmethod
    def from_pair(cls, base: Path, chat: Path, ratio: float) -> "DeltaSource":
        return cls(label=f"{chat} - {base}", ratio=ratio, base=open_checkpoint(base), chat=open_checkpoint(chat))

    # -- tensors -------------------------------------------------------------------------
    @property
    def reference(self) -> Checkpoint:
        """The checkpoint whose directory describes the delta's tensors."""
        return self.vector.checkpoint if self.vector else self.chat  # type: ignore[return-value]

    def names(self) -> list[str]:
        return self.reference.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reference.shape(name)

    def read(self, name: str, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Host-side read of rows ``start:stop`` (runs in the prefetch thread)."""
        if self.vector:
            return (self.vector.checkpoint.read_rows(name, start, stop),)
        return (self.chat.read_rows(name, start, stop), self.base.read_rows(name, start, stop))  # type: ignore[union-attr]

    # -- the chat side -------------------------------------------------------------------
    @property
    def chat_config(self) -> dict[str, Any]:
        return self.reference.config

    @property
    def chat_dir(self) -> Path:
        """Folder with the chat model's tokenizer files and generation_config.json."""
        return self.vector.tokenizer_dir if self.vector else self.chat.path  # type: ignore[union-attr]

    def chat_facts(self) -> TokenizerFacts:
        """The chat model's tokenizer facts (its files read once, by the converter's reader)."""
        if self._chat_facts is None:
            self._chat_facts = read_tokenizer_facts(self.chat_dir)
        return self._chat_facts

    def chat_tokens(self) -> tk.TokenTable:
        """The chat model's token table."""
        return self.chat_facts().table

    def chat_template(self) -> str | None:
        """The chat template: the one the vector recorded at extraction, else the chat model's."""
        if self.vector:
            return self.vector.chat_template
        return self.chat_facts().default_template

    def generation_config(self) -> JsonObject | None:
        """The chat side's generation_config.json, validated (None when it has none)."""
        return self.chat_facts().generation

    def eos_ids(self) -> list[int]:
        """The chat side's end-of-turn ids (generation_config.json's eos, then the tokenizer's)."""
        return self.chat_facts().eos_ids()

    def special_row(self, kind: str, chat_id: int) -> torch.Tensor | None:
        """The chat model's ``embed`` or ``lm_head`` row for a token, or None if not available."""
        if self.vector:
            return self.vector.special_rows().get(kind, {}).get(chat_id)
        names = [n for n in self.chat.names() if (is_embedding(n, self.chat.config) if kind == "embed" else is_lm_head(n, self.chat.config))]  # type: ignore[union-attr]
        if not names or chat_id >= self.chat.rows(names[0]):  # type: ignore[union-attr]
            return None
        return self.chat.read_rows(names[0], chat_id, chat_id + 1)[0]  # type: ignore[union-attr]

    def provenance(self) -> dict[str, Any]:
        """Where this term came from, for the model card and the recipe."""
        if self.vector:
            m = self.vector.manifest
            return {"vector": {"path": str(self.vector.path)}, "ratio": self.ratio, "base": m.get("base"), "chat": m.get("chat")}
        return {
            "ratio": self.ratio,
            "base": {"path": str(self.base.path), "fingerprint": self.base.fingerprint()},  # type: ignore[union-attr]
            "chat": {"path": str(self.chat.path), "fingerprint": self.chat.fingerprint()},  # type: ignore[union-attr]
        }

    def close(self) -> None:
        for ckpt in (self.base, self.chat, self.vector.checkpoint if self.vector else None):
            if ckpt is not None:
                ckpt.close()
