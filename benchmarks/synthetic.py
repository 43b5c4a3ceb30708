"""The benchmark's inputs: a synthetic TinyLlama-1.1B-shaped base / chat / CP triple.

Why synthetic: nothing on this machine may download weights, and speed and memory do not depend
on what the weights mean, only on their shapes, dtype and file layout. So the three folders look
exactly like Hub checkpoints of TinyLlama-1.1B (``LlamaForCausalLM``, bf16, sharded safetensors
with an index, a SentencePiece ``tokenizer.model`` of 32000 pieces plus the ``tokenizer.json``
transformers derives from it, ``generation_config.json``, and a chat template on the chat model)
and hold random weights: ``base`` is N(0, 0.02) (norm weights 1 + N(0, 0.02)); ``chat`` and
``cp`` are ``base`` plus two different perturbations (N(0, 0.002) and N(0, 0.003)), as a real
chat model and a continually-pretrained model are small moves away from their base.

Memory: the three models are written side by side, one tensor at a time, through our own
:class:`convert.safetensors_format.StreamingWriter`; a tensor's three versions are filled in
chunks of rows, so the peak is the three bf16 copies of the largest tensor (the 32000-row
embedding: 3 x 131 MB at full size) plus one chunk of float32 scratch, never a model.

The folders go to a cache outside the repository (``$CVLOCAL_BENCH_CACHE`` or
``~/.cache/cvlocal-bench``), built under a temporary name and renamed when complete, with a
marker file naming the generator version and shape; a later run reuses them when the marker
matches.

The tokenizer: llama.cpp's converter and ours need ``tokenizer.model`` to hold exactly
``vocab_size`` pieces. A SentencePiece BPE model is trained here at ``--vocab_size=32000`` on a
generated corpus of pseudo-words (Latin syllables, CJK characters, digits) with enough distinct
words for 32000 merges; byte fallback, identity normalisation and split digits as Llama's. It
trains in a few seconds and is shared by every size.

The ``8b-slice`` size has Llama-3-8B's tensor shapes and vocabulary (128,256 embedding rows) with
the same 32000-piece tokenizer: converters give the rows past the tokenizer ``[PAD<id>]`` tokens
(llama.cpp's and ours), so the GGUF holds a 128,256-entry vocabulary as Llama-3's does. It is for
the scaling benchmark (``benchmarks/scaling.py``: how time and memory grow with the input), not
for the peer sections.

Run ``python benchmarks/synthetic.py --size tiny|small|full|8b-slice`` to build (or find) a triple; it
prints the folders, the time taken and the peak memory of the generator.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cvlocal.outputs.atomic import atomic_output  # noqa: E402
from convert.safetensors_format import StreamingWriter  # noqa: E402

GENERATOR_VERSION = 1
VOCAB = 32000
LLAMA3_VOCAB = 128256
WEIGHT_STD = 0.02
CHAT_SCALE = 0.1  # chat = base + N(0, CHAT_SCALE * WEIGHT_STD)
CP_SCALE = 0.15  # cp = base + N(0, CP_SCALE * WEIGHT_STD)
CHUNK_ELEMENTS = 4 * 1024 * 1024
ROLES = ("base", "chat", "cp")

# A chat template in the style of TinyLlama-1.1B-Chat (Zephyr roles, each message ended by eos).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """The hyper-parameters of one benchmark size (a LlamaForCausalLM)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    shard_bytes: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# full is TinyLlama-1.1B; small and tiny keep every dimension a multiple of 256 so k-quants apply.
SIZES: dict[str, Shape] = {
    "tiny": Shape(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=VOCAB, shard_bytes=16 * 10**6),
    "small": Shape(hidden=512, intermediate=1536, layers=4, heads=8, kv_heads=2, vocab=VOCAB, shard_bytes=64 * 10**6),
    "full": Shape(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=VOCAB, shard_bytes=10**9),
    # Llama-3-8B's tensor shapes (its 128,256-token vocabulary too: the embedding and lm_head are the
    # real 1.05 GB each in bf16) but 4 of its 32 layers: 1.9 B parameters, 3.85 GB per model, two shards.
    "8b-slice": Shape(hidden=4096, intermediate=14336, layers=4, heads=32, kv_heads=8, vocab=LLAMA3_VOCAB,
                      shard_bytes=2 * 10**9),
}


@dataclass(frozen=True)
class Triple:
    """The three model folders of one size."""

    size: str
    base: Path
    chat: Path
    cp: Path

    def folders(self) -> tuple[Path, Path, Path]:
        return (self.base, self.chat, self.cp)


