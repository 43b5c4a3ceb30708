"""Everything an HF folder's tokenizer files say, read in one place.

The converter (GGUF ``tokenizer.*`` keys), the merge (the chat model's special-token rows, its
end-of-turn ids, the template and eos it hands to the merged model) and the release (through the
GGUF the converter writes from these facts) must agree on which template a model has, which
texts its bos and eos are and which ids end a turn; when each read the files its own way they did
not (the merge looked for bos/eos only in tokenizer_config.json, the converter also in
special_tokens_map.json; the merge rendered templates in its own Jinja set-up). So the files are
read here, once, after ``convert.tokenizer_files`` has checked their shape:

- ``tokenizer.json`` / ``tokenizer.model``: the id -> text table and the added / control ids;
- ``tokenizer_config.json``, then ``special_tokens_map.json``: the bos/eos/unk/sep/pad texts, and
  ``add_bos_token`` / ``add_eos_token``;
- ``chat_template.jinja`` (+ ``additional_chat_templates/*.jinja``), then tokenizer_config.json's
  ``chat_template``, then ``chat_template.json``: the chat templates, where transformers looks;
- ``generation_config.json``: the eos ids generation stops on;
- the default template, rendered as transformers renders it (``convert.chat_render``), for the
  special tokens it emits and its end-of-turn marker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from convert.chat_render import render_sample
from convert.errors import ConvertError
from convert.json_file import JsonObject, load_json
from convert.tokenizer_files import check_tokenizer_files

SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "mask")  # mask: Gemma's <mask>, which llama.cpp records too
# End-of-turn markers of the chat families supported, in the order they are looked for.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
ADDITIONAL_DIR = "additional_chat_templates"
GENERATION_CONFIG = "generation_config.json"
GENERATION_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
NO_TOKENIZER_FIX = "Copy the tokenizer files of the model (or of its base model) into the folder."


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


def _templates_from(obj: JsonObject) -> dict[str, str] | None:
    """``chat_template`` of a checked file: a string, or a list of named templates."""
    value = obj.raw("chat_template")
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        return {str(e.text("name") or "default"): str(e.text("template")) for e in obj.objects("chat_template")}
    return None


def read_generation_config(folder: Path) -> JsonObject | None:
    """A folder's generation_config.json, its special ids checked (None when it has none)."""
    gen = JsonObject.optional(folder / GENERATION_CONFIG)
    if gen is not None:
        for key in GENERATION_ID_KEYS:
            gen.integers(key, low=-1)  # -1 is an old spelling of "none"
    return gen


