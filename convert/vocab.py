"""The tokenizer of an HF folder as GGUF metadata: pick the exporter, pad to the model's vocabulary.

``read_vocab`` decides the kind the way llama.cpp's converter does for these families: a
SentencePiece ``tokenizer.model`` when present, otherwise a byte-level BPE ``tokenizer.json``.
Both exporters return a ``Vocab`` whose token list has exactly ``n_vocab`` entries (the
embedding's row count), because llama.cpp requires the token list and ``token_embd`` to agree:
a model whose embeddings have more rows than the tokenizer has tokens gets ``[PAD<id>]``
placeholders of type UNUSED, as llama.cpp's converter writes; a tokenizer with more tokens than
the model has rows is an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from convert.chat_template import chat_template_metadata
from convert.errors import ConvertError
from convert.special_tokens import special_token_metadata
from convert.tokenizer_facts import NO_TOKENIZER_FIX, read_tokenizer_facts
from convert.vocab_bpe import read_bpe
from convert.vocab_sentencepiece import read_sentencepiece
from convert.vocab_types import Vocab


def read_vocab(folder: Path, config: Mapping[str, Any], n_vocab: int) -> Vocab:
    """Export the folder's tokenizer, special tokens and chat template for a model of ``n_vocab`` rows."""
    facts = read_tokenizer_facts(folder)
    if (folder / "tokenizer.model").is_file():
        vocab = read_sentencepiece(facts, n_vocab)
    elif (folder / "tokenizer.json").is_file():
        vocab = read_bpe(facts, n_vocab)
    else:
        raise ConvertError("no tokenizer (tokenizer.model or tokenizer.json)", folder, NO_TOKENIZER_FIX)
    vocab.extra.update(special_token_metadata(facts, vocab.tokens, config, sentencepiece=vocab.model == "llama"))
    vocab.extra.update(chat_template_metadata(facts.templates))
    return vocab
