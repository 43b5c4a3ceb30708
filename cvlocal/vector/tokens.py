"""The merge's special-token pairing: chat ids to CP ids, by text or by ``--special-tokens`` map.

The merge needs three facts that only the tokenizers know: whether the CP model's leading
embedding rows are the same tokens as the chat model's (for ``--embeddings overlap``), which
special tokens the chat template emits (their rows come from the chat model), and which ids the
chat model's end-of-turn tokens have in the CP vocabulary. The tokenizer files are read by
``convert.tokenizer_facts`` (the converter's reader, so the merge and the GGUF agree); this
module pairs what it finds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convert.tokenizer_facts import TokenTable, special_ids_in_template
from cvlocal.errors import UsageError

__all__ = ["TokenTable", "TokenPair", "special_ids_in_template", "map_by_text", "parse_manual_map", "first_vocab_mismatch"]


@dataclass(frozen=True)
class TokenPair:
    """One special token: its id in the CP vocabulary and in the chat model's."""

    cp_id: int
    chat_id: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"cp_id": self.cp_id, "chat_id": self.chat_id, "text": self.text}


def map_by_text(cp_vocab: dict[str, int], chat_tokens: list[tuple[int, str]]) -> list[TokenPair]:
    """Find each chat special token in the CP vocabulary by its text; absent ones are left out."""
    pairs = []
    for chat_id, text in chat_tokens:
        if text in cp_vocab:
            pairs.append(TokenPair(int(cp_vocab[text]), int(chat_id), text))
    return pairs


def parse_manual_map(spec: str) -> list[tuple[int, int]]:
    """``"128009=128009,5=7"`` -> ``[(128009, 128009), (5, 7)]`` (CP id, chat id)."""
    pairs = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        left, sep, right = part.partition("=")
        if not sep or not left.strip().isdigit() or not right.strip().isdigit():
            raise UsageError(f"bad --special-tokens entry {part!r}", fix="Use auto, none, or CP_ID=CHAT_ID pairs separated by commas.")
        pairs.append((int(left), int(right)))
    if not pairs:
        raise UsageError("empty --special-tokens map", fix="Use auto, none, or CP_ID=CHAT_ID pairs separated by commas.")
    return pairs


def first_vocab_mismatch(cp_vocab: list[str | None], chat_vocab: list[str | None]) -> int | None:
    """The first id below both sizes where the two vocabularies hold different tokens, if any."""
    for i in range(min(len(cp_vocab), len(chat_vocab))):
        if cp_vocab[i] != chat_vocab[i]:
            return i
    return None
