"""LoRA adapters on ``cvlocal serve``, with llama-server's conventions so its clients work unchanged.

- ``--adapter FILE[:RATIO]`` sets the server-wide scales;
- a request body may carry ``"lora": [{"id": 0, "scale": 0.8}]`` (adapters not listed get 0, as
  in llama-server), for ``/v1/chat/completions`` and ``/v1/completions``;
- ``GET /lora-adapters`` lists ``[{"id", "path", "scale"}]``; ``POST /lora-adapters`` with the
  same list changes the server-wide scales.

How, without touching llama-cpp-python's server: an ASGI middleware reads the body, takes the
``lora`` field out (the server's request models do not know it) and puts the scales in a
context variable; the model's ``create_completion`` (the one call every completion goes through,
run while the server holds its model lock) is wrapped to apply those scales, or the server-wide
ones, before generating. A scale change drops the KV cache (``Adapters.set_scales``).

With ``serve --parallel N`` the same middleware fills the same variable and the batched server
reads it (:meth:`ServerAdapters.scales_now`) into each request's scales. One llama.cpp context has
one set of adapter scales for all the sequences it decodes together, so requests are grouped: one
whose scales differ from those of the running requests waits until they finish (the decoder then
switches, see ``cvlocal.llama.batch``); requests that share scales (the usual case: none given)
are decoded together.
"""
from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from cvlocal.chat.openai_edge import error_body, read_body, respond, with_body
from cvlocal.llama.adapters import Adapters

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions")
LIST_PATHS = ("/lora-adapters", "/v1/lora-adapters")
_REQUESTED: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("cvlocal_lora", default=None)


def parse_lora_field(value: Any, count: int) -> list[float]:
    """``[{"id": i, "scale": s}, ...]`` to one scale per adapter (unlisted: 0); ValueError if malformed."""
    if not isinstance(value, list):
        raise ValueError("'lora' must be an array of objects with 'id' and 'scale' fields")
    scales = [0.0] * count
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or isinstance(entry.get("id"), bool):
            raise ValueError("each 'lora' entry needs an integer 'id'")
        if not 0 <= entry["id"] < count:
            raise ValueError(f"no LoRA adapter with id {entry['id']} (there are {count})")
        try:
            scales[entry["id"]] = float(entry.get("scale", 0.0))
        except (TypeError, ValueError):
            raise ValueError("a 'lora' scale must be a number") from None
    return scales


class ServerAdapters:
    """The server's adapters: their paths, the server-wide scales and the per-request override."""

    def __init__(self, paths: Sequence[Path], scales: Sequence[float]) -> None:
        self.paths = [Path(p) for p in paths]
        self.default = [float(s) for s in scales]

    def __len__(self) -> int:
        return len(self.paths)

    def scales_now(self) -> list[float]:
        """The scales for the request being handled: its ``lora`` field's, else the server-wide ones."""
        requested = _REQUESTED.get()
        return list(requested if requested is not None else self.default)

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": i, "path": str(p), "scale": s} for i, (p, s) in enumerate(zip(self.paths, self.default))]


def hook_llama(adapters: Adapters) -> ServerAdapters:
    """Wrap the one-request server's ``create_completion`` to apply each request's scales first."""
    server = ServerAdapters(adapters.paths, adapters.scales)
    llm = adapters.llm
    original = llm.create_completion

    def create_completion(*args: Any, **kwargs: Any) -> Any:
        adapters.set_scales(server.scales_now())
        return original(*args, **kwargs)

    llm.create_completion = create_completion  # the instance attribute wins over the method
    return server


async def _send_json(send: Callable[[dict], Awaitable[None]], status: int, payload: Any) -> None:
    await respond(send, status, json.dumps(payload).encode("utf-8"))


async def _bad_lora(send: Callable[[dict], Awaitable[None]], err: ValueError) -> None:
    await respond(send, 400, error_body(str(err), param="lora"))


class LoraMiddleware:
    """ASGI middleware: the ``lora`` request field and the ``/lora-adapters`` endpoints."""

    def __init__(self, app: Any, server: ServerAdapters) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path in LIST_PATHS and method == "GET":
            return await _send_json(send, 200, self.server.describe())
        if path in LIST_PATHS and method == "POST":
            raw, disconnected = await read_body(receive)
            if disconnected:
                return None
            try:
                self.server.default = parse_lora_field(json.loads(raw or b"null"), len(self.server))
            except ValueError as err:
                return await _bad_lora(send, err)
            return await _send_json(send, 200, {"success": True})
        if path not in COMPLETION_PATHS or method != "POST":
            return await self.app(scope, receive, send)
        raw, disconnected = await read_body(receive)
        if disconnected:
            return None
        requested = None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # let the server report its own error
        if isinstance(body, dict) and "lora" in body:
            try:
                requested = parse_lora_field(body.pop("lora"), len(self.server))
            except ValueError as err:
                return await _bad_lora(send, err)
            raw = json.dumps(body).encode("utf-8")
        scope, replay = with_body(scope, receive, raw or b"")
        token = _REQUESTED.set(requested)
        try:
            await self.app(scope, replay, send)
        finally:
            _REQUESTED.reset(token)


def attach(app: Any, llm: Any, specs: list) -> Any:
    """Load ``specs`` onto the server's model and wrap ``app``; returns the ASGI app to serve."""
    adapters = Adapters(llm, specs)
    llm.cvlocal_adapters = adapters
    return LoraMiddleware(app, hook_llama(adapters))
