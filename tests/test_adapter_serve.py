"""``cvlocal serve CP --adapter FILE:1.0`` with llama-server's conventions, over real HTTP on loopback.

Truth: llama-cpp-python's own loader (``Llama(lora_path=..., lora_scale=...)``) and the bare CP
model give the replies the server must return for the server-wide ratio and for a request's
``"lora": [{"id": 0, "scale": 0}]``; ``GET /lora-adapters`` has llama-server's shape.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_serve import free_port

pytest.importorskip("fastapi")
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Hello there, how are"


def _post(port: int, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def _reference(model: Path, lora: Path | None, scale: float) -> str:
    from llama_cpp import Llama

    kwargs = {"lora_path": str(lora), "lora_scale": scale} if lora else {}
    llm = Llama(model_path=str(model), n_ctx=512, verbose=False, seed=0, **kwargs)
    try:
        return llm.create_completion(PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()


def test_serve_lora_requests(tiny_family, tmp_path):
    from convert import write_gguf
    from cvlocal.vector.lora_extract import extract_lora

    family = tiny_family("llama2")
    cp = write_gguf(family.cp, tmp_path / "cp.gguf", "f16")
    adapter = tmp_path / "chat.gguf"
    extract_lora(family.base, family.chat, adapter, rank=32, outtype="f16", quiet=True)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cvlocal", "serve", str(cp), "--adapter", f"{adapter}:1.0", "--port", str(port),
                                 "--ctx", "512", "--quiet"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                listed = _get(port, "/lora-adapters")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.3)
        assert listed == [{"id": 0, "path": str(adapter), "scale": 1.0}]
        body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
        status, server_wide = _post(port, "/v1/completions", body)
        assert status == 200, server_wide
        status, off = _post(port, "/v1/completions", {**body, "lora": [{"id": 0, "scale": 0.0}]})
        assert status == 200, off
        status, half = _post(port, "/v1/completions", {**body, "lora": [{"id": 0, "scale": 0.5}]})
        assert status == 200, half
        chat = {"messages": [{"role": "user", "content": "Hello there, how are you today?"}], "max_tokens": 12, "temperature": 0}
        replies = [_post(port, "/v1/chat/completions", {**chat, "lora": [{"id": 0, "scale": s}]}) for s in (0.0, 1.0)]
        assert [r[0] for r in replies] == [200, 200] and replies[0][1]["choices"] != replies[1][1]["choices"]
        status, bad = _post(port, "/v1/completions", {**body, "lora": [{"id": 3, "scale": 1.0}]})
        assert status == 400 and "id 3" in bad["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert server_wide["choices"][0]["text"] == _reference(cp, adapter, 1.0)
    assert off["choices"][0]["text"] == _reference(cp, None, 0.0)
    assert half["choices"][0]["text"] == _reference(cp, adapter, 0.5)
    assert off["choices"][0]["text"] != server_wide["choices"][0]["text"]
