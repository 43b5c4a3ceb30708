"""How the evaluation talks to a model: raw continuations and chats, through the session API.

The runner only needs two operations, so they are an interface (:class:`Backend`): tests can wrap
the real one to count calls or stop after N items, and the model is loaded once per model file and
reused for every suite.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence


@dataclass
class Output:
    """One generated text and how it ended ("stop": by itself; "length": cut at max_tokens)."""

    text: str
    finish_reason: str
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    def reset(self) -> None:
        """Forget cached state (the KV cache) so that an item's outputs do not depend on the item
        run before it: a resumed or ``--limit`` run then gives the same texts as a full one."""

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float, seed: int) -> Output: ...

    def chat(self, messages: Sequence[str], *, max_tokens: int, seed: int) -> list[Output]: ...

    def close(self) -> None: ...


def derived_seed(seed: int, item_id: str, sample: int = 0) -> int:
    """A per-item, per-sample seed from ``--seed``: the same for every model and every rerun."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}\x00{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class LlamaBackend:
    """A GGUF loaded with llama-cpp-python; chats use the model's own chat template, greedy."""

    def __init__(self, path: Path, *, ctx: int = 4096, threads: int | None = None, n_gpu_layers: int = 0,
                 chat_format: str | None = None) -> None:
        from cvlocal.llama.adapters import parse_model_spec
        from cvlocal.session import load_llama

        self.path = Path(path)
        model, adapters = parse_model_spec(self.path)  # CP.gguf+ADAPTER.gguf@RATIO
        self.llm = load_llama(model, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers, seed=0, adapters=adapters)
        self.chat_format = chat_format
        self.template_warning: str | None = None

    def reset(self) -> None:
        self.llm.reset()

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float, seed: int) -> Output:
        from cvlocal.session import complete_text

        text, finish = complete_text(self.llm, prompt, max_tokens=max_tokens, temperature=temperature,
                                     top_p=top_p, seed=seed)
        return Output(text, finish, len(self.llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0)

    def chat(self, messages: Sequence[str], *, max_tokens: int, seed: int) -> list[Output]:
        from cvlocal.session import ChatSession

        def remember(message: str) -> None:
            self.template_warning = message

        session = ChatSession(self.llm, chat_format=self.chat_format, max_tokens=max_tokens, temperature=0.0,
                              seed=seed, warn=remember)
        outputs = []
        for message in messages:
            turn = session.ask_whole(message)
            outputs.append(Output(turn.text, turn.finish_reason, turn.completion_tokens))
        return outputs

    def close(self) -> None:
        if self.llm is not None:
            close = getattr(self.llm, "close", None)
            if callable(close):
                close()
        self.llm = None
