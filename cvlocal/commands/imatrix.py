"""``cvlocal imatrix MODEL -o imatrix.gguf``: the importance matrix for llama.cpp's low-bit types.

The matrix (sums of squared activations per input channel, and token counts, for every weight
matrix of the blocks) is computed with torch on the HF model, on windows cut as ``llama-imatrix``
cuts them, and written in llama.cpp's GGUF imatrix format (``--output-format dat``: the legacy
one), so ``cvlocal quantize --imatrix`` and llama.cpp's ``llama-quantize --imatrix`` both read it.
The default calibration text is the held-out text releases ship, in the model's own languages.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cvlocal.ui import say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "imatrix",
        parents=[common],
        help="compute an importance matrix (for iq2_xs, iq3_xxs, q2_k_s ... and better k-quants)",
        description=(
            "Compute llama.cpp's importance matrix (per-channel sums of squared activations and token counts) on the "
            "model's own languages: by default the held-out texts cvlocal ships for --lang (auto: English plus the "
            "languages the tokenizer was built for). Windows are cut as llama-imatrix cuts them."
        ),
    )
    p.add_argument("model", type=Path, help="an HF model folder or a GGUF (loaded and de-quantized through transformers)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the imatrix file to write (imatrix.gguf)")
    p.add_argument("--text", type=Path, action="append", default=[], metavar="FILE", help="calibration text (UTF-8); repeatable, each file tokenized on its own")
    p.add_argument("--lang", default="auto", help="held-out languages when no --text: zh-Hant,en,... or auto (default)")
    p.add_argument("--chunks", type=int, help="at most this many windows (default: every full window of the text)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512, as llama-imatrix)")
    p.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="the model's dtype while computing (default float32)")
    p.add_argument("--output-format", choices=["gguf", "dat"], default="gguf", help="gguf (default) or llama.cpp's legacy .dat")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cvlocal.imatrix.auto import compute_to_file
    from cvlocal.imatrix.calibration import parse_languages
    from cvlocal.vector.device import parse_dtype, resolve_device

    result = compute_to_file(
        args.model, args.output, quiet=args.quiet or args.json, force=args.force, output_format=args.output_format,
        text_files=args.text, languages=parse_languages(args.lang), ctx=args.ctx, chunks=args.chunks,
        device=resolve_device(args.device), dtype=parse_dtype(args.dtype), batch=args.batch,
    )
    summary = {
        "output": str(args.output), "format": args.output_format, "entries": len(result.matrix.sums),
        "datasets": result.matrix.datasets, "chunks": result.matrix.chunk_count, "ctx": result.matrix.chunk_size,
        "tokens": result.tokens, "seconds": round(result.seconds, 3), "tokens_per_second": round(result.tokens_per_second, 1),
        "device": result.device,
    }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        say(f"wrote {args.output}: {summary['entries']} matrices, {summary['chunks']} windows of {summary['ctx']} tokens "
            f"from {', '.join(summary['datasets'])}, {summary['tokens_per_second']:,.0f} tokens/s on {summary['device']}", args.quiet)
    return 0
