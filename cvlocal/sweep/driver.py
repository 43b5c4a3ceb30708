"""The sweep from options to files: check everything, run the points, gather, report.

Checks run before any model work: ratios, suites, languages, the inputs' architecture, the output
folder (``--out`` may hold only this sweep's own files: another sweep's results for different
inputs are refused, never overwritten) and that no output lies inside an input. The inputs'
identity is written to ``OUT/cache/sweep.inputs.json`` before the first point, so an interrupted
sweep is recognised as this one when it is run again.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlocal import ui
from cvlocal.errors import UsageError
from cvlocal.sweep.plan import SweepSpec, check_inputs, fingerprint_folder, parse_ratios, sweep_identity, tasks_for
from cvlocal.sweep.point import PointTask

OUTPUT_FILES = ("sweep.json", "sweep.md", "sweep.png", "sweep.svg")
IDENTITY_FILE = "sweep.inputs.json"


@dataclass
class Sweep:
    spec: SweepSpec
    tasks: list[PointTask]
    out: Path
    pick: str
    quiet: bool
    json: bool
    ray: str | None


def _suites(text: str | None, cp: Path, known: tuple[str, ...]) -> list[str]:
    from cvlocal.demo.bundle import DEFAULT_ASSETS
    from cvlocal.evaluation.suites import parse_list

    if text is None:
        on_demo = Path(cp).resolve().parent == Path(DEFAULT_ASSETS).resolve()
        return ["demo"] if on_demo else ["dialogue", "instructions"]
    return parse_list(text, known, "suite", "--suite")


def _langs(text: str | None) -> list[str]:
    from cvlocal.commands.eval import _lang_aliases
    from cvlocal.evaluation.languages import LANGS
    from cvlocal.evaluation.suites import parse_list

    return parse_list(_lang_aliases(text), LANGS, "language", "--lang")


def _sources(args: argparse.Namespace) -> tuple[Path | None, Path | None, tuple[Path, ...], list[tuple[float, ...]]]:
    ratios = [parse_ratios(args.ratios, "--ratios")]
    vectors = tuple(args.vector)
    if args.base is not None or args.chat is not None:
        if args.base is None or args.chat is None:
            raise UsageError("--base and --chat go together", fix="Pass both --base BASE and --chat CHAT, or --vector DIR.")
        if vectors:
            raise UsageError("give either --base/--chat or --vector, not both", vectors[0],
                             "Extract the first vector (cvlocal extract BASE CHAT -o DIR) and pass --vector DIR --vector DIR2.")
    elif not vectors:
        raise UsageError("nothing to sweep", fix="Pass --base BASE --chat CHAT or --vector DIR.")
    if len(vectors) > 2:
        raise UsageError("at most two --vector folders (a grid over two ratios)", vectors[2], "Pass one or two --vector.")
    if len(vectors) == 2:
        if args.ratios2 is None:
            raise UsageError("a second --vector needs --ratios2", vectors[1], "Pass --ratios2 R1,R2,... for it.")
        ratios.append(parse_ratios(args.ratios2, "--ratios2"))
    elif args.ratios2 is not None:
        raise UsageError("--ratios2 needs a second --vector DIR2", fix="Pass --vector DIR --vector DIR2, or drop --ratios2.")
    if args.via == "adapter" and vectors:
        raise UsageError("--via adapter extracts the adapter from --base and --chat", vectors[0],
                         "Pass --base BASE --chat CHAT, or use --via merge with --vector.")
    return args.base, args.chat, vectors, ratios


def prepare(args: argparse.Namespace) -> Sweep:
    """Check every option and input and plan the tasks (no model work)."""
    from cvlocal.outputs.types import parse_outtypes
    from cvlocal.commands._checks import at_least
    from cvlocal.commands.sweep import SWEEP_SUITES
    from cvlocal.sweep.pick import check_pick

    base, chat, vectors, ratios = _sources(args)
    types = parse_outtypes(args.outtype)
    if len(types) != 1:
        raise UsageError("--outtype takes one type in a sweep", fix="Pass one type, e.g. --outtype q8_0.")
    if types[0].needs_imatrix:
        raise UsageError(f"--outtype {types[0].name} needs an importance matrix, which a sweep does not make",
                         fix="Sweep at q8_0 or a k-quant (q4_k_m, ...) and make the imatrix type of the chosen ratio.")
    at_least("--threads", args.threads)
    at_least("--limit", args.limit)
    at_least("--max-tokens", args.max_tokens)
    at_least("--samples", args.samples)
    at_least("--parallel", args.parallel)
    suites = _suites(args.suite, args.cp, SWEEP_SUITES)
    langs = _langs(args.lang)
    check_pick(args.pick, suites)
    if args.via == "adapter":
        from cvlocal.vector.lora_extract import parse_rank

        parse_rank(args.rank, None)
    inputs = [args.cp, *( [base, chat] if base else list(vectors))]
    fingerprints = tuple(fingerprint_folder(Path(p), what) for p, what in
                         zip(inputs, ["CP model", *(["base model", "chat model"] if base else ["vector"] * len(vectors))]))
    check_inputs(args.cp, base, chat, vectors)
    _check_out(args, inputs)
    template = PointTask(
        kind="point", cp=str(args.cp), base=str(base) if base else None, chat=str(chat) if chat else None,
        vectors=tuple(str(v) for v in vectors), fingerprints=fingerprints, via=args.via, outtype=types[0].name,
        rank=str(args.rank), embeddings=args.embeddings, special_tokens=args.special_tokens, suites=tuple(suites),
        langs=tuple(langs), limit=args.limit, seed=args.seed, samples=args.samples, max_tokens=args.max_tokens,
        ctx=args.ctx, suites_dir=str(args.suites_dir) if args.suites_dir else None,
        cache_dir=str((args.out / "cache").resolve()), threads=args.threads, n_gpu_layers=args.n_gpu_layers,
        parallel=args.parallel, keep=args.keep, quiet=True)
    spec = SweepSpec(args.cp, base, chat, vectors, tuple(ratios), template)
    _check_identity(args.out, sweep_identity(template))
    return Sweep(spec, tasks_for(spec), args.out, args.pick, args.quiet, args.json, args.ray)


def _check_out(args: argparse.Namespace, inputs: list[Path]) -> None:
    from cvlocal.outputs.overlap import refuse_overlap

    out = args.out
    if out.exists() and not out.is_dir():
        raise UsageError("the output path exists and is not a folder", out, "Choose a folder for --out.")
    if not out.exists() and not out.parent.is_dir():
        raise UsageError("the folder for the output does not exist", out.parent, "Create it first.")
    refuse_overlap([out / name for name in (*OUTPUT_FILES, "cache")], [*inputs, args.suites_dir])


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    """``--out`` holds nothing, or this sweep's own files (same inputs and settings)."""
    marker = out / "cache" / IDENTITY_FILE
    found = [name for name in (*OUTPUT_FILES, "cache") if (out / name).exists()]
    if not found:
        return
    try:
        theirs = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"--out already holds {found[0]}, which this sweep did not write", out / found[0],
                         "Choose another --out folder (it is never overwritten).") from None
    identity = json.loads(json.dumps(identity))  # tuples as the marker holds them (lists)
    if theirs != identity:
        changed = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
        raise UsageError(f"--out holds another sweep's results (different {', '.join(changed)})", out,
                         "Choose another --out folder for these inputs and settings; nothing was overwritten.")


