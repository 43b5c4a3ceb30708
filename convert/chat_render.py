"""Render an HF chat template the way transformers' ``apply_chat_template`` renders it.

Chat templates are written against transformers' Jinja set-up, so a template rendered any other
way may come out different, or not at all: a template that marks the assistant's part with
``{% generation %}`` ... ``{% endgeneration %}`` (for assistant-token masks) is a syntax error in a
plain Jinja environment, and a reader that swallows the error sees empty text, with no special
tokens in it. The environment here has what transformers 5 gives a template: a sandbox that
cannot modify its inputs (``ImmutableSandboxedEnvironment``), ``trim_blocks`` and
``lstrip_blocks``, ``loopcontrols``, a ``generation`` block that renders its body unchanged,
``raise_exception`` (a ``TemplateError``), ``strftime_now``, a ``tojson`` filter that keeps
non-ASCII text and takes ``indent``/``separators``/``sort_keys``, and the ``dict`` and ``namespace``
globals (a namespace refuses underscore names, as transformers' does, so a template cannot reach
Python internals). It is written here rather than imported from transformers because that
function is not part of transformers' documented API and its signature has changed between
releases; tests compare the two on real templates.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

# A conversation that exercises every role a chat template formats.
SAMPLE_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello."},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "How are you?"},
)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def template_environment() -> Any:
    """The Jinja environment chat templates are rendered in (built once)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}``: the body, rendered as if the tags were absent."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    class Namespace(jinja2.utils.Namespace):
        """Jinja's ``namespace()``, refusing attribute names that start with an underscore."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805  (Jinja's own signature trick)
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = Namespace
    return env


@lru_cache(maxsize=32)
def compile_template(template: str) -> Any:
    """The compiled template; raises jinja2's TemplateSyntaxError when it does not parse."""
    return template_environment().from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                bos_token: str = "", eos_token: str = "", **variables: Any) -> str:
    """The prompt text ``template`` makes of ``messages``, as transformers renders it.

    ``bos_token``/``eos_token`` are the tokenizer's special-token texts (transformers passes every
    special token's text by its attribute name; pass others, such as ``pad_token``, as keywords).
    Jinja errors (a template refusing a role, a syntax error) propagate.
    """
    compiled = compile_template(template)
    return str(compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **variables))


def render_sample(template: str, bos_token: str = "", eos_token: str = "") -> str:
    """The template applied to a sample conversation; without the system turn if it refuses one.

    Empty only when the template cannot render either conversation (it does not parse, or it
    raises on both): a template transformers can render is rendered here too.
    """
    try:
        compile_template(template)
    except Exception:  # a template jinja cannot parse has no tokens to find
        return ""
    for conversation in (SAMPLE_CONVERSATION, SAMPLE_CONVERSATION[1:]):
        try:
            return render_chat(template, conversation, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
        except Exception:  # templates raise on roles they do not support
            continue
    return ""
