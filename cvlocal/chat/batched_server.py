"""``cvlocal serve --parallel N``: the OpenAI endpoints on FastAPI over the batched decoder.

llama-cpp-python's server decodes one request at a time and queues the others behind it (its
``Llama`` holds one sequence). Here every request is a sequence of one shared
:class:`~cvlocal.llama.shared.SharedLlama`, so up to N requests are decoded together and none waits
for another's whole reply before its first token. Each request runs the same token loop as the
chat (:func:`cvlocal.chat.generation.generate_text`) with its own sampling settings, seed and stop
strings, rendered with the same chat template as ``cvlocal chat`` and the one-request server.

The request and response bodies are OpenAI's (``/v1/chat/completions`` and ``/v1/completions``,
with ``stream`` as server-sent events ending in ``data: [DONE]``; ``/v1/models``); defaults of the
sampling fields are llama-cpp-python's server's.

With ``--adapter FILE[:RATIO]`` the decoder's context carries the adapters, and llama-server's
``"lora"`` request field and ``/lora-adapters`` endpoints work as on the one-request server
(:mod:`cvlocal.chat.server_lora`); requests with other scales than the running ones wait for them
to finish (one context has one set of scales), requests with the same scales are decoded together.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from starlette.requests import Request  # at module level: FastAPI reads the endpoints' annotations from here

from cvlocal.chat.generation import Generated, Interrupt, Sampling, generate_text
from cvlocal.chat.template import ChatTemplate, resolve_template, stop_token_ids

DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}  # llama-cpp-python's
DEFAULT_MAX_TOKENS = 16  # llama-cpp-python's for /v1/completions; chat replies default to the room left


class BadRequest(Exception):
    """A request the server answers with 400 and OpenAI's error body."""