def default_cache() -> Path:
    """Where generated models and peer installs live: never inside the repository."""
    env = os.environ.get("CVLOCAL_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cvlocal-bench"


# --------------------------------------------------------------------------- tensors


def tensor_plan(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a LlamaForCausalLM's parameters, in the order HF checkpoints list them."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    plan: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab, h))]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        plan += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (shape.intermediate, h)),
            (p + "mlp.up_proj.weight", (shape.intermediate, h)),
            (p + "mlp.down_proj.weight", (h, shape.intermediate)),
        ]
    plan += [("model.norm.weight", (h,)), ("lm_head.weight", (shape.vocab, h))]
    return plan


def parameter_count(shape: Shape) -> int:
    return sum(math.prod(s) for _, s in tensor_plan(shape))


def shard_plan(shape: Shape) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split the tensors into consecutive shards of at most ``shard_bytes`` (bf16), as save_pretrained does."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, dims in tensor_plan(shape):
        nbytes = math.prod(dims) * 2
        if shards[-1] and used + nbytes > shape.shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((name, dims))
        used += nbytes
    return shards


def _seed(name: str, stream: str, chunk: int) -> int:
    """A stable seed per tensor, stream and chunk (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(f"{GENERATOR_VERSION}/{name}/{stream}/{chunk}".encode())


def make_tensors(name: str, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bf16 base, chat and cp versions of one tensor, filled chunk by chunk to bound scratch memory."""
    outs = tuple(torch.empty(dims, dtype=torch.bfloat16) for _ in ROLES)
    flats = [o.view(-1) for o in outs]
    total = flats[0].numel()
    is_norm = len(dims) == 1
    for index, start in enumerate(range(0, total, CHUNK_ELEMENTS)):
        n = min(CHUNK_ELEMENTS, total - start)
        g = torch.Generator().manual_seed(_seed(name, "base", index))
        base = torch.randn(n, generator=g).mul_(WEIGHT_STD)
        if is_norm:
            base.add_(1.0)
        flats[0][start:start + n] = base
        for k, (role, scale) in enumerate((("chat", CHAT_SCALE), ("cp", CP_SCALE)), start=1):
            g = torch.Generator().manual_seed(_seed(name, role, index))
            noise = torch.randn(n, generator=g).mul_(scale * WEIGHT_STD)
            flats[k][start:start + n] = noise.add_(base)
            del noise
    return outs  # type: ignore[return-value]


# --------------------------------------------------------------------------- tokenizer


def _corpus(seed: int = 0) -> Iterator[str]:
    """Sentences of pseudo-words: enough distinct words for a 32000-piece BPE vocabulary."""
    rng = random.Random(seed)
    onsets = list("bcdfghjklmnprstvwz") + ["ch", "sh", "th", "ng", "tr", "st", "br", "pl"]
    nuclei = list("aeiou") + ["ai", "ou", "ea", "ie"]
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + [chr(c) for c in range(0xAC00, 0xAC00 + 800)]
    words: set[str] = set()
    while len(words) < 120_000:
        words.add("".join(rng.choice(onsets) + rng.choice(nuclei) for _ in range(rng.choice((1, 2, 2, 3, 3, 4, 5)))))
    vocabulary = sorted(words)
    for _ in range(60_000):
        out = []
        for _ in range(rng.randint(5, 20)):
            if rng.random() < 0.5:  # a Zipf-like head of frequent words
                out.append(vocabulary[min(int(rng.paretovariate(0.7)) - 1, len(vocabulary) - 1)])
            else:
                out.append(rng.choice(vocabulary))
        if rng.random() < 0.2:
            out.append("".join(rng.choice(cjk) for _ in range(rng.randint(2, 6))))
        if rng.random() < 0.1:
            out.append(str(rng.randint(0, 99999)))
        yield " ".join(out).capitalize() + rng.choice((".", ".", "?", "!", ","))


def _tokenizer_config(chat: bool) -> dict:
    special = {"content": "", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): dict(special, content=t) for i, t in enumerate(("<unk>", "<s>", "</s>"))},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": "</s>",
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    if chat:
        config["chat_template"] = CHAT_TEMPLATE
    return config


