"""What cvlocal asks of a loaded ``Llama`` that its public methods do not answer.

llama-cpp-python keeps the native model as ``Llama._model`` (a ``_internals.LlamaModel``) and
offers no public way to its description, size, trained context or a token's vocabulary text; the
performance counters and the logits of the last position are only reachable through the
low-level ``llama_cpp`` functions. Every such reach goes through here, so a llama-cpp-python
upgrade that renames them is fixed in one file. Each function also takes a
:class:`cvlocal.llama.tokens.Vocab` where it makes sense (it keeps its native model as ``_model`` too).
"""
from __future__ import annotations

from typing import Any


def native_model(llm: Any) -> Any:
    """The ``_internals.LlamaModel`` behind a ``Llama`` (or a :class:`~cvlocal.llama.tokens.Vocab`)."""
    return llm._model


def description(llm: Any) -> str:
    """llama.cpp's one-line description of the model ("llama 1B Q8_0")."""
    return str(native_model(llm).desc())


def n_params(llm: Any) -> int:
    """Number of parameters, as llama.cpp counts them."""
    return int(native_model(llm).n_params())


def size_bytes(llm: Any) -> int:
    """Bytes of all the model's tensors."""
    return int(native_model(llm).size())


def n_ctx_train(llm: Any) -> int:
    """The context length the model was trained with (0 when the GGUF does not say)."""
    return int(native_model(llm).n_ctx_train())


def adds_bos(llm: Any) -> bool:
    """Whether the vocabulary asks for a BOS token in front of a text."""
    return bool(native_model(llm).add_bos_token())


def token_text(llm: Any, token: int) -> str:
    """The vocabulary text of a valid token id (``<|eot_id|>``, ``</s>``)."""
    return native_model(llm).token_get_text(token)


def perf_reset(llm: Any) -> None:
    """Zero llama.cpp's performance counters of the ``Llama``'s context."""
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm.ctx)


def perf_decoded_tokens(llm: Any) -> int:
    """Tokens llama.cpp decoded since the last :func:`perf_reset` (prompt batches plus single-token steps).

    llama.cpp reports each count as at least 1 (to avoid dividing by zero), so a count whose time
    is zero did not happen.
    """
    import llama_cpp

    data = llama_cpp.llama_perf_context(llm.ctx)
    batches = int(data.n_p_eval) if data.t_p_eval_ms > 0 else 0
    singles = int(data.n_eval) if data.t_eval_ms > 0 else 0
    return batches + singles


def last_logits(llm: Any) -> Any:
    """The logits llama.cpp computed for the last evaluated position, as a numpy array (a copy)."""
    import llama_cpp
    import numpy as np

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()
