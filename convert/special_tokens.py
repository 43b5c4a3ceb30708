"""Special token ids (bos, eos, eot, unk, pad, sep) and whether bos/eos are added, for either tokenizer kind.

Where each fact comes from, in order (the first that answers wins):

- ids: ``tokenizer_config.json`` (``bos_token`` etc., a string or ``{"content": ...}``), then
  ``special_tokens_map.json``, each resolved to an id through the token list; then config.json's
  ``bos_token_id``/``eos_token_id``/``pad_token_id`` (the first of a list).
- eot (end of turn): the chat template's end-of-turn marker when the vocabulary has one
  (``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``, ``<end_of_turn>``), so llama.cpp stops a reply
  there even when eos is the end-of-text token.
- add bos/eos: when tokenizer.json exists, what its post-processor actually does (run through the
  ``tokenizers`` library on a probe string: is bos prepended, eos appended?), since that is what
  transformers applies; otherwise tokenizer_config.json's ``add_bos_token``/``add_eos_token``,
  otherwise SentencePiece's convention (bos yes, eos no) or BPE's (neither).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from convert.json_file import load_json
from convert.gguf_constants import Keys

SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "mask")  # mask: Gemma's <mask>, written by llama.cpp too
_ID_KEYS = {"bos": Keys.BOS_ID, "eos": Keys.EOS_ID, "unk": Keys.UNK_ID, "sep": Keys.SEP_ID, "pad": Keys.PAD_ID, "mask": Keys.MASK_ID}
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")


def _content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = load_json(path)
    return data if isinstance(data, dict) else {}


def special_token_ids(folder: Path, tokens: Sequence[str], config: Mapping[str, Any]) -> dict[str, int]:
    """Ids of bos/eos/unk/sep/pad/mask that exist in ``tokens`` (kind -> id)."""
    index: dict[str, int] = {}
    for i, t in enumerate(tokens):
        index.setdefault(t, i)
    tokenizer_config = _read_optional(folder / "tokenizer_config.json")
    special_map = _read_optional(folder / "special_tokens_map.json")
    ids: dict[str, int] = {}
    for kind in SPECIAL_KINDS:
        for source in (tokenizer_config, special_map):
            text = _content(source.get(f"{kind}_token"))
            if text is not None and text in index:
                ids[kind] = index[text]
                break
        if kind not in ids:
            value = config.get(f"{kind}_token_id")
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tokens):
                ids[kind] = value
    return ids


def end_of_turn_id(tokens: Sequence[str], chat_template: str | None) -> int | None:
    """The id of the template's end-of-turn marker, when the vocabulary has one."""
    if not chat_template:
        return None
    for marker in END_OF_TURN:
        if marker in chat_template and marker in tokens:
            return list(tokens).index(marker)
    return None


def added_bos_eos(folder: Path, ids: Mapping[str, int], sentencepiece: bool) -> tuple[bool, bool]:
    """Whether the HF tokenizer prepends bos / appends eos when encoding with special tokens."""
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(tokenizer_json.read_text(encoding="utf-8"))
        except Exception:  # malformed files are reported by the vocabulary reader
            tok = None
        if tok is not None:
            probe = "a"
            plain = tok.encode(probe, add_special_tokens=False).ids
            full = tok.encode(probe, add_special_tokens=True).ids
            bos, eos = ids.get("bos"), ids.get("eos")
            add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
            rest = full[1:] if add_bos else full
            add_eos = eos is not None and len(rest) > len(plain) and rest[-1] == eos
            return bool(add_bos), bool(add_eos)
    config = _read_optional(folder / "tokenizer_config.json")
    add_bos = config.get("add_bos_token")
    add_eos = config.get("add_eos_token")
    return (
        add_bos if isinstance(add_bos, bool) else sentencepiece,
        add_eos if isinstance(add_eos, bool) else False,
    )


def special_token_metadata(
    folder: Path, tokens: Sequence[str], config: Mapping[str, Any], chat_template: str | None, *, sentencepiece: bool
) -> dict[str, Any]:
    """GGUF tokenizer keys for special tokens: the ids found and add_bos/add_eos."""
    ids = special_token_ids(folder, tokens, config)
    out: dict[str, Any] = {_ID_KEYS[kind]: tid for kind, tid in ids.items()}
    eot = end_of_turn_id(tokens, chat_template)
    if eot is not None:
        out[Keys.EOT_ID] = eot
    add_bos, add_eos = added_bos_eos(folder, ids, sentencepiece)
    out[Keys.ADD_BOS] = add_bos
    out[Keys.ADD_EOS] = add_eos
    return out


def looks_special(text: str) -> bool:
    """Whether an added token that is not flagged special should still be a control token.

    Some tokenizers flag chat markers such as ``<|im_start|>`` as normal added tokens; llama.cpp
    only hides control tokens from detokenized text, so markers shaped like ``<|...|>`` (or the
    full-width ``<｜...｜>``) are treated as control tokens, as llama.cpp's converter does.
    """
    return (
        (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or text in ("<pad>", "<mask>")
        or (text.startswith("<unused") and text.endswith(">"))
    )
