"""``cvlocal sweep CP (--base B --chat C | --vector DIR) --ratios R1,R2,...``: choose the ratio by measuring it.

For every ratio (and the CP and chat references) the point's GGUF is built (exact merge straight to
GGUF, or the CP GGUF plus the chat vector as a LoRA adapter at that scale), evaluated, and dropped
unless ``--keep``. Everything is cached by content under ``OUT/cache``, so a rerun with one more
ratio only does that ratio and an interrupted sweep continues. Writes ``sweep.json``, ``sweep.md``,
``sweep.png`` and ``sweep.svg`` and prints a table, a text plot and the recommended ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvlocal.evaluation.suites import SUITES

SWEEP_SUITES = (*SUITES, "demo")
SPECIAL_TOKENS_HELP = "give the template's special tokens the chat model's rows (as cvlocal merge; default auto)"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sweep", parents=[common], help="measure the merge at several ratios, plot the trade-off, pick one",
        description=(
            "For each ratio: the exact merge straight to GGUF (--via merge) or the CP GGUF plus the chat vector "
            "as a LoRA adapter at that scale (--via adapter), then the offline evaluation; CP and the chat model "
            "are measured as references. Results are cached by content in OUT/cache: a second sweep with one "
            "more ratio only does that ratio, and an interrupted sweep continues when run again."))
    p.add_argument("cp", type=Path, help="the continually-pretrained model folder")
    p.add_argument("--base", type=Path, help="base model folder (with --chat: the vector is chat - base)")
    p.add_argument("--chat", type=Path, help="chat model folder (also measured as a reference)")
    p.add_argument("--vector", action="append", type=Path, default=[], metavar="DIR",
                   help="a chat-vector folder (cvlocal extract); a second --vector DIR2 with --ratios2 sweeps a grid")
    p.add_argument("--ratios", required=True, metavar="R1,R2,...", help="ratios of the (first) vector, e.g. 0,0.5,1")
    p.add_argument("--ratios2", metavar="R1,R2,...", help="ratios of the second --vector (a grid over both)")
    p.add_argument("--via", choices=["merge", "adapter"], default="merge",
                   help="merge: exact merge per point (default); adapter: CP GGUF + LoRA adapter at each scale")
    p.add_argument("--rank", default="auto", help="adapter rank for --via adapter (as cvlocal extract --rank; default auto)")
    p.add_argument("--outtype", default="q8_0", help="GGUF type of every point and reference (default q8_0)")
    p.add_argument("--embeddings", default="auto", choices=["auto", "add", "overlap", "skip"], help="as cvlocal merge")
    p.add_argument("--special-tokens", default="auto", metavar="auto|none|CP_ID=CHAT_ID,...", help=SPECIAL_TOKENS_HELP)
    p.add_argument("--suite", default=None, metavar="LIST",
                   help=f"comma-separated suites: {','.join(SWEEP_SUITES)} (demo: the demo's held-out measures; "
                        "default: demo on the bundled demo models, else dialogue,instructions)")
    p.add_argument("--lang", default=None, metavar="LIST", help="comma-separated languages of the eval suites (default all)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items of each suite and language")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="reply length limit for every suite")
    p.add_argument("--samples", type=int, default=None, metavar="K", help="continuations per toxicity prompt")
    p.add_argument("--seed", type=int, default=0, help="base seed of the evaluation (default 0)")
    p.add_argument("--ctx", type=int, default=2048, help="context window in tokens (default 2048)")
    p.add_argument("--pick", default="auto", metavar="METRIC|auto",
                   help="auto (default): the rule printed with the result; METRIC (e.g. dialogue.stop_rate): maximise it")
    p.add_argument("--out", "-o", type=Path, default=Path("sweep-out"), metavar="DIR",
                   help="folder for sweep.json, sweep.md, sweep.png, sweep.svg and the cache (default ./sweep-out)")
    p.add_argument("--keep", action="store_true", help="keep every point's GGUF in OUT/cache/gguf")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run each point as a Ray task (an existing cluster's ADDRESS, or a local one); needs cvlocal[cluster]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp and quantization")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU (default 0)")
    p.add_argument("--parallel", type=int, default=None, metavar="N", help="sequences decoded together (as cvlocal eval --parallel)")
    p.add_argument("--suites-dir", type=Path, default=None, metavar="DIR", help="folder with <suite>.<lang>.jsonl files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvlocal.sweep.driver import prepare, run_sweep

    sweep = prepare(args)
    executor = _executor(args)
    report = run_sweep(sweep, executor)
    if args.json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return 0


def _executor(args: argparse.Namespace):
    """The local executor, or the Ray one for --ray (imported only then: ray is an optional extra)."""
    from cvlocal.sweep.executors import LocalExecutor

    if args.ray is None:
        return LocalExecutor()
    try:
        from cvlocal.sweep.ray_executor import RayExecutor
        import ray  # noqa: F401
    except ImportError:
        from cvlocal.errors import UsageError

        raise UsageError("--ray needs Ray", fix="Install the cluster extra: pip install 'cvlocal[cluster]'.") from None
    executor = RayExecutor(None if args.ray == "auto" else args.ray)
    executor.open()  # before anything is written: no cluster, no files
    return executor
