"""``cvlocal serve`` answering real HTTP requests on loopback, through the ``openai`` client.

Truth: the prompt token count the server reports equals transformers' apply_chat_template for
the same messages; the streamed deltas add up to the non-streamed reply (greedy); the reply is
the one the REPL's session gives for the same conversation (same template, same stops).
"""
from __future__ import annotations

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
    model = tiny_gguf("llama3", "f16")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cvlocal", "serve", str(model), "--port", str(port),
                                 "--threads", "1", "--ctx", "1024", "--quiet"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60, max_retries=0)
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
