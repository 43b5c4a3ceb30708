"""llama-cpp-python's chat-format pieces, behind the package boundary (issue 14).

cvlocal renders chat prompts with llama-cpp-python's own formatters (its Jinja2 formatter for a
GGUF's template, its registered named formats) so a model answers the same through cvlocal as
through llama-cpp-python; and the one-request server hands llama-cpp-python a completion handler.
``cvlocal/chat/template.py`` and ``cvlocal/chat/server.py`` reach those classes only through the
small functions here, so a change in llama-cpp-python's chat-format module is met in one file.
Every import is deferred: importing this module stays light.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence


def formatter_response(prompt: str, stop: str | list[str] | None = None, *,
                       stop_on: Callable[[Any, Any], bool] | None = None, added_special: bool = False) -> Any:
    """A ``ChatFormatterResponse`` (what every formatter returns): the prompt, its stop strings and,
    with ``stop_on``, a stopping criterion called with (tokens, logits) after each token."""
    from llama_cpp import llama as llama_module
    from llama_cpp.llama_chat_format import ChatFormatterResponse

    criteria = llama_module.StoppingCriteriaList([stop_on]) if stop_on is not None else None
    return ChatFormatterResponse(prompt=prompt, stop=stop, stopping_criteria=criteria, added_special=added_special)


def named_format(attribute: str) -> Callable[..., Any] | None:
    """The formatter function ``llama_chat_format.<attribute>`` (``format_chatml``, ...), or None."""
    from llama_cpp import llama_chat_format

    return getattr(llama_chat_format, attribute, None)


def jinja_format(template: str, *, eos_token: str, bos_token: str, stop_token_ids: Sequence[int]) -> Callable[..., Any]:
    """llama-cpp-python's Jinja2 formatter for ``template``, with a generation prompt appended."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token,
                               add_generation_prompt=True, stop_token_ids=list(stop_token_ids))


def completion_handler(formatter: Callable[..., Any]) -> Callable[..., Any]:
    """The chat completion handler llama-cpp-python builds around a formatter (``create_chat_completion``'s)."""
    from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler

    return chat_formatter_to_chat_completion_handler(formatter)


def register_handler(name: str, handler: Callable[..., Any]) -> None:
    """Register ``handler`` as chat format ``name`` in llama-cpp-python's process-wide registry."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, handler, overwrite=True)
