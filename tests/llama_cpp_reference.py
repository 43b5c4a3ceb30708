"""Run llama.cpp's convert_hf_to_gguf.py on several models in one process (a test helper, run as a script).

Usage: ``python tests/llama_cpp_reference.py LLAMA_CPP_DIR JOBS.json`` where the JSON is a list of
``{"model": DIR, "outtype": T, "outfile": PATH, "pre": NAME | null}``. Importing torch and the
converter once instead of once per conversion keeps a matrix of tiny models in seconds.

``pre``: llama.cpp's converter recognises a BPE pre-tokenizer only by the hash of its output on a
probe text, so it refuses every retrained tokenizer (the test models' are trained on the fly);
for those its ``get_vocab_base_pre`` is replaced by one returning ``pre`` (the name our converter
chose). Everything else, every tensor byte and every other key, is llama.cpp's own.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def main() -> int:
    llama_cpp, jobs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import conversion.base as base  # llama.cpp's own package, next to convert_hf_to_gguf.py

    original = base.TextModel.get_vocab_base_pre
    converter = runpy.run_path(str(llama_cpp / "convert_hf_to_gguf.py"), run_name="llama_cpp_convert")
    for job in jobs:
        pre = job.get("pre")
        base.TextModel.get_vocab_base_pre = (lambda self, tokenizer, pre=pre: pre) if pre else original
        sys.argv = ["convert_hf_to_gguf.py", job["model"], "--outtype", job["outtype"], "--outfile", job["outfile"]]
        converter["main"]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
