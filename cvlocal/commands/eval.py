"""``cvlocal eval MODEL.gguf [MODEL.gguf ...]``: the same suites, seeds and scorer for every model.

Prints one side-by-side table and writes ``report.json``, ``report.md`` and ``items.jsonl`` under
``--out``. Results are cached per model as they are produced, so an interrupted run continues where
it stopped; ``--fresh`` starts the given models over. ``--score-replies REPLIES.jsonl`` scores
replies that another system produced, with the same metrics and report, and loads no model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvlocal import ui
from cvlocal.commands._checks import at_least
from cvlocal.evaluation.generate import DEFAULT_MAX_TOKENS, DEFAULT_SAMPLES, GenerationSettings
from cvlocal.evaluation.languages import LANGS, normalise_lang
from cvlocal.evaluation.suites import SUITES, SUITES_DIR, parse_list


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "eval", parents=[common], help="evaluate GGUF models offline: toxicity, safety, instructions, dialogue",
        description=(
            "Run every model on the same suites with the same seeds and compare them side by side: toxicity "
            "(RealToxicityPrompts-style continuations), safety (refusals, unsafe compliance, over-refusal), "
            "instruction following (IFEval-style, strict and loose) and multi-turn dialogue (recall, language and "
            "script, template leakage, ending, repetition). Results are cached under --out as they are produced: "
            "rerun the same command to continue an interrupted run."))
    p.add_argument("models", nargs="*", type=Path, metavar="MODEL.gguf", help="GGUF models to evaluate (CP.gguf+ADAPTER.gguf@RATIO: a model with a LoRA adapter at RATIO)")
    p.add_argument("--score-replies", action="append", type=Path, default=None, metavar="REPLIES.jsonl",
                   help="score given replies instead of running a model: one JSON object per line with a suite "
                        "item's fields plus \"suite\" and \"reply\" (optional \"model\" to compare systems; "
                        "repeat the option for several files)")
    p.add_argument("--suite", default=None, metavar="LIST",
                   help=f"comma-separated suites (default all: {','.join(SUITES)})")
    p.add_argument("--lang", default=None, metavar="LIST",
                   help=f"comma-separated languages (default all: {','.join(LANGS)})")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="K",
                   help=f"continuations per toxicity prompt (default {DEFAULT_SAMPLES})")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="reply length limit for every suite (default per suite: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_MAX_TOKENS.items()) + ")")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N items of each suite in each language (a quick look)")
    p.add_argument("--seed", type=int, default=0, help="base seed; per-item seeds derive from it (default 0)")
    p.add_argument("--scorer", default="lexicon", metavar="SPEC",
                   help="toxicity scorer: lexicon (default), classifier:DIR[#LABEL] or guard:FILE.gguf")
    p.add_argument("--judge", type=Path, default=None, metavar="JUDGE.gguf",
                   help="grade instructions and dialogue answers 1-10 with this model (MT-Bench prompts); it also "
                        "grades labelled replies and the report says how far it agrees with them")
    p.add_argument("--judge-labelled", type=int, default=40, metavar="N",
                   help="labelled replies the judge grades to measure its agreement (default 40; 0: none)")
    p.add_argument("--out", "-o", type=Path, default=Path("eval-out"), metavar="DIR",
                   help="folder for report.json, report.md, items.jsonl and the cache (default ./eval-out)")
    p.add_argument("--fresh", action="store_true", help="ignore and delete cached results of these models")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp and the classifier")
    p.add_argument("--ctx", type=int, default=4096, help="context window in tokens (default 4096)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU (default 0)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="sequences decoded together in one batch (default: as many as a quarter of the free "
                        "memory holds at --ctx, up to 8; 1: one at a time)")
    p.add_argument("--chat-format", default=None, metavar="NAME",
                   help="override the chat template stored in the GGUFs (as in cvlocal chat)")
    p.add_argument("--suites-dir", type=Path, default=SUITES_DIR, metavar="DIR",
                   help="folder with <suite>.<lang>.jsonl files (default: the suites shipped with cvlocal)")
    p.set_defaults(func=run)


def _lang_aliases(text: str | None) -> str | None:
    """``zh-TW,ko-KR`` -> ``zh-Hant,ko``; unknown names pass through to be reported."""
    if text is None:
        return None
    return ",".join(normalise_lang(name) or name for name in text.split(","))


def run(args: argparse.Namespace) -> int:
    from cvlocal.errors import UsageError
    from cvlocal.evaluation.runner import EvalRequest, run_evaluation
    from cvlocal.evaluation.scoring import parse_scorer_spec

    if args.score_replies:
        return _score_replies(args)
    if not args.models:
        raise UsageError("no model given", fix="pass one or more MODEL.gguf files, or --score-replies REPLIES.jsonl")
    if args.judge_labelled < 0:
        raise UsageError(f"--judge-labelled must be 0 or more (got {args.judge_labelled})", fix="pass --judge-labelled N")
    if args.parallel is not None and args.parallel < 1:
        raise UsageError(f"--parallel must be at least 1 (got {args.parallel})", fix="pass --parallel N with N >= 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1 (got {args.max_tokens})", fix="pass --max-tokens N >= 1")
    at_least("--threads", args.threads)
    from cvlocal.llama.adapters import parse_model_spec

    specs = [parse_model_spec(m) for m in args.models]
    model_files = [path for model, adapters in specs for path in (model, *(a.path for a in adapters))]
    _refuse_outputs_over_inputs(args, [*model_files, args.judge,
                                       args.suites_dir if args.suites_dir != SUITES_DIR else None])
    request = EvalRequest(
        models=list(args.models),
        out=args.out,
        suites=parse_list(args.suite, SUITES, "suite", "--suite"),
        langs=parse_list(_lang_aliases(args.lang), LANGS, "language", "--lang"),
        generation=GenerationSettings.create(samples=args.samples, max_tokens=args.max_tokens, seed=args.seed,
                                             ctx=args.ctx, chat_format=args.chat_format),
        limit=args.limit,
        scorer=parse_scorer_spec(args.scorer),
        judge=args.judge,
        fresh=args.fresh,
        threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        suites_dir=args.suites_dir,
        quiet=args.quiet,
        judge_labelled=args.judge_labelled,
        parallel=args.parallel,
    )
    try:
        report = run_evaluation(request)
    except KeyboardInterrupt:
        ui.stderr.print(f"interrupted: finished items are cached in {args.out / 'cache'}; "
                        "run the same command again to continue")
        raise
    return _show(report, args)


def _refuse_outputs_over_inputs(args: argparse.Namespace, inputs: list) -> None:
    """The --out folder is written into, not replaced: the files it gets (and its cache) must not be inputs."""
    from cvlocal.outputs.overlap import refuse_overlap

    refuse_overlap([args.out / name for name in ("report.json", "report.md", "items.jsonl", "cache")], inputs)


def _score_replies(args: argparse.Namespace) -> int:
    """``--score-replies``: no model options apply, only the scorer and the output."""
    from cvlocal.errors import UsageError
    from cvlocal.evaluation.replies import RepliesRequest, score_replies
    from cvlocal.evaluation.scoring import parse_scorer_spec

    if args.models:
        raise UsageError("--score-replies scores given replies; it takes no model files",
                         args.models[0], "run the models and the replies as two commands")
    if args.judge is not None:
        raise UsageError("--judge is not available with --score-replies", args.judge,
                         "run the judge on a model evaluation instead")
    _refuse_outputs_over_inputs(args, list(args.score_replies))
    request = RepliesRequest(
        files=list(args.score_replies), out=args.out, scorer=parse_scorer_spec(args.scorer), threads=args.threads,
        quiet=args.quiet,
        suites=parse_list(args.suite, SUITES, "suite", "--suite") if args.suite else None,
        langs=parse_list(_lang_aliases(args.lang), LANGS, "language", "--lang") if args.lang else None)
    return _show(score_replies(request), args)


def _show(report: dict, args: argparse.Namespace) -> int:
    """Print the table (and the JSON report with --json)."""
    from cvlocal.evaluation.table import print_table

    if args.json:
        if not args.quiet:
            print_table(report, ui.stderr)
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    else:
        from rich.console import Console

        print_table(report, Console())
        ui.say(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and {args.out / 'items.jsonl'}",
               args.quiet)
    return 0
