"""``cvlocal serve``: llama-cpp-python's OpenAI-compatible server with cvlocal's template handling.

The server (chat completions with streaming, completions, models) is llama-cpp-python's own,
built with ``create_app``. What cvlocal adds:

- the chat template: a handler registered under :data:`HANDLER_NAME` renders messages with the
  same :class:`~cvlocal.chat.template.ChatTemplate` the REPL uses (GGUF template, override or
  named fallback) and stops on the same end-of-turn ids and strings, so a model answers the same
  through both;
- requests wait their turn: llama-cpp-python's default (``interrupt_requests``) ends a streaming
  reply as soon as another request arrives; here one model serves one request at a time, in
  arrival order, and none is cut off;
- the edge (:class:`~cvlocal.chat.openai_edge.OpenAIEdge`): bad bodies get 400/422 OpenAI error
  objects, responses name the served alias, server errors keep their internals in the log;
- the listening socket is bound before the model loads (:func:`listen_socket`), so a port in use
  is one line, not uvicorn's traceback after the model loaded.

:func:`build_app` is the edge around :func:`single_model_app`; a batched engine (several
sequences at once) replaces the latter and keeps the edge and the socket handling.

The server packages are an optional extra; :func:`missing_server_packages` names what is absent.
"""
from __future__ import annotations

import errno
import importlib
import ipaddress
import socket
from pathlib import Path
from typing import Any

from cvlocal.chat.template import ChatTemplate, resolve_template
from cvlocal.errors import UsageError
from cvlocal.llama.chat_format import completion_handler, register_handler
from cvlocal.llama.log import captured_log
from cvlocal.llama.server_app import llama_proxy
from cvlocal.llama.server_app import single_model_app as llama_cpp_app

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
        entry = self._handlers.get(id(llama))
        if entry is None or entry[0] is not llama:
            template = self.template_for(llama)
            entry = (llama, completion_handler(template.llama_formatter()))
            self._handlers[id(llama)] = entry
        return entry[1](llama=llama, **kwargs)


def probe_template(model_path: Path, chat_format: str | None) -> ChatTemplate:
    """Resolve the template from the GGUF's vocabulary alone (fast), to report it before serving."""
    from cvlocal.llama.loader import LoadError, as_usage_error, open_llama

    try:
        vocab = open_llama(model_path, vocab_only=True, verbose=False)
    except LoadError as err:
        raise as_usage_error(model_path, err) from err.cause
    try:
        return resolve_template(vocab, chat_format, model_path.name)
    finally:
        vocab.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn to serve on; a one-line UsageError if it cannot be.

    Binding here, before the model loads, makes a port in use an immediate one-line error, and
    there is no window between a check and uvicorn's own bind for another process to take it.
    """
    # The socket uvicorn would make (Config.bind_socket): IPv6 when the host has a colon, else
    # IPv4 (so "localhost" is 127.0.0.1), and SO_REUSEADDR to restart without waiting for TIME_WAIT.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if isinstance(err, socket.gaierror):
            raise UsageError(f"--host {host} is not an address ({err.strerror})",
                             fix="Give an address of this machine, e.g. 127.0.0.1") from None
        if err.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use", fix="Stop what listens there or pass another --port") from None
        if err.errno == errno.EACCES:
            raise UsageError(f"no permission to listen on port {port}", fix="Use a --port above 1023") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host} is not an address of this machine", fix="Give one of its addresses, e.g. 127.0.0.1") from None
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror})", fix="Pass another --host or --port") from None
    return sock


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
    """The served app: :class:`OpenAIEdge` around the single-model app (see the module docstring)."""
    from cvlocal.chat.openai_edge import OpenAIEdge

    alias = model_alias or model_path.stem
    inner = single_model_app(model_path, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers,
                             chat_format=chat_format, seed=seed, model_alias=alias, host=host, port=port,
                             api_key=api_key, adapters=adapters)
    return OpenAIEdge(inner, alias=alias, api_key=api_key)


def single_model_app(
    model_path: Path,
    *,
    ctx: int,
    threads: int | None,
    n_gpu_layers: int,
    chat_format: str | None,
    seed: int,
    model_alias: str,
    host: str,
    port: int,
    api_key: str | None,
    adapters: list | None = None,
) -> Any:
    """llama-cpp-python's FastAPI app for one GGUF with cvlocal's chat template; requests queue.

    With ``adapters`` (``cvlocal.llama.adapters.AdapterSpec``) the app is wrapped by ``server_lora``:
    llama-server's ``"lora"`` request field and ``/lora-adapters`` endpoints.
    """
    register_handler(HANDLER_NAME, TemplateChatHandler(chat_format, model_path.name))
    with captured_log() as log:  # the model loads here; llama.cpp's lines would scatter over the terminal
        try:
            app = llama_cpp_app(model=str(model_path), alias=model_alias, chat_format=HANDLER_NAME, n_ctx=ctx,
                                n_gpu_layers=n_gpu_layers, threads=threads, seed=seed, host=host, port=port,
                                api_key=api_key)
        except (ValueError, RuntimeError) as err:
            reason = "; ".join(log.problems()[-2:]) or str(err)
            raise UsageError(f"llama.cpp could not load the model ({reason})", path=model_path,
                             fix="Check that the file is complete and was written by a recent converter") from err
    if not adapters:
        return app
    from cvlocal.chat.server_lora import attach

    return attach(app, llama_proxy(), adapters)


def serve(app: Any, sock: socket.socket, quiet: bool = False) -> None:
    """Run the app with uvicorn on the bound socket until Ctrl-C."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning" if quiet else "info")
    uvicorn.Server(config).run(sockets=[sock])
