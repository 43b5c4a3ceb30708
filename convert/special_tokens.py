"""GGUF keys for special tokens (bos, eos, eot, unk, pad, sep) and whether bos/eos are added.

The facts come from ``convert.tokenizer_facts`` (the one reader of the tokenizer files); this
module only decides, in the order llama.cpp's converter does, what the GGUF records:

- ids: the bos/eos/... texts of tokenizer_config.json / special_tokens_map.json resolved through
  the exported token list, else config.json's ``bos_token_id`` etc. (the first of a list).
- eot (end of turn): the chat template's end-of-turn marker when the vocabulary has one
  (``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``, ``<end_of_turn>``), so llama.cpp stops a reply
  there even when eos is the end-of-text token.
- add bos/eos: when tokenizer.json exists, what its post-processor actually does (run through the
  ``tokenizers`` library on a probe string: is bos prepended, eos appended?), since that is what
  transformers applies; otherwise tokenizer_config.json's ``add_bos_token``/``add_eos_token``,
  otherwise SentencePiece's convention (bos yes, eos no) or BPE's (neither).
- add sep: ``tokenizer_config.json``'s ``add_sep_token``, else, when tokenizer.json's
  post-processor puts tokens between the two sequences of a pair, whether one of them is the sep
  or eos token (llama.cpp's converter writes the key in the same two cases, and not otherwise).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from gguf import Keys

if TYPE_CHECKING:
    from convert.tokenizer_facts import TokenizerFacts

_ID_KEYS = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
            "sep": Keys.Tokenizer.SEP_ID, "pad": Keys.Tokenizer.PAD_ID,
            "mask": Keys.Tokenizer.MASK_ID}  # mask: Gemma's <mask>, written by llama.cpp too


def _hf_tokenizer(facts: TokenizerFacts) -> Any:
    """The folder's tokenizer.json through the ``tokenizers`` library, or None (absent or malformed)."""
    tokenizer_json = facts.folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(tokenizer_json.read_text(encoding="utf-8"))
    except Exception:  # malformed files are reported by the vocabulary reader
        return None


def added_bos_eos(facts: TokenizerFacts, ids: Mapping[str, int], sentencepiece: bool, tok: Any = None) -> tuple[bool, bool]:
    """Whether the HF tokenizer prepends bos / appends eos when encoding with special tokens.

    ``tok`` is the folder's parsed tokenizer.json (``_hf_tokenizer``), when the caller has it.
    """
    tok = tok if tok is not None else _hf_tokenizer(facts)
    if tok is not None:
        probe = "a"
        plain = tok.encode(probe, add_special_tokens=False).ids
        full = tok.encode(probe, add_special_tokens=True).ids
        bos, eos = ids.get("bos"), ids.get("eos")
        add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
        rest = full[1:] if add_bos else full
        add_eos = eos is not None and len(rest) > len(plain) and rest[-1] == eos
        return bool(add_bos), bool(add_eos)
    flag_bos, flag_eos = facts.add_flag("bos"), facts.add_flag("eos")
    return (flag_bos if flag_bos is not None else sentencepiece, flag_eos if flag_eos is not None else False)


def added_sep(facts: TokenizerFacts, ids: Mapping[str, int], tok: Any = None) -> bool | None:
    """Whether the HF tokenizer separates a pair of sequences with sep/eos; None when it says nothing."""
    flag = facts.add_flag("sep")
    if flag is not None:
        return flag
    tok = tok if tok is not None else _hf_tokenizer(facts)
    if tok is None:
        return None
    first, second = (tok.encode(probe, add_special_tokens=False).ids for probe in ("a", "b"))
    pair = tok.encode("a", "b", add_special_tokens=True).ids
    starts = [i for i in range(len(pair)) if pair[i:i + len(first)] == first]
    if not first or not second or not starts:
        return None
    rest = pair[starts[0] + len(first):]
    ends = [i for i in range(len(rest)) if rest[i:i + len(second)] == second]
    between = rest[:ends[0]] if ends else []
    if not between:
        return None
    return any(t in between for t in (ids.get("sep"), ids.get("eos")) if t is not None)


def special_token_metadata(facts: TokenizerFacts, tokens: list[str], config: Mapping[str, Any], *, sentencepiece: bool) -> dict[str, Any]:
    """GGUF tokenizer keys for special tokens: the ids found and add_bos/add_eos (and add_sep when known)."""
    ids = facts.special_ids(tokens, config)
    out: dict[str, Any] = {_ID_KEYS[kind]: tid for kind, tid in ids.items()}
    eot = facts.end_of_turn_id(tokens)
    if eot is not None:
        out[Keys.Tokenizer.EOT_ID] = eot
    tok = _hf_tokenizer(facts)  # parsed once for both probes
    add_bos, add_eos = added_bos_eos(facts, ids, sentencepiece, tok)
    out[Keys.Tokenizer.ADD_BOS] = add_bos
    out[Keys.Tokenizer.ADD_EOS] = add_eos
    add_sep = added_sep(facts, ids, tok)
    if add_sep is not None:
        out[Keys.Tokenizer.ADD_SEP] = add_sep
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
