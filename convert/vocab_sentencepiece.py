"""SentencePiece ``tokenizer.model`` to GGUF ``llama`` vocabulary: pieces, scores, token types.

The model file is a SentencePiece ModelProto; its pieces carry the same type numbers llama.cpp
uses (normal 1, unknown 2, control 3, user-defined 4, unused 5, byte 6), and llama.cpp's SPM
tokenizer merges by score, so pieces and scores go over unchanged. Tokens added on the HF side
(``added_tokens.json``, ``tokenizer_config.json``'s ``added_tokens_decoder``, tokenizer.json's
``added_tokens``) override their ids as llama.cpp's converter does: special ones (or ones that look
like chat markers) become control tokens, the others user-defined with ``▁`` turned back into a
space, each with score -1000. Ids the model has but the tokenizer does not fill are
``[PAD<id>]`` placeholders (unused, score -10000).

``tokenizer.ggml.add_space_prefix`` records whether text gets SentencePiece's leading ``▁``
(``add_prefix_space`` in tokenizer_config.json when set, else the model's ``add_dummy_prefix``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf import Keys, TokenType

from convert.errors import ConvertError
from convert.special_tokens import looks_special
from convert.tokenizer_facts import TokenizerFacts
from convert.vocab_types import Vocab, too_big

PAD_SCORE = -10000.0
ADDED_SCORE = -1000.0
SPIECE_UNDERLINE = "\u2581"


def _load_proto(path: Path) -> Any:
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()  # type: ignore[attr-defined]  # a generated protobuf module
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, ValueError):
        raise ConvertError("corrupted tokenizer.model (not a SentencePiece model)", path, "Re-download the tokenizer files.") from None
    if not proto.pieces:
        raise ConvertError("tokenizer.model has no pieces", path, "Re-download the tokenizer files.")
    return proto


def _added_tokens(facts: TokenizerFacts) -> list[tuple[int, str, bool | None, Path]]:
    """HF-side added tokens: (id, content, special flag or None when unknown, file)."""
    folder = facts.folder
    found: list[tuple[int, str, bool | None, Path]] = [
        (int(i), str(text), None, folder / "added_tokens.json") for text, i in facts.added_tokens_json.items()]
    seen: set[int] = set()
    decoder = facts.data("tokenizer_config.json").get("added_tokens_decoder")
    for key, entry in (decoder or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            found.append((int(key), entry["content"], bool(entry.get("special")), folder / "tokenizer_config.json"))
            seen.add(int(key))
    for entry in facts.data("tokenizer.json").get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str) and int(entry["id"]) not in seen:
            found.append((int(entry["id"]), entry["content"], bool(entry.get("special")), folder / "tokenizer.json"))
    return found


def read_sentencepiece(facts: TokenizerFacts, n_vocab: int) -> Vocab:
    """The GGUF vocabulary of ``folder/tokenizer.model`` for a model with ``n_vocab`` embedding rows."""
    folder = facts.folder
    path = folder / "tokenizer.model"
    proto = _load_proto(path)
    if len(proto.pieces) > n_vocab:
        raise too_big(path, len(proto.pieces), n_vocab)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [PAD_SCORE] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i, piece in enumerate(proto.pieces):
        tokens[i] = piece.piece
        scores[i] = float(piece.score)
        types[i] = int(piece.type) if piece.type in TokenType._value2member_map_ else int(TokenType.NORMAL)

    user_defined = 0
    for token_id, text, special, source in _added_tokens(facts):
        if token_id >= n_vocab:
            raise too_big(source, token_id + 1, n_vocab)
        is_control = (special if special is not None else False) or looks_special(text)
        if special is None and types[token_id] == TokenType.CONTROL:
            is_control = True
        if is_control:
            types[token_id] = int(TokenType.CONTROL)
        else:
            text = text.replace(SPIECE_UNDERLINE, " ")
            user_defined += types[token_id] != TokenType.USER_DEFINED
            types[token_id] = int(TokenType.USER_DEFINED)
        tokens[token_id] = text
        scores[token_id] = ADDED_SCORE

    extra: dict[str, Any] = {Keys.Tokenizer.ADD_PREFIX: _add_space_prefix(facts, proto)}
    warnings = []
    spec = proto.normalizer_spec
    if spec.name not in ("identity", "") or spec.remove_extra_whitespaces:
        warnings.append(
            f"{path}: SentencePiece normalization {spec.name!r} (remove_extra_whitespaces={spec.remove_extra_whitespaces}) "
            "is not applied by llama.cpp; text it would change may tokenize differently"
        )
    if user_defined:
        warnings.append(
            f"{folder}: {user_defined} tokens were added on the transformers side (not in tokenizer.model); "
            "llama.cpp puts a '▁' before text that follows one of them and transformers does not, so such text tokenizes differently "
            "(extending tokenizer.model itself avoids this)"
        )
    if _non_legacy(facts):
        warnings.append(
            f"{folder}: transformers runs this SentencePiece tokenizer in non-legacy mode (no '▁' after a special token); "
            "llama.cpp, like sentencepiece and the original Llama/Mistral code, adds one, so chat prompts tokenize slightly differently"
        )
    if proto.trainer_spec.model_type != 2:  # 2 = BPE
        warnings.append(f"{path}: a unigram SentencePiece model; llama.cpp tokenizes it by piece scores, which can differ in rare cases")
    return Vocab("llama", "default", tokens, types, scores, None, extra, warnings)


def _non_legacy(facts: TokenizerFacts) -> bool:
    """Whether transformers' tokenizer.json prepends '▁' only to the first text segment."""
    pre = facts.data("tokenizer.json").get("pre_tokenizer")
    steps = (pre.get("pretokenizers") or []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    return any(isinstance(s, dict) and s.get("type") == "Metaspace" and s.get("prepend_scheme") == "first" for s in steps)


def _add_space_prefix(facts: TokenizerFacts, proto: Any) -> bool:
    value = facts.data("tokenizer_config.json").get("add_prefix_space")
    if isinstance(value, bool):
        return value
    return bool(proto.normalizer_spec.add_dummy_prefix)
