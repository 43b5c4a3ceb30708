"""A multi-turn chat with a GGUF model through llama-cpp-python: the API the REPL, the server's
template handling, the evaluation, the demo and the release checks all share.

    llm = load_llama("model.gguf", ctx=4096)
    s = ChatSession(llm, system="You are helpful.")
    turn = s.ask("你好", on_text=print)     # streams whole characters only
    turn.text, turn.finish_reason, turn.ttft_s, turn.new_prompt_tokens

Each turn renders the whole conversation with the chat template and tokenizes it; llama-cpp-python
keeps the KV cache for the prefix shared with the previous prompt, so only the new tokens are
evaluated (``Turn.new_prompt_tokens`` is read from llama.cpp's counters, not assumed). When the
prompt plus ``max_tokens`` would not fit in the context, the oldest turns are hidden from the model
(the system prompt stays) and ``Turn.dropped_turns`` says how many more this reply hid. Hiding
changes what the model sees, never the conversation: ``messages`` and ``turns`` keep every turn
(``/save`` writes them all), and ``hidden_exchanges`` says how many of the oldest the model no
longer sees.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from cvlocal import ui
from cvlocal.chat.generation import Interrupt, Sampling, context_size, generate_text, generate_whole
from cvlocal.chat.template import ChatTemplate, resolve_template, stop_token_ids
from cvlocal.errors import UsageError
from cvlocal.llama.model import check_gguf as check_gguf_path  # the one GGUF check, kept under its old name

__all__ = ["load_llama", "check_gguf_path", "ChatSession", "Turn", "complete_text", "ContextFullError"]


class ContextFullError(UsageError):
    """The latest message alone does not fit in the context window (exit 2 from the CLI)."""


def load_llama(
    path: str | Path,
    *,
    ctx: int = 4096,
    threads: int | None = None,
    n_gpu_layers: int = 0,
    seed: int = 0,
    verbose: bool = False,
    adapters: Sequence[Any] = (),
) -> Any:
    """Open a GGUF with llama-cpp-python; a missing or non-GGUF file is a one-line UsageError.

    ``threads`` sets both generation and prompt threads (None: llama-cpp-python's default).
    ``adapters`` (``cvlocal.llama.adapters.AdapterSpec``) are attached and checked; the model then
    carries them as ``llm.cvlocal_adapters`` (``/set ratio`` changes their scales).
    """
    llm = _open_llama(path, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers, seed=seed, verbose=verbose)
    if adapters:
        from cvlocal.llama.adapters import Adapters

        try:
            llm.cvlocal_adapters = Adapters(llm, adapters)
        except BaseException:
            llm.close()
            raise
    return llm


def _open_llama(path: str | Path, *, ctx: int, threads: int | None, n_gpu_layers: int, seed: int, verbose: bool) -> Any:
    from cvlocal.llama.loader import LoadError, as_usage_error, open_llama

    path = check_gguf_path(path)
    try:
        return open_llama(path, capture=not verbose, n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                          n_gpu_layers=n_gpu_layers, seed=seed, verbose=verbose)
    except LoadError as err:
        raise as_usage_error(path, err) from err.cause


@dataclass
class Turn:
    """One assistant reply and its measurements.

    ``new_prompt_tokens`` is what llama.cpp actually evaluated for the prompt (the rest came from
    the KV cache); ``prompt_rate`` is new prompt tokens per second up to the first token;
    ``gen_rate`` is tokens per second after the first one. ``dropped_turns`` counts the oldest
    user/assistant exchanges hidden from the model to fit the context before this reply (they stay
    in the conversation).
    """

    text: str
    finish_reason: Literal["stop", "length", "interrupted"]
    prompt_tokens: int
    new_prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    prompt_rate: float
    gen_rate: float
    dropped_turns: int = 0
    total_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Turn":
        """A Turn from :meth:`as_dict`'s record; ValueError naming the first bad field (a saved file is input).

        Fields with a default may be missing (files written before they existed); numbers must be
        finite and >= 0, counts integers.
        """
        if not isinstance(data, dict):
            raise ValueError("not an object")
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in data:
                if field.default is MISSING:
                    raise ValueError(f"no {field.name!r}")
                continue
            value = data[field.name]
            if field.name == "finish_reason":
                if value not in FINISH_REASONS:
                    raise ValueError(f"{field.name!r} is not one of {', '.join(FINISH_REASONS)}")
            elif field.name == "text":
                if not isinstance(value, str):
                    raise ValueError(f"{field.name!r} is not a string")
            else:
                whole = field.type == "int"
                if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                    raise ValueError(f"{field.name!r} is not {'an integer' if whole else 'a number'}")
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{field.name!r} is not a finite number >= 0")
                value = value if whole else float(value)
            values[field.name] = value
        return cls(**values)


FINISH_REASONS = ("stop", "length", "interrupted")
RESPELL_TOKENS = 8  # how far back _remember_fed looks for tokens that still spell the reply


class ChatSession:
    """A conversation: messages, sampling settings, the model's chat template, per-turn stats.

    ``messages`` is the whole conversation; ``turns`` holds the measurements of the last
    ``len(turns)`` replies, in order (a transcript loaded without them has fewer turns than
    replies). The model sees :meth:`visible_messages`: the system prompt and every exchange after
    the ``hidden_exchanges`` oldest ones (an exchange is a user message and what follows it).

    Settings are plain attributes (``s.temperature = 0.7``) read at each :meth:`ask`. The n-th
    reply generated samples with ``seed + n`` (from 0; :meth:`reset` restarts the count and
    :meth:`load_messages` continues it from the replies loaded), so a conversation replays
    identically while /regen gets a different reply.
    """

    def __init__(
        self,
        llm: Any,
        *,
        system: str | None = None,
        chat_format: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 40,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        seed: int = 0,
        model_name: str | None = None,
        warn: Callable[[str], None] | None = ui.warn,
    ) -> None:
        self.llm = llm
        self.model_name = model_name or Path(getattr(llm, "model_path", "model")).name
        self.template: ChatTemplate = resolve_template(llm, chat_format, self.model_name)
        if self.template.warning and warn is not None:
            warn(self.template.warning)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.min_p = min_p
        self.repeat_penalty = repeat_penalty
        self.seed = seed
        self.messages: list[dict[str, str]] = []
        self.turns: list[Turn] = []
        self.hidden_exchanges = 0
        self.interrupt = Interrupt()
        self._generations = 0
        # The last prompt (text, tokens) and reply (text, tokens) the model saw, see _prompt_tokens.
        self._fed: tuple[str, list[int], str, list[int]] | None = None
        if system:
            self.messages.append({"role": "system", "content": system})

    # ----- what the session is -----
    @property
    def template_source(self) -> str:
        """``"gguf"``, ``"override:<name>"`` or ``"fallback:<name>"``."""
        return self.template.source

    @property
    def stop_tokens(self) -> list[str]:
        """Texts of the tokens and strings that end a reply."""
        return self.template.stop_token_texts()

    @property
    def n_ctx(self) -> int:
        """The context window in tokens (prompt plus reply)."""
        return context_size(self.llm)

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None

    @system.setter
    def system(self, text: str | None) -> None:
        has = bool(self.messages) and self.messages[0]["role"] == "system"
        if text:
            if has:
                self.messages[0] = {"role": "system", "content": text}
            else:
                self.messages.insert(0, {"role": "system", "content": text})
        elif has:
            del self.messages[0]

    def settings(self) -> dict[str, Any]:
        """The sampling settings /show and /save report."""
        return {name: getattr(self, name) for name in SETTINGS}

    def sampling(self) -> Sampling:
        return Sampling(temperature=float(self.temperature), top_p=float(self.top_p), top_k=int(self.top_k),
                        min_p=float(self.min_p), repeat_penalty=float(self.repeat_penalty),
                        seed=int(self.seed) + self._generations)

    def count_tokens(self, messages: list[dict[str, str]] | None = None) -> int:
        """Prompt tokens of ``messages`` (default: what the model sees) as the next reply would see them."""
        return len(self._prompt_tokens(self.visible_messages() if messages is None else messages)[0])

    def _exchange_starts(self) -> list[int]:
        """Indices of the user messages that start an exchange (the system prompt is never one)."""
        first = 1 if self.system is not None else 0
        return [i for i, m in enumerate(self.messages) if m["role"] == "user" and i >= first]

    def visible_messages(self) -> list[dict[str, str]]:
        """What the model is shown: the system prompt and the exchanges after the hidden ones.

        Anything before the first user message (a loaded transcript may start with a reply) goes
        with the first exchange. The newest exchange is never hidden.
        """
        starts = self._exchange_starts()
        hidden = min(self.hidden_exchanges, max(0, len(starts) - 1))
        if hidden == 0:
            return list(self.messages)
        head = self.messages[:1] if self.system is not None else []
        return head + self.messages[starts[hidden]:]

    def _prompt_tokens(self, messages: list[dict[str, str]]) -> tuple[list[int], str]:
        """The prompt tokens for ``messages``: the template's, with the model's own last reply kept.

        Re-tokenizing a reply does not always give back the tokens the model generated (a model
        may write a word in pieces the tokenizer would merge, start with a space the template trims,
        or emit broken bytes that come back as U+FFFD), and then the KV cache would stop matching
        inside the last reply and the whole rest would be evaluated again. So when the new prompt
        text still begins with the last prompt and that reply, those tokens are kept as they were
        fed, and only the text after the reply is taken from the full tokenization (in context).
        Otherwise this is exactly the template's tokenization.
        """
        text, add_bos = self.template.render(messages)
        full = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if self._fed is not None:
            prompt_text, prompt_tokens, reply_text, reply_ids = self._fed
            if text.startswith(prompt_text):
                rest = text[len(prompt_text):]
                lead = len(rest) - len(rest.lstrip())
                if rest[lead:].startswith(reply_text):
                    end = len(prompt_text) + lead + len(reply_text)
                    upto = self.llm.tokenize(text[:end].encode("utf-8"), add_bos=add_bos, special=True)
                    if len(full) > len(upto) and full[:len(upto)] == upto:
                        return prompt_tokens + reply_ids + full[len(upto):], text
        return full, text

    def _spelled(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace").strip()

    def _remember_fed(self, prompt_text: str, prompt_tokens: list[int], reply_text: str, ids: list[int]) -> None:
        """Keep the last prompt and reply tokens for _prompt_tokens, if they spell the stored reply.

        A reply cut inside a character lost that character's bytes (generate_text drops them), and
        the last token may hold them together with whole characters. Then the tokens up to it are
        kept and the few characters after them are tokenized anew, so that the tokens spell the
        stored reply (not the dropped bytes) and the cache still matches up to there.
        """
        end = len(ids)
        while end and not self.llm.detokenize(ids[end - 1:end]).decode("utf-8", errors="replace").strip():
            end -= 1  # whitespace-only tokens at the end: templates trim them away
        ids = ids[:end]
        if ids and self._spelled(ids) != reply_text:
            for keep in range(len(ids) - 1, max(-1, len(ids) - 1 - RESPELL_TOKENS), -1):
                head = self._spelled(ids[:keep])
                if reply_text.startswith(head):
                    rest = reply_text[len(head):]
                    ids = ids[:keep] + self.llm.tokenize(rest.encode("utf-8"), add_bos=False, special=False)
                    break
        self._fed = (prompt_text, list(prompt_tokens), reply_text, ids) if ids and self._spelled(ids) == reply_text else None

    # ----- the conversation -----
    def ask(self, user_text: str, on_text: Callable[[str], None] | None = None) -> Turn:
        """Add a user message and generate the reply (kept in history even when interrupted)."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            return self._reply(on_text)
        except ContextFullError:
            self.messages.pop()
            raise

    def ask_whole(self, user_text: str) -> Turn:
        """:meth:`ask` for batch callers (evaluation, the demo, sweeps) that keep replies: Ctrl-C
        raises KeyboardInterrupt instead of ending the reply early, so a cut reply is never recorded.

        A Ctrl-C that lands after the last token but before the reply is handed back (its flag is
        set, the loop has already finished) stops the run too: the batch job was asked to stop."""
        turn = self.ask(user_text)
        if turn.finish_reason == "interrupted" or self.interrupt.requested:
            raise KeyboardInterrupt
        return turn

    def regen(self, on_text: Callable[[str], None] | None = None) -> Turn:
        """Replace the last reply with a new one (a different seed, so sampling differs)."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise UsageError("there is no reply to regenerate", fix="Ask something first")
        reply = self.messages.pop()
        try:
            turn = self._reply(on_text)
        except ContextFullError:
            self.messages.append(reply)
            raise
        if len(self.turns) > 1:
            del self.turns[-2]  # the replaced reply's measurements
        return turn

    def undo(self) -> bool:
        """Remove the last exchange (user message and its reply); False if there is none."""
        last_user = max((i for i, m in enumerate(self.messages) if m["role"] == "user"), default=None)
        if last_user is None:
            return False
        had_reply = any(m["role"] == "assistant" for m in self.messages[last_user:])
        del self.messages[last_user:]
        if had_reply and self.turns:
            self.turns.pop()
        self.hidden_exchanges = min(self.hidden_exchanges, max(0, len(self._exchange_starts()) - 1))
        return True

    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]
        self.turns = []
        self.hidden_exchanges = 0
        self._generations = 0

    def load_messages(self, messages: list[dict[str, str]], turns: list[Turn] | None = None,
                      hidden_exchanges: int = 0) -> None:
        """Replace the conversation (from /load); the KV cache is reused where the prefix matches.

        ``turns`` are the measurements of the last replies (at most one per reply: extra ones are
        a ValueError); ``hidden_exchanges`` how many of the oldest exchanges the model no longer saw.
        """
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        replies = sum(m["role"] == "assistant" for m in messages)
        turns = list(turns or [])
        if len(turns) > replies:
            raise ValueError(f"{len(turns)} turn records for {replies} replies")
        self.messages = messages
        self.turns = turns
        self._fed = None
        self._generations = replies
        self.hidden_exchanges = min(max(0, int(hidden_exchanges)), max(0, len(self._exchange_starts()) - 1))

    # ----- internals -----
    def _fit_context(self) -> tuple[list[int], str, int, int]:
        """Prompt tokens that leave room for the reply, dropping the oldest exchanges if needed.

        Returns (tokens, prompt text, max_tokens for this reply, exchanges dropped). When even the newest
        message alone leaves no room, raises ContextFullError instead of llama.cpp's crash.
        """
        n_ctx = self.n_ctx
        saved = self.hidden_exchanges
        most = max(0, len(self._exchange_starts()) - 1)  # the newest user message is never hidden
        self.hidden_exchanges = min(saved, most)
        tokens, text = self._prompt_tokens(self.visible_messages())
        while len(tokens) + self.max_tokens > n_ctx and self.hidden_exchanges < most:
            self.hidden_exchanges += 1
            tokens, text = self._prompt_tokens(self.visible_messages())
        room = n_ctx - len(tokens)
        if room < 1:
            self.hidden_exchanges = saved  # nothing is hidden for a message that cannot be answered anyway
            raise ContextFullError(
                f"the message needs {len(tokens)} prompt tokens but the context holds {n_ctx}",
                fix="Send a shorter message or restart with a larger --ctx")
        return tokens, text, min(self.max_tokens, room), max(0, self.hidden_exchanges - saved)

    def _reply(self, on_text: Callable[[str], None] | None) -> Turn:
        tokens, prompt_text, max_tokens, dropped = self._fit_context()
        generated = generate_text(
            self.llm,
            tokens,
            sampling=self.sampling(),
            max_tokens=max_tokens,
            stop_ids=self.template.stop_ids,
            stop_texts=self.template.stop_texts,
            on_text=on_text,
            strip_leading=True,
            interrupt=self.interrupt,
        )
        self._generations += 1
        text = generated.text.strip()
        self._remember_fed(prompt_text, tokens, text, generated.token_ids)
        self.messages.append({"role": "assistant", "content": text})
        turn = Turn(
            text=text,
            finish_reason=generated.finish_reason,
            prompt_tokens=generated.prompt_tokens,
            new_prompt_tokens=generated.new_prompt_tokens,
            completion_tokens=generated.completion_tokens,
            ttft_s=generated.ttft_s,
            prompt_rate=generated.prompt_rate,
            gen_rate=generated.gen_rate,
            dropped_turns=dropped,
            total_s=generated.total_s,
        )
        self.turns.append(turn)
        return turn


SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed")


def complete_text(
    llm: Any,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[str, str]:
    """A raw continuation of ``prompt`` (no chat template), e.g. for toxicity prompts.

    Returns (text, finish_reason) with finish_reason "stop" (an end-of-text token) or "length".
    Only top_p truncates the distribution (top_k and min_p are off), as in the usual
    continuation setups. The reply is shortened to the room left in the context; a prompt that
    fills the context alone raises ContextFullError. Ctrl-C raises KeyboardInterrupt (a batch job
    should stop, not record a cut-off continuation).
    """
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    room = context_size(llm) - len(tokens)
    if room < 1:
        raise ContextFullError(f"the prompt needs {len(tokens)} tokens but the context holds {context_size(llm)}",
                               fix="Use a shorter prompt or a larger context")
    generated = generate_whole(
        llm,
        tokens,
        sampling=Sampling(temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0, seed=seed),
        max_tokens=min(max_tokens, room),
        stop_ids=stop_token_ids(llm),
        strip_leading=False,
    )
    return generated.text, generated.finish_reason
