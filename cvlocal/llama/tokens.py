"""Tokenization and detokenization through llama.cpp's vocabulary.

:class:`Vocab` answers what the chat-template code asks of a ``Llama`` (``tokenize``,
``detokenize``, ``metadata``, ``n_vocab``, ``token_bos``/``token_eos``, ``_model``), so templates
render the same prompt tokens here as there. Streamed text goes through the chat's
:class:`~cvlocal.llama.utf8.Utf8Stream` (whole characters only: a byte-level BPE or byte-fallback
token can end inside a multi-byte character).
"""
from __future__ import annotations

from typing import Any, Sequence


class Vocab:
    """A model's vocabulary; token pieces are cached (a reply repeats most of its tokens, and each
    ctypes round trip is the largest per-token cost of a Python decoding loop)."""

    def __init__(self, native_model: Any) -> None:
        self._model = native_model  # the attribute name the template code reads
        self._pieces: dict[int, bytes] = {}
        self._metadata: dict[str, str] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        if self._metadata is None:
            self._metadata = self._model.metadata()
        return self._metadata

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return [int(t) for t in self._model.tokenize(text, add_bos=add_bos, special=special)]

    def detokenize(self, tokens: Sequence[int], prev_tokens: Any = None, special: bool = False) -> bytes:
        return self._model.detokenize(list(tokens), special=special)

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for (special tokens as nothing, as ``Llama.detokenize`` does)."""
        data = self._pieces.get(token)
        if data is None:
            data = self._pieces[token] = self._model.detokenize([token])
        return data

    def n_vocab(self) -> int:
        return int(self._model.n_vocab())

    def token_bos(self) -> int:
        return int(self._model.token_bos())

    def token_eos(self) -> int:
        return int(self._model.token_eos())

    def add_bos(self) -> bool:
        return bool(self._model.add_bos_token())

    def is_end_of_generation(self, token: int) -> bool:
        """llama.cpp's own end-of-generation set (eos, eot and the template's end tokens it knows)."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))
