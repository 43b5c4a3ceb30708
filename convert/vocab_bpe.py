"""Byte-level BPE ``tokenizer.json`` to GGUF ``gpt2`` vocabulary: tokens, types, merges, pre-tokenizer.

Tokens of the BPE model keep their byte-level spelling (``Ġthe``); added tokens keep their raw
text, because llama.cpp matches them against raw input before BPE runs. Added tokens flagged
special (or shaped like chat markers) are control tokens, the others user-defined. Ids without
a token are ``[PAD<id>]`` placeholders (unused), and ids beyond the model's embedding rows are an
error. Merges are written as ``"left right"`` strings; a space inside a piece (possible in the
list-of-pairs format of recent tokenizers) is stored as U+0120 + 256, as llama.cpp expects.
The ``tokenizer.ggml.pre`` name comes from ``convert.pretokenizers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf import TokenType

from convert.errors import ConvertError
from convert.pretokenizers import declared_steps, detect_pre_tokenizer
from convert.special_tokens import looks_special
from convert.tokenizer_facts import TokenizerFacts
from convert.vocab_types import Vocab, too_big

SPIECE_UNDERLINE = "\u2581"


def _merge_text(merge: Any, path: Path) -> str:
    if isinstance(merge, str):
        return merge
    if isinstance(merge, list) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
        return " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge)
    raise ConvertError(f"unreadable merge entry {merge!r}", path, "Re-download tokenizer.json.")


def _is_byte_level(data: dict[str, Any]) -> bool:
    steps = declared_steps(data)
    decoder = data.get("decoder") or {}
    return any(s.get("type") == "ByteLevel" for s in steps) or decoder.get("type") == "ByteLevel"


def read_bpe(facts: TokenizerFacts, n_vocab: int) -> Vocab:
    """The GGUF vocabulary of ``folder/tokenizer.json`` for a model with ``n_vocab`` embedding rows."""
    path = facts.folder / "tokenizer.json"
    data = facts.data("tokenizer.json")
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConvertError(
            f"tokenizer.json holds a {kind or 'unknown'} model without a tokenizer.model", path,
            "cvlocal converts byte-level BPE tokenizer.json files and SentencePiece tokenizer.model files; add the model's tokenizer.model.",
        )
    if not _is_byte_level(data):
        raise ConvertError(
            "tokenizer.json is a BPE model but not byte-level, and there is no tokenizer.model", path,
            "Add the model's SentencePiece tokenizer.model to the folder.",
        )
    pre = detect_pre_tokenizer(data, path)

    by_id: dict[int, tuple[str, int]] = {}
    for text, token_id in model["vocab"].items():
        by_id[int(token_id)] = (text, int(TokenType.NORMAL))
    for entry in data.get("added_tokens") or []:
        text = entry.get("content")
        if not isinstance(text, str):
            continue
        if entry.get("special") or looks_special(text):
            kind = TokenType.CONTROL
        else:
            kind = TokenType.USER_DEFINED
            text = text.replace(SPIECE_UNDERLINE, " ")
        by_id[int(entry["id"])] = (text, int(kind))
    if by_id and max(by_id) >= n_vocab:
        raise too_big(path, max(by_id) + 1, n_vocab)

    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(TokenType.UNUSED)] * n_vocab
    for token_id, (text, kind) in by_id.items():
        tokens[token_id] = text
        types[token_id] = kind
    merges = [_merge_text(m, path) for m in model.get("merges") or []]
    warnings = []
    if model.get("byte_fallback"):
        warnings.append(f"{path}: byte_fallback is set; llama.cpp's byte-level BPE does not use it")
    return Vocab("gpt2", pre, tokens, types, None, merges, {}, warnings)
