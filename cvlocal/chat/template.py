"""Which chat template a model gets, and on which tokens and strings generation stops.

The template normally comes from the GGUF (``tokenizer.chat_template``, rendered by
llama-cpp-python's Jinja2 formatter with the GGUF's own bos/eos texts), exactly as the chat
model's tokenizer would render it. ``--chat-format`` overrides it with one of llama-cpp-python's
named formats, a Jinja file, or ``plain``. A GGUF without a template (a raw continually-pretrained
model) gets the ``plain`` format and a warning that says so: a silent guess would make a merged
model look worse or better than it is.

The same :class:`ChatTemplate` drives the REPL (:mod:`cvlocal.session`) and the server
(:mod:`cvlocal.chat.server`), so both render and stop identically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from convert.tokenizer_facts import END_OF_TURN
from cvlocal.errors import UsageError
from cvlocal.llama.chat_format import formatter_response, jinja_format, named_format
from cvlocal.llama.facts import token_text

# End-of-turn / end-of-text token texts used by the families cvlocal supports (and a few more).
# A text counts only if the model's vocabulary has it as one special token.
# The end-of-turn markers are the converter's own list (convert.tokenizer_facts.END_OF_TURN).
KNOWN_END_TEXTS = ("</s>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", *END_OF_TURN)

# llama-cpp-python's registered text formats (name -> formatter function in llama_chat_format).
NAMED_FORMATS = {
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "alpaca": "format_alpaca",
    "qwen": "format_qwen",
    "vicuna": "format",
    "oasst_llama": "format_oasst_llama",
    "baichuan-2": "format_baichuan2",
    "baichuan": "format_baichuan",
    "openbuddy": "format_openbuddy",
    "redpajama-incite": "format_redpajama_incite",
    "snoozy": "format_snoozy",
    "phind": "format_phind",
    "intel": "format_intel",
    "open-orca": "format_open_orca",
    "mistrallite": "format_mistrallite",
    "zephyr": "format_zephyr",
    "pygmalion": "format_pygmalion",
    "chatml": "format_chatml",
    "mistral-instruct": "format_mistral_instruct",
    "chatglm3": "format_chatglm3",
    "openchat": "format_openchat",
    "saiga": "format_saiga",
    "gemma": "format_gemma",
}

PLAIN = "plain"
PLAIN_DESCRIPTION = 'plain "User: ... / Assistant: ..." turns'


def format_plain(messages: Sequence[dict[str, Any]], **_: Any) -> Any:
    """The fallback for a model without a template: ``User:``/``Assistant:`` lines.

    Chosen because a base or continually-pretrained model has seen this shape of dialogue in
    ordinary text, and it needs no special tokens that the model may never have learned.
    """
    parts: list[str] = []
    for message in messages:
        content = message.get("content") or ""
        role = message.get("role")
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"User: {content}\n")
        elif role == "assistant":
            parts.append(f"Assistant: {content}\n\n")
    parts.append("Assistant:")
    return formatter_response("".join(parts), ["\nUser:", "\n\nUser:"])


@dataclass
class ChatTemplate:
    """A resolved chat template: how to render messages, and where to stop.

    ``source`` is ``"gguf"``, ``"override:<name>"`` or ``"fallback:plain"``. ``formatter`` follows
    llama-cpp-python's ChatFormatter protocol (``formatter(messages=...) -> ChatFormatterResponse``).
    """

    source: str
    formatter: Callable[..., Any]
    stop_ids: frozenset[int]
    stop_texts: tuple[str, ...]
    template_text: str | None = None
    warning: str | None = None
    token_texts: dict[int, str] = field(default_factory=dict)

    def render(self, messages: Sequence[dict[str, Any]]) -> tuple[str, bool]:
        """The prompt text for ``messages`` and whether a BOS token must be added when tokenizing."""
        try:
            response = self.formatter(messages=list(messages))
        except Exception as err:  # a Jinja template raising (e.g. roles must alternate) is bad input
            raise UsageError(f"the chat template ({self.source}) refused the conversation: {err}",
                             fix="Use /clear, or --chat-format NAME to choose another template") from err
        return response.prompt, not response.added_special

    def tokens(self, llm: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Prompt token ids for ``messages``, tokenized as llama-cpp-python's chat handler does."""
        prompt, add_bos = self.render(messages)
        return llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def stop_token_texts(self) -> list[str]:
        """Texts of the stop tokens (for /show), then the stop strings."""
        names = [self.token_texts.get(i, f"#{i}") for i in sorted(self.stop_ids)]
        return names + [s for s in self.stop_texts if s not in names]

    def llama_formatter(self) -> Callable[..., Any]:
        """A llama-cpp-python ChatFormatter with our stop ids and strings, for the server."""
        stop_ids = self.stop_ids
        stop_texts = list(self.stop_texts)

        def stop_on_ids(tokens: Any, logits: Any) -> bool:
            return int(tokens[-1]) in stop_ids

        def formatter(*, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
            response = self.formatter(messages=messages, **kwargs)
            return formatter_response(response.prompt, stop_texts, stop_on=stop_on_ids,
                                      added_special=response.added_special)

        return formatter


def special_token_text(llm: Any, token: int) -> str:
    """The vocabulary text of a token id (``<|eot_id|>``, ``</s>``), empty for an invalid id."""
    if token < 0 or token >= llm.n_vocab():
        return ""
    return token_text(llm, token)


def stop_token_ids(llm: Any) -> frozenset[int]:
    """Where a reply ends: eos, the GGUF's end-of-turn id, and known end texts found in the vocabulary.

    A chat model converted from HF often keeps the base model's eos (``<|end_of_text|>``) while its
    template closes turns with another token (``<|eot_id|>``, ``<|im_end|>``); stopping on eos
    alone would let the model run on into an invented next turn.
    """
    ids: set[int] = set()
    eos = llm.token_eos()
    if eos >= 0:
        ids.add(eos)
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = llm.metadata.get(key)
        if value is not None and str(value).lstrip("-").isdigit() and 0 <= int(value) < llm.n_vocab():
            ids.add(int(value))
    for text in KNOWN_END_TEXTS:
        found = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(found) == 1 and special_token_text(llm, found[0]) == text:
            ids.add(found[0])
    return frozenset(ids)


def named_formatter(name: str) -> Callable[..., Any]:
    """llama-cpp-python's formatter for a registered format name, or a UsageError listing the names."""
    if name == PLAIN:
        return format_plain
    attr = NAMED_FORMATS.get(name)
    formatter = named_format(attr) if attr else None
    if formatter is None:
        names = ", ".join(sorted([PLAIN, *NAMED_FORMATS]))
        raise UsageError(f"unknown chat format {name!r}", fix=f"Use one of {names}, or a Jinja template file (*.jinja)")
    return formatter


def jinja_formatter(template: str, llm: Any, stop_ids: frozenset[int]) -> Callable[..., Any]:
    """llama-cpp-python's Jinja2 formatter with the model's own bos/eos texts."""
    return jinja_format(template, eos_token=special_token_text(llm, llm.token_eos()),
                        bos_token=special_token_text(llm, llm.token_bos()), stop_token_ids=sorted(stop_ids))


def resolve_template(llm: Any, chat_format: str | None = None, model_name: str = "the model") -> ChatTemplate:
    """The chat template for ``llm``: the GGUF's own, an override, or the named fallback with a warning.

    ``chat_format`` is ``None`` (use the GGUF), a llama-cpp-python format name, ``plain``, or a
    path to a Jinja template file (e.g. the chat model's template for a CP model that has none).
    """
    stop_ids = stop_token_ids(llm)
    texts = {i: special_token_text(llm, i) for i in stop_ids}
    gguf_template = llm.metadata.get("tokenizer.chat_template") or None
    warning = None
    template_text: str | None = None
    if chat_format is None or chat_format == "gguf":
        if gguf_template is not None:
            source = "gguf"
            template_text = gguf_template
            formatter = jinja_formatter(gguf_template, llm, stop_ids)
        else:
            source = f"fallback:{PLAIN}"
            formatter = format_plain
            warning = (f"{model_name} has no chat template (tokenizer.chat_template); using the fallback "
                       f"format '{PLAIN}' ({PLAIN_DESCRIPTION}). Pass --chat-format NAME or FILE.jinja to choose one")
    elif chat_format.endswith((".jinja", ".j2", ".jinja2")) or Path(chat_format).is_file():
        path = Path(chat_format)
        if not path.is_file():
            raise UsageError("chat template file not found", path=path, fix="Give an existing .jinja file")
        template_text = path.read_text(encoding="utf-8")
        source = f"override:{path.name}"
        formatter = jinja_formatter(template_text, llm, stop_ids)
    else:
        formatter = named_formatter(chat_format)
        source = f"override:{chat_format}"
    # Formats declare their stop strings in each response; render a one-message conversation to read them.
    try:
        probe = formatter(messages=[{"role": "user", "content": "x"}])
        declared = probe.stop if isinstance(probe.stop, list) else ([probe.stop] if probe.stop else [])
    except Exception:  # a template that refuses this conversation will say so on the real one
        declared = []
    stop_texts = tuple(dict.fromkeys(s for s in declared if s))
    return ChatTemplate(source=source, formatter=formatter, stop_ids=stop_ids, stop_texts=stop_texts,
                        template_text=template_text, warning=warning, token_texts=texts)
