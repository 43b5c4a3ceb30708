"""The one tokenizer reader: templates rendered as transformers renders them, and what the merge finds in them.

Truth is transformers: ``tokenizer.apply_chat_template`` on the same template and messages, and
the token ids its tokenizer produces for the rendered prompt.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.factory import LLAMA3_TEMPLATE, QWEN2_TEMPLATE

# Gemma's template (its turns close with <end_of_turn>; a system turn is folded into the first user turn).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Phi-3's template (turns close with <|end|>).
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# ChatML with the assistant's part marked for assistant-token masks, tojson on non-ASCII tools and a namespace.
GENERATION_TEMPLATE = (
    "{%- set ns = namespace(turns=0) %}"
    "{%- if tools %}{{- '<|im_start|>system\n' + (tools | tojson) + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- set ns.turns = ns.turns + 1 %}"
    "{%- if message['role'] == 'assistant' %}{{- '<|im_start|>assistant\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
TEMPLATES = {"llama3": LLAMA3_TEMPLATE, "chatml": QWEN2_TEMPLATE, "gemma": GEMMA_TEMPLATE, "phi3": PHI3_TEMPLATE,
             "generation": GENERATION_TEMPLATE}
CONVERSATIONS = [
    [{"role": "user", "content": "臺灣在哪裡？"}],
    [{"role": "system", "content": "你是助理。"}, {"role": "user", "content": "안녕하세요"},
     {"role": "assistant", "content": "こんにちは。 "}, {"role": "user", "content": "print('hi')"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_family):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_family("llama3").chat))  # has both bos and eos texts


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_render_as_transformers_renders_them(hf_tokenizer, name):
    from convert.chat_render import render_chat

    template = TEMPLATES[name]
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            try:
                want = hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)
            except Exception as err:  # transformers refuses (Gemma on a system-less odd turn order): so must we
                with pytest.raises(type(err)):
                    render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                                bos_token=hf_tokenizer.bos_token or "", eos_token=hf_tokenizer.eos_token or "")
                continue
            got = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                              bos_token=hf_tokenizer.bos_token or "", eos_token=hf_tokenizer.eos_token or "")
            assert got == want, (name, messages, add_generation_prompt)


def test_tools_and_errors_render_as_transformers_does(hf_tokenizer):
    from jinja2.exceptions import SecurityError, TemplateError

    from convert.chat_render import render_chat

    tools = [{"type": "function", "function": {"name": "天氣", "parameters": {"city": "臺北"}}}]
    messages = CONVERSATIONS[0]
    want = hf_tokenizer.apply_chat_template(messages, chat_template=GENERATION_TEMPLATE, tools=tools, tokenize=False)
    assert render_chat(GENERATION_TEMPLATE, messages, tools=tools) == want and "天氣" in want
    with pytest.raises(TemplateError, match="no system"):
        render_chat("{{ raise_exception('no system') }}", messages)
    with pytest.raises(SecurityError):
        render_chat("{% set ns = namespace(_x=1) %}", messages)
    assert render_chat("{{ strftime_now('%Y') }}", messages).isdigit()


def _with_template(folder: Path, out: Path, template: str) -> Path:
    """A copy of a model folder whose tokenizer_config.json carries ``template``."""
    shutil.copytree(folder, out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return out


def _template_special_ids(folder: Path) -> set[int]:
    """The special ids transformers' own tokenizer puts in the folder's chat template on a sample chat."""
    from transformers import AutoTokenizer

    from convert.chat_render import SAMPLE_CONVERSATION

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok.apply_chat_template(list(SAMPLE_CONVERSATION), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    added = set(tok.added_tokens_decoder)
    return {i for i in ids if i in added}


def test_special_tokens_auto_finds_the_tokens_of_a_generation_template(tiny_family, tmp_path):
    """``--special-tokens auto`` on a chat model whose template uses ``{% generation %}``.

    Before the one reader, the merge's own Jinja set-up could not parse the template and found
    no template token: only the eos (<|im_end|>) was taken from the chat model, not <|im_start|>.
    """
    from cvlocal.vector.merge import plan_merge
    from cvlocal.vector.sources import DeltaSource

    fam = tiny_family("qwen2")
    chat = _with_template(fam.chat, tmp_path / "chat", GENERATION_TEMPLATE)
    want = _template_special_ids(chat)
    assert len(want) == 2  # <|im_start|> and <|im_end|>
    plan = plan_merge(fam.cp, [DeltaSource.from_pair(fam.base, chat, 1.0)], embeddings="auto", special_tokens="auto", dtype=None)
    assert want <= {p.chat_id for p in plan.special}
    assert {"<|im_start|>", "<|im_end|>"} <= {p.text for p in plan.special}


def test_converter_and_merge_read_the_same_facts(tiny_family):
    """The GGUF's template and end-of-turn token, and the merge's, come from one reading of the files."""
    from transformers import AutoTokenizer

    from convert.tokenizer_facts import read_tokenizer_facts
    from convert.vocab import read_vocab

    for kind, eot in (("llama3", "<|eot_id|>"), ("qwen2", "<|im_end|>"), ("mistral", None)):
        folder = tiny_family(kind).chat
        tok = AutoTokenizer.from_pretrained(str(folder))
        facts = read_tokenizer_facts(folder)
        config = json.loads((folder / "config.json").read_text())
        vocab = read_vocab(folder, config, config["vocab_size"])
        assert vocab.extra["tokenizer.chat_template"] == facts.default_template == tok.chat_template
        assert facts.table.bos == tok.bos_token and facts.table.eos == tok.eos_token
        if eot:
            assert vocab.extra["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids(eot) == facts.end_of_turn_id(vocab.tokens)
            assert tok.convert_tokens_to_ids(eot) in facts.eos_ids()
        assert vocab.extra["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
