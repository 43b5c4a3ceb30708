"""Does ``cvlocal imatrix`` give llama.cpp's matrix, and ``cvlocal quantize`` llama-quantize's file?

Issue 18's parity check against llama.cpp's own tools (built once by ``llama_tools.py``, never in
CI). On a tiny real model (``tests/factory.py``: random weights, hidden 256 and intermediate 512, so
every row is a multiple of 256 and the k-quant/IQ types are the real ones, no fallbacks):

1. the model converted to an f32 GGUF (``cvlocal convert --outtype f32``);
2. our matrix: ``cvlocal imatrix`` on the HF folder (torch hooks, float32); theirs: ``llama-imatrix``
   on the f32 GGUF, same text, same ``--ctx`` and ``--chunks``. Settings that make the two measure
   the same thing: ``--no-ppl`` (perplexity is not part of the matrix), ``-ctk f32 -ctv f32`` (the
   default f16 KV cache would round the attention output that ``attn_output`` sees; torch keeps
   float32), ``-fa off``, no ``--process-output`` (neither side collects ``output.weight``).
   Nothing else needs setting: llama-imatrix collects every token of each window (the half-window
   only applies to its perplexity), replaces the first token of each window by BOS, evaluates each
   window as its own sequence (several per batch: ``n_seq = n_batch / ctx``, which changes nothing
   per token), and writes raw ``in_sum2`` and ``counts`` (no averaging in the GGUF format);
3. per matrix: Pearson correlation and median relative error of ``in_sum2``, and whether the counts
   agree (target from the issue: Pearson >= 0.999, median relative error < 1%);
4. ``cvlocal quantize --imatrix M`` against ``llama-quantize --imatrix M`` from the *same* matrix
   file (llama-imatrix's), to iq2_xs and q4_k_m: the files byte for byte, else the tensor data with
   gguf-py and the metadata keys that differ.

The text is the English held-out text cvlocal ships (``assets/heldout/en.txt``); the HF tokenizer's
ids are checked against llama.cpp's tokenizer on the GGUF first (otherwise the windows differ).

    .venv/bin/python benchmarks/imatrix_parity.py [--kind llama2] [--ctx 64] [--chunks 8] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import compare, llama_tools  # noqa: E402

QTYPES = {"iq2_xs": "IQ2_XS", "q4_k_m": "Q4_K_M"}
DEFAULT_TEXT = ROOT / "assets" / "heldout" / "en.txt"
# what makes llama-imatrix measure what the torch hooks measure (see the module docstring)
LLAMA_IMATRIX_FLAGS = ("--no-ppl", "-ctk", "f32", "-ctv", "f32", "-fa", "off", "-ngl", "0")


def _display(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class ToolFailed(RuntimeError):
    """A step of the comparison failed (a tool that did not build, run or write its file)."""


def run(cmd: list[str], log: Path) -> float:
    """Run a tool, its output to ``log``; the wall seconds. A failure stops with the log's tail."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise ToolFailed(f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} failed ({rc}): {' | '.join(tail)}")
    return time.perf_counter() - started