@dataclass
class TokenizerFacts:
    """The facts of one folder's tokenizer files; build with :func:`read_tokenizer_facts`."""

    folder: Path
    files: dict[str, JsonObject]
    templates: dict[str, str]
    _table: TokenTable | None = field(default=None, repr=False)

    # -- the files ----------------------------------------------------------------------------
    @property
    def tokenizer_config(self) -> JsonObject | None:
        return self.files.get("tokenizer_config.json")

    @property
    def special_tokens_map(self) -> JsonObject | None:
        return self.files.get("special_tokens_map.json")

    @cached_property
    def generation(self) -> JsonObject | None:
        """generation_config.json, checked on first use (the converter does not read it)."""
        return read_generation_config(self.folder)

    def data(self, name: str) -> dict[str, Any]:
        """The parsed, checked content of one tokenizer file (tokenizer.json, ...); {} when absent."""
        obj = self.files.get(name)
        return obj.data if obj is not None else {}

    @cached_property
    def added_tokens_json(self) -> dict[str, Any]:
        """``added_tokens.json`` (text -> id, older SentencePiece repos), {} when absent."""
        path = self.folder / "added_tokens.json"
        data = load_json(path) if path.is_file() else {}
        return data if isinstance(data, dict) else {}

    @property
    def default_template(self) -> str | None:
        """The main chat template (the unnamed one, else the first named one), or None."""
        return self.templates.get("default") or next(iter(self.templates.values()), None)

    def special_text(self, kind: str) -> str | None:
        """The text of the ``kind`` token (bos, eos, ...): tokenizer_config.json, else special_tokens_map.json."""
        for source in (self.tokenizer_config, self.special_tokens_map):
            text = source.token_text(f"{kind}_token") if source is not None else None
            if text is not None:
                return text
        return None

    def add_flag(self, kind: str) -> bool | None:
        """tokenizer_config.json's ``add_bos_token`` / ``add_eos_token``, when it sets one."""
        value = self.tokenizer_config.raw(f"add_{kind}_token") if self.tokenizer_config else None
        return value if isinstance(value, bool) else None

    # -- the token table -------------------------------------------------------------------------
    @property
    def table(self) -> TokenTable:
        """The id -> text table (tokenizer.json, else tokenizer.model), built on first use."""
        if self._table is None:
            self._table = self._read_table()
        return self._table

    def _read_table(self) -> TokenTable:
        table: list[str | None] = []
        special: set[int] = set()
        tok_json = self.folder / "tokenizer.json"
        sp_model = self.folder / "tokenizer.model"
        fix = "Check that the folder has the model's tokenizer.json or tokenizer.model."
        if "tokenizer.json" in self.files:
            data = self.files["tokenizer.json"].data
            vocab = data["model"].get("vocab")
            if vocab is None:
                raise ConvertError("tokenizer.json has no model.vocab", tok_json, fix)
            for text, i in vocab.items() if isinstance(vocab, dict) else ((piece[0], i) for i, piece in enumerate(vocab)):
                _set(table, i, text)
            for entry in data.get("added_tokens") or []:
                _set(table, entry["id"], entry["content"])
                special.add(entry["id"])
        elif sp_model.is_file():
            import sentencepiece

            try:
                sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
            except (OSError, RuntimeError):
                raise ConvertError("not a readable SentencePiece model", sp_model, fix) from None
            for i in range(sp.get_piece_size()):
                _set(table, i, sp.id_to_piece(i))
                if sp.is_control(i) or sp.is_unknown(i):
                    special.add(i)
        else:
            raise ConvertError("no tokenizer (tokenizer.json or tokenizer.model)", self.folder, fix)
        decoder = self.tokenizer_config.raw("added_tokens_decoder") if self.tokenizer_config else None
        for key, entry in (decoder or {}).items():
            if isinstance(entry.get("content"), str):
                _set(table, int(key), entry["content"])
                special.add(int(key))
        return TokenTable(table, special, self.special_text("bos"), self.special_text("eos"))

    # -- derived facts ------------------------------------------------------------------------
    def special_ids(self, tokens: list[str] | list[str | None], config: Mapping[str, Any]) -> dict[str, int]:
        """Ids of bos/eos/unk/sep/pad in ``tokens`` (kind -> id): by text, else config.json's ``*_token_id``."""
        index: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t is not None:
                index.setdefault(t, i)
        ids: dict[str, int] = {}
        for kind in SPECIAL_KINDS:
            for source in (self.tokenizer_config, self.special_tokens_map):
                text = source.token_text(f"{kind}_token") if source is not None else None
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

    def end_of_turn_id(self, tokens: list[str] | list[str | None]) -> int | None:
        """The id in ``tokens`` of the default template's end-of-turn marker, when it has one."""
        template = self.default_template
        if not template:
            return None
        for marker in END_OF_TURN:
            if marker in template and marker in tokens:
                return list(tokens).index(marker)
        return None

    def template_special_ids(self) -> list[int]:
        """The added / control tokens the default template emits (see :func:`special_ids_in_template`)."""
        return special_ids_in_template(self.table, self.default_template)

    def eos_ids(self) -> list[int]:
        """End-of-turn ids: generation_config.json's eos_token_id (int or list), then the tokenizer's eos."""
        gen = self.generation
        ids: list[int] = list(dict.fromkeys(i for i in gen.integers("eos_token_id", low=-1) if i >= 0)) if gen else []
        table = self.table
        eos = table.ids().get(table.eos) if table.eos else None
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids


def special_ids_in_template(table: TokenTable, template: str | None) -> list[int]:
    """The added / control tokens of ``table`` that ``template`` emits, in order of first appearance.

    The template is rendered on a sample conversation as transformers renders it. Special tokens
    are matched as whole strings by every tokenizer before any other splitting, so finding their
    text in the rendered prompt is finding the tokens.
    """
    text = render_sample(template, table.bos or "", table.eos or "") if template else ""
    if not text:
        return []
    found = [(text.find(table.tokens[i] or "\0"), i) for i in table.special if table.tokens[i]]
    return [i for pos, i in sorted(found) if pos >= 0]


def read_chat_templates(folder: Path, files: Mapping[str, JsonObject]) -> dict[str, str]:
    """All chat templates of ``folder`` by name ("default" for the main one), where transformers looks."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        templates = {"default": jinja.read_text(encoding="utf-8")}
        extra = folder / ADDITIONAL_DIR
        if extra.is_dir():
            for f in sorted(extra.glob("*.jinja")):
                templates[f.stem] = f.read_text(encoding="utf-8")
        return templates
    for name in ("tokenizer_config.json", "chat_template.json"):
        found = _templates_from(files[name]) if name in files else None
        if found is not None:
            return found
    return {}


def read_tokenizer_facts(folder: Path, *, require_tokenizer: bool = False) -> TokenizerFacts:
    """Check and read ``folder``'s tokenizer files; ConvertError (file and field) when one is malformed.

    ``require_tokenizer`` refuses a folder with neither tokenizer.json nor tokenizer.model now,
    rather than when the table is first used.
    """
    folder = Path(folder)
    if require_tokenizer and not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise ConvertError("no tokenizer (tokenizer.model or tokenizer.json)", folder, NO_TOKENIZER_FIX)
    files = check_tokenizer_files(folder)
    return TokenizerFacts(folder, files, read_chat_templates(folder, files))
