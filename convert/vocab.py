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

from convert.chat_template import chat_template_metadata, chat_templates
from convert.errors import ConvertError
from convert.special_tokens import special_token_metadata
from convert.tokenizer_files import check_tokenizer_files
from convert.vocab_bpe import read_bpe
from convert.vocab_sentencepiece import read_sentencepiece
from convert.vocab_types import Vocab


def read_vocab(folder: Path, config: Mapping[str, Any], n_vocab: int) -> Vocab:
    """Export the folder's tokenizer, special tokens and chat template for a model of ``n_vocab`` rows."""
    check_tokenizer_files(folder)
    templates = chat_templates(folder)
    if (folder / "tokenizer.model").is_file():
        vocab = read_sentencepiece(folder, n_vocab)
    elif (folder / "tokenizer.json").is_file():
        vocab = read_bpe(folder, n_vocab)
    else:
        raise ConvertError(
            "no tokenizer (tokenizer.model or tokenizer.json)", folder,
            "Copy the tokenizer files of the model (or of its base model) into the folder.",
        )
    default = templates.get("default")
    vocab.extra.update(special_token_metadata(folder, vocab.tokens, config, default, sentencepiece=vocab.model == "llama"))
    vocab.extra.update(chat_template_metadata(templates))
    return vocab