def _text_of(content: Any) -> str:
    """A message's content: a string, or OpenAI's list of parts (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise BadRequest("message content must be a string or a list of parts")


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise BadRequest("stop must be a string or a list of strings")


class BatchedServer:
    """The model, its template and the request handling (kept apart from the web framework)."""

    def __init__(self, model_path: Path, *, parallel: int, ctx: int = 4096, threads: int | None = None,
                 n_gpu_layers: int = 0, chat_format: str | None = None, seed: int = 0,
                 model_alias: str | None = None, adapters: Sequence[Any] = ()) -> None:
        from cvlocal.chat.server_lora import ServerAdapters
        from cvlocal.llama.model import Model
        from cvlocal.llama.shared import SharedLlama

        self.model = Model(model_path, n_gpu_layers=n_gpu_layers, adapters=adapters)
        self.lora = ServerAdapters(self.model.adapter_paths, self.model.adapter_scales) if adapters else None
        try:
            self.llm = SharedLlama(self.model, n_seq=parallel, n_ctx=ctx, threads=threads)
        except BaseException:
            self.model.close()
            raise
        self.alias = model_alias or Path(model_path).stem
        self.seed = seed
        self.n_ctx = ctx
        self.template: ChatTemplate = resolve_template(self.llm, chat_format, Path(model_path).name)
        self.eos_ids = stop_token_ids(self.llm)
        self.created = int(time.time())

    def close(self) -> None:
        self.llm.close()
        self.model.close()

    # ----- one request -----
    def prepare(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        """Prompt tokens, sampling, limits and stops of one request (BadRequest when it cannot be served)."""
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list")
            msgs = [{"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))} for m in messages]
            text, add_bos = self.template.render(msgs)
            tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
            stop_ids, stop_texts = self.template.stop_ids, list(self.template.stop_texts)
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list):
                if len(prompt) != 1 or not isinstance(prompt[0], str):
                    raise BadRequest("prompt must be a string (one prompt per request)")
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise BadRequest("prompt must be a string")
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
            stop_ids, stop_texts = self.eos_ids, []
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise BadRequest(f"the prompt needs {len(tokens)} tokens but the context holds {self.n_ctx}")
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if limit is None:
            limit = room if chat else DEFAULT_MAX_TOKENS
        if not isinstance(limit, int) or limit < 1:
            raise BadRequest("max_tokens must be a positive integer")
        try:
            sampling = Sampling(**{k: type(v)(body[k]) if body.get(k) is not None else v for k, v in DEFAULTS.items()},
                                seed=int(body["seed"]) if body.get("seed") is not None else self.seed)
        except (TypeError, ValueError) as err:
            raise BadRequest(f"a sampling field has the wrong type ({err})") from None
        return {"tokens": tokens, "sampling": sampling, "max_tokens": min(limit, room), "stop_ids": stop_ids,
                "stop_texts": stop_texts + _stops(body), "strip_leading": chat,
                "scales": self.lora.scales_now() if self.lora is not None else None}

    def generate(self, job: dict[str, Any], on_text: Callable[[str], None] | None = None,
                 interrupt: Interrupt | None = None) -> Generated:
        self.llm.set_adapter_scales(job.get("scales"))  # this worker thread's request
        return generate_text(self.llm, job["tokens"], sampling=job["sampling"], max_tokens=job["max_tokens"],
                             stop_ids=job["stop_ids"], stop_texts=job["stop_texts"], on_text=on_text,
                             strip_leading=job["strip_leading"], interrupt=interrupt)

    # ----- OpenAI bodies -----
    def response(self, job: dict[str, Any], out: Generated, chat: bool) -> dict[str, Any]:
        usage = {"prompt_tokens": len(job["tokens"]), "completion_tokens": out.completion_tokens,
                 "total_tokens": len(job["tokens"]) + out.completion_tokens}
        finish = "length" if out.finish_reason == "length" else "stop"
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out.text.strip()}, "logprobs": None,
                      "finish_reason": finish}
            return {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.alias, "choices": [choice], "usage": usage}
        choice = {"text": out.text, "index": 0, "logprobs": None, "finish_reason": finish}
        return {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": self.alias, "choices": [choice], "usage": usage}

    def stream(self, job: dict[str, Any], chat: bool) -> Iterator[str]:
        """Server-sent events of one request; closing the iterator (client gone) stops its sequence."""
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4()}"
        pieces: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        interrupt = Interrupt()

        def work() -> None:
            try:
                pieces.put(("done", self.generate(job, lambda t: pieces.put(("text", t)), interrupt)))
            except BaseException as err:  # reported in the stream, never a hung client
                pieces.put(("error", err))

        def chunk(delta: Any, finish: str | None) -> str:
            if chat:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                body = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": self.alias, "choices": [choice]}
            else:
                choice = {"text": delta, "index": 0, "logprobs": None, "finish_reason": finish}
                body = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": self.alias,
                        "choices": [choice]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            if chat:
                yield chunk({"role": "assistant"}, None)
            while True:
                kind, value = pieces.get()
                if kind == "text":
                    yield chunk({"content": value} if chat else value, None)
                elif kind == "error":
                    yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                    break
                else:
                    finish = "length" if value.finish_reason == "length" else "stop"
                    yield chunk({} if chat else "", finish)
                    break
            yield "data: [DONE]\n\n"
        finally:
            interrupt.event.set()  # a client that went away stops its sequence at the next token
            worker.join()


def build_batched_app(model_path: Path, *, parallel: int, ctx: int = 4096, threads: int | None = None,
                      n_gpu_layers: int = 0, chat_format: str | None = None, seed: int = 0,
                      model_alias: str | None = None, api_key: str | None = None,
                      adapters: Sequence[Any] = ()) -> Any:
    """The FastAPI app; ``app.state.engine`` is the :class:`BatchedServer` (closed on shutdown).

    With ``adapters`` (``AdapterSpec``) it is wrapped in :class:`cvlocal.chat.server_lora.LoraMiddleware`.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    engine = BatchedServer(model_path, parallel=parallel, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers,
                           chat_format=chat_format, seed=seed, model_alias=model_alias, adapters=adapters)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="cvlocal", version="1", lifespan=lifespan)
    app.state.engine = engine

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                            status_code=status)

    def authorised(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    async def handle(request: Request, chat: bool) -> Any:
        from starlette.concurrency import run_in_threadpool

        if not authorised(request):
            return error(401, "invalid API key", "authentication_error")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            job = engine.prepare(body, chat)
        except (BadRequest, ValueError) as err:
            return error(400, str(err))
        if body.get("stream"):
            return StreamingResponse(engine.stream(job, chat), media_type="text/event-stream")
        out = await run_in_threadpool(engine.generate, job)
        return engine.response(job, out, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, False)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return error(401, "invalid API key", "authentication_error")
        return {"object": "list", "data": [{"id": engine.alias, "object": "model", "owned_by": "me",
                                            "created": engine.created, "permissions": []}]}

    if engine.lora is None:
        return app
    from cvlocal.chat.server_lora import LoraMiddleware

    return LoraMiddleware(app, engine.lora)
