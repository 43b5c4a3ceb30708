"""``cvlocal serve``: llama-cpp-python's OpenAI-compatible server with cvlocal's template handling.

The server (chat completions with streaming, completions, models) is llama-cpp-python's own,
built with ``create_app``. What cvlocal adds is the chat template: a handler registered under
:data:`HANDLER_NAME` renders messages with the same :class:`~cvlocal.chat.template.ChatTemplate`
the REPL uses (GGUF template, override or named fallback) and stops on the same end-of-turn ids
and strings, so a model answers the same through both.

The server packages are an optional extra; :func:`missing_server_packages` names what is absent.
"""
from __future__ import annotations

import importlib
import ipaddress
from pathlib import Path
from typing import Any

from cvlocal.chat.llama_log import captured_llama_log
from cvlocal.chat.template import ChatTemplate, resolve_template
from cvlocal.errors import UsageError

HANDLER_NAME = "cvlocal"
SERVER_PACKAGES = {"uvicorn": "uvicorn", "fastapi": "fastapi", "sse_starlette": "sse-starlette",
                   "starlette_context": "starlette-context", "pydantic_settings": "pydantic-settings"}


def missing_server_packages() -> list[str]:
    """PyPI names of the server extra's packages that cannot be imported."""
    missing = []
    for module, pypi in SERVER_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pypi)
    return missing


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TemplateChatHandler:
    """A llama-cpp-python chat completion handler that renders with cvlocal's resolved template.

    The template depends on the loaded model (its metadata and vocabulary), which the server loads
    itself, so it is resolved on the first request for each model and kept.
    """

    def __init__(self, chat_format: str | None, model_name: str) -> None:
        self.chat_format = chat_format
        self.model_name = model_name
        self._handlers: dict[int, tuple[Any, Any]] = {}

    def template_for(self, llama: Any) -> ChatTemplate:
        return resolve_template(llama, self.chat_format, self.model_name)

    def __call__(self, *, llama: Any, **kwargs: Any) -> Any:
        from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler

        entry = self._handlers.get(id(llama))
        if entry is None or entry[0] is not llama:
            template = self.template_for(llama)
            entry = (llama, chat_formatter_to_chat_completion_handler(template.llama_formatter()))
            self._handlers[id(llama)] = entry
        return entry[1](llama=llama, **kwargs)


def probe_template(model_path: Path, chat_format: str | None) -> ChatTemplate:
    """Resolve the template from the GGUF's vocabulary alone (fast), to report it before serving."""
    from llama_cpp import Llama

    with captured_llama_log():
        vocab = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    try:
        return resolve_template(vocab, chat_format, model_path.name)
    finally:
        vocab.close()


def build_app(
    model_path: Path,
    *,
    ctx: int = 4096,
    threads: int | None = None,
    n_gpu_layers: int = 0,
    chat_format: str | None = None,
    seed: int = 0,
    model_alias: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    adapters: list | None = None,
) -> Any:
    """The FastAPI app of llama-cpp-python's server for one GGUF, with cvlocal's chat template.

    With ``adapters`` (``llama_adapters.AdapterSpec``) the app is wrapped by ``server_lora``:
    llama-server's ``"lora"`` request field and ``/lora-adapters`` endpoints.
    """
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(
        HANDLER_NAME, TemplateChatHandler(chat_format, model_path.name), overwrite=True)
    threading = {"n_threads": threads, "n_threads_batch": threads} if threads else {}
    model_settings = ModelSettings(
        model=str(model_path),
        model_alias=model_alias or model_path.stem,
        n_ctx=ctx,
        n_gpu_layers=n_gpu_layers,
        **threading,
        seed=seed,
        chat_format=HANDLER_NAME,
        verbose=False,
    )
    server_settings = ServerSettings(host=host, port=port, api_key=api_key)
    with captured_llama_log() as log:  # the model loads here; llama.cpp's lines would scatter over the terminal
        try:
            app = create_app(server_settings=server_settings, model_settings=[model_settings])
        except (ValueError, RuntimeError) as err:
            reason = "; ".join(log.problems()[-2:]) or str(err)
            raise UsageError(f"llama.cpp could not load the model ({reason})", path=model_path,
                             fix="Check that the file is complete and was written by a recent converter") from err
    if not adapters:
        return app
    from llama_cpp.server import app as server_app

    from cvlocal.chat.server_lora import attach

    return attach(app, server_app._llama_proxy(), adapters)


def serve(app: Any, host: str, port: int, quiet: bool = False) -> None:
    """Run the app with uvicorn until Ctrl-C."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")
