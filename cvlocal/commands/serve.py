"""``cvlocal serve MODEL.gguf``: an OpenAI-compatible HTTP server (llama-cpp-python's, with our template)."""
from __future__ import annotations

import argparse

from cvlocal import ui
from cvlocal.commands.chat import add_model_options, check_ctx
from cvlocal.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve", parents=[common], help="serve a GGUF model over an OpenAI-compatible HTTP API",
        description="llama-cpp-python's OpenAI-compatible server (/v1/chat/completions with streaming, "
                    "/v1/completions, /v1/models) with the same chat template handling as `cvlocal chat`. "
                    "Needs the server extra: pip install 'cvlocal[server]'.")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-alias", default=None, metavar="NAME", help="model id clients use (default: file stem)")
    p.add_argument("--api-key", default=None, metavar="KEY", help="require this bearer key from clients")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="requests decoded together in one batch, each with --ctx tokens (default 1: "
                        "llama-cpp-python's server, one request at a time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvlocal.chat.server import build_app, is_loopback, listen_socket, missing_server_packages, probe_template, serve

    missing = missing_server_packages()
    if missing:
        raise UsageError(f"the server needs packages that are not installed ({', '.join(missing)})",
                         fix="Run: pip install 'cvlocal[server]'")
    check_ctx(args)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number", fix="Give 1-65535")
    if args.parallel < 1:
        raise UsageError(f"--parallel must be at least 1 (got {args.parallel})", fix="pass --parallel N with N >= 1")
    from cvlocal.session import check_gguf_path

    if args.model_alias is not None and not args.model_alias.strip():
        raise UsageError("--model-alias is empty", fix="Give the model id clients should use, or leave it out")
    check_gguf_path(args.model)
    from cvlocal.commands.chat import adapter_specs

    adapters = adapter_specs(args)
    template = probe_template(args.model, args.chat_format)
    sock = listen_socket(args.host, args.port)  # before the model loads: a port in use fails at once
    try:
        if template.warning:
            ui.warn(template.warning)
        if not is_loopback(args.host):
            ui.warn(f"listening on {args.host}: other machines can reach this server"
                    + ("" if args.api_key else " and it has no --api-key"))
        with ui.maybe_status(f"loading {args.model.name}", args.quiet):
            if args.parallel > 1:
                from cvlocal.chat.batched_server import build_batched_app
                from cvlocal.chat.openai_edge import OpenAIEdge

                inner = build_batched_app(args.model, parallel=args.parallel, ctx=args.ctx, threads=args.threads,
                                          n_gpu_layers=args.n_gpu_layers, chat_format=args.chat_format, seed=args.seed,
                                          model_alias=args.model_alias, api_key=args.api_key, adapters=adapters)
                app = OpenAIEdge(inner, alias=args.model_alias or args.model.stem, api_key=args.api_key)
            else:
                app = build_app(args.model, ctx=args.ctx, threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                                chat_format=args.chat_format, seed=args.seed, model_alias=args.model_alias,
                                host=args.host, port=args.port, api_key=args.api_key, adapters=adapters)
        ui.say(f"serving {args.model.name} as {app.alias!r} (template {template.source}) on "
               f"http://{args.host}:{args.port}/v1 — Ctrl-C stops"
               + (f", {args.parallel} requests decoded together" if args.parallel > 1 else ""), args.quiet)
        serve(app, sock, quiet=args.quiet)
    finally:
        sock.close()
    return 0
