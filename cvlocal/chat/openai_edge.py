"""The HTTP edge of ``cvlocal serve``: what every request passes before it reaches a model.

llama-cpp-python's server routes catch every exception themselves, request validation included,
and answer 500 with the exception's text (which names the server's source files), and they
answer with whatever ``model`` the client sent. This ASGI middleware sits in front of whatever
app serves the requests (today llama-cpp-python's single-model app; a batched engine later) and
gives the OpenAI API's behaviour at the edge:

- a body that is not JSON, or not a JSON object, gets 400 and an OpenAI error object;
- a body that does not fit the endpoint's request schema (the same pydantic models the routes
  use) gets 422 naming the offending field in ``param``;
- the body passed on names the served model's alias, so every response's ``model`` (streamed
  chunks included) is the id ``/v1/models`` lists, whatever name the client sent;
- every other error response is reshaped to ``{"error": {"message", "type", "param", "code"}}``,
  and a server error's text is replaced by a generic message: internals (paths, tracebacks)
  stay in the server's log;
- a streaming request that fails after its event stream began (a prompt longer than the
  context, say) ends with an error event, ``data: {"error": ...}``, which OpenAI clients raise,
  instead of an empty stream.
"""
from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Awaitable, Callable, Iterator, Mapping

from pydantic import BaseModel, ValidationError

from cvlocal.llama.server_app import client_error_formatters, request_schemas

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Error bodies are small; a larger one is passed on untouched rather than held in memory.
MAX_ERROR_BODY = 1 << 20
# A request body is read whole before it is checked; far more than any context's worth of text.
MAX_REQUEST_BODY = 32 << 20
SERVER_ERROR = "the server failed on this request; the details are in the server's log"
log = logging.getLogger("uvicorn.error")  # where uvicorn itself reports an application's exceptions


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> bytes:
    """An OpenAI-style error object, serialized."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}},
                      ensure_ascii=False).encode("utf-8")


class BadRequest(Exception):
    """A request body refused at the edge: HTTP status and the error object's fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def check_body(raw: bytes, schema: type[BaseModel], path: str) -> dict[str, Any]:
    """The parsed body if it is a JSON object the schema accepts; otherwise BadRequest (400/422)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"the request body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
                         code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        schema.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False, include_context=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        more = len(err.errors()) - 1
        message = f"{param}: {first['msg']}" if param else first["msg"]
        raise BadRequest(422, message + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""),
                         param=param, code=first["type"]) from None
    if path == "/v1/chat/completions" and not data.get("messages"):
        # OpenAI requires messages; llama-cpp-python's schema defaults them to [] and then
        # generates from an empty prompt.
        raise BadRequest(422, "messages: a chat completion needs at least one message", param="messages",
                         code="missing")
    return data


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAIEdge:
    """ASGI middleware: validate JSON bodies, name the served alias, shape every error OpenAI's way."""

    def __init__(self, app: ASGIApp, alias: str, schemas: Mapping[str, type[BaseModel]] | None = None,
                 api_key: str | None = None) -> None:
        self.app = app
        self.alias = alias
        self.schemas = dict(request_schemas() if schemas is None else schemas)
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        schema = self.schemas.get(scope["path"]) if scope["method"] == "POST" else None
        if schema is not None and not self._authorized(scope):
            # The app checks the key only after parsing the body, so a bad body without the key would
            # get a parse error (a 500, from llama-cpp-python's routes): the key comes first.
            await respond(send, 401, error_body("Invalid API key", "authentication_error", code="invalid_api_key"),
                           [(b"www-authenticate", b"Bearer")])
            return
        if schema is not None:
            raw, disconnected = await read_body(receive)
            if disconnected:
                return
            if raw is None:
                await respond(send, 413, error_body(f"the request body is larger than {MAX_REQUEST_BODY >> 20} MiB",
                                                     code="request_too_large"))
                return
            try:
                data = check_body(raw, schema, scope["path"])
            except BadRequest as bad:
                await respond(send, bad.status, error_body(bad.message, param=bad.param, code=bad.code))
                return
            if "model" in schema.model_fields:
                data["model"] = self.alias
            scope, receive = with_body(scope, receive, json.dumps(data, ensure_ascii=False).encode("utf-8"))
        else:
            data = None
        shaper = _ErrorShaper(send)
        try:
            await self.app(scope, receive, shaper)
        except Exception as err:
            if shaper.complete or (shaper.started and not shaper.streaming):
                raise  # the client has its whole answer, or a response we cannot add to: uvicorn logs it
            log.error("Exception in ASGI application", exc_info=err)
            status, error = describe_failure(err, schema, data)
            if shaper.streaming:  # the stream's end was held back: it ends with the error event instead
                await send({"type": "http.response.body", "body": (shaper.tail or b"") + b"data: " + error + b"\n\n",
                            "more_body": False})
            else:
                await respond(send, status, error)
            return
        await shaper.finish()

    def _authorized(self, scope: Scope) -> bool:
        """Whether the request carries the key (``--api-key``), or no key is needed."""
        if self.api_key is None:
            return True
        headers = dict(scope.get("headers") or [])
        return hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {self.api_key}".encode())