def read_matrix(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name -> (in_sum2, counts)`` of an imatrix GGUF, read with gguf-py."""
    import gguf

    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in gguf.GGUFReader(path).tensors}
    return {n[: -len(".in_sum2")]: (v, tensors[n[: -len(".in_sum2")] + ".counts"])
            for n, v in tensors.items() if n.endswith(".in_sum2")}


def compare_matrices(ours: Path, theirs: Path) -> list[dict]:
    """Per matrix: Pearson r, median and max relative error of in_sum2, the two token counts."""
    a, b = read_matrix(ours), read_matrix(theirs)
    rows = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            rows.append({"tensor": name, "missing_in": "cvlocal" if name not in a else "llama-imatrix"})
            continue
        (sa, ca), (sb, cb) = a[name], b[name]
        rel = np.abs(sa - sb) / np.maximum(np.abs(sb), np.finfo(np.float32).tiny)
        rows.append({"tensor": name, "pearson": float(np.corrcoef(sa, sb)[0, 1]),
                     "median_rel": float(np.median(rel)), "max_rel": float(rel.max()),
                     "counts_ours": float(ca.sum()), "counts_theirs": float(cb.sum())})
    return rows


def compare_gguf(ours: Path, theirs: Path) -> dict:
    """Byte equality of two GGUFs; the tensor data (``compare.compare_gguf``) and the metadata values that differ."""
    import gguf

    if ours.read_bytes() == theirs.read_bytes():
        return {"identical_bytes": True, "tensor_data": "identical", "tensors_identical": True, "keys_differ": []}
    tensors = compare.compare_gguf(ours, theirs)

    def fields(path: Path) -> dict[str, object]:
        out = {}
        for name, f in gguf.GGUFReader(path).fields.items():
            if not name.startswith("GGUF."):
                try:
                    out[name] = f.contents()
                except Exception:  # noqa: BLE001 - a field gguf-py cannot decode compares by its raw parts
                    out[name] = [bytes(part.tobytes()) for part in f.parts]
        return out

    fa, fb = fields(ours), fields(theirs)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    return {"identical_bytes": False, "tensor_data": tensors.summary(), "tensors_identical": tensors.identical,
            "tensors_differ": tensors.first_differ,
            "keys_differ": [{"key": k, "cvlocal": _short(fa.get(k)), "llama-quantize": _short(fb.get(k))} for k in keys]}


def _short(value: object) -> str:
    return "(absent)" if value is None else str(value)[:80]


def check_tokens(model: Path, gguf_path: Path, text: str) -> tuple[int, int]:
    """HF tokenizer ids against llama.cpp's on the GGUF (with BOS, no special parsing): (n, n_equal_prefix)."""
    import llama_cpp
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model, local_files_only=True)(text, add_special_tokens=True, verbose=False)["input_ids"]
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    ll = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    same = next((i for i, (x, y) in enumerate(zip(hf, ll)) if x != y), min(len(hf), len(ll)))
    return (len(hf) if len(hf) == len(ll) else -1), same


def measure(work: Path, *, kind: str = "llama2", ctx: int = 64, chunks: int = 8, threads: int = 2,
            text: Path = DEFAULT_TEXT, log=sys.stderr) -> dict:
    """Build the tools if needed, make the model and both matrices and quantized files in ``work``."""
    tools = llama_tools.build(log=log)
    from tests.factory import make_family

    model = make_family(kind, work).cp
    py = [sys.executable, "-m", "cvlocal"]
    f32 = work / "model-f32.gguf"
    run([*py, "convert", str(model), "-o", str(f32), "--outtype", "f32", "--quiet"], work / "convert.log")
    n_tokens, same_prefix = check_tokens(model, f32, text.read_text(encoding="utf-8"))

    ours, theirs = work / "imatrix-cvlocal.gguf", work / "imatrix-llama.gguf"
    t_ours = run([*py, "imatrix", str(model), "-o", str(ours), "--text", str(text), "--ctx", str(ctx),
                  "--chunks", str(chunks), "--device", "cpu", "--quiet"], work / "imatrix-cvlocal.log")
    t_theirs = run([str(tools["llama-imatrix"]), "-m", str(f32), "-f", str(text), "-c", str(ctx),
                    "--chunks", str(chunks), "-o", str(theirs), *LLAMA_IMATRIX_FLAGS, "-t", str(threads)],
                   work / "imatrix-llama.log")
    rates = measure_rates(f32, text, ctx=ctx, chunks=chunks, threads=threads, work=work)
    quant = {}
    for qtype, ftype in QTYPES.items():
        a, b = work / f"cvlocal-{qtype}.gguf", work / f"llama-{qtype}.gguf"
        run([*py, "quantize", str(f32), "-o", str(a), "--type", qtype, "--imatrix", str(theirs),
             "--threads", str(threads), "--quiet"], work / f"quantize-cvlocal-{qtype}.log")
        run([str(tools["llama-quantize"]), "--imatrix", str(theirs), str(f32), str(b), ftype, str(threads)],
            work / f"quantize-llama-{qtype}.log")
        quant[qtype] = compare_gguf(a, b)
    return {"kind": kind, "ctx": ctx, "chunks": chunks, "threads": threads, "text": _display(text),
            "tokens": n_tokens, "tokens_agree": same_prefix, "matrices": compare_matrices(ours, theirs),
            "quantize": quant, "seconds": {"cvlocal imatrix": t_ours, "llama-imatrix": t_theirs}, "rates": rates}


