"""Which llama.cpp pre-tokenizer (``tokenizer.ggml.pre``) a byte-level BPE tokenizer.json declares.

llama.cpp does not run the HF pre-tokenizer; it has a fixed list of named pre-tokenizers (each a
split regex plus a few options, see ``src/llama-vocab.cpp``) and the GGUF names one of them.
llama.cpp's own converter identifies it by hashing the ids of a test string, which fails for any
retrained or extended vocabulary. Here the name is decided from what tokenizer.json *declares*:
its normalizer and its pre-tokenizer steps (Split regex, behavior, invert; ByteLevel options;
Digits). A declaration that matches none of the known ones is an error that shows it.

Each known entry records the HF declaration and the llama.cpp name whose regexes implement it.
``ignore_merges`` matters too: llama.cpp's ``llama-bpe`` takes a whole pre-token from the
vocabulary before applying merges (HF's ``ignore_merges: true``), ``smaug-bpe`` has the same
regex without that shortcut.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from convert.errors import ConvertError

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SEED_CODER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# Normalized steps: ("split", regex) for an isolated, non-inverted Split; ("bytelevel", use_regex)
# for ByteLevel without a prefix space; ("digits", individual) for Digits.
Step = tuple[str, object]


@dataclass(frozen=True)
class PreTokenizer:
    """A pre-tokenizer llama.cpp implements, as tokenizer.json declares it."""

    name: str                       # tokenizer.ggml.pre
    models: str                     # who uses it, for messages
    steps: tuple[Step, ...]
    ignore_merges: bool | None = None  # None: either


KNOWN: tuple[PreTokenizer, ...] = (
    PreTokenizer("llama-bpe", "Llama 3, 3.1, 3.2", (("split", LLAMA3_REGEX), ("bytelevel", False)), True),
    PreTokenizer("smaug-bpe", "Llama-3 regex without ignore_merges", (("split", LLAMA3_REGEX), ("bytelevel", False)), False),
    PreTokenizer("qwen2", "Qwen2, Qwen2.5, Qwen3", (("split", QWEN2_REGEX), ("bytelevel", False))),
    PreTokenizer("qwen35", "Qwen3.5", (("split", QWEN35_REGEX), ("bytelevel", False))),
    PreTokenizer("tekken", "Mistral Nemo / Tekken", (("split", TEKKEN_REGEX), ("bytelevel", False))),
    PreTokenizer("gpt-4o", "GPT-4o style", (("split", GPT4O_REGEX), ("bytelevel", False))),
    PreTokenizer("seed-coder", "Seed-Coder", (("split", SEED_CODER_REGEX), ("bytelevel", False))),
    PreTokenizer("starcoder", "StarCoder, SmolLM", (("digits", True), ("bytelevel", True))),
    PreTokenizer("gpt-2", "GPT-2 and its derivatives", (("bytelevel", True),)),
)

# Normalizers that llama.cpp's BPE tokenizers leave out but that change nothing for the text they
# would see: NFC is the identity on already composed text (what keyboards and the web produce).
HARMLESS_NORMALIZERS = ("NFC",)


def _describe(step: Mapping[str, Any]) -> str:
    kind = step.get("type")
    if kind == "Split":
        pattern = step.get("pattern") or {}
        regex = pattern.get("Regex", pattern.get("String"))
        return f"Split(regex /{regex}/, behavior {step.get('behavior')}, invert {step.get('invert')})"
    if kind == "ByteLevel":
        return f"ByteLevel(add_prefix_space {step.get('add_prefix_space')}, use_regex {step.get('use_regex')})"
    return json.dumps(step, ensure_ascii=False, separators=(",", ":"))[:200]


def _normalize(step: Mapping[str, Any]) -> Step | None:
    kind = step.get("type")
    if kind == "Split":
        pattern = step.get("pattern") or {}
        if "Regex" not in pattern or step.get("behavior") != "Isolated" or step.get("invert"):
            return None
        return ("split", pattern["Regex"])
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            return None
        return ("bytelevel", bool(step.get("use_regex", True)))
    if kind == "Digits":
        return ("digits", bool(step.get("individual_digits", False)))
    return None


def declared_steps(tokenizer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    pre = tokenizer.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence":
        return list(pre.get("pretokenizers") or [])
    return [pre] if pre else []


def _normalizers(tokenizer: Mapping[str, Any]) -> list[str]:
    norm = tokenizer.get("normalizer") or {}
    if not norm:
        return []
    if norm.get("type") == "Sequence":
        return [n.get("type", "?") for n in norm.get("normalizers") or []]
    return [norm.get("type", "?")]


def detect_pre_tokenizer(tokenizer: Mapping[str, Any], path: Path) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer.json, or ConvertError."""
    known = ", ".join(f"{p.name} ({p.models})" for p in KNOWN)
    raw = declared_steps(tokenizer)
    description = " + ".join(_describe(s) for s in raw) or "none"
    extra_norm = [n for n in _normalizers(tokenizer) if n not in HARMLESS_NORMALIZERS]
    if extra_norm:
        raise ConvertError(
            f"normalizer {', '.join(extra_norm)} has no llama.cpp equivalent (pre-tokenizer {description})", path,
            f"llama.cpp knows these byte-level BPE pre-tokenizers: {known}.",
        )
    steps = [_normalize(s) for s in raw]
    ignore_merges = bool((tokenizer.get("model") or {}).get("ignore_merges", False))
    if all(s is not None for s in steps):
        matches = [p for p in KNOWN if list(p.steps) == steps]
        exact = [p for p in matches if p.ignore_merges in (None, ignore_merges)]
        if exact or matches:
            return (exact or matches)[0].name
    raise ConvertError(
        f"unknown pre-tokenizer {description}", path,
        f"llama.cpp implements only these byte-level BPE pre-tokenizers: {known}.",
    )
