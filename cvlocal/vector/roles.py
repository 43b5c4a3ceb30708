"""Which tensors are the vocabulary-sized ones (embedding and output head).

Their rows are tokens, so they are the only tensors whose shapes may differ between a CP model
with an extended vocabulary and the chat vector, and the only ones ``--embeddings`` and
``--special-tokens`` act on. Which names they are is the converter's architecture table's
answer (``Architecture.embedding`` / ``.output``, a wrapper's prefix such as Gemma 3's
``model.language_model.`` included), not a guess from name suffixes; a model of a family the
tables do not hold gets the tables' default names (``model.embed_tokens.weight``,
``lm_head.weight``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from convert.architectures import LLAMA, Architecture, architecture_of


def _table(config: Mapping[str, Any]) -> Architecture:
    return architecture_of(config) or LLAMA


def is_embedding(name: str, config: Mapping[str, Any]) -> bool:
    """``name`` is the token embedding of a model with this config.json."""
    return _table(config).is_embedding(name)


def is_lm_head(name: str, config: Mapping[str, Any]) -> bool:
    """``name`` is the output head (absent in tied models) of a model with this config.json."""
    return _table(config).is_output(name)


def is_vocab_tensor(name: str, config: Mapping[str, Any]) -> bool:
    return is_embedding(name, config) or is_lm_head(name, config)


# Config keys that must agree between every input of a merge.
COMPAT_KEYS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


def config_signature(config: dict) -> dict:
    """The architecture-defining part of a config (what compatibility is checked on)."""
    text = config.get("text_config") or config
    sig = {k: text.get(k) for k in COMPAT_KEYS if k in text}
    archs = config.get("architectures") or []
    sig["architecture"] = archs[0] if archs else None
    return sig