# llama-imatrix's log lines (timestamps minutes.seconds.ms.us) around its first pass: that pass evaluates
# n_seq = n_batch / n_ctx windows at once, so with chunks * ctx <= n_batch (2048) it is all of the work
_LLAMA_START = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I compute_imatrix: computing over (\d+) chunks, n_ctx=(\d+)", re.M)
_LLAMA_PASS = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) I compute_imatrix: [\d.]+ seconds per pass", re.M)
LLAMA_BATCH = 2048


def _stamp(m: re.Match) -> float:
    minutes, seconds, ms, us = (int(g) for g in m.groups()[:4])
    return minutes * 60 + seconds + ms / 1e3 + us / 1e6


def measure_rates(gguf_path: Path, text: Path, *, ctx: int, chunks: int, threads: int, work: Path) -> dict:
    """Computation rate (tokens/s, model load excluded) of both tools on the same GGUF and text.

    cvlocal's is the figure ``cvlocal imatrix --json`` reports (the forward passes with hooks), on
    the GGUF itself (transformers' GGUF loader); llama-imatrix's is the wall time of its one
    pass (the log's timestamps around it; llama.cpp prints no perf line for this tool).
    Both exclude start-up and model load.
    """
    if chunks * ctx > LLAMA_BATCH:
        raise ToolFailed(f"--chunks {chunks} x --ctx {ctx} is more than one llama-imatrix pass ({LLAMA_BATCH} tokens)")
    tools = llama_tools.build()
    llama_log = work / "rate-llama-imatrix.log"
    run([str(tools["llama-imatrix"]), "-m", str(gguf_path), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
         "-o", str(work / "rate-llama-imatrix.gguf"), *LLAMA_IMATRIX_FLAGS, "-t", str(threads)], llama_log)
    log = work / "rate-cvlocal-imatrix.log"
    out = work / "rate-cvlocal-imatrix.gguf"
    run([sys.executable, "-m", "cvlocal", "imatrix", str(gguf_path), "-o", str(out), "--text", str(text),
         "--ctx", str(ctx), "--chunks", str(chunks), "--device", "cpu", "--json"], log)
    printed = "\n" + log.read_text(encoding="utf-8")  # stdout (the JSON) and stderr (any warning) together
    ours = json.loads(printed[printed.index("\n{\n") + 1:])
    logged = llama_log.read_text(encoding="utf-8", errors="replace")
    start, done = _LLAMA_START.search(logged), _LLAMA_PASS.search(logged)
    if not (start and done):
        raise ToolFailed(f"no 'computing over' / 'seconds per pass' lines in {llama_log}")
    tokens, seconds = int(start.group(5)) * int(start.group(6)), _stamp(done) - _stamp(start)
    theirs = {"tokens": tokens, "seconds": round(seconds, 4), "tokens_per_second": round(tokens / seconds, 1)}
    return {"cvlocal imatrix": {"tokens": ours["tokens"], "seconds": ours["seconds"], "tokens_per_second": ours["tokens_per_second"]},
            "llama-imatrix": theirs, "ratio": ours["tokens_per_second"] / theirs["tokens_per_second"]}


