"""Ollama TEMPLATE detection against the chat templates as transformers renders them.

The truth is ``tokenizer.apply_chat_template`` of each tiny family's chat model (transformers'
own Jinja environment), not the Jinja formatter cvlocal uses at release time.
"""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from cvlocal.release.ollama import FAMILIES, PROBES, match_family, modelfile_text
from tests.factory import KINDS

EXPECTED = {
    "llama2": ("llama2", None),
    "mistral": ("mistral", None),
    "llama3": ("llama3", None),
    "qwen2": ("chatml", "You are a helpful assistant."),
    "qwen3": ("chatml", None),
}

# A conversation that is not one of the probes: the match must hold beyond them.
EXTRA = [
    {"role": "system", "content": "Réponds en une phrase."},
    {"role": "user", "content": "第一個問題"},
    {"role": "assistant", "content": "첫 번째 답"},
    {"role": "user", "content": "二つ目の質問"},
    {"role": "assistant", "content": "Second answer, with {braces} and \"quotes\"."},
    {"role": "user", "content": "Third."},
]


def _hf_render(tokenizer):
    bos = tokenizer.bos_token or ""

    def render(messages):
        try:
            text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except Exception:
            return None
        return text[len(bos):] if bos and text.startswith(bos) else text

    return render


@pytest.mark.parametrize("kind", KINDS)
def test_family_detected_and_exact_beyond_probes(tiny_family, kind):
    tokenizer = AutoTokenizer.from_pretrained(tiny_family(kind).chat)
    render = _hf_render(tokenizer)
    match = match_family(render)
    assert match is not None
    assert (match.family.name, match.default_system) == EXPECTED[kind]
    for conversation in (EXTRA, EXTRA[1:], EXTRA[1:2]):
        expected = render(conversation)
        messages = list(conversation)
        if match.default_system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": match.default_system}, *messages]
        assert match.family.render(messages) == expected


def test_unknown_or_inexact_templates_get_no_template():
    def dated_llama3(messages):  # Llama-3.1 style: a date line in every system header
        body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\nToday Date: 1 Jan 2025\n\n{m['content']}<|eot_id|>"
                       for m in messages)
        return body + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def plain(messages):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    assert match_family(dated_llama3) is None
    assert match_family(plain) is None
    assert match_family(lambda messages: None) is None


def test_each_family_renders_its_own_probes():
    # Every family must be reachable: its own rendering matches itself and no earlier family.
    for i, family in enumerate(FAMILIES):
        match = match_family(family.render)
        assert match is not None and match.family.name == family.name
    assert len(PROBES) >= 4


def test_modelfile_text():
    chatml = next(f for f in FAMILIES if f.name == "chatml")
    from cvlocal.release.ollama import TemplateMatch

    text = modelfile_text("M-1M-Q4_K_M.gguf", ["<|im_end|>", "<|endoftext|>", "<|im_end|>"],
                          TemplateMatch(chatml, "You are a helpful assistant."), "M Q4_K_M")
    lines = text.splitlines()
    assert "FROM ./M-1M-Q4_K_M.gguf" in lines
    assert lines.count('PARAMETER stop "<|im_end|>"') == 1
    assert 'PARAMETER stop "<|endoftext|>"' in lines
    assert f'TEMPLATE """{chatml.go_template}"""' in text
    assert 'SYSTEM """You are a helpful assistant."""' in lines
    bare = modelfile_text("M-1M-Q8_0.gguf", ['say "stop"'], None, "M")
    assert "TEMPLATE" not in bare.replace("No TEMPLATE", "")
    assert 'PARAMETER stop "say \\"stop\\""' in bare.splitlines()
