"""Open time of a GGUF with a Qwen2-sized vocabulary: our reader (convert.gguf_reader) against gguf.GGUFReader.

Why: ``convert.gguf_reader`` exists only because ``gguf.GGUFReader`` is slow on large
vocabularies; this measures whether that still holds. The GGUF is made by our converter from a
synthetic Qwen2 model (the tiny test family's, 2 layers, hidden 256) whose byte-level BPE
tokenizer is grown to 151,646 tokens (new tokens are concatenations of existing ones, each with
its merge), so the file carries the token list, the token types and ~150k merges as a real Qwen2
GGUF does. Prints the median of ``--repeats`` opens of each reader.

Run: ``python benchmarks/gguf_reader_speed.py [--work DIR] [--repeats 5]``
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VOCAB = 151_646  # Qwen2's tokenizer (151,643 regular + added tokens)


def grow_vocabulary(folder: Path, total: int) -> None:
    """Extend the folder's BPE tokenizer.json to ``total`` tokens and its embedding rows to match."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    for token in data["added_tokens"]:
        vocab[token["content"]] = token["id"]  # keep them at their ids once the vocabulary has a gap
    regular = [t for t in vocab if not any(t == a["content"] for a in data["added_tokens"])]
    rng = random.Random(0)
    next_id = max(vocab.values()) + 1
    while next_id < total:
        a, b = rng.choice(regular), rng.choice(regular)
        if a + b in vocab or len(a + b) > 16:
            continue
        vocab[a + b] = next_id
        merges.append(f"{a} {b}")
        regular.append(a + b)
        next_id += 1
    data["model"]["vocab"], data["model"]["merges"] = vocab, merges
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = total
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(folder / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            old = tensors[name]
            tensors[name] = torch.cat([old, 0.02 * torch.randn(total - old.shape[0], old.shape[1]).to(old.dtype)])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def build(work: Path) -> Path:
    """The GGUF (f16) of a tiny Qwen2 model with a ``VOCAB``-token vocabulary, made by our converter."""
    from convert import write_gguf
    from tests.factory import make_family

    out = work / "qwen2-151k-f16.gguf"
    if not out.is_file():
        family = make_family("qwen2", work / "family")
        grow_vocabulary(family.chat, VOCAB)
        write_gguf(family.chat, out, "f16", force=True)
    return out


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds (CPU time is what a shared machine does not inflate)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the model and GGUF (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import gguf

    from convert.gguf_reader import read_gguf

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        path = build(work)
        with read_gguf(path) as f:
            n_tokens = len(f.metadata["tokenizer.ggml.tokens"])
            n_merges = len(f.metadata.get("tokenizer.ggml.merges", []))

        def ours() -> None:
            read_gguf(path).close()

        def theirs() -> None:
            gguf.GGUFReader(path)

        t_ours, t_gguf = _median_seconds(ours, args.repeats), _median_seconds(theirs, args.repeats)
    print(f"{path.name}: {n_tokens:,} tokens, {n_merges:,} merges, {path.stat().st_size / 1e6:.0f} MB")
    print(f"gguf.GGUFReader     {t_gguf[0]:.2f} s wall, {t_gguf[1]:.2f} s CPU (median of {args.repeats})")
    print(f"convert.gguf_reader {t_ours[0]:.2f} s wall, {t_ours[1]:.2f} s CPU ({t_gguf[1] / t_ours[1]:.0f}x less CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
