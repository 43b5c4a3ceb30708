"""The one place cvlocal talks to llama-cpp-python's low-level API.

- ``log``: llama.cpp's process-wide log callback, installed once, captures that nest.
- ``model``: opening a GGUF (the checks, the load, contexts with ``Llama``'s own settings).
- ``tokens``: tokenization and cached token pieces (what the chat templates ask of a ``Llama``).
- ``sampling``: one sampler chain per sequence, built as ``Llama`` builds its own.
- ``batch``: the batched decoder (several sequences per ``llama_decode``, continuous batching).
- ``shared``: a ``Llama`` look-alike many threads generate with at once, over the batched decoder.
- ``adapters``: LoRA adapters on a ``Llama`` through llama.cpp's C API (checked handles, scales that change).
- ``facts``: what cvlocal asks a loaded ``Llama`` beyond its public methods (the one place for ``_model``).
- ``stops``, ``utf8``: stop strings and whole characters out of the token stream.
- ``loader``: opening a high-level ``Llama`` (chat, server, release checks, evaluators) with the load log captured.
- ``chat_format``, ``server_app``: llama-cpp-python's chat formatters and its one-request OpenAI server,
  which ``cvlocal/chat`` builds on through these functions only.

Nothing outside this package imports ``llama_cpp`` or touches a ``Llama``'s ``_model``/``_ctx``
(tests/test_llama_boundary.py, no exceptions).
"""
from cvlocal.llama.batch import BatchedDecoder, Completion, Event, Handle, Request
from cvlocal.llama.log import LogCapture, captured_log
from cvlocal.llama.model import Model, check_gguf
from cvlocal.llama.sampling import SamplingParams
from cvlocal.llama.tokens import Vocab

__all__ = ["BatchedDecoder", "Completion", "Event", "Handle", "Request", "LogCapture", "captured_log", "Model",
           "check_gguf", "SamplingParams", "Vocab"]
