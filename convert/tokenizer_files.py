"""The shape of a folder's tokenizer files, checked once before the converter or the merge reads them.

tokenizer.json, tokenizer_config.json, special_tokens_map.json and chat_template.json are read
in several places (the BPE and SentencePiece exporters, the special-token and chat-template
readers, the merge's token table). Rather than each reader guarding every field, the fields any
of them reads are checked here with ``convert.json_file``'s typed accessors, so that a damaged or
hand-edited file is one error naming the file and the field, and the readers can trust what
they are given.
"""
from __future__ import annotations

from pathlib import Path

from convert.errors import ConvertError
from convert.json_file import FIX, JsonObject, check_int, parse_id

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def check_tokenizer_files(folder: Path) -> dict[str, JsonObject]:
    """Raise ConvertError (file and field) if a tokenizer file present in ``folder`` is malformed.

    Returns the files it read (file name -> object), so that a caller need not parse them again.
    """
    tokenizer = JsonObject.optional(folder / "tokenizer.json")
    if tokenizer is not None:
        _check_tokenizer_json(tokenizer)
    config = JsonObject.optional(folder / "tokenizer_config.json")
    if config is not None:
        _check_tokenizer_config(config)
    special_map = JsonObject.optional(folder / "special_tokens_map.json")
    if special_map is not None:
        for key in SPECIAL_TOKEN_KEYS:
            special_map.token_text(key)
    template_file = JsonObject.optional(folder / "chat_template.json")
    if template_file is not None:
        _check_template(template_file)
    found = {"tokenizer.json": tokenizer, "tokenizer_config.json": config, "special_tokens_map.json": special_map, "chat_template.json": template_file}
    return {name: obj for name, obj in found.items() if obj is not None}


def _check_tokenizer_json(data: JsonObject) -> None:
    model = data.obj("model", required=True)
    assert model is not None
    model.text("type")
    vocab = model.raw("vocab")
    if isinstance(vocab, dict):
        for text, i in vocab.items():
            check_int(i, 0, 1 << 24, lambda what, got, t=text: model.error(f"vocab[{t[:30]!r}]", what, got))
    elif isinstance(vocab, list):
        for i, piece in enumerate(vocab):
            if not (isinstance(piece, list) and len(piece) == 2 and isinstance(piece[0], str)
                    and isinstance(piece[1], (int, float)) and not isinstance(piece[1], bool)):
                raise model.error(f"vocab[{i}]", "a [piece, score] pair", piece)
    elif "vocab" in model:
        raise model.error("vocab", "an object or a list", vocab)
    merges = model.raw("merges")
    if merges is not None:
        if not isinstance(merges, list):
            raise model.error("merges", "a list", merges)
        for i, merge in enumerate(merges):
            if not (isinstance(merge, str) or (isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge))):
                raise model.error(f"merges[{i}]", "a string or a pair of strings", merge)
    for entry in data.objects("added_tokens"):
        if entry.integer("id") is None:
            raise entry.error("id", "present (a token id)")
        if entry.text("content") is None:
            raise entry.error("content", "present (the token's text)")
    for key, steps in (("pre_tokenizer", "pretokenizers"), ("normalizer", "normalizers"), ("decoder", "decoders"), ("post_processor", "processors")):
        part = data.obj(key)
        if part is None:
            continue
        for step in [part, *part.objects(steps)]:
            step.text("type")
            pattern = step.obj("pattern")
            if pattern is not None:
                pattern.text("Regex")
                pattern.text("String")


def _check_tokenizer_config(config: JsonObject) -> None:
    decoder = config.obj("added_tokens_decoder")
    for key in decoder.keys() if decoder else []:
        parse_id(key, decoder, "added_tokens_decoder")  # type: ignore[arg-type]
        entry = decoder.obj(key, required=True)  # type: ignore[union-attr]
        entry.text("content")  # type: ignore[union-attr]
    for key in SPECIAL_TOKEN_KEYS:
        config.token_text(key)
    _check_template(config)


def _check_template(config: JsonObject) -> None:
    """``chat_template``: a string, or a list of ``{"name", "template"}`` (named templates)."""
    value = config.raw("chat_template")
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise config.error("chat_template", "a string or a list of named templates", value)
    for entry in config.objects("chat_template"):
        if entry.text("template") is None:
            raise ConvertError(f"field {entry.where}.template must be a string", config.path, FIX)
        entry.text("name")