def ensure_tokenizer(cache: Path) -> Path:
    """A folder with tokenizer.model (32000 pieces) and tokenizer.json, built once per cache."""
    folder = cache / f"tokenizer-v{GENERATOR_VERSION}"
    if (folder / "tokenizer.json").is_file():
        return folder
    import sentencepiece as spm

    cache.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder, directory=True, force=True) as tmp:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_corpus(),
            model_writer=model,
            model_type="bpe",
            vocab_size=VOCAB,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            allow_whitespace_only_pieces=True,
            max_sentencepiece_length=16,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(False), indent=2))
        from transformers import AutoTokenizer  # converts tokenizer.model into tokenizer.json, as the Hub repos ship

        tokenizer = AutoTokenizer.from_pretrained(str(tmp))
        if len(tokenizer) != VOCAB:
            raise RuntimeError(f"the generated tokenizer has {len(tokenizer)} tokens, expected {VOCAB}")
        (tmp / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- folders


def _config(shape: Shape) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": WEIGHT_STD,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.35.0",
        "use_cache": True,
        "vocab_size": shape.vocab,
    }


def _write_side_files(folder: Path, shape: Shape, tokenizer: Path, role: str) -> None:
    (folder / "config.json").write_text(json.dumps(_config(shape), indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "max_length": 2048, "pad_token_id": 0}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.copyfile(tokenizer / "tokenizer.model", folder / "tokenizer.model")
    shutil.copyfile(tokenizer / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(role == "chat"), indent=2) + "\n")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _marker(size: str, shape: Shape) -> dict:
    return {"generator_version": GENERATOR_VERSION, "size": size, "shape": asdict(shape),
            "chat_scale": CHAT_SCALE, "cp_scale": CP_SCALE, "weight_std": WEIGHT_STD}


def triple_paths(size: str, cache: Path) -> Triple:
    root = cache / "models" / size
    return Triple(size, root / "base", root / "chat", root / "cp")


def is_complete(size: str, cache: Path) -> bool:
    marker = cache / "models" / size / "complete.json"
    try:
        return json.loads(marker.read_text()) == _marker(size, SIZES[size])
    except (OSError, ValueError):
        return False


def generate(size: str, cache: Path, *, progress: bool = True) -> Triple:
    """Write the triple of ``size`` into the cache (replacing an incomplete one)."""
    shape = SIZES[size]
    tokenizer = ensure_tokenizer(cache)
    root = cache / "models" / size
    root.parent.mkdir(parents=True, exist_ok=True)
    shards = shard_plan(shape)
    total = sum(math.prod(d) * 2 for s in shards for _, d in s) * len(ROLES)
    done = 0
    t0 = shown = time.perf_counter()
    with atomic_output(root, directory=True, force=True) as tmp:
        for role in ROLES:
            (tmp / role).mkdir()
            _write_side_files(tmp / role, shape, tokenizer, role)
        weight_map: dict[str, str] = {}
        for k, shard in enumerate(shards, start=1):
            file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            plan = {name: (torch.bfloat16, dims) for name, dims in shard}
            writers = [StreamingWriter(tmp / role / file, plan, {"format": "pt"}) for role in ROLES]
            try:
                for name, dims in shard:
                    for writer, tensor in zip(writers, make_tensors(name, dims)):
                        writer.write(name, tensor)
                    weight_map[name] = file
                    done += math.prod(dims) * 2 * len(ROLES)
                    now = time.perf_counter()
                    if progress and (now - shown > 2 or done == total):
                        shown = now
                        rate = done / max(now - t0, 1e-9) / 1e6
                        print(f"\r{size}: {done / 1e9:6.2f} / {total / 1e9:.2f} GB  {rate:6.1f} MB/s", end="", file=sys.stderr, flush=True)
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            for writer in writers:
                writer.close()
        index = {"metadata": {"total_size": total // len(ROLES)}, "weight_map": weight_map}
        for role in ROLES:
            (tmp / role / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "complete.json").write_text(json.dumps(_marker(size, shape), indent=2) + "\n")
    if progress:
        print(file=sys.stderr)
    return triple_paths(size, cache)


def ensure_triple(size: str, cache: Path | None = None, *, progress: bool = True) -> Triple:
    """The triple of ``size``: reused from the cache when its marker matches, generated otherwise."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    cache = cache or default_cache()
    if is_complete(size, cache):
        return triple_paths(size, cache)
    return generate(size, cache, progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate (or find) the synthetic base/chat/CP triple of the benchmark.")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default $CVLOCAL_BENCH_CACHE or ~/.cache/cvlocal-bench)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete triple exists")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cache = args.cache or default_cache()
    t0 = time.perf_counter()
    triple = generate(args.size, cache) if args.force else ensure_triple(args.size, cache)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shape = SIZES[args.size]
    print(json.dumps({"size": args.size, "parameters": parameter_count(shape), "base": str(triple.base), "chat": str(triple.chat),
                      "cp": str(triple.cp), "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