def _group_type() -> type[BaseException] | None:
    """Exception groups: built in from Python 3.11, the ``exceptiongroup`` backport (anyio's) before."""
    import builtins

    found = getattr(builtins, "BaseExceptionGroup", None)
    if found is None:
        try:
            from exceptiongroup import BaseExceptionGroup as found
        except ImportError:
            return None
    return found


def _leaves(err: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups (anyio task groups raise groups)."""
    group = _group_type()
    if group is not None and isinstance(err, group):
        for inner in err.exceptions:  # type: ignore[attr-defined]
            yield from _leaves(inner)
    else:
        yield err


def describe_failure(err: BaseException, schema: type[BaseModel] | None, data: dict[str, Any] | None) -> tuple[int, bytes]:
    """Status and error object for an exception: llama-cpp-python's own client errors (a prompt
    longer than the context) keep their message; anything else is a server error without text."""
    if schema is not None and data is not None:
        body = schema.model_validate(data)
        for leaf in _leaves(err):
            for pattern, formatter in client_error_formatters().items():
                match = pattern.search(str(leaf))
                if match is not None:
                    status, error = formatter(body, match)  # type: ignore[arg-type]
                    return status, error_body(error["message"], error["type"], error["param"], error["code"])
    return 500, error_body(SERVER_ERROR, "server_error")


async def read_body(receive: Receive) -> tuple[bytes | None, bool]:
    """(the whole body, or None past MAX_REQUEST_BODY; whether the client went away first)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_REQUEST_BODY:
            return None, False
        if not message.get("more_body", False):
            return b"".join(chunks), False


def with_body(scope: Scope, receive: Receive, body: bytes) -> tuple[Scope, Receive]:
    """The request as the app sees it: the checked body, declared as JSON of its new length.

    After the body, ``receive`` is the client's again, so the app still hears a disconnect.
    """
    headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"content-type")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return {**scope, "headers": headers}, replay


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON response; ``headers`` are kept (CORS, WWW-Authenticate) except the body's own."""
    kept = [(k, v) for k, v in headers or [] if k.lower() not in (b"content-length", b"content-type")]
    await send({"type": "http.response.start", "status": status,
                "headers": kept + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _ErrorShaper:
    """A ``send`` that passes successful responses through and rewrites error responses.

    An error response is held until complete, then sent as an OpenAI error object: a client
    error keeps its message (FastAPI's ``detail`` or the app's own error object), a server
    error gets :data:`SERVER_ERROR` instead of its text.
    """

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.held: list[bytes] = []
        self.passing = True
        self.started = False      # a response has begun (sent or held)
        self.streaming = False    # it is a successful event stream, already on its way
        self.complete = False     # its last body message went out
        self.tail: bytes | None = None   # an event stream's last body, held until the app returns

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                self.start, self.passing = message, False
                return
            headers = dict(message.get("headers") or [])
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            if self.streaming:  # held: if the app fails after it, the stream still ends with an error event
                self.tail = message.get("body", b"")
                return
            self.complete = True
        if self.passing or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.held.append(message.get("body", b""))
        if sum(map(len, self.held)) > MAX_ERROR_BODY:  # not an error object we could reshape
            self.passing = True
            await self.send(self.start or {})
            await self.send({"type": "http.response.body", "body": b"".join(self.held), "more_body": message.get("more_body", False)})
            return
        if not message.get("more_body", False):
            start = self.start or {}
            status = int(start.get("status", 500))
            await respond(self.send, status, self._reshape(status, b"".join(self.held)), list(start.get("headers") or []))

    async def finish(self) -> None:
        """The app returned: send the held end of its event stream."""
        if self.tail is not None:
            self.complete = True
            await self.send({"type": "http.response.body", "body": self.tail, "more_body": False})
            self.tail = None

    @staticmethod
    def _reshape(status: int, body: bytes) -> bytes:
        if status >= 500:
            return error_body(SERVER_ERROR, _error_type(status))
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error = data["error"]
            return error_body(str(error.get("message") or "the request was refused"), str(error.get("type") or _error_type(status)),
                              error.get("param"), error.get("code"))
        detail = data.get("detail") if isinstance(data, dict) else None
        message = detail if isinstance(detail, str) else "the request was refused"
        return error_body(message, _error_type(status))
