"""Which tensors are the vocabulary-sized ones (embedding and output head).

Their rows are tokens, so they are the only tensors whose shapes may differ between a CP model
with an extended vocabulary and the chat vector, and the only ones ``--embeddings`` and
``--special-tokens`` act on.
"""
from __future__ import annotations


def is_embedding(name: str) -> bool:
    return name.endswith("embed_tokens.weight") or name.endswith("wte.weight")


def is_lm_head(name: str) -> bool:
    return name == "lm_head.weight" or name.endswith(".lm_head.weight")


def is_vocab_tensor(name: str) -> bool:
    return is_embedding(name) or is_lm_head(name)


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
