"""Ollama ``Modelfile``s, with a TEMPLATE only where it renders exactly what the model's own template does.

Ollama writes prompts with Go's text/template language, not Jinja. A wrong TEMPLATE silently
changes every prompt a model sees, which is worse than none: without one, Ollama falls back on
the chat template inside the GGUF. So a TEMPLATE is written only for a family whose Go template
is known here *and* whose Jinja template, rendered on a set of probe conversations (with and
without a system message, several turns, CJK text), gives character for character what the Go
template gives. Each family below therefore carries two things side by side: the Go template and
a Python function that produces exactly the text that Go template produces. The probes compare
the model's Jinja rendering with the Python function.

Conventions of the comparison:
- Leading BOS text is removed from the Jinja rendering: llama.cpp and Ollama add BOS when they
  tokenize, so a Go template never writes it.
- A probe the Jinja template refuses (e.g. a system message in a template that raises on one) is
  skipped: the model's template defines no prompt for it. At least the system-less probes must render.
- Message contents in the probes have no leading or trailing whitespace (several Jinja templates
  strip it and Go templates cannot), so the comparison holds for such contents.
- A ChatML template that adds a default system prompt when none is given is matched with the plain
  ChatML TEMPLATE plus ``SYSTEM`` set to that prompt: Ollama inserts the Modelfile's SYSTEM as the
  first message of a conversation that has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

Message = dict[str, str]
Render = Callable[[Sequence[Message]], "str | None"]

# Probe conversations (all end with a user turn; the generation prompt is always added).
PROBES: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "Hello, who are you?"},),
    ({"role": "system", "content": "You answer briefly. 請用繁體中文回答。"},
     {"role": "user", "content": "今天台北天氣如何？"}),
    ({"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "It is 4."},
     {"role": "user", "content": "그리고 3 + 3은요?"}),
    ({"role": "system", "content": "あなたは親切なアシスタントです。"},
     {"role": "user", "content": "おすすめの本は？"},
     {"role": "assistant", "content": "《小王子》很適合。"},
     {"role": "user", "content": "Why that one?"}),
)


def _has_system(messages: Sequence[Message]) -> bool:
    return bool(messages) and messages[0]["role"] == "system"


# ---- ChatML (Qwen2, Qwen2.5 without tools, many fine-tunes) ---------------------------------
CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)


def render_chatml(messages: Sequence[Message]) -> str:
    """Exactly what CHATML_GO produces."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


# ---- Llama 3 ---------------------------------------------------------------------------------
LLAMA3_GO = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def render_llama3(messages: Sequence[Message]) -> str:
    """Exactly what LLAMA3_GO produces."""
    body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


# ---- Llama 2 ([INST] with <<SYS>> folded into the first user turn) ----------------------------
LLAMA2_GO = (
    '{{- $system := "" }}{{- $first := true }}\n'
    "{{- range .Messages }}\n"
    '{{- if eq .Role "system" }}{{ $system = .Content }}\n'
    '{{- else if eq .Role "user" }}\n'
    "{{- if not $first }}<s>{{ end }}[INST] {{ if and $first $system }}<<SYS>>\n"
    "{{ $system }}\n"
    "<</SYS>>\n"
    "\n"
    "{{ end }}{{ .Content }} [/INST]\n"
    "{{- $first = false }}\n"
    '{{- else if eq .Role "assistant" }} {{ .Content }} </s>\n'
    "{{- end }}\n"
    "{{- end }}"
)


def render_llama2(messages: Sequence[Message]) -> str:
    """Exactly what LLAMA2_GO produces (BOS of the first turn comes from the tokenizer)."""
    system = ""
    first = True
    out = []
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
        elif m["role"] == "user":
            prefix = "" if first else "<s>"
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if first and system else ""
            out.append(f"{prefix}[INST] {sys_block}{m['content']} [/INST]")
            first = False
        elif m["role"] == "assistant":
            out.append(f" {m['content']} </s>")
    return "".join(out)


# ---- Mistral [INST], system prompt folded into the last user turn (Mistral v0.3 style) --------
MISTRAL_GO = (
    '{{- $system := "" }}\n'
    '{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}\n'
    "{{- range $i, $m := .Messages }}\n"
    '{{- if eq $m.Role "user" }}[INST] {{ if and $system (eq (len (slice $.Messages $i)) 1) }}{{ $system }}\n'
    "\n"
    "{{ end }}{{ $m.Content }}[/INST]\n"
    '{{- else if eq $m.Role "assistant" }} {{ $m.Content }}</s>\n'
    "{{- end }}\n"
    "{{- end }}"
)


