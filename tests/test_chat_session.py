"""The session API (cvlocal.session) on tiny real GGUFs, checked against transformers and llama.cpp.

Truth comes from outside the code under test: prompt ids from transformers' apply_chat_template,
greedy continuations from transformers' generate, stop ids from the HF generation config, the
number of evaluated prompt tokens from the llama's own cached ids.
"""
from __future__ import annotations

import os
import signal

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from cvlocal.chat.generation import Sampling, generate_text  # noqa: E402
from cvlocal.errors import UsageError  # noqa: E402
from cvlocal.session import ChatSession, ContextFullError, Turn, complete_text, load_llama  # noqa: E402

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant. 請用繁體中文回答。"},
    {"role": "user", "content": "What is the capital of Taiwan?"},
    {"role": "assistant", "content": "The capital of Taiwan is Taipei. 臺北是首都。"},
    {"role": "user", "content": "한국의 수도는 어디입니까? 日本の首都は？"},
]


def hf_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def hf_token_bytes(tokenizer, ids) -> bytes:
    """The bytes of byte-level BPE ids, from the HF tokenizer's token strings (GPT-2's byte-to-character map)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    return b"".join(bytes(byte_of[c] for c in tokenizer.convert_ids_to_tokens(int(i))) for i in ids)


def without_cut_character(data: bytes) -> str:
    """UTF-8 text of ``data`` with invalid bytes as U+FFFD and an unfinished last character dropped."""
    import codecs

    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


def ends_inside_character(data: bytes) -> bool:
    """True when the last bytes of ``data`` start a UTF-8 character that is not finished."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(data, final=False)
    return bool(decoder.getstate()[0])


def hf_prompt_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


class Replay:
    """The real llama, except that generate() yields the ids ``reply()`` gives (real ids of a chosen text)."""

    def __init__(self, real, reply):
        self.real = real
        self.ctx = real.ctx
        self._reply = reply

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, tokens, **kwargs):
        yield from self._reply()


@pytest.fixture(scope="module")
def llama3(tiny_gguf):
    return load_llama(tiny_gguf("llama3", "f32"), ctx=1024, threads=1)


@pytest.mark.parametrize("kind", ["llama3", "qwen2", "qwen3"])
def test_prompt_tokens_equal_transformers_apply_chat_template(kind, tiny_family, tiny_gguf) -> None:
    llm = load_llama(tiny_gguf(kind, "f32"), ctx=512, threads=1)
    session = ChatSession(llm)
    assert session.template_source == "gguf"
    tokenizer = hf_tokenizer(tiny_family(kind).chat)
    for n in (2, 4):
        assert session.template.tokens(llm, CONVERSATION[:n]) == hf_prompt_ids(tokenizer, CONVERSATION[:n])


@pytest.mark.parametrize("kind", ["llama2", "mistral"])
def test_sentencepiece_prompt_is_the_transformers_text_tokenized_per_fragment(kind, tiny_family, tiny_gguf) -> None:
    """SentencePiece: the same text as apply_chat_template, tokenized as Meta's reference does.

    llama.cpp (like Meta's reference code and ``legacy=True``) starts every text fragment after a
    special token with SentencePiece's dummy-prefix space, where transformers' ``legacy=False``
    does not (``<s>[INST]`` is ``<s> ▁[ INST ...`` in llama.cpp, ``<s> [ INST ...`` in HF). The
    truth here is the ``sentencepiece`` library encoding each fragment between special tokens.
    """
    import re

    import sentencepiece

    folder = tiny_family(kind).chat
    llm = load_llama(tiny_gguf(kind, "f32"), ctx=512, threads=1)
    session = ChatSession(llm)
    tokenizer = hf_tokenizer(folder)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    specials = dict(tokenizer.added_tokens_encoder)  # <s>, </s> and Mistral's control tokens ([INST] ...)
    split = re.compile("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")")
    messages = CONVERSATION if kind == "llama2" else CONVERSATION[1:]  # Mistral's template has no system role
    for n in (2, 4) if kind == "llama2" else (1, 3):
        hf_text = tokenizer.apply_chat_template(messages[:n], add_generation_prompt=True, tokenize=False)
        assert session.template.render(messages[:n])[0] == hf_text
        expected = []
        for part in filter(None, split.split(hf_text)):
            expected += [specials[part]] if part in specials else processor.encode(part)
        assert session.template.tokens(llm, messages[:n]) == expected


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_stops_on_every_end_of_turn_token_of_the_chat_model(kind, tiny_family, tiny_gguf) -> None:
    from transformers import GenerationConfig

    llm = load_llama(tiny_gguf(kind, "f32"), ctx=256, threads=1)
    session = ChatSession(llm)
    config = GenerationConfig.from_pretrained(str(tiny_family(kind).chat))
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    assert set(eos) <= session.template.stop_ids
    tokenizer = hf_tokenizer(tiny_family(kind).chat)
    end_of_turn = "<|eot_id|>" if kind == "llama3" else "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids(end_of_turn) in session.template.stop_ids
    assert end_of_turn in session.stop_tokens


