"""Everything in a merged folder besides the weights: config, tokenizer, generation config.

The merged model keeps the CP tokenizer (its vocabulary is what the weights' rows mean) but talks
like the chat model, so it takes the chat model's template and end-of-turn tokens wherever those
tokens exist in the CP vocabulary. Ids are always translated by token text, never copied, because
an extended vocabulary may number them differently.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from convert.checkpoint import TOKENIZER_FILES
from convert.json_file import JsonObject
from convert.tokenizer_facts import GENERATION_ID_KEYS, TokenizerFacts
from cvlocal.vector.device import dtype_name

import torch


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def translate_ids(ids: Any, chat_vocab: list[str | None], cp_vocab: dict[str, int]) -> list[int]:
    """Chat ids (int or list) -> CP ids of the same token texts; tokens the CP lacks are dropped."""
    out = []
    for i in [ids] if isinstance(ids, int) else list(ids or []):
        if isinstance(i, int) and 0 <= i < len(chat_vocab) and chat_vocab[i] in cp_vocab:
            cp_id = int(cp_vocab[chat_vocab[i]])  # type: ignore[index]
            if cp_id not in out:
                out.append(cp_id)
    return out


def write_config(out_dir: Path, cp_config: dict[str, Any], dtype: torch.dtype, eos: list[int]) -> None:
    """CP's config with the output dtype and, where it names one, the chat model's eos."""
    config = json.loads(json.dumps(cp_config))
    keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = dtype_name(dtype)
    if "eos_token_id" in config and eos:
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    _dump(out_dir / "config.json", config)


def write_tokenizer(out_dir: Path, cp: TokenizerFacts, chat_template: str | None, chat_eos_text: str | None, cp_vocab: dict[str, int]) -> list[str]:
    """Copy the CP tokenizer, then give it the chat template and the chat model's eos token.

    The CP's files are the ones ``convert.tokenizer_facts`` read and checked when the merge was
    planned (read from the CP folder, never from the copies being written, so an error names the
    user's file). Returns the notes to show the user (what was taken from the chat model and what
    was not).
    """
    notes = []
    cp_dir = cp.folder
    tokenizer_config, special_map = cp.tokenizer_config, cp.special_tokens_map
    for name in TOKENIZER_FILES:
        if (cp_dir / name).is_file() and name not in ("chat_template.jinja", "chat_template.json"):
            shutil.copyfile(cp_dir / name, out_dir / name)
    config = dict(tokenizer_config.data) if tokenizer_config else {}
    if chat_template:
        config["chat_template"] = chat_template
        notes.append("chat template taken from the chat model")
    else:
        notes.append("the chat model has no chat template; none was set")
    if chat_eos_text:
        if chat_eos_text in cp_vocab:
            config["eos_token"] = chat_eos_text
            notes.append(f"eos token {chat_eos_text!r} taken from the chat model")
        else:
            notes.append(f"the chat model's eos {chat_eos_text!r} is not in the CP vocabulary; the CP eos is kept")
    if config:
        _dump(out_dir / "tokenizer_config.json", config)
    if special_map is not None and chat_eos_text in cp_vocab:
        data = json.loads(json.dumps(special_map.data))
        if isinstance(data.get("eos_token"), dict):
            data["eos_token"]["content"] = chat_eos_text
        else:
            data["eos_token"] = chat_eos_text
        _dump(out_dir / "special_tokens_map.json", data)
    return notes


def write_generation_config(out_dir: Path, chat_gen: JsonObject | None, cp_gen: JsonObject | None, chat_vocab: list[str | None], cp_vocab: dict[str, int]) -> dict[str, Any]:
    """The chat model's generation defaults with its special ids translated into the CP vocabulary."""
    chosen = chat_gen if chat_gen is not None else cp_gen
    gen = json.loads(json.dumps(chosen.data)) if chosen is not None else {}
    if chat_gen is not None:
        for key in GENERATION_ID_KEYS:
            if key not in gen:
                continue
            mapped = translate_ids(chat_gen.integers(key, low=-1), chat_vocab, cp_vocab)
            if mapped:
                gen[key] = mapped[0] if isinstance(chat_gen.raw(key), int) or len(mapped) == 1 else mapped
            elif cp_gen is not None and key in cp_gen:
                gen[key] = cp_gen.raw(key)
            else:
                del gen[key]
    if gen:
        _dump(out_dir / "generation_config.json", gen)
    return gen
