"""llama.cpp's quantizer as a command: ``python llama_quantize.py IN.gguf OUT.gguf TYPE [--threads N]``.

The benchmark's chains ("llama.cpp convert, then quantize") need llama.cpp's own quantizer. The
llama-cpp-python wheel ships the library but no ``llama-quantize`` binary, so this calls the
function that binary calls, ``llama_model_quantize``, with llama.cpp's default parameters and
nothing of cvlocal in between. Run in its own process so that it is measured like a tool.
"""
from __future__ import annotations

import argparse
import sys

# GGUF file types as llama.h numbers them (enum llama_ftype).
FTYPES = {
    "f32": "LLAMA_FTYPE_ALL_F32",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("type", choices=sorted(FTYPES))
    parser.add_argument("--threads", type=int, default=0, help="0: llama.cpp's choice")
    args = parser.parse_args(argv)

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[args.type])
    params.nthread = args.threads
    status = llama_cpp.llama_model_quantize(args.source.encode(), args.output.encode(), params)
    if status != 0:
        print(f"llama_model_quantize failed with status {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
