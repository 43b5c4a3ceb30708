"""The chat template(s) of an HF folder, as GGUF ``tokenizer.chat_template*`` keys.

Where transformers looks, in the order it prefers: ``chat_template.jinja`` (plus named templates
in ``additional_chat_templates/*.jinja``), then ``tokenizer_config.json``'s ``chat_template`` (a
string, or a list of ``{"name", "template"}``), then ``chat_template.json`` (the processor file
some multimodal repos use). The default template goes to ``tokenizer.chat_template``; named ones
to ``tokenizer.chat_template.<name>`` with their names listed in ``tokenizer.chat_templates``,
which is where llama.cpp looks for them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gguf import Keys

from convert.json_file import load_json
from convert.errors import ConvertError

ADDITIONAL_DIR = "additional_chat_templates"


def _from_list(entries: list[Any], path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("template"), str):
            raise ConvertError("chat_template list entries must be {name, template}", path, "Fix the chat_template field.")
        out[str(entry.get("name") or "default")] = entry["template"]
    return out


def chat_templates(folder: Path) -> dict[str, str]:
    """All chat templates of ``folder`` by name ("default" for the main one); empty if none."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        templates = {"default": jinja.read_text(encoding="utf-8")}
        extra = folder / ADDITIONAL_DIR
        if extra.is_dir():
            for f in sorted(extra.glob("*.jinja")):
                templates[f.stem] = f.read_text(encoding="utf-8")
        return templates
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = load_json(config_path)
        value = config.get("chat_template") if isinstance(config, dict) else None
        if isinstance(value, str):
            return {"default": value}
        if isinstance(value, list):
            return _from_list(value, config_path)
        if value is not None:
            raise ConvertError("chat_template is neither a string nor a list", config_path, "Fix the chat_template field.")
    json_path = folder / "chat_template.json"
    if json_path.is_file():
        data = load_json(json_path)
        value = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(value, str):
            return {"default": value}
        if isinstance(value, list):
            return _from_list(value, json_path)
    return {}


def chat_template_metadata(templates: dict[str, str]) -> dict[str, Any]:
    """GGUF keys for the templates (name characters other than letters and digits become ``_``)."""
    out: dict[str, Any] = {}
    if "default" in templates:
        out[Keys.Tokenizer.CHAT_TEMPLATE] = templates["default"]
    names = []
    for name, template in templates.items():
        if name == "default":
            continue
        clean = re.sub(r"[^A-Za-z0-9]", "_", name)
        out[Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=clean)] = template
        names.append(clean)
    if names:
        out[Keys.Tokenizer.CHAT_TEMPLATES] = names
    return out
