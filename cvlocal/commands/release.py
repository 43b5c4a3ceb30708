"""``cvlocal release SOURCE -o RELEASE_DIR --types ...``: GGUF files, a quality table, a card, checksums, Modelfiles."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cvlocal import ui
from cvlocal.imatrix.auto import add_quantize_flags, imatrix_input as _imatrix_input
from cvlocal.errors import UsageError, WorkError

DEFAULT_TYPES = "q4_k_m,q5_k_m,q6_k,q8_0,f16"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from cvlocal.release.quality import DEFAULT_CHUNKS, DEFAULT_CTX

    p = sub.add_parser(
        "release",
        parents=[common],
        help="make a GGUF release: several types, a quality table, a model card, checksums",
        description=(
            "Convert SOURCE (a merged HF folder, or a f32/f16/bf16 GGUF) once to its lossless GGUF, make every "
            "requested type from it, load and evaluate each file, measure each against the lossless reference "
            "on held-out English, Chinese (Traditional and Simplified), Korean and Japanese text (mean and 99% "
            "KL divergence, top-1 agreement, perplexity, as llama-perplexity --kl-divergence does), and write "
            "README.md, SHA256SUMS and an Ollama Modelfile per file. Running it again on the same folder resumes: "
            "finished files whose checksums match are kept. A type that fails is reported and left out; the exit "
            "status is then 1 and every other type is still released."
        ),
    )
    p.add_argument("source", type=Path, metavar="SOURCE", help="merged HF folder or f32/f16/bf16 GGUF")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RELEASE_DIR", help="folder for the release")
    p.add_argument("--types", default=DEFAULT_TYPES, metavar="T[,T...]", help=f"types to release (default {DEFAULT_TYPES})")
    p.add_argument("--name", default=None, help="model name in file names and the card (default: read from the source)")
    p.add_argument("--version", default=None, dest="model_version", metavar="V", help="version in file names (e.g. v1.0)")
    p.add_argument("--eval-report", type=Path, default=None, metavar="report.json", help="a `cvlocal eval --json` report to summarize in the card")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for conversion, quantization and scoring")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, metavar="N", help=f"scoring window in tokens (default {DEFAULT_CTX}, as llama-perplexity)")
    p.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, metavar="N",
                   help=f"windows per language to score (default {DEFAULT_CHUNKS}; 0: all the text gives)")
    p.add_argument("--heldout", type=Path, default=None, metavar="DIR", help="held-out text folder, one .txt per language (default: cvlocal's)")
    p.add_argument("--language", default=None, metavar="L[,L...]",
                   help="the model's languages for the card's `language` field, e.g. zh-Hant,en "
                        "(default: the source's model card `language` or GGUF general.languages)")
    add_quantize_flags(p)
    p.add_argument("--force", action="store_true", help="rebuild everything, even in a folder holding another release")
    p.set_defaults(func=run)


class _Bars:
    """The pipeline's progress callbacks drawn as rich bars on stderr (one per type)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.totals: dict[str, float | None] = {}

    def stage(self, key: str, description: str, total: float | None) -> None:
        self.totals[key] = total
        if key in self.tasks:
            self.progress.update(self.tasks[key], description=description, total=total, completed=0, detail="")
        else:
            self.tasks[key] = self.progress.add_task(description, total=total, detail="")

    def advance(self, key: str, amount: float = 1, detail: str = "") -> None:
        if key in self.tasks:
            self.progress.update(self.tasks[key], advance=amount, detail=detail)

    def done(self, key: str, detail: str = "") -> None:
        if key in self.tasks:
            total = self.totals.get(key) or 1
            self.progress.update(self.tasks[key], total=total, completed=total, detail=detail)

    def note(self, message: str) -> None:
        self.progress.console.print(message)


def _table(report: Any) -> Any:
    from rich.table import Table

    from cvlocal.release.card import human_size

    table = Table(title=f"release in {report.out}", title_justify="left")
    for col in ("type", "status", "size", "bpw", "mean KLD", "99% KLD", "top-1", "PPL"):
        table.add_column(col, justify="left" if col in ("type", "status") else "right", no_wrap=True)
    for o in report.outcomes:
        q = o.quality or {}
        if o.status == "failed":
            table.add_row(o.label, "[red]failed[/red]", "", "", "", "", "", "")
            continue
        reference = o.status == "reference"
        table.add_row(
            o.label, o.status, human_size(o.size or 0),
            f"{o.bits_per_weight:.2f}" if o.bits_per_weight else "",
            "0" if reference else f"{q.get('mean_kld', float('nan')):.2e}",
            "0" if reference else f"{q.get('p99_kld', float('nan')):.2e}",
            "100%" if reference else f"{100 * q.get('top1', float('nan')):.2f}%",
            f"{q.get('ppl_base' if reference else 'ppl') or float('nan'):.3f}",
        )
    return table


def run(args: argparse.Namespace) -> int:
    from cvlocal.outputs.types import parse_outtypes
    from cvlocal.release.card import parse_languages
    from cvlocal.release.pipeline import ReleaseRequest, release

    from cvlocal.outputs.overlap import refuse_overlap
    from cvlocal.commands._checks import at_least

    at_least("--threads", args.threads)
    refuse_overlap([args.output], [args.source, args.eval_report, args.heldout, _imatrix_input(args)])
    if args.chunks < 0:
        raise UsageError(f"--chunks {args.chunks} must be 0 (all) or more")
    request = ReleaseRequest(
        source=args.source,
        out=args.output,
        types=parse_outtypes(args.types),
        name=args.name,
        version=args.model_version,
        eval_report=args.eval_report,
        threads=args.threads,
        heldout=args.heldout,
        ctx=args.ctx,
        chunks=args.chunks or None,
        force=args.force,
        languages=parse_languages(args.language) if args.language is not None else None,
        imatrix=args.imatrix,
        tensor_types=tuple(args.tensor_type),
    )
    quiet = args.quiet or args.json
    with ui.item_progress(quiet) as progress:
        report = release(request, _Bars(progress))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    elif not args.quiet:
        ui.stderr.print(_table(report))
    if report.failed:
        names = ", ".join(f"{o.label} ({o.error})" for o in report.failed)
        raise WorkError(f"{len(report.failed)} of {len(report.outcomes)} types failed and were left out of {args.output}: {names}")
    return 0
