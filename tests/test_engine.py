"""The batched decoder against llama-cpp-python's own one-at-a-time path, on tiny real GGUFs.

Truth is llama-cpp-python's high-level API on a fresh state per prompt: ``Llama.create_completion``
for the text and token count, ``Llama.generate`` for the token ids (create_completion does not
return ids). At f16 and q8_0 the batched decoder must give the same tokens, prompt by prompt, with
sequences of very different lengths, slots reused, prefixes shared, a prompt refused, a stream
cancelled; and every finished sequence must leave no KV cells behind.
"""
from __future__ import annotations

import pytest

from cvlocal.errors import UsageError

SYSTEM = "You are a helpful assistant. Answer briefly and politely, in the language of the question. "
PROMPTS = [
    "x",
    "Hello there",
    SYSTEM + "Question: why is the sky blue?",
    "一二三四五六七八九十，天氣很好。",
    SYSTEM + "Question: 請用中文回答。",
    " ".join(str(i) for i in range(1, 90)),  # a long prompt: ~180 tokens, more than one chunk at n_batch 64
    SYSTEM + "Question: what is a vector?",
    "The cat sat on the mat and",
]
MAX_TOKENS = [48, 5, 40, 1, 33, 24, 60, 17]  # very different reply lengths too


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


def _reference(path, prompts, max_tokens, **sampling):
    """(create_completion text, its completion token count, generate ids) per prompt, each from a fresh state."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False, seed=0)
    settings = dict(top_k=40, top_p=1.0, min_p=0.0, repeat_penalty=1.0, temp=0.0)
    settings.update(sampling)
    out = []
    try:
        for prompt, limit in zip(prompts, max_tokens):
            llm.reset()
            llm.set_seed(settings.get("seed", 0))
            c = llm.create_completion(prompt, max_tokens=limit, temperature=settings["temp"], top_k=settings["top_k"],
                                      top_p=settings["top_p"], min_p=settings["min_p"],
                                      repeat_penalty=settings["repeat_penalty"], seed=settings.get("seed", 0))
            llm.reset()
            llm.set_seed(settings.get("seed", 0))
            ids = []
            gen_settings = {k: v for k, v in settings.items() if k != "seed"}
            tokens = llm.generate(llm.tokenize(prompt.encode("utf-8")), **gen_settings)
            for token in tokens:
                if llm._model.token_eos() == token or len(ids) >= limit:  # tiny vocabularies: eos is the one eog
                    break
                ids.append(int(token))
            tokens.close()
            out.append((c["choices"][0]["text"], c["usage"]["completion_tokens"], ids))
    finally:
        llm.close()
    return out


def _check_against(reference, completions, vocab):
    for (text, count, ids), got in zip(reference, completions):
        assert got.token_ids == ids
        mine = vocab.detokenize(got.token_ids).decode("utf-8", errors="ignore")
        # create_completion may run past max_tokens to finish a UTF-8 character; otherwise equal
        if count == len(ids):
            assert text == mine
        else:
            assert count > len(ids) and text.startswith(mine)


@pytest.fixture(scope="module")
def models(tiny_gguf, llama_cpp):
    from cvlocal.llama import Model

    opened = {}

    def get(outtype):
        if outtype not in opened:
            path = tiny_gguf("llama3", outtype)
            opened[outtype] = (path, Model(path), _reference(path, PROMPTS, MAX_TOKENS))
        return opened[outtype]

    yield get
    for _, model, _ in opened.values():
        model.close()


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_eight_prompts_batched_equal_llama_one_at_a_time(models, outtype):
    from cvlocal.llama import BatchedDecoder, Request

    path, model, reference = models(outtype)
    requests = [Request(model.vocab.tokenize(p.encode("utf-8")), n, tag=i)
                for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS))]
    with BatchedDecoder(model, n_seq=3, n_ctx_seq=512, n_batch=64, threads=1) as decoder:  # 3 slots: reused
        seen_seqs = []
        streamed = {i: "" for i in range(len(PROMPTS))}

        def on_event(event):
            streamed[event.handle.tag] += event.text
            if event.done is not None:
                seen_seqs.append(event.handle.seq)
                assert decoder.seq_pos_max(event.handle.seq) == -1  # its KV cells are freed at once

        completions = decoder.run(requests, on_event)
        assert all(decoder.seq_pos_max(s) == -1 for s in range(3))
    _check_against(reference, completions, model.vocab)
    assert sorted(set(seen_seqs)) == [0, 1, 2] and len(seen_seqs) == 8  # every slot served several prompts
    assert [streamed[i] for i in range(8)] == [c.text for c in completions]
    assert any(c.reused_prompt_tokens >= 16 for c in completions)  # the system prompt was copied, not re-evaluated
    assert {c.finish_reason for c in completions} <= {"stop", "length"}


def test_sampled_continuations_equal_llama_with_the_same_seeds(tiny_gguf, llama_cpp):
    """Temperature 1, top-p 0.9 (the toxicity suite's settings): each sequence's own chain and seed."""
    from cvlocal.llama import BatchedDecoder, Model, Request, SamplingParams

    path = tiny_gguf("llama3", "q8_0")
    prompts, limits, seeds = PROMPTS[:4], [20, 20, 20, 20], [11, 12, 13, 14]
    reference = [_reference(path, [p], [n], temp=1.0, top_p=0.9, top_k=0, seed=s)[0]
                 for p, n, s in zip(prompts, limits, seeds)]
    model = Model(path)
    try:
        with BatchedDecoder(model, n_seq=4, n_ctx_seq=256, threads=1) as decoder:
            got = decoder.run([Request(model.vocab.tokenize(p.encode()), n,
                                       SamplingParams(temperature=1.0, top_p=0.9, top_k=0, seed=s))
                               for p, n, s in zip(prompts, limits, seeds)])
        _check_against(reference, got, model.vocab)
    finally:
        model.close()
    assert len({tuple(c.token_ids) for c in got}) == 4


def test_a_prompt_that_does_not_fit_is_refused_alone(models):
    from cvlocal.llama import BatchedDecoder, Request

    _, model, reference = models("q8_0")
    too_long = model.vocab.tokenize(("word " * 200).encode())
    picked = [0, 1, 7]
    requests = [Request(model.vocab.tokenize(PROMPTS[i].encode()), MAX_TOKENS[i]) for i in picked]
    with BatchedDecoder(model, n_seq=2, n_ctx_seq=128, threads=1) as decoder:
        out = decoder.run(requests[:1] + [Request(too_long, 10)] + requests[1:])
    refused = out.pop(1)
    assert refused.finish_reason == "refused" and "128" in refused.error and refused.token_ids == []
    _check_against([reference[i] for i in picked], out, model.vocab)


def test_cancelling_one_stream_leaves_the_others_exact(models):
    from cvlocal.llama import BatchedDecoder, Request

    _, model, reference = models("q8_0")
    picked = [0, 2, 6]
    with BatchedDecoder(model, n_seq=3, n_ctx_seq=256, threads=1) as decoder:
        handles = [decoder.submit(Request(model.vocab.tokenize(PROMPTS[i].encode()), MAX_TOKENS[i], tag=i))
                   for i in picked]
        victim = handles[1]
        tokens_when_cancelled = None
        for event in decoder.events():
            if event.handle is victim and event.done is None and tokens_when_cancelled is None:
                victim.cancel()
                tokens_when_cancelled = decoder.running()
        assert all(decoder.seq_pos_max(s) == -1 for s in range(3))
    assert victim.completion.finish_reason == "cancelled"
    assert 0 < victim.completion.completion_tokens < MAX_TOKENS[2]
    _check_against([reference[0], reference[6]], [handles[0].completion, handles[2].completion], model.vocab)


def test_stop_strings_cut_the_reply_as_create_completion_does(tiny_gguf, llama_cpp):
    from llama_cpp import Llama

    from cvlocal.llama import BatchedDecoder, Model, Request

    path = tiny_gguf("llama3", "q8_0")
    llm = Llama(str(path), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, seed=0)
    try:
        full = llm.create_completion(PROMPTS[6], max_tokens=40, temperature=0.0, top_k=40, top_p=1.0, min_p=0.0,
                                     repeat_penalty=1.0)["choices"][0]["text"]
        stop = next(full[i:i + 2] for i in range(len(full) // 2, len(full) - 2) if full[i:i + 2].strip() == full[i:i + 2])
        llm.reset()
        cut = llm.create_completion(PROMPTS[6], max_tokens=40, temperature=0.0, top_k=40, top_p=1.0, min_p=0.0,
                                    repeat_penalty=1.0, stop=[stop])
    finally:
        llm.close()
    model = Model(path)
    try:
        with BatchedDecoder(model, n_seq=2, n_ctx_seq=256, threads=1) as decoder:
            got = decoder.run([Request(model.vocab.tokenize(PROMPTS[6].encode()), 40, stop_texts=(stop,)),
                               Request(model.vocab.tokenize(PROMPTS[1].encode()), 5)])
    finally:
        model.close()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert got[0].finish_reason == "stop" and stop not in got[0].text
    # create_completion drops broken bytes where the stream shows U+FFFD; otherwise the same text
    assert got[0].text.replace("\ufffd", "") == cut["choices"][0]["text"]


def test_context_settings_are_llamas_own(tiny_gguf, llama_cpp):
    """Field by field, the context made here for one sequence is the one ``Llama`` makes."""
    from llama_cpp import Llama

    from cvlocal.llama import Model

    path = tiny_gguf("llama3", "q8_0")
    llm = Llama(str(path), n_ctx=768, n_threads=None, verbose=False)
    model = Model(path)
    try:
        ours = model.context_params(768)
        theirs = llm.context_params
        names = [name for name, _ in type(theirs)._fields_
                 if isinstance(getattr(theirs, name), (int, float, bool))]  # not the callback and pointer fields
        assert len(names) > 20
        assert {n: getattr(ours, n) for n in names} == {n: getattr(theirs, n) for n in names}
        assert llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    finally:
        llm.close()
        model.close()


def test_bad_gguf_files_are_usage_errors_with_llamas_reason(tmp_path, tiny_gguf, llama_cpp):
    from cvlocal.llama import Model, captured_log

    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UsageError, match="bad magic"):
        Model(not_gguf)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf("llama3", "q8_0").read_bytes()[:200_000])
    with captured_log() as outer:
        with pytest.raises(UsageError, match="could not load") as info:
            Model(truncated)
    assert str(truncated) in str(info.value)
    assert outer.lines == []  # the load's own capture took the lines; the outer one saw none


def test_kept_cells_continue_a_conversation_as_llama_does(tiny_gguf, llama_cpp):
    """keep_finished: the next turn reuses the cells its last reply was decoded into (Llama's prefix rule)."""
    from llama_cpp import Llama

    from cvlocal.llama import BatchedDecoder, Model, Request

    path = tiny_gguf("llama3", "q8_0")
    llm = Llama(str(path), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    greedy = dict(top_k=40, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)

    def generate(tokens, n):
        out, stream = [], llm.generate(tokens, **greedy)
        for token in stream:
            out.append(int(token))
            if len(out) == n:
                break
        stream.close()
        return out

    try:
        first = llm.tokenize(PROMPTS[2].encode())
        reply = generate(first, 9)
        second = first + reply + llm.tokenize(" And then?".encode(), add_bos=False)
        expected = generate(second, 12)  # Llama keeps first + reply[:-1] and evaluates the rest
    finally:
        llm.close()
    model = Model(path)
    try:
        with BatchedDecoder(model, n_seq=2, n_ctx_seq=256, threads=1, keep_finished=True) as decoder:
            one = decoder.run([Request(first, 9, stop_at_eog=False, affinity="a")])[0]
            assert one.token_ids == reply and decoder.seq_pos_max(0) == len(first) + 9 - 2  # kept, not freed
            other = decoder.run([Request(model.vocab.tokenize(PROMPTS[1].encode()), 3, affinity="b")])[0]
            two = decoder.run([Request(second, 12, stop_at_eog=False, affinity="a")])[0]
    finally:
        model.close()
    assert other.reused_prompt_tokens == 0
    assert two.token_ids == expected
    assert two.reused_prompt_tokens == len(first) + 9 - 1
