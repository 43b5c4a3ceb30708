"""The chat template(s) of an HF folder as GGUF ``tokenizer.chat_template*`` keys.

The templates are found by ``convert.tokenizer_facts`` (where transformers looks). The default
template goes to ``tokenizer.chat_template``; named ones to ``tokenizer.chat_template.<name>``
with their names listed in ``tokenizer.chat_templates``, which is where llama.cpp looks for them.
"""
from __future__ import annotations

import re
from typing import Any

from gguf import Keys



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
