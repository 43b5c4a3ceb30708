"""What the tokenizers say: vocabularies, chat templates, and the special tokens a template uses.

The merge needs three facts that only the tokenizers know: whether the CP model's leading
embedding rows are the same tokens as the chat model's (for ``--embeddings overlap``), which
special tokens the chat template emits (their rows come from the chat model), and which ids the
chat model's end-of-turn tokens have in the CP vocabulary.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlocal.errors import UsageError

# A conversation that exercises every role a chat template formats.
SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello."},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "How are you?"},
]


def load_tokenizer(folder: Path) -> Any:
    """A transformers tokenizer from a folder, never running remote code.

    Imported lazily: transformers is slow to import and only the merge's token checks need it.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # transformers raises many types for a bad folder
        first = (str(err).strip().splitlines() or [err.__class__.__name__])[0][:160]
        raise UsageError(f"cannot load the tokenizer ({first})", folder, "Check that the folder has tokenizer.json or tokenizer.model and tokenizer_config.json.") from None


def vocabulary(tok: Any) -> list[str | None]:
    """Token text of every id the tokenizer knows (added tokens included)."""
    return list(tok.convert_ids_to_tokens(list(range(len(tok)))))


def read_chat_template(folder: Path) -> str | None:
    """The chat template a folder ships, from chat_template.jinja, chat_template.json or tokenizer_config.json."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        data = json.loads(as_json.read_text(encoding="utf-8"))
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, str):
            return template
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: take "default", else the first
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            return named.get("default") or next(iter(named.values()), None)
    return None


def render_sample(tok: Any, template: str) -> str:
    """The template applied to a sample conversation; without the system turn if it refuses one."""
    for conversation in (SAMPLE_CONVERSATION, SAMPLE_CONVERSATION[1:]):
        try:
            return tok.apply_chat_template(conversation, chat_template=template, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates raise on roles they do not support
            continue
    return ""


def special_ids(tok: Any) -> set[int]:
    """Ids of the tokenizer's added and special tokens (control tokens a template may emit)."""
    ids = set(getattr(tok, "all_special_ids", []) or [])
    ids.update(int(i) for i in getattr(tok, "added_tokens_decoder", {}) or {})
    return ids


def template_special_ids(tok: Any, template: str | None) -> list[int]:
    """The special tokens that the chat template emits, in order of first use."""
    if not template:
        return []
    text = render_sample(tok, template)
    if not text:
        return []
    specials = special_ids(tok)
    found: list[int] = []
    for i in tok(text, add_special_tokens=False)["input_ids"]:
        if i in specials and i not in found:
            found.append(int(i))
    return found


def eos_ids(folder: Path, tok: Any) -> list[int]:
    """End-of-turn ids: generation_config eos_token_id (int or list) plus the tokenizer's eos."""
    ids: list[int] = []
    gen = folder / "generation_config.json"
    if gen.is_file():
        value = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        ids.extend([value] if isinstance(value, int) else [v for v in value or [] if isinstance(v, int)])
    if getattr(tok, "eos_token_id", None) is not None and tok.eos_token_id not in ids:
        ids.append(int(tok.eos_token_id))
    return ids


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
