"""llama-cpp-python's own OpenAI server pieces, behind the package boundary (issue 14).

``cvlocal serve`` (one request at a time) is llama-cpp-python's FastAPI app; the edge in front of
every served app checks bodies against that server's pydantic request models and words its known
client errors (a prompt longer than the context) as that server does. ``cvlocal/chat`` reaches
``llama_cpp.server`` only through these functions. Imports are deferred: the server packages are
an optional extra.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pydantic import BaseModel


def single_model_app(*, model: str, alias: str, chat_format: str, n_ctx: int, n_gpu_layers: int,
                     threads: int | None, seed: int, host: str, port: int, api_key: str | None) -> Any:
    """llama-cpp-python's server app for one GGUF, loading it now; requests queue in arrival order.

    ``interrupt_requests`` is off, so a request waits for the one before it (FIFO lock) instead of
    ending its stream. Raises llama-cpp-python's ValueError/RuntimeError if the model will not load.
    """
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    threading = {"n_threads": threads, "n_threads_batch": threads} if threads else {}
    model_settings = ModelSettings(model=model, model_alias=alias, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                                   **threading, seed=seed, chat_format=chat_format, verbose=False)
    server_settings = ServerSettings(host=host, port=port, api_key=api_key, interrupt_requests=False)
    return create_app(server_settings=server_settings, model_settings=[model_settings])


def llama_proxy() -> Any:
    """The running app's model proxy (``proxy()`` is the loaded ``Llama``), for the adapter routes."""
    from llama_cpp.server import app as server_app

    return server_app._llama_proxy()


def request_schemas() -> dict[str, type[BaseModel]]:
    """Path -> the pydantic model of llama-cpp-python's server for that endpoint's JSON body."""
    from llama_cpp.server.types import (
        CreateChatCompletionRequest,
        CreateCompletionRequest,
        CreateEmbeddingRequest,
        DetokenizeInputRequest,
        TokenizeInputRequest,
    )

    return {
        "/v1/chat/completions": CreateChatCompletionRequest,
        "/v1/completions": CreateCompletionRequest,
        "/v1/engines/copilot-codex/completions": CreateCompletionRequest,
        "/v1/embeddings": CreateEmbeddingRequest,
        "/extras/tokenize": TokenizeInputRequest,
        "/extras/tokenize/count": TokenizeInputRequest,
        "/extras/detokenize": DetokenizeInputRequest,
    }


def client_error_formatters() -> dict[re.Pattern[str], Callable[[Any, re.Match[str]], tuple[int, dict[str, Any]]]]:
    """llama-cpp-python's server's known client errors: message pattern -> (request, match) -> (status, error)."""
    from llama_cpp.server.errors import RouteErrorHandler

    return dict(RouteErrorHandler.pattern_and_formatters)
