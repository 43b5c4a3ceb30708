"""What the tokenizers say: vocabularies, chat templates, and the special tokens a template uses.

The merge needs three facts that only the tokenizers know: whether the CP model's leading
embedding rows are the same tokens as the chat model's (for ``--embeddings overlap``), which
special tokens the chat template emits (their rows come from the chat model), and which ids the
chat model's end-of-turn tokens have in the CP vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convert.chat_template import chat_templates
from convert.json_file import JsonObject
from convert.tokenizer_files import check_tokenizer_files
from cvlocal.errors import UsageError

# A conversation that exercises every role a chat template formats.
SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello."},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "How are you?"},
]


@dataclass
class TokenTable:
    """A tokenizer's id -> token text table and its added / control tokens, read from its files.

    Read straight from tokenizer.json (or SentencePiece's tokenizer.model) instead of through
    transformers: a merge only needs the table, and loading a tokenizer through transformers costs
    seconds (a slow SentencePiece -> fast conversion for many Llama-2 models), which at 1B scale
    is as long as the merge itself.
    """

    tokens: list[str | None]
    special: set[int]
    bos: str | None = None
    eos: str | None = None

    def ids(self) -> dict[str, int]:
        """Token text -> id (the first id when a text repeats)."""
        out: dict[str, int] = {}
        for i, text in enumerate(self.tokens):
            if text is not None and text not in out:
                out[text] = i
        return out

    def __len__(self) -> int:
        return len(self.tokens)


def _set(table: list[str | None], i: int, text: str) -> None:
    if i >= len(table):
        table.extend([None] * (i + 1 - len(table)))
    table[i] = text


def read_token_table(folder: Path) -> TokenTable:
    """The token table of a folder's tokenizer (tokenizer.json, else tokenizer.model).

    The files' shape is checked first by the converter's ``check_tokenizer_files`` (a malformed
    field is one error naming the file and the field; ids are bounded, since an id of 10**12
    would size the table), so the reading below can trust the types.
    """
    table: list[str | None] = []
    special: set[int] = set()
    tok_json = folder / "tokenizer.json"
    sp_model = folder / "tokenizer.model"
    fix = "Check that the folder has the model's tokenizer.json or tokenizer.model."
    files = check_tokenizer_files(folder)
    if tok_json.is_file():
        data = files["tokenizer.json"]
        vocab = data.data["model"].get("vocab")
        if vocab is None:
            raise UsageError("tokenizer.json has no model.vocab", tok_json, fix)
        for text, i in vocab.items() if isinstance(vocab, dict) else ((piece[0], i) for i, piece in enumerate(vocab)):
            _set(table, i, text)
        for entry in data.data.get("added_tokens") or []:
            _set(table, entry["id"], entry["content"])
            special.add(entry["id"])
    elif sp_model.is_file():
        import sentencepiece

        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
        except (OSError, RuntimeError):
            raise UsageError("not a readable SentencePiece model", sp_model, fix) from None
        for i in range(sp.get_piece_size()):
            _set(table, i, sp.id_to_piece(i))
            if sp.is_control(i) or sp.is_unknown(i):
                special.add(i)
    else:
        raise UsageError("no tokenizer (tokenizer.json or tokenizer.model)", folder, fix)
    config = files.get("tokenizer_config.json") or JsonObject({}, folder / "tokenizer_config.json")
    for key, entry in (config.raw("added_tokens_decoder") or {}).items():
        if isinstance(entry.get("content"), str):
            _set(table, int(key), entry["content"])
            special.add(int(key))
    return TokenTable(table, special, config.token_text("bos_token"), config.token_text("eos_token"))


def read_chat_template(folder: Path) -> str | None:
    """The folder's main chat template, found the way the GGUF converter finds it (so the two agree)."""
    templates = chat_templates(folder)
    return templates.get("default") or next(iter(templates.values()), None)


def _template_env() -> Any:
    """A sandboxed Jinja environment with the helpers chat templates expect (as transformers sets up)."""
    from datetime import datetime

    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render_sample(table: TokenTable, template: str) -> str:
    """The template applied to a sample conversation; without the system turn if it refuses one."""
    try:
        compiled = _template_env().from_string(template)
    except Exception:  # a template jinja cannot parse has no tokens to find
        return ""
    for conversation in (SAMPLE_CONVERSATION, SAMPLE_CONVERSATION[1:]):
        try:
            return compiled.render(messages=conversation, add_generation_prompt=True, bos_token=table.bos or "", eos_token=table.eos or "")
        except Exception:  # templates raise on roles they do not support
            continue
    return ""


def template_special_ids(table: TokenTable, template: str | None) -> list[int]:
    """The added / control tokens the chat template emits, in order of first appearance.

    Special tokens are matched as whole strings by every tokenizer before any other splitting, so
    finding their text in the rendered prompt is finding the tokens.
    """
    if not template:
        return []
    text = render_sample(table, template)
    found = [(text.find(table.tokens[i] or "\0"), i) for i in table.special if table.tokens[i]]
    return [i for pos, i in sorted(found) if pos >= 0]


def eos_ids(folder: Path, table: TokenTable) -> list[int]:
    """End-of-turn ids: generation_config eos_token_id (int or list) plus the tokenizer's eos."""
    gen = JsonObject.optional(folder / "generation_config.json")
    ids: list[int] = list(dict.fromkeys(i for i in gen.integers("eos_token_id", low=-1) if i >= 0)) if gen else []
    eos = table.ids().get(table.eos) if table.eos else None
    if eos is not None and eos not in ids:
        ids.append(eos)
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
