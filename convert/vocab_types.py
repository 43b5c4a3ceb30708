"""The tokenizer as the GGUF writer needs it, whatever kind it came from (SentencePiece or BPE)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, Keys

from convert.errors import ConvertError


@dataclass
class Vocab:
    """A tokenizer ready for GGUF: model kind, pre-tokenizer, tokens, types, scores, merges."""

    model: str                         # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (BPE)
    pre: str                           # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # other tokenizer.* keys (add_space_prefix ...)
    warnings: list[str] = field(default_factory=list)     # things a user should know (not errors)

    def metadata(self) -> list[tuple[str, Any, GGUFValueType | None, GGUFValueType | None]]:
        """(key, value, type, element type) for the writer; None types mean KEY_TYPES decides."""
        out: list[tuple[str, Any, GGUFValueType | None, GGUFValueType | None]] = [
            (Keys.Tokenizer.MODEL, self.model, None, None),
            (Keys.Tokenizer.PRE, self.pre, None, None),
            (Keys.Tokenizer.LIST, self.tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        ]
        if self.scores is not None:
            out.append((Keys.Tokenizer.SCORES, self.scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32))
        out.append((Keys.Tokenizer.TOKEN_TYPE, self.types, GGUFValueType.ARRAY, GGUFValueType.INT32))
        if self.merges:
            out.append((Keys.Tokenizer.MERGES, self.merges, GGUFValueType.ARRAY, GGUFValueType.STRING))
        for key, value in self.extra.items():
            elem = GGUFValueType.STRING if isinstance(value, list) else None
            out.append((key, value, GGUFValueType.ARRAY if elem else None, elem))
        return out


def too_big(path: Path, count: int, n_vocab: int) -> ConvertError:
    return ConvertError(
        f"the tokenizer has {count} tokens but the model's vocab_size (embedding rows) is {n_vocab}", path,
        "Resize the model's embeddings to the tokenizer (resize_token_embeddings) or use the matching tokenizer.",
    )
