"""Does a matrix calibrated on the model's own language quantize it better? KL against the f16 file.

For each type (q4_k_m, iq3_m, iq2_xs) and each matrix (none, English-only, Traditional Chinese +
English), the KL divergence and top-1 agreement of the quantized file against the f16 file, per
language, measured the way ``cvlocal release`` measures its quality table (``llama-perplexity
--kl-divergence``: each window from an empty cache, second half scored).

The model is a trained one: by default the demo CP model (``assets/demo/cp``: language A is
English-like, language B Traditional Chinese; trained by ``assets/demo/train.py``). Calibration and
evaluation texts are disjoint: the calibration facts are about the demo's *chat* countries, the
evaluation facts about its *test* countries, in each language (facts and questions from
``world.json``'s templates), so no matrix has seen the text it is scored on.

Limitation, stated in the output: the shipped demo model has hidden size 128, so its rows are not
multiples of 256 and llama.cpp replaces the k-quant and IQ types of those tensors by its fallbacks
(IQ4_NL, Q5_0, Q8_0 ...); the figures then say how the matrix changes those fallbacks, not IQ2_XS
itself. Pass ``--model`` a trained model whose rows are multiples of 256 (``train.py --hidden 256
--intermediate 768``) for the real types.

    .venv/bin/python benchmarks/imatrix_kl.py [--model DIR] [--ctx 64] [--out benchmarks/IMATRIX.md]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = ("q4_k_m", "iq3_m", "iq2_xs")
MATRICES = ("none", "en", "zh-Hant+en")


def demo_texts(world_path: Path, group: str, seed: int) -> dict[str, str]:
    """Facts and questions in A (en) and B (zh-Hant) about the countries of ``group``, shuffled."""
    world = json.loads(world_path.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    lines: dict[str, list[str]] = {"en": [], "zh-Hant": []}
    for c in world["countries"]:
        if c["group"] != group:
            continue
        for attr, a_tpl in world["templates"]["A_fact"].items():
            a_value = c[attr]
            b_value = a_value if attr == "capital" else world["values"][attr][a_value]
            lines["en"].append(a_tpl.format(e=c["name"], v=a_value))
            lines["zh-Hant"].append(world["templates"]["B_fact"][attr].format(e=c["name"], v=b_value))
            lines["en"].append(world["templates"]["A_question"][attr].format(e=c["name"]))
            lines["zh-Hant"].append(world["templates"]["B_question"][attr].format(e=c["name"]))
    for v in lines.values():
        rng.shuffle(v)
    return {lang: " ".join(v) for lang, v in lines.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "assets/demo/cp", help="a trained HF model folder (default: the demo CP model)")
    p.add_argument("--world", type=Path, default=ROOT / "assets/demo/world.json")
    p.add_argument("--ctx", type=int, default=64, help="window of the matrix and of the scoring (default 64)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    args = p.parse_args(argv)

    import gguf
    import torch

    from cvlocal.outputs.gguf import convert_checkpoint, quantize_gguf
    from convert.imatrix_file import write_imatrix_gguf
    from convert.llama_quantize import QuantizeOptions
    from cvlocal.imatrix.collect import compute_imatrix
    from cvlocal.release import scoring

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cvlocal-imatrix-bench-"))
    calib = demo_texts(args.world, "chat", 1)
    evaluation = demo_texts(args.world, "test", 2)
    files = {}
    for lang, text in calib.items():
        files[lang] = work / f"calib-{lang}.txt"
        files[lang].write_text(text, encoding="utf-8")
    f16 = convert_checkpoint(args.model, work / "model-f16.gguf", "f16")
    rows_256 = all(int(t.shape[0]) % 256 == 0 for t in gguf.GGUFReader(f16).tensors if t.name.startswith("blk.") and len(t.shape) == 2)
    matrices: dict[str, Path | None] = {"none": None}
    rates = {}
    for label, langs in (("en", ["en"]), ("zh-Hant+en", ["zh-Hant", "en"])):
        started = time.perf_counter()
        result = compute_imatrix(args.model, text_files=[files[lang] for lang in langs], ctx=args.ctx)
        rates[label] = (result.tokens, time.perf_counter() - started, result.tokens_per_second)
        matrices[label] = work / f"imatrix-{label}.gguf"
        write_imatrix_gguf(result.matrix, matrices[label])

    ref = scoring.open_model(f16, args.ctx, args.threads)
    try:
        windows = scoring.make_windows(ref, evaluation, args.ctx, None)
        store = scoring.reference_pass(ref, windows, work / "reference.npy")
    finally:
        scoring.close_model(ref)
    results: dict[tuple[str, str], dict | str] = {}
    for qtype in TYPES:
        for label, matrix in matrices.items():
            out = work / f"model-{qtype}-{label}.gguf"
            try:
                quantize_gguf(f16, out, qtype, threads=args.threads, quantize=QuantizeOptions(imatrix=matrix))
            except Exception as err:  # noqa: BLE001 - a refusal is a row of the table
                results[(qtype, label)] = " ".join(str(err).split())[:60]
                continue
            llm = scoring.open_model(out, args.ctx, args.threads)
            try:
                m = scoring.measure(llm, windows, store)
            finally:
                scoring.close_model(llm)
            results[(qtype, label)] = {lang: (s.mean_kld, s.top1, s.tokens) for lang, s in m.languages.items()}
            out.unlink()
    store.remove()

    tokens = {lang: windows.languages.count(lang) * scoring.scored_count(args.ctx) for lang in evaluation}
    lines = [
        f"Model: `{args.model}` (rows multiples of 256: {'yes' if rows_256 else 'NO: llama.cpp used fallback types for k-quant/IQ tensors'}). "
        f"Matrices on {args.ctx}-token windows of the demo's chat-country facts and questions; scored on test-country ones "
        f"({tokens.get('zh-Hant', 0)} zh-Hant and {tokens.get('en', 0)} en tokens) against the f16 file.",
        "",
        "| type | matrix | mean KLD zh-Hant | top-1 zh-Hant | mean KLD en | top-1 en |",
        "|---|---|---|---|---|---|",
    ]
    for qtype in TYPES:
        scored = {label: r for (t, label), r in results.items() if t == qtype and isinstance(r, dict)}
        best = min(scored, key=lambda k: scored[k]["zh-Hant"][0]) if scored else None
        for label in MATRICES:
            r = results[(qtype, label)]
            if isinstance(r, str):
                lines.append(f"| {qtype} | {label} | refused: {r} | | | |")
                continue
            zh, en = r["zh-Hant"], r["en"]
            mark = " (lowest)" if label == best else ""
            lines.append(f"| {qtype} | {label} | {zh[0]:.4f}{mark} | {zh[1]:.1%} | {en[0]:.4f} | {en[1]:.1%} |")
    lines += ["", "Matrix computation: " + "; ".join(f"{k}: {n} tokens, {r:,.0f} tokens/s on the forward passes ({s:.1f} s with model load)" for k, (n, s, r) in rates.items()) + "."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
