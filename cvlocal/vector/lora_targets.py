"""Which tensors of a chat vector a GGUF LoRA adapter can carry, and in what form.

llama.cpp's LoRA loader (src/llama-adapter.cpp) pairs ``NAME.lora_a`` / ``NAME.lora_b`` with the
model tensor ``NAME``; it silently skips ``*_norm.weight`` and refuses anything else. So:

- every 2-D projection weight (attention, MLP, ``output``) becomes a low-rank pair;
- ``token_embd`` becomes a pair in the transposed, "flipped" form ``llm_build_inp_embd`` expects;
  with tied embeddings llama.cpp reuses the very same tensor (same name) as the output
  projection and would apply the embedding-form pair there too, where its shapes do not fit,
  so a tied ``token_embd`` is left out;
- norm weights and biases have no place in a LoRA: they are left out and reported with their
  share of the vector's squared norm, never dropped silently.

Names and the Q/K rotary row permutation come from the converter's architecture tables, so an
adapter always matches the GGUF that ``cvlocal convert`` writes for the CP model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from convert.architectures import ARCHITECTURES, Architecture, supported
from convert.checkpoint import Checkpoint
from convert.tensor_plan import rotary_heads
from cvlocal.errors import UsageError

TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"


@dataclass(frozen=True)
class LoraTarget:
    """One tensor of the vector: where it goes in the adapter, or why it cannot."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    kind: str                    # "linear" | "embedding" | "norm" | "bias" | "tied"
    permute_heads: int = 0       # >0: permute B's rows (Q/K) into GGML's rotary layout

    @property
    def carried(self) -> bool:
        return self.kind in ("linear", "embedding")

    @property
    def max_rank(self) -> int:
        return min(self.shape) if len(self.shape) == 2 else 0

    @property
    def out_features(self) -> int:
        """Rows of ``B`` in the adapter: out-features, or the hidden size for the embedding."""
        return self.shape[1] if self.kind == "embedding" else self.shape[0]

    @property
    def in_features(self) -> int:
        """Rows of ``A``'s other side: in-features, or the vocabulary for the embedding."""
        return self.shape[0] if self.kind == "embedding" else self.shape[1]


LEFT_OUT_REASONS = {
    "norm": "norm weight: llama.cpp's LoRA loader ignores norm vectors",
    "bias": "bias: a LoRA has no place for bias deltas",
    "tied": "tied embeddings: llama.cpp would apply an embedding-form pair to the output projection as well",
}


def adapter_architecture(config: Mapping[str, object], where: object) -> Architecture:
    """The converter's table for this model, or a one-line refusal."""
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    arch = ARCHITECTURES.get(str(name))
    if arch is None:
        raise UsageError(
            f"architecture {name!r} has no GGUF adapter layout in cvlocal (llama.cpp would refuse the adapter)", where,
            f"Use a model of a supported architecture ({supported()}).",
        )
    return arch


def plan_targets(chat: Checkpoint) -> tuple[Architecture, list[LoraTarget]]:
    """Classify every tensor of ``chat`` (whose names and shapes equal the base's)."""
    arch = adapter_architecture(chat.config, chat.path / "config.json")
    names = chat.names()
    gguf = {n: arch.gguf_name(n) for n in names}
    unknown = [n for n, g in gguf.items() if g is None]
    if unknown:
        raise UsageError(
            f"{len(unknown)} tensors are not part of a {arch.family} model (first: {unknown[0]!r})", chat.path,
            "Extract from plain causal-LM checkpoints.",
        )
    tied = OUTPUT not in gguf.values()
    targets: list[LoraTarget] = []
    for n in names:
        g = gguf[n]
        if not g:
            continue  # a buffer llama.cpp recomputes (rotary inv_freq)
        shape = tuple(int(d) for d in chat.shape(n))
        if len(shape) == 1 or g.endswith("_norm.weight"):
            kind = "norm" if g.endswith("_norm.weight") else "bias"
        elif not g.endswith(".weight") or len(shape) != 2:
            kind = "bias"
        elif g == TOKEN_EMBD:
            kind = "tied" if tied else "embedding"
        else:
            kind = "linear"
        which = arch.permutation(n) if kind == "linear" else None
        heads = rotary_heads(which, chat.config, chat.path) if which else 0
        targets.append(LoraTarget(n, g, shape, kind, heads))
    return arch, targets
