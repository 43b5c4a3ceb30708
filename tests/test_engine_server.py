"""``cvlocal serve --parallel 4`` with 8 concurrent ``openai`` clients (4 streaming, 4 not).

Truth: each reply equals what the one-at-a-time chat path (``ChatSession`` on llama-cpp-python's
``Llama``) answers to the same messages with the same settings (q8_0: batched logits are exact).
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from tests.test_serve import _serve  # noqa: E402  (one way to start and stop a server process)

QUESTIONS = ["臺灣的首都是哪裡？", "What is a chat vector?", "Say hello.", "한국어로 인사해 주세요.",
             "Write a haiku about the sea.", "1 2 3 4 5", "日本語で自己紹介をしてください。", "Why is the sky blue?"]
LIMITS = [12, 4, 8, 14, 6, 10, 5, 13]
SETTINGS = dict(temperature=0.0, top_p=0.95)  # greedy; top_k 40, min_p 0.05, repeat_penalty 1.1: the defaults


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    for client, model, models, _port in _serve(tiny_gguf("llama3", "q8_0"), tmp_path_factory,
                                               "--ctx", "512", "--parallel", "4"):
        yield client, model, models


def test_eight_concurrent_clients_get_the_one_at_a_time_replies(server):
    from cvlocal.session import ChatSession, load_llama

    client, model, models = server
    assert [m.id for m in models.data] == [model.stem]
    results: dict[int, tuple[str, str, float | None]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def ask(i: int) -> None:
        try:
            messages = [{"role": "user", "content": QUESTIONS[i]}]
            start.wait()
            t0 = time.perf_counter()
            if i % 2:
                stream = client.chat.completions.create(model=model.stem, messages=messages, max_tokens=LIMITS[i],
                                                        stream=True, **SETTINGS)
                parts, finish, first = [], None, None
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter() - t0
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                results[i] = ("".join(parts).strip(), finish, first)
            else:
                reply = client.chat.completions.create(model=model.stem, messages=messages, max_tokens=LIMITS[i],
                                                       **SETTINGS)
                assert reply.object == "chat.completion" and reply.usage.completion_tokens <= LIMITS[i]
                results[i] = (reply.choices[0].message.content, reply.choices[0].finish_reason, None)
        except BaseException as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == list(range(8))

    llm = load_llama(model, ctx=512, threads=1)
    try:
        for i, question in enumerate(QUESTIONS):
            session = ChatSession(llm, max_tokens=LIMITS[i], temperature=0.0, top_p=0.95, top_k=40, min_p=0.05,
                                  repeat_penalty=1.1)
            turn = session.ask(question)
            assert results[i][0] == turn.text, (i, results[i], turn.text)
            assert results[i][1] == turn.finish_reason
    finally:
        llm.close()


def test_completions_and_errors_in_openai_form(server):
    client, model, _ = server
    done = client.completions.create(model=model.stem, prompt="The capital of Taiwan is", max_tokens=6,
                                     temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 6
    with pytest.raises(openai.BadRequestError, match="context holds 512"):
        client.completions.create(model=model.stem, prompt="word " * 600, max_tokens=4)


def test_parallel_must_be_positive(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    done = subprocess.run([sys.executable, "-m", "cvlocal", "serve", str(fake), "--parallel", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--parallel" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