def render_mistral(messages: Sequence[Message]) -> str:
    """Exactly what MISTRAL_GO produces."""
    system = ""
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "user":
            last = i == len(messages) - 1
            prefix = f"{system}\n\n" if system and last else ""
            out.append(f"[INST] {prefix}{m['content']}[/INST]")
        elif m["role"] == "assistant":
            out.append(f" {m['content']}</s>")
    return "".join(out)


# ---- Mistral [INST] without a system role (Mistral-7B-Instruct v0.1/v0.2 style) -------------
MISTRAL_V1_GO = (
    "{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]\n'
    '{{- else if eq .Role "assistant" }}{{ .Content }}</s>\n'
    "{{- end }}\n"
    "{{- end }}"
)


def render_mistral_v1(messages: Sequence[Message]) -> str:
    """Exactly what MISTRAL_V1_GO produces (system messages are left out, as the Go template does)."""
    out = []
    for m in messages:
        if m["role"] == "user":
            out.append(f"[INST] {m['content']} [/INST]")
        elif m["role"] == "assistant":
            out.append(f"{m['content']}</s>")
    return "".join(out)


@dataclass(frozen=True)
class Family:
    """A chat-template family Ollama can express: its Go template and the text it renders."""

    name: str
    go_template: str
    render: Callable[[Sequence[Message]], str]


FAMILIES: tuple[Family, ...] = (
    Family("chatml", CHATML_GO, render_chatml),
    Family("llama3", LLAMA3_GO, render_llama3),
    Family("llama2", LLAMA2_GO, render_llama2),
    Family("mistral", MISTRAL_GO, render_mistral),
    Family("mistral-v1", MISTRAL_V1_GO, render_mistral_v1),
)


@dataclass(frozen=True)
class TemplateMatch:
    """A family whose Go template reproduces the model's template, and the SYSTEM it needs (or None)."""

    family: Family
    default_system: str | None = None


def _chatml_default_system(render: Render) -> str | None:
    """The system prompt a ChatML template inserts when the conversation has none, if any."""
    text = render(PROBES[0])
    head = "<|im_start|>system\n"
    if text is None or not text.startswith(head):
        return None
    end = text.find("<|im_end|>\n", len(head))
    return text[len(head):end] if end > 0 else None


def match_family(render: Render) -> TemplateMatch | None:
    """The family whose Go template renders every probe exactly as ``render`` (the model's template) does.

    ``render(messages)`` returns the model's prompt text without a leading BOS, or None when the
    model's template refuses the conversation.
    """
    rendered = [render(p) for p in PROBES]
    if any(text is None for probe, text in zip(PROBES, rendered) if not _has_system(probe)):
        return None
    for family in FAMILIES:
        systems: list[str | None] = [None]
        if family.name == "chatml":
            default = _chatml_default_system(render)
            if default is not None:
                systems = [default]
        for default in systems:
            ok = True
            for probe, text in zip(PROBES, rendered):
                if text is None:
                    continue
                messages = list(probe)
                if default is not None and not _has_system(messages):
                    messages = [{"role": "system", "content": default}, *messages]
                if family.render(messages) != text:
                    ok = False
                    break
            if ok:
                return TemplateMatch(family, default)
    return None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, stops: Sequence[str], match: TemplateMatch | None, title: str) -> str:
    """The Modelfile for one GGUF that sits in the same folder."""
    lines = [
        f"# Ollama Modelfile for {title}, written by cvlocal release.",
        f"# Use: ollama create NAME -f {gguf_name.removesuffix('.gguf')}.Modelfile",
    ]
    if match is None:
        lines.append("# No TEMPLATE: Ollama uses the chat template stored in the GGUF.")
    else:
        lines.append(f"# TEMPLATE: the {match.family.name} family, checked to render as the model's own template does.")
    lines.append(f"FROM ./{gguf_name}")
    if match is not None:
        lines.append(f'TEMPLATE """{match.family.go_template}"""')
        if match.default_system is not None:
            lines.append(f'SYSTEM """{match.default_system}"""')
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n"
