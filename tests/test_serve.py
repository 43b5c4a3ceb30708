"""``cvlocal serve`` answering real HTTP requests on loopback, through the ``openai`` client.

Truth: the prompt token count the server reports equals transformers' apply_chat_template for
the same messages; the streamed deltas add up to the non-streamed reply (greedy); the reply is
the one the REPL's session gives for the same conversation (same template, same stops).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")


ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "臺灣的首都是哪裡？ Answer briefly."},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    yield from _serve(tiny_gguf("llama3", "f16"), tmp_path_factory)


def _serve(model: Path, tmp_path_factory, *extra: str, api_key: str = "unused"):
    """A ``cvlocal serve`` process on a free loopback port: yields (client, model, models, port)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cvlocal", "serve", str(model), "--port", str(port),
                                 "--threads", "1", "--ctx", "1024", "--quiet", *extra],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, timeout=60, max_retries=0)
    deadline = time.monotonic() + 90
    while True:
        try:
            models = client.models.list()
            break
        except openai.APIConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.3)
    try:
        yield client, model, models, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_models_lists_the_gguf(server) -> None:
    _, model, models, _ = server
    assert [m.id for m in models.data] == [model.stem]


def test_chat_completion_uses_the_gguf_template(server, tiny_family) -> None:
    from transformers import AutoTokenizer

    client, model, _, _ = server
    reply = client.chat.completions.create(model=model.stem, messages=MESSAGES, max_tokens=12, temperature=0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_family("llama3").chat))
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert reply.usage.prompt_tokens == len(expected)
    assert reply.choices[0].finish_reason in ("stop", "length")
    content = reply.choices[0].message.content
    assert "<|eot_id|>" not in content and "<|start_header_id|>" not in content

    stream = client.chat.completions.create(model=model.stem, messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == content

    from cvlocal.session import ChatSession, load_llama

    session = ChatSession(load_llama(model, ctx=1024, threads=1), system=MESSAGES[0]["content"], max_tokens=12,
                          temperature=0.0, top_k=40, min_p=0.05, top_p=0.95)
    # llama-cpp-python drops bytes that are not UTF-8 where the REPL shows U+FFFD; otherwise the same
    assert session.ask(MESSAGES[1]["content"]).text.replace("\ufffd", "") == content.strip()


def test_completions_endpoint(server) -> None:
    client, model, _, _ = server
    done = client.completions.create(model=model.stem, prompt="The capital of Taiwan is", max_tokens=6,
                                     temperature=0)
    assert done.usage.completion_tokens <= 6 and isinstance(done.choices[0].text, str)


def test_missing_server_extra_is_one_line(tmp_path) -> None:
    # a uvicorn that fails to import, first on the path, makes the extra look uninstalled
    (tmp_path / "uvicorn.py").write_text("raise ModuleNotFoundError(\"No module named 'uvicorn'\")\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    done = subprocess.run([sys.executable, "-m", "cvlocal", "serve", "model.gguf"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "pip install 'cvlocal[server]'" in done.stderr
    assert "uvicorn" in done.stderr


# ---- issue 12: queued concurrency, OpenAI-style errors, the port check, the model alias ----------
def _post(port: int, path: str, body: bytes, content_type: str = "application/json",
          key: str | None = None) -> tuple[int, str]:
    """A raw POST with the standard library's HTTP client (no SDK validation in between)."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


def test_eight_concurrent_streams_all_complete(server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client, model, _, _ = server
    question = [{"role": "user", "content": "Tell me about Taipei."}]

    def stream(_: int) -> tuple[str, str | None]:
        parts, finish = [], None
        for chunk in client.chat.completions.create(model=model.stem, messages=question, max_tokens=24,
                                                    temperature=0, stream=True):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish

    alone = stream(0)  # the reply a stream gets with the server to itself (greedy: always the same)
    assert alone[0] and alone[1] in ("stop", "length")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(stream, range(8)))
    # Every one is that whole reply with its finish reason: none was cut off by the others' arrival.
    assert results == [alone] * 8


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}', None),       # cut JSON
    ("/v1/chat/completions", b"\xff\xfe not utf-8", None),
    ("/v1/chat/completions", b'["not", "an", "object"]', None),
    ("/v1/chat/completions", b'{"messages": "hi"}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', "max_tokens"),
    ("/v1/chat/completions", b'{"model": "x"}', "messages"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": "hot"}', "temperature"),
])
def test_bad_requests_get_openai_errors_without_internals(server, path, body, param) -> None:
    _, model, _, port = server
    status, text = _post(port, path, body)
    assert status in (400, 422), text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    for internal in ("Traceback", ".py", "site-packages", str(ROOT), str(model.parent), 'File "'):
        assert internal not in text


def test_other_errors_are_openai_error_objects(server) -> None:
    import urllib.error
    import urllib.request

    _, model, _, port = server
    # A server error (this model was not loaded for embeddings): the shape, not llama-cpp-python's text.
    status, text = _post(port, "/v1/embeddings", b'{"input": "hi"}')
    error = json.loads(text)["error"]
    assert status == 500 and error["type"] == "server_error" and set(error) == {"message", "type", "param", "code"}
    assert "embedding=True" not in text and ".py" not in text
    # A prompt longer than the context keeps llama-cpp-python's own client error, in the same shape.
    long = json.dumps({"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 4}).encode()
    status, text = _post(port, "/v1/chat/completions", long)
    assert status == 400 and json.loads(text)["error"]["code"] == "context_length_exceeded"
    # An unknown path.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/nothing", timeout=30)
        raise AssertionError("no error for an unknown path")
    except urllib.error.HTTPError as err:
        assert err.code == 404
        assert json.loads(err.read())["error"]["type"] == "not_found_error"


def test_stream_that_fails_ends_with_an_error_event(server) -> None:
    client, model, _, _ = server
    too_long = [{"role": "user", "content": "word " * 3000}]  # more tokens than --ctx 1024
    with pytest.raises(openai.APIError, match="maximum context length is 1024 tokens"):
        for _ in client.chat.completions.create(model=model.stem, messages=too_long, max_tokens=4, stream=True):
            pass
    # and the server goes on serving
    assert client.chat.completions.create(model=model.stem, messages=MESSAGES, max_tokens=2).choices


def test_json_without_a_json_content_type_is_accepted(server) -> None:
    # curl -d sends application/x-www-form-urlencoded; the body is still JSON
    _, model, _, port = server
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    status, text = _post(port, "/v1/chat/completions", body, "application/x-www-form-urlencoded")
    assert status == 200, text
    assert json.loads(text)["model"] == model.stem


def test_response_model_is_the_listed_alias(server) -> None:
    client, _, models, _ = server
    alias = models.data[0].id
    for asked in (alias, "gpt-4o"):  # whatever name a client sends, the reply names the model it came from
        reply = client.chat.completions.create(model=asked, messages=MESSAGES, max_tokens=2, temperature=0)
        assert reply.model == alias
        chunks = list(client.chat.completions.create(model=asked, messages=MESSAGES, max_tokens=2, stream=True))
        assert chunks and {c.model for c in chunks} == {alias}
        done = client.completions.create(model=asked, prompt="Taipei is", max_tokens=2, temperature=0)
        assert done.model == alias


@pytest.mark.parametrize("case", ["port in use", "host not on this machine"])
def test_port_in_use_or_bad_host_is_one_line_exit_2(tiny_gguf, case) -> None:
    model = tiny_gguf("llama3", "f16")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of a real machine
        where = ["--port", str(port)] if case == "port in use" else ["--host", "192.0.2.1", "--port", str(port)]
        done = subprocess.run([sys.executable, "-m", "cvlocal", "serve", str(model), *where],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert (f"port {port}" if case == "port in use" else "192.0.2.1") in done.stderr
    assert ("--port" if case == "port in use" else "--host") in done.stderr
    assert "serving" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def keyed_server(tiny_gguf, tmp_path_factory):
    yield from _serve(tiny_gguf("llama3", "f16"), tmp_path_factory, "--api-key", "sesame", "--model-alias", "taipei-1",
                      api_key="sesame")


def test_api_key_and_alias(keyed_server) -> None:
    client, _, models, port = keyed_server
    assert [m.id for m in models.data] == ["taipei-1"]
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    # Without the key: 401 as an OpenAI error object, before anything about the body is said.
    for body in (good, b"{not json"):
        status, text = _post(port, "/v1/chat/completions", body)
        assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error", text
    status, text = _post(port, "/v1/chat/completions", b"{not json", key="sesame")
    assert status == 400 and json.loads(text)["error"]["code"] == "invalid_json"
    assert client.chat.completions.create(model="anything", messages=MESSAGES, max_tokens=2).model == "taipei-1"


def test_gguf_that_llama_cpp_refuses_is_one_line_exit_2(tiny_gguf, tmp_path) -> None:
    """A truncated GGUF passes the magic check; llama.cpp's refusal (the template probe's load) is one line."""
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(tiny_gguf("llama3", "f16").read_bytes()[:4096])
    done = subprocess.run([sys.executable, "-m", "cvlocal", "serve", str(broken), "--port", str(free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert str(broken) in done.stderr and "could not load" in done.stderr
    assert "serving" not in done.stdout + done.stderr
