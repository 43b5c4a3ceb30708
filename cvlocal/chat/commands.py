"""The slash commands of the chat (``/help``, ``/set``, ``/save`` ...), shared by the REPL and scripts.

A command works on a :class:`Host`: the session, a console for its output, and a way to show a
reply being generated (live in a terminal, plain in a script), and a yes/no question (a script
always answers no). ``//text`` sends ``/text`` as a message.

A command's error never ends the chat: :func:`run_command` reports any failure as one line and the
conversation goes on. A new command is one function and one row of :data:`COMMANDS`.
"""
from __future__ import annotations

import importlib
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from convert.errors import ConvertError
from cvlocal.chat.transcript import TranscriptExists, load_transcript, save_transcript
from cvlocal.errors import UsageError
from cvlocal.llama import facts as llama_facts
from cvlocal.session import ChatSession, Turn

EXIT = object()  # returned by /exit


class Host(Protocol):
    """What a command needs from the REPL or the script runner."""

    session: ChatSession
    out: Console
    model_path: Path

    def show_reply(self, produce: Callable[[Callable[[str], None]], Turn]) -> Turn | None: ...

    def confirm(self, question: str) -> bool: ...


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


@dataclass(frozen=True)
class Setting:
    parse: Callable[[str], Any]
    valid: Callable[[Any], bool]
    rule: str


