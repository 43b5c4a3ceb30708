"""One table per model family: HF tensor names to GGUF names, Q/K permutation, hyper-parameter keys.

An architecture is data. ``ARCHITECTURES`` maps the ``architectures[0]`` value of config.json to
an ``Architecture``; the rest of the converter reads only these tables, so adding a family is a
table (and a test), not a code path. Names and choices follow what llama.cpp's loader expects
(src/llama-model.cpp, src/llama-arch.cpp) and what its converter writes:

- Llama and Mistral load as llama.cpp's ``llama`` architecture. Their ``q_proj``/``k_proj`` rows
  are permuted from HF's rotary layout (first half of each head, then second half) to GGML's
  interleaved pairs, with ``num_attention_heads`` for Q and ``num_key_value_heads`` for K.
  llama.cpp's ``llama`` also reads ``vocab_size`` and ``rope.dimension_count``.
- Qwen2 (q/k/v biases) and Qwen3 (q/k RMS norms) use GGML's NEOX rotary layout, so nothing is
  permuted.
- ``lm_head.weight`` is absent when embeddings are tied; llama.cpp then reuses ``token_embd``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Mapping

from gguf import Keys

_LAYER = "model.layers.{bid}."
_BLK = "blk.{bid}."

_COMMON: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    _LAYER + "input_layernorm.weight": _BLK + "attn_norm.weight",
    _LAYER + "self_attn.q_proj.weight": _BLK + "attn_q.weight",
    _LAYER + "self_attn.k_proj.weight": _BLK + "attn_k.weight",
    _LAYER + "self_attn.v_proj.weight": _BLK + "attn_v.weight",
    _LAYER + "self_attn.o_proj.weight": _BLK + "attn_output.weight",
    _LAYER + "post_attention_layernorm.weight": _BLK + "ffn_norm.weight",
    _LAYER + "mlp.gate_proj.weight": _BLK + "ffn_gate.weight",
    _LAYER + "mlp.up_proj.weight": _BLK + "ffn_up.weight",
    _LAYER + "mlp.down_proj.weight": _BLK + "ffn_down.weight",
}
_QKV_BIAS: dict[str, str] = {
    _LAYER + "self_attn.q_proj.bias": _BLK + "attn_q.bias",
    _LAYER + "self_attn.k_proj.bias": _BLK + "attn_k.bias",
    _LAYER + "self_attn.v_proj.bias": _BLK + "attn_v.bias",
}
# Llama checkpoints with attention_bias / mlp_bias set (llama.cpp loads these when present).
_LLAMA_BIAS: dict[str, str] = {
    **_QKV_BIAS,
    _LAYER + "self_attn.o_proj.bias": _BLK + "attn_output.bias",
    _LAYER + "mlp.gate_proj.bias": _BLK + "ffn_gate.bias",
    _LAYER + "mlp.up_proj.bias": _BLK + "ffn_up.bias",
    _LAYER + "mlp.down_proj.bias": _BLK + "ffn_down.bias",
}
_QK_NORM: dict[str, str] = {
    _LAYER + "self_attn.q_norm.weight": _BLK + "attn_q_norm.weight",
    _LAYER + "self_attn.k_norm.weight": _BLK + "attn_k_norm.weight",
}
# Buffers some checkpoints carry that llama.cpp recomputes.
_IGNORED = ("model.rotary_emb.inv_freq", _LAYER + "self_attn.rotary_emb.inv_freq")

# Hyper-parameters every family writes: (GGUF key, config.json keys tried in order, required).
_HPARAMS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    (Keys.LLM.BLOCK_COUNT, ("num_hidden_layers",), True),
    (Keys.LLM.CONTEXT_LENGTH, ("max_position_embeddings",), False),
    (Keys.LLM.EMBEDDING_LENGTH, ("hidden_size",), True),
    (Keys.LLM.FEED_FORWARD_LENGTH, ("intermediate_size",), True),
    (Keys.Attention.HEAD_COUNT, ("num_attention_heads",), True),
    (Keys.Attention.HEAD_COUNT_KV, ("num_key_value_heads",), False),
    (Keys.Attention.LAYERNORM_RMS_EPS, ("rms_norm_eps",), True),
)


@dataclass(frozen=True)
class Architecture:
    """How one HF model family becomes a GGUF file llama.cpp can load."""

    family: str                       # human name: "Llama", "Qwen2"
    hf_names: tuple[str, ...]         # config.json "architectures" values
    gguf_arch: str                    # general.architecture: "llama", "qwen2"
    tensors: Mapping[str, str]        # HF name pattern -> GGUF name pattern ("{bid}" = layer)
    permute: Mapping[str, str] = field(default_factory=dict)  # HF pattern -> "q" or "k" rotary permutation
    ignored: tuple[str, ...] = _IGNORED
    hparams: tuple[tuple[str, tuple[str, ...], bool], ...] = _HPARAMS
    writes_vocab_size: bool = False   # {arch}.vocab_size
    writes_rope_dimension: bool = False  # {arch}.rope.dimension_count
    llama3_rope_freqs: bool = False   # rope_type "llama3" becomes a rope_freqs tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", [(_compile(p), g) for p, g in self.tensors.items()])
        object.__setattr__(self, "_ignored_re", [_compile(p) for p in self.ignored])
        object.__setattr__(self, "_permute_re", [(_compile(p), w) for p, w in self.permute.items()])

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of an HF tensor, "" for a tensor llama.cpp does not need, None if unknown."""
        for pattern in self._ignored_re:  # type: ignore[attr-defined]
            if pattern.fullmatch(hf_name):
                return ""
        for pattern, target in self._compiled:  # type: ignore[attr-defined]
            m = pattern.fullmatch(hf_name)
            if m:
                return target.format(**m.groupdict())
        return None

    def permutation(self, hf_name: str) -> str | None:
        """"q" or "k" when the tensor's rows must be permuted to GGML's rotary layout, else None."""
        for pattern, which in self._permute_re:  # type: ignore[attr-defined]
            if pattern.fullmatch(hf_name):
                return which
        return None


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(re.escape("{bid}"), r"(?P<bid>\d+)"))


_LLAMA_PERMUTE = {
    _LAYER + "self_attn.q_proj.weight": "q",
    _LAYER + "self_attn.q_proj.bias": "q",
    _LAYER + "self_attn.k_proj.weight": "k",
    _LAYER + "self_attn.k_proj.bias": "k",
}

LLAMA = Architecture(
    family="Llama",
    hf_names=("LlamaForCausalLM",),
    gguf_arch="llama",
    tensors={**_COMMON, **_LLAMA_BIAS},
    permute=_LLAMA_PERMUTE,
    writes_vocab_size=True,
    writes_rope_dimension=True,
    llama3_rope_freqs=True,
)

# Mistral is Llama's layout under another class name.
MISTRAL = replace(LLAMA, family="Mistral", hf_names=("MistralForCausalLM",))

QWEN2 = Architecture(
    family="Qwen2",
    hf_names=("Qwen2ForCausalLM",),
    gguf_arch="qwen2",
    tensors={**_COMMON, **_QKV_BIAS},
)

QWEN3 = Architecture(
    family="Qwen3",
    hf_names=("Qwen3ForCausalLM",),
    gguf_arch="qwen3",
    tensors={**_COMMON, **_QKV_BIAS, **_QK_NORM},
)

ARCHITECTURES: dict[str, Architecture] = {name: arch for arch in (LLAMA, MISTRAL, QWEN2, QWEN3) for name in arch.hf_names}


def supported() -> str:
    """The supported HF architecture names, for messages."""
    return ", ".join(ARCHITECTURES)
