"""The demo's chats on the batched engine (``chat_with(parallel=N)``, used by the sweep's demo suite).

Truth: the one-at-a-time path on a ``Llama`` (llama-cpp-python's own decoding). At q8_0 llama.cpp's
CPU kernels give a sequence the same logits alone or in a batch, so every greedy reply, its finish
reason and its score must be the same; and the batched run must really have decoded several
sequences in one step (counted on the decoder, not taken on trust).
"""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from cvlocal.demo import runner  # noqa: E402
from cvlocal.demo.bundle import load_bundle  # noqa: E402
from cvlocal.llama.batch import BatchedDecoder  # noqa: E402

PROMPTS = 12


@pytest.fixture(scope="module")
def demo_chat_gguf(tmp_path_factory):
    from cvlocal.outputs.gguf import convert_checkpoint

    bundle = load_bundle()
    path = tmp_path_factory.mktemp("demo-parallel") / "chat-q8_0.gguf"
    convert_checkpoint(bundle.chat, path, outtype="q8_0", threads=2)
    return bundle, path


def test_batched_demo_chats_equal_one_at_a_time_and_really_batch(demo_chat_gguf, monkeypatch):
    bundle, path = demo_chat_gguf
    prompts = bundle.prompts[:PROMPTS]
    alone = runner.chat_with(path, prompts, bundle.a_words, threads=2, max_tokens=runner.MAX_TOKENS)

    widest = []
    original = BatchedDecoder.step

    def counting(decoder):
        widest.append(decoder.running())
        return original(decoder)

    monkeypatch.setattr(BatchedDecoder, "step", counting)
    seen = []
    together = runner.chat_with(path, prompts, bundle.a_words, threads=2, max_tokens=runner.MAX_TOKENS, parallel=4,
                                on_reply=lambda p, r: seen.append(p))
    assert max(widest) == 4  # four chats were in the context at once
    assert [r.as_dict() for r in together] == [r.as_dict() for r in alone]
    assert sorted(id(p) for p in seen) == sorted(id(p) for p in prompts)  # every reply reported once
    assert {r.finish_reason for r in alone} <= {"stop", "length"}