def test_model_without_template_gets_the_named_fallback_and_a_warning(tiny_gguf) -> None:
    llm = load_llama(tiny_gguf("llama2", "f32", which="cp"), ctx=256, threads=1)
    warnings: list[str] = []
    session = ChatSession(llm, system="Be brief.", warn=warnings.append, max_tokens=8, temperature=0.0)
    assert session.template_source == "fallback:plain"
    assert len(warnings) == 1 and "plain" in warnings[0] and "--chat-format" in warnings[0]
    prompt, _ = session.template.render(session.messages + [{"role": "user", "content": "你好"}])
    assert prompt == "Be brief.\n\nUser: 你好\nAssistant:"
    turn = session.ask("你好")
    assert "User:" not in turn.text


def test_chat_format_override_with_a_jinja_file_and_a_name(tiny_family, tiny_gguf, tmp_path) -> None:
    """A CP model without a template takes the chat model's template from a file: same ids as transformers."""
    llm = load_llama(tiny_gguf("qwen2", "f32", which="cp"), ctx=256, threads=1)
    tokenizer = hf_tokenizer(tiny_family("qwen2").chat)
    template = tmp_path / "chat.jinja"
    template.write_text(tokenizer.chat_template, encoding="utf-8")
    session = ChatSession(llm, chat_format=str(template), warn=None)
    assert session.template_source == "override:chat.jinja"
    assert session.template.tokens(llm, CONVERSATION) == hf_prompt_ids(tokenizer, CONVERSATION)
    named = ChatSession(llm, chat_format="chatml", warn=None)
    assert named.template_source == "override:chatml"
    prompt, _ = named.template.render(CONVERSATION[:2])
    assert prompt == tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    with pytest.raises(UsageError, match="unknown chat format 'nonsense'.*chatml"):
        ChatSession(llm, chat_format="nonsense")


def test_prefix_reuse_evaluates_only_new_tokens(llama3) -> None:
    session = ChatSession(llama3, system="You are helpful.", max_tokens=24, temperature=0.0)
    first = session.ask("Hello! What is a chat vector?")
    assert first.new_prompt_tokens == first.prompt_tokens  # nothing cached before
    assert [int(t) for t in llama3._input_ids[:first.prompt_tokens]] == session.template.tokens(
        llama3, session.messages[:2])
    for text in ("臺北的天氣怎麼樣？", "And tomorrow?", "감사합니다", "one more question"):
        cached = [int(t) for t in llama3._input_ids]
        previous_reply = session.turns[-1].completion_tokens
        turn = session.ask(text)
        fed = [int(t) for t in llama3._input_ids[:turn.prompt_tokens]]  # what llama.cpp holds now
        shared = 0
        for a, b in zip(cached, fed):
            if a != b:
                break
            shared += 1
        # llama.cpp's own counters agree with the prefix it kept ...
        assert turn.new_prompt_tokens == turn.prompt_tokens - shared
        # ... and only the new message was evaluated, plus the template's tokens around it (this tiny
        # vocabulary spells "user" and "assistant" in 3-4 tokens: 18 in all) and the reply's last token
        new_message = len(llama3.tokenize(text.encode(), add_bos=False, special=False))
        assert turn.new_prompt_tokens <= new_message + 20, (turn, previous_reply)


def test_greedy_continuation_matches_transformers(tiny_family, tiny_gguf) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_family("llama3").chat
    llm = load_llama(tiny_gguf("llama3", "f32"), ctx=256, threads=1)
    prompt = "The capital of Taiwan is"
    text, finish = complete_text(llm, prompt, max_tokens=8)
    tokenizer = hf_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = without_cut_character(hf_token_bytes(tokenizer, out[0, ids.shape[1]:]))
    if finish == "stop":
        assert expected.startswith(text)
    else:
        assert text == expected


