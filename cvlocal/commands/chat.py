"""``cvlocal chat MODEL.gguf``: talk to a model in the terminal, or play a script of messages."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvlocal import ui
from cvlocal.errors import UsageError

DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0, "max_tokens": 512}


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options for loading a GGUF, shared with ``cvlocal serve``."""
    p.add_argument("model", type=Path, metavar="MODEL.gguf", help="the GGUF model")
    p.add_argument("--ctx", type=int, default=4096, metavar="N", help="context window in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: llama.cpp's choice)")
    p.add_argument("--n-gpu-layers", type=int, default=0, metavar="N", help="layers to offload to a GPU (-1: all)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default 0: reproducible)")
    p.add_argument("--chat-format", default=None, metavar="NAME|FILE.jinja",
                   help="override the GGUF's chat template: a llama-cpp-python format name (chatml, llama-2, "
                        "llama-3, mistral-instruct, ...), 'plain', or a Jinja template file")
    p.add_argument("--adapter", action="append", default=[], metavar="FILE.gguf[:RATIO]",
                   help="a GGUF LoRA adapter (e.g. a chat vector from `cvlocal extract ... -o X.gguf`) at RATIO "
                        "(default 1.0); repeat for several")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "chat", parents=[common], help="chat with a GGUF model in the terminal",
        description="Multi-turn chat through llama-cpp-python with the model's own chat template. "
                    "Type /help inside for commands. --script FILE plays a file of messages without a terminal "
                    "(one message per line, \"\"\" blocks for several lines, /commands allowed) and prints "
                    "the transcript on stdout (--json: one JSON document with per-turn measurements).")
    add_model_options(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=DEFAULTS["max_tokens"], metavar="N",
                   help=f"longest reply in tokens (default {DEFAULTS['max_tokens']})")
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], metavar="T",
                   help=f"sampling temperature, 0 = greedy (default {DEFAULTS['temperature']})")
    p.add_argument("--top-p", type=float, default=DEFAULTS["top_p"], metavar="P")
    p.add_argument("--top-k", type=int, default=DEFAULTS["top_k"], metavar="K")
    p.add_argument("--min-p", type=float, default=DEFAULTS["min_p"], metavar="P")
    p.add_argument("--repeat-penalty", type=float, default=DEFAULTS["repeat_penalty"], metavar="R")
    p.add_argument("--script", default=None, metavar="FILE", help="play the messages and commands in FILE ('-': stdin)")
    p.set_defaults(func=run)


def check_ctx(args: argparse.Namespace) -> None:
    if args.ctx < 16:
        raise UsageError(f"--ctx {args.ctx} is too small", fix="Give at least 16 tokens (4096 is usual)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be at least 1", fix="Leave it out for llama.cpp's choice")


def adapter_specs(args: argparse.Namespace) -> list:
    """``--adapter FILE[:RATIO]`` values, checked before the model loads."""
    from cvlocal.llama.adapters import check_adapter_file, parse_adapter_spec

    specs = [parse_adapter_spec(text) for text in getattr(args, "adapter", None) or []]
    for spec in specs:
        check_adapter_file(spec.path)
    return specs


def run(args: argparse.Namespace) -> int:
    from cvlocal.chat.commands import parse_setting

    check_ctx(args)
    settings = {name: parse_setting(name, getattr(args, name))
                for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed")}
    if args.script is None:
        if args.json:
            raise UsageError("--json needs --script FILE", fix="Add --script FILE, or leave out --json")
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("the chat needs a terminal", fix="Run it in a terminal, or use --script FILE")
    items = None
    if args.script is not None:
        from cvlocal.chat.script import read_script

        items = read_script(args.script)  # read before loading the model: a bad script costs nothing

    from cvlocal.session import ChatSession, load_llama

    with ui.maybe_status(f"loading {args.model.name}", args.quiet or args.script is not None):
        llm = load_llama(args.model, ctx=args.ctx, threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                         seed=args.seed, adapters=adapter_specs(args))
    from cvlocal.llama.facts import n_ctx_train

    trained = n_ctx_train(llm)
    if trained and args.ctx > trained:
        ui.warn(f"--ctx {args.ctx} is longer than {args.model.name} was trained for ({trained} tokens); "
                "replies may degrade past that length")
    session = ChatSession(llm, system=args.system, chat_format=args.chat_format, **settings)
    if items is not None:
        from cvlocal.chat.script import run_script

        return run_script(session, items, model_path=args.model, as_json=args.json, quiet=args.quiet)
    from cvlocal.chat.repl import Repl

    return Repl(session, args.model).run()