def _write_identity(sweep: Sweep) -> None:
    marker = sweep.out / "cache" / IDENTITY_FILE
    if marker.is_file():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.partial")
    tmp.write_text(json.dumps(sweep_identity(sweep.spec.template), sort_keys=True, indent=1), encoding="utf-8")
    tmp.replace(marker)


def run_sweep(sweep: Sweep, executor: Any) -> dict[str, Any]:
    """Run every point through ``executor``, then write and show the report; returns sweep.json's content."""
    from cvlocal.sweep.report import build_report, show_report, write_report

    from cvlocal.sweep.artifacts import remove_stale_builds

    sweep.out.mkdir(exist_ok=True)
    _write_identity(sweep)
    if sweep.ray is None:
        remove_stale_builds(sweep.out / "cache")
    results: dict[str, dict[str, Any]] = {}
    with ui.item_progress(sweep.quiet or sweep.json) as progress:
        bar = progress.add_task("sweep", total=len(sweep.tasks), detail=sweep.tasks[0].label if sweep.tasks else "")

        def on_result(task: PointTask, result: dict[str, Any]) -> None:
            results[task.key] = result
            progress.advance(bar)
            progress.update(bar, detail=f"{task.label} {'cached' if result['work']['from_cache'] else 'done'}")

        try:
            executor.run(sweep.tasks, on_result)
        except KeyboardInterrupt:
            ui.stderr.print(f"interrupted: {len(results)} of {len(sweep.tasks)} points are cached in "
                            f"{sweep.out / 'cache'}; run the same command again to continue")
            raise
    report = build_report(sweep, [results[t.key] for t in sweep.tasks])
    write_report(sweep.out, report)
    show_report(report, sweep.out, quiet=sweep.quiet or sweep.json)
    return report