SETTINGS: dict[str, Setting] = {
    "temperature": Setting(_float, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_p": Setting(_float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": Setting(_int, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "min_p": Setting(_float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "repeat_penalty": Setting(_float, lambda v: v > 0, "a number > 0 (1 = off)"),
    "max_tokens": Setting(_int, lambda v: v >= 1, "an integer >= 1"),
    "seed": Setting(_int, lambda v: v >= 0, "an integer >= 0"),
}


def parse_setting(name: str, value: Any) -> Any:
    """A checked value for a setting; UsageError naming the rule otherwise."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise UsageError(f"unknown setting {name!r}", fix=f"Use one of {', '.join(SETTINGS)}")
    try:
        parsed = setting.parse(str(value))
    except ValueError:
        parsed = None
    if parsed is None or not math.isfinite(parsed) or not setting.valid(parsed):
        raise UsageError(f"bad value {value!r} for {name}", fix=f"It must be {setting.rule}")
    return parsed


def apply_settings(session: ChatSession, settings: dict[str, Any]) -> list[str]:
    """Apply known settings from a saved transcript; returns the names applied.

    All are checked before any is applied, so a bad one changes nothing.
    """
    parsed = {name: parse_setting(name, value) for name, value in settings.items() if name in SETTINGS}
    for name, value in parsed.items():
        setattr(session, name, value)
    return list(parsed)


# ----- the commands -----
def cmd_help(host: Host, arg: str) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    for name, (usage, text, _) in COMMANDS.items():
        table.add_row(Text(f"/{name} {usage}".rstrip()), Text(text))
    host.out.print(table)
    host.out.print('Multi-line: start with """ and end a line with """ (or paste). //text sends "/text". '
                   "Ctrl-C stops a reply; Ctrl-C twice or Ctrl-D exits.", markup=False)


def cmd_system(host: Host, arg: str) -> None:
    session = host.session
    if not arg:
        host.out.print(f"system prompt: {session.system!r}" if session.system else "no system prompt", markup=False)
        return
    session.system = None if arg == "-" else arg
    host.out.print("system prompt removed" if arg == "-" else "system prompt set", markup=False)


def set_ratio(host: Host, parts: list[str]) -> None:
    """``/set ratio R`` (every adapter) or ``/set ratio N R`` (the N-th, from 1): the chat vector's ratio, live."""
    adapters = getattr(host.session.llm, "cvlocal_adapters", None)
    if not adapters:
        raise UsageError("no adapter is loaded", fix="Start the chat with --adapter FILE.gguf[:RATIO]")
    try:
        index = int(parts[0]) - 1 if len(parts) == 2 else None
        ratio = float(parts[-1])
    except (ValueError, IndexError):
        raise UsageError("usage: /set ratio R  or  /set ratio N R", fix="R is a number, N an adapter number from 1") from None
    if index is not None and not 0 <= index < len(adapters):
        raise UsageError(f"no adapter {index + 1}", fix=f"N is 1..{len(adapters)}")
    scales = [ratio if index is None or i == index else s for i, s in enumerate(adapters.scales)]
    changed = adapters.set_scales(scales)
    note = " (the KV cache was dropped: the next reply re-reads the conversation)" if changed else " (unchanged)"
    host.out.print("ratio: " + ", ".join(f"adapter {i + 1} at {s:g}" for i, s in enumerate(adapters.scales)) + note, markup=False)


def cmd_set(host: Host, arg: str) -> None:
    parts = arg.split()
    if parts and parts[0] == "ratio" and 2 <= len(parts) <= 3:
        set_ratio(host, parts[1:])
        return
    if len(parts) != 2:
        raise UsageError("usage: /set NAME VALUE", fix=f"NAME is one of {', '.join(SETTINGS)}")
    name, value = parts
    setattr(host.session, name, parse_setting(name, value))
    host.out.print(f"{name} = {getattr(host.session, name)}", markup=False)


def model_facts(session: ChatSession, model_path: Path) -> list[tuple[str, str]]:
    """What /show says about the model: file, metadata, context, template, stops."""
    llm = session.llm
    meta = llm.metadata
    arch = meta.get("general.architecture", "?")
    facts = [
        ("file", str(model_path)),
        ("name", meta.get("general.name", "?")),
        ("architecture", arch),
        ("description", llama_facts.description(llm)),
        ("parameters", f"{llama_facts.n_params(llm):,}"),
        ("vocabulary", f"{llm.n_vocab():,} tokens ({meta.get('tokenizer.ggml.model', '?')})"),
        ("context", f"{session.n_ctx} (trained {llama_facts.n_ctx_train(llm)})"),
        ("threads", f"{llm.n_threads} (prompt {llm.n_threads_batch})"),
        ("template", session.template_source),
        ("stops", " ".join(session.stop_tokens)),
    ]
    adapters = getattr(llm, "cvlocal_adapters", None)
    if adapters:
        facts.append(("adapters", "; ".join(f"{a['id'] + 1}: {a['path']} at ratio {a['scale']:g}" for a in adapters.describe())))
    return facts


def cmd_show(host: Host, arg: str) -> None:
    session = host.session
    table = Table(show_header=False, box=None, pad_edge=False)
    for name, value in session.settings().items():
        table.add_row(name, Text(str(value)))
    table.add_row("", "")
    for name, value in model_facts(session, host.model_path):
        table.add_row(name, Text(value))
    if session.system:
        table.add_row("system", Text(session.system))
    host.out.print(table)
    if session.template.template_text:
        host.out.print(Panel(Text(session.template.template_text), title=f"chat template ({session.template_source})",
                             expand=False))


def cmd_clear(host: Host, arg: str) -> None:
    host.session.reset()
    host.out.print("conversation cleared" + (" (system prompt kept)" if host.session.system else ""), markup=False)


def cmd_undo(host: Host, arg: str) -> None:
    if host.session.undo():
        host.out.print("last exchange removed", markup=False)
    else:
        host.out.print("nothing to undo", markup=False)


def cmd_regen(host: Host, arg: str) -> None:
    session = host.session
    if not session.messages or session.messages[-1]["role"] != "assistant":
        host.out.print("no reply to regenerate", markup=False)
        return
    host.show_reply(session.regen)


def _path_arg(arg: str, command: str) -> str:
    """The one path argument of /save or /load, ``~`` expanded; a trailing ``/`` is kept (it means a folder)."""
    try:
        parts = shlex.split(arg)
    except ValueError:
        parts = []
    if len(parts) != 1:
        raise UsageError(f"usage: /{command} FILE.json", fix="Give one file name (quote it if it has spaces)")
    return os.path.expanduser(parts[0])


def cmd_save(host: Host, arg: str, replace: bool = False) -> None:
    path = _path_arg(arg, "save")
    try:
        written = save_transcript(host.session, path, replace=replace)
    except TranscriptExists as err:
        if not host.confirm(f"{err.target} exists; replace it?"):
            host.out.print(f"not saved: {err.target} exists (/save! {arg} replaces it)", markup=False)
            return
        written = save_transcript(host.session, path, replace=True)
    host.out.print(f"saved {len(host.session.messages)} messages to {written}", markup=False)


def cmd_save_replace(host: Host, arg: str) -> None:
    cmd_save(host, arg, replace=True)


def cmd_load(host: Host, arg: str) -> None:
    loaded = load_transcript(_path_arg(arg, "load"))
    session = host.session
    previous = session.settings()
    applied = apply_settings(session, loaded.settings)  # first: a bad setting leaves the session as it was
    try:
        session.load_messages(loaded.messages, loaded.turns, loaded.hidden_exchanges)
    except ValueError as err:
        apply_settings(session, previous)
        raise UsageError(str(err), path=arg, fix="Give a file written by /save") from err
    note = f" and settings ({', '.join(applied)})" if applied else ""
    host.out.print(f"loaded {len(loaded.messages)} messages{note}", markup=False)
    tokens = session.count_tokens()
    if tokens >= session.n_ctx:
        host.out.print(f"the conversation has {tokens} tokens, more than the context ({session.n_ctx}); "
                       "the oldest exchanges will be hidden from the model at the next message", markup=False)


def cmd_stats(host: Host, arg: str) -> None:
    turns = host.session.turns
    if not turns:
        host.out.print("no replies yet", markup=False)
        return
    table = Table(title="per turn")
    for column in ("#", "prompt tok", "new prompt tok", "prompt tok/s", "first token ms", "reply tok", "gen tok/s",
                   "end"):
        table.add_column(column, justify="right")
    for i, t in enumerate(turns, 1):
        end = t.finish_reason + (f" (-{t.dropped_turns} turns)" if t.dropped_turns else "")
        table.add_row(str(i), str(t.prompt_tokens), str(t.new_prompt_tokens), f"{t.prompt_rate:.1f}",
                      f"{t.ttft_s * 1000:.0f}", str(t.completion_tokens), f"{t.gen_rate:.1f}", end)
    host.out.print(table)
    host.out.print(f"context: {host.session.count_tokens()} of {host.session.n_ctx} tokens in use", markup=False)


def check_module() -> Any | None:
    """``cvlocal.evaluation`` if it provides ``check_reply``; None when the checks are not installed."""
    try:
        module = importlib.import_module("cvlocal.evaluation")
    except ImportError:
        return None
    return module if callable(getattr(module, "check_reply", None)) else None


def check_language(user_text: str) -> str | None:
    """The language a reply to ``user_text`` is expected in: the language the user wrote in.

    Chinese without script evidence (你好) has no single expected script; None then, as for a
    language the checks do not know.
    """
    from cvlocal.evaluation.languages import LANGS, detect

    lang = detect(user_text).lang
    return lang if lang in LANGS else None


def cmd_check(host: Host, arg: str) -> None:
    session = host.session
    last = max((i for i, m in enumerate(session.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        host.out.print("no reply to check", markup=False)
        return
    module = check_module()
    if module is None:
        host.out.print("the offline checks are not installed (cvlocal.evaluation.check_reply is missing)",
                       markup=False)
        return
    user = next((m["content"] for m in reversed(session.messages[:last]) if m["role"] == "user"), "")
    lang = arg.strip() or check_language(user)
    # turns are the measurements of the last replies: the last one is this reply's, if any
    finish = session.turns[-1].finish_reason if session.turns else None
    result = module.check_reply(session.messages[last]["content"], lang=lang, finish_reason=finish)
    table = Table(title="checks on the last reply", show_header=False)
    for name, value in (result or {}).items():
        table.add_row(Text(str(name)), Text(str(value)))
    host.out.print(table)


def cmd_exit(host: Host, arg: str) -> object:
    return EXIT


COMMANDS: dict[str, tuple[str, str, Callable[[Host, str], Any]]] = {
    "help": ("", "this list", cmd_help),
    "system": ("[TEXT|-]", "show, set or (with -) remove the system prompt", cmd_system),
    "set": ("NAME VALUE", f"change a setting: {', '.join(SETTINGS)}; ratio [N] R: an adapter's ratio", cmd_set),
    "show": ("", "settings, model metadata and chat template", cmd_show),
    "clear": ("", "forget the conversation (the system prompt stays)", cmd_clear),
    "undo": ("", "remove the last question and its reply", cmd_undo),
    "regen": ("", "generate the last reply again", cmd_regen),
    "save": ("FILE.json|DIR", "save the conversation and settings (asks before replacing a file)", cmd_save),
    "save!": ("FILE.json", "save, replacing an existing file without asking", cmd_save_replace),
    "load": ("FILE.json", "load a saved conversation and its settings", cmd_load),
    "stats": ("", "prompt tokens, prompt rate, time to first token, generation rate per turn", cmd_stats),
    "check": ("[LANG]", "offline toxicity and dialogue checks on the last reply", cmd_check),
    "exit": ("", "leave (also Ctrl-D)", cmd_exit),
}
ALIASES = {"quit": "exit", "bye": "exit", "?": "help"}


def is_command(text: str) -> bool:
    """A line starting with one slash is a command; ``//`` escapes a message starting with ``/``."""
    return text.startswith("/") and not text.startswith("//")


def run_command(host: Host, line: str) -> object | None:
    """Run one command line; returns EXIT for /exit. Any error is reported as one line, never raised
    (Ctrl-C still is: the caller decides what it means)."""
    name, _, arg = line[1:].strip().partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    entry = COMMANDS.get(name)
    if entry is None:
        host.out.print(f"unknown command /{name}; /help lists the commands", markup=False)
        return None
    try:
        return entry[2](host, arg.strip())
    except (UsageError, ConvertError) as err:  # already "PATH: what. fix"
        message = str(err)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        message = f"{where}{err.strerror or err}"
    except Exception as err:  # noqa: BLE001 - a command's failure must not end the chat
        message = f"/{name} failed ({type(err).__name__}: {err})"
    host.out.print(f"error: {message}", markup=False, style="red", soft_wrap=True)  # one line, however long
    return None