def test_a_reply_cut_inside_a_character_drops_its_bytes(tiny_family, tiny_gguf) -> None:
    """Issue 12: max_tokens ending inside a CJK character left U+FFFD in the reply and the next prompt.

    The greedy reply's ids come from llama-cpp-python's own generate, their bytes from the HF
    tokenizer; max_tokens is then set to end inside a multi-byte character.
    """
    llm = load_llama(tiny_gguf("llama3", "f32"), ctx=512, threads=1)
    tokenizer = hf_tokenizer(tiny_family("llama3").chat)
    probe = ChatSession(llm, max_tokens=1, temperature=0.0, warn=None)
    eot = probe.template.stop_ids
    for message in ("臺北的天氣怎麼樣？", "請寫一首詩", "日本の首都は？", "한국어로 대답해 주세요"):
        prompt = probe.template.tokens(llm, [{"role": "user", "content": message}])
        ids = []
        for token in llm.generate(prompt, temp=0.0, top_k=40, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            if token in eot or len(ids) == 40:
                break
            ids.append(int(token))
        cuts = [k for k in range(2, len(ids) + 1) if ends_inside_character(hf_token_bytes(tokenizer, ids[:k]))]
        if cuts:
            break
    else:
        pytest.fail("no greedy reply of this model ends inside a character at any length")
    k = cuts[0]
    data = hf_token_bytes(tokenizer, ids[:k])
    session = ChatSession(llm, max_tokens=k, temperature=0.0, warn=None)
    turn = session.ask(message)
    assert turn.finish_reason == "length" and turn.completion_tokens == k
    assert turn.text == without_cut_character(data).strip()
    assert data.decode("utf-8", errors="replace").strip().endswith("\ufffd")  # what it was before
    following, _ = session.template.render(session.messages + [{"role": "user", "content": "next"}])
    assert turn.text + "<|eot_id|>" in following
    assert session.messages[-1]["content"] == turn.text


def test_context_overflow_drops_oldest_turns_and_keeps_the_system_prompt(tiny_gguf) -> None:
    llm = load_llama(tiny_gguf("llama3", "f32"), ctx=160, threads=1)
    session = ChatSession(llm, system="系統提示", max_tokens=16, temperature=0.0)
    dropped = 0
    for i in range(8):
        turn = session.ask(f"Message {i}: the quick brown fox jumps over the lazy dog. 今天天氣很好。")
        dropped += turn.dropped_turns
        assert turn.prompt_tokens + min(16, turn.completion_tokens) <= 160
    assert dropped > 0
    assert session.messages[0] == {"role": "system", "content": "系統提示"}
    assert session.messages[-2]["content"].startswith("Message 7")
    # issue 12: trimming hides turns from the model, never from the conversation
    assert [m["content"][:9] for m in session.messages if m["role"] == "user"] == [f"Message {i}" for i in range(8)]
    assert len(session.turns) == 8 and session.hidden_exchanges == dropped
    seen = session.visible_messages()
    assert seen[0]["content"] == "系統提示" and seen[1]["content"].startswith(f"Message {dropped}:")
    before = list(session.messages)
    hidden = session.hidden_exchanges
    with pytest.raises(ContextFullError):
        session.ask("fox " * 400)
    assert session.messages == before and session.hidden_exchanges == hidden


def test_ctrl_c_ends_the_reply_and_keeps_it(llama3) -> None:
    session = ChatSession(llama3, max_tokens=200, temperature=0.0)
    pieces: list[str] = []
    # The handler in force before the call (SIG_IGN when run as a background job, Python's default otherwise)
    # must be back afterwards.
    before = signal.getsignal(signal.SIGINT)

    def on_text(text: str) -> None:
        pieces.append(text)
        if len(pieces) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    turn = session.ask("Tell me a long story.", on_text=on_text)
    if turn.finish_reason == "stop" and len(pieces) < 3:
        pytest.skip("the model ended its reply before three pieces")
    assert turn.finish_reason == "interrupted"
    assert session.messages[-1] == {"role": "assistant", "content": "".join(pieces).strip()}
    assert signal.getsignal(signal.SIGINT) is before
    after = session.ask("Thanks", on_text=None)
    assert after.finish_reason in ("stop", "length")


def test_ctrl_c_after_the_last_token_still_stops_a_batch_caller(llama3) -> None:
    """A real SIGINT that lands once the reply has taken its end-of-turn token but before it is handed
    back: the REPL keeps the finished reply, a batch caller (eval, demo, sweep) stops instead of going on."""
    session = ChatSession(llama3, max_tokens=50, temperature=0.0)
    words = llama3.tokenize("Hello there".encode(), add_bos=False, special=False)
    end = min(session.template.stop_ids)

    def reply():
        try:
            yield from [*words, end]
        finally:  # the loop took the end token and closes the generator: still inside the armed reply
            os.kill(os.getpid(), signal.SIGINT)

    session.llm = Replay(llama3, reply)
    before = signal.getsignal(signal.SIGINT)
    turn = session.ask("Hi")
    assert turn.finish_reason == "stop" and turn.text == "Hello there"
    assert signal.getsignal(signal.SIGINT) is before
    session.reset()
    with pytest.raises(KeyboardInterrupt):
        session.ask_whole("Hi")
    assert signal.getsignal(signal.SIGINT) is before


def test_undo_regen_reset(llama3) -> None:
    session = ChatSession(llama3, system="S", max_tokens=6, temperature=0.9, seed=3)
    session.ask("one")
    second = session.ask("two")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    regen = session.regen()
    assert isinstance(regen, Turn) and len(session.turns) == 2
    assert session.messages[-2]["content"] == "two"
    assert session.undo() and [m["content"] for m in session.messages[:2]] == ["S", "one"]
    assert len(session.messages) == 3 and len(session.turns) == 1
    session.reset()
    assert session.messages == [{"role": "system", "content": "S"}] and session.turns == []
    assert not session.undo()
    del second


def test_split_characters_from_a_real_tokenizer_are_buffered(tiny_gguf) -> None:
    """Replay the real token ids of CJK text (byte-fallback pieces) through the generation loop."""
    llm = load_llama(tiny_gguf("llama2", "f32"), ctx=256, threads=1)
    text = "臺灣鱉龜🙂한국어"
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    broken = []
    for i in ids:
        try:
            llm.detokenize([i]).decode("utf-8")
        except UnicodeDecodeError:
            broken.append(i)
    assert broken, "the test needs tokens that end inside a character"
    eos = llm.token_eos()

    pieces: list[str] = []
    result = generate_text(Replay(llm, lambda: iter([*ids, eos])), [llm.token_bos()], sampling=Sampling(), max_tokens=100,
                           stop_ids={eos}, on_text=pieces.append, strip_leading=True)
    assert "".join(pieces) == text == result.text
    assert all("\ufffd" not in p for p in pieces)
    assert result.finish_reason == "stop" and result.completion_tokens == len(ids)


def test_ctrl_c_inside_a_character_drops_its_bytes_and_tokens(tiny_gguf) -> None:
    """Issue 12: a real SIGINT arriving between the byte tokens of one character.

    The llama2 vocabulary spells 鱉 with byte-fallback tokens (checked below with llama.cpp's own
    token bytes); the replayed reply stops after the first of them.
    """
    llm = load_llama(tiny_gguf("llama2", "f32"), ctx=256, threads=1)
    whole = llm.tokenize("臺灣".encode(), add_bos=False, special=False)
    cut = llm.tokenize("臺灣鱉".encode(), add_bos=False, special=False)
    assert cut[:len(whole)] == whole
    first = llm.detokenize(cut[len(whole):len(whole) + 1])
    assert first and first[0] >= 0xE0 and len(first) < 3, "鱉 must start with a partial byte token"

    def reply():
        yield from whole
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the next token is on its way
        yield cut[len(whole)]
        yield from cut[len(whole) + 1:]
        yield llm.token_eos()

    result = generate_text(Replay(llm, reply), [llm.token_bos()], sampling=Sampling(), max_tokens=100,
                           stop_ids={llm.token_eos()}, strip_leading=True)
    assert result.finish_reason == "interrupted"
    assert result.text == "臺灣"  # was "臺灣\ufffd"
    assert result.token_ids == whole and result.completion_tokens == len(whole) + 1


def test_load_llama_bad_paths(tmp_path) -> None:
    with pytest.raises(UsageError, match="no such GGUF file"):
        load_llama(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(UsageError, match="not a GGUF file") as err:
        load_llama(bad)
    assert "\n" not in str(err.value)