def rate_line(fig: dict) -> str:
    """One sentence: both computation rates and their ratio."""
    r = fig["rates"] if "rates" in fig else fig
    a, b = r["cvlocal imatrix"], r["llama-imatrix"]
    return (f"computation rate on the same f32 GGUF and text (model load excluded): cvlocal imatrix "
            f"{a['tokens_per_second']:,.0f} tokens/s ({a['tokens']} tokens), llama-imatrix {b['tokens_per_second']:,.0f} "
            f"tokens/s ({b['tokens']} tokens), ratio {r['ratio']:.2f}x")


def summary(fig: dict) -> dict:
    """The figures the targets are about: worst Pearson, worst median relative error, counts, missing."""
    ok = [m for m in fig["matrices"] if "pearson" in m]
    return {
        "compared": len(ok),
        "missing": [f"{m['tensor']} (not in {m['missing_in']})" for m in fig["matrices"] if "missing_in" in m],
        "pearson_min": min((m["pearson"] for m in ok), default=None),
        "median_rel_max": max((m["median_rel"] for m in ok), default=None),
        "max_rel_max": max((m["max_rel"] for m in ok), default=None),
        "counts_equal": sum(m["counts_ours"] == m["counts_theirs"] for m in ok),
    }


def quantize_verdict(r: dict) -> str:
    """One line: byte-identical, or what differs (tensor data, metadata keys)."""
    if r["identical_bytes"]:
        return "byte-identical files"
    keys = "; ".join(f"`{k['key']}` {k['cvlocal']!r} vs {k['llama-quantize']!r}" for k in r["keys_differ"])
    return f"files differ; tensor data {r['tensor_data']}; metadata keys that differ: {keys or 'none'}"


def report(fig: dict) -> str:
    """The comparison as Markdown."""
    s = summary(fig)
    tokens = fig["tokens"] if fig["tokens"] >= 0 else "DIFFERENT numbers of"
    lines = [
        f"Model: tests/factory.py `{fig['kind']}` CP (random weights, hidden 256, intermediate 512, 2 layers), f32 GGUF. "
        f"Text: `{fig['text']}` ({tokens} tokens; the HF and llama.cpp tokenizers agree on the first {fig['tokens_agree']}). "
        f"--ctx {fig['ctx']}, --chunks {fig['chunks']}. llama-imatrix flags: `{' '.join(LLAMA_IMATRIX_FLAGS)} -t {fig['threads']}`.",
        "",
        f"Matrix: {s['compared']} matrices; Pearson min {s['pearson_min']:.7f}, median relative error at most "
        f"{s['median_rel_max']:.2e}, largest relative error {s['max_rel_max']:.2e}; counts equal in {s['counts_equal']}/{s['compared']}"
        + (f"; missing: {', '.join(s['missing'])}" if s["missing"] else "")
        + f". Whole commands (model load included): cvlocal imatrix {fig['seconds']['cvlocal imatrix']:.1f} s, "
        f"llama-imatrix {fig['seconds']['llama-imatrix']:.1f} s; {rate_line(fig)}.",
        "",
        "| tensor | Pearson | median rel. err. | max rel. err. | counts cvlocal | counts llama-imatrix |",
        "|---|---|---|---|---|---|",
    ]
    for m in fig["matrices"]:
        if "pearson" in m:
            lines.append(f"| {m['tensor']} | {m['pearson']:.7f} | {m['median_rel']:.2e} | {m['max_rel']:.2e} "
                         f"| {m['counts_ours']:.0f} | {m['counts_theirs']:.0f} |")
    lines += ["", "Quantized from the same matrix file (llama-imatrix's): `cvlocal quantize --imatrix` vs `llama-quantize --imatrix`:", ""]
    lines += [f"- {qtype}: {quantize_verdict(r)}." for qtype, r in fig["quantize"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="llama2", help="tests/factory.py model kind (default llama2)")
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cvlocal-imatrix-parity-"))
    try:
        fig = measure(work, kind=args.kind, ctx=args.ctx, chunks=args.chunks, threads=args.threads, text=args.text)
    except (ToolFailed, llama_tools.BuildFailed) as err:
        print(f"imatrix parity: {err} (work files in {work})", file=sys.stderr)
        return 1
    text = report(fig)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
