"""One table per model family: tensor names, roles, hyper-parameter keys and named transforms.

An architecture is data. ``ARCHITECTURES`` maps the ``architectures[0]`` value of config.json to
an ``Architecture``; the converter's loop (``conversion``, ``tensor_plan``, ``hparams``) reads
only these tables and the catalogues they name (``convert.transforms`` for tensors,
``convert.hparams.RULES`` for derived keys), so adding a family is a table and a test, not a
code path. Tensor names come from llama.cpp's own map (``gguf.get_tensor_name_map``), limited to
the tensors the family's loader reads (src/llama-model.cpp, src/models/*.cpp). Per family:

- Llama and Mistral load as ``llama``: Q/K rows permuted from HF's rotary halves to GGML's
  interleaved pairs (``permute_q`` with num_attention_heads, ``permute_k`` with
  num_key_value_heads); llama3 rope scaling becomes the generated ``rope_freqs`` tensor.
- Qwen2 (q/k/v biases) and Qwen3 (q/k RMS norms): NEOX rotary layout, nothing permuted.
- Gemma 2: every ``*norm.weight`` is stored ``+1`` (Gemma's RMSNorm scales by ``1 + w``);
  post-attention and post-feed-forward norms; attention and final logit soft-capping and the
  sliding window as keys; the output head is always the embedding (llama.cpp's ``gemma2``
  loader reads no ``output.weight``, so an ``lm_head.weight`` is dropped). llama.cpp scales the
  embeddings by sqrt(n_embd) itself, so nothing is written for that.
- Gemma 3 (text): as Gemma 2 plus q/k norms, no attention soft-capping, the local/global layer
  pattern (``sliding_window_pattern`` as a per-layer array from ``layer_types``) and a second
  rope base for the local layers. A ``Gemma3ForConditionalGeneration`` checkpoint is converted
  as its language model: ``model.language_model.`` (transformers 5) or ``language_model.model.``
  (earlier) is read as ``model.``, and the vision tower and projector are skipped with a notice.
- Phi-3 / Phi-3.5: fused ``qkv_proj`` and ``gate_up_proj`` kept fused (``attn_qkv``, ``ffn_up``
  of 2 x n_ff rows, as llama.cpp's ``phi3`` loader reads them); LongRoPE factors generated as
  ``rope_factors_long``/``rope_factors_short``; the sliding window as a key.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import gguf

from convert.transforms import GENERATED, TENSOR_TRANSFORMS

T = gguf.MODEL_TENSOR
V = gguf.GGUFValueType
K = gguf.Keys.LLM
A = gguf.Keys.Attention


@dataclass(frozen=True)
class HParam:
    """A GGUF key read straight from config.json: the first present of ``sources``."""

    key: str                      # template with "{arch}"
    sources: tuple[str, ...]
    vtype: gguf.GGUFValueType
    required: bool = False
    default: Any = None           # written when no source is present (None: not written)


@dataclass(frozen=True)
class Architecture:
    """How one HF model family becomes a GGUF file llama.cpp can load."""

    family: str                               # human name: "Llama", "Gemma 2"
    hf_names: tuple[str, ...]                 # config.json "architectures" values
    model_arch: gguf.MODEL_ARCH               # general.architecture
    hparams: tuple[HParam, ...]               # keys read from config.json
    rules: tuple[str, ...]                    # derived keys, by name (convert.hparams.RULES)
    transforms: tuple[tuple[str, str], ...] = ()  # (HF name suffix, transform name), every match applies
    generated: tuple[str, ...] = ()           # generated tensors, by name (convert.transforms.GENERATED)
    embedding: str = "model.embed_tokens.weight"  # HF name of the token embedding
    output: str = "lm_head.weight"            # HF name of the output head (absent when tied)
    output_in_gguf: bool = True               # False: llama.cpp always reuses the embedding
    excluded: tuple[gguf.MODEL_TENSOR, ...] = ()  # GGUF tensors of gguf's list this family never has
    ignored: tuple[str, ...] = (r"(.*\.)?rotary_emb\.inv_freq",)  # regexes: buffers llama.cpp recomputes
    prefixes: tuple[tuple[str, str], ...] = ()  # HF name prefix -> canonical prefix (a wrapped language model)
    skipped: tuple[str, ...] = ()             # HF name prefixes of other towers, skipped with a notice
    rope_types: tuple[str, ...] = ("", "default", "linear", "yarn", "dynamic")
    notes: str = ""                           # what the README's table says about the family

    def __post_init__(self) -> None:
        unknown = [n for _, n in self.transforms if n not in TENSOR_TRANSFORMS] + [n for n in self.generated if n not in GENERATED]
        if unknown:
            raise ValueError(f"{self.family}: unknown transform(s) {unknown}")

    @property
    def gguf_arch(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.model_arch]

    def canonical(self, hf_name: str) -> str:
        """The name inside the language model (a wrapper's prefix replaced)."""
        for prefix, target in self.prefixes:
            if hf_name.startswith(prefix):
                return target + hf_name[len(prefix):]
        return hf_name

    def is_skipped(self, hf_name: str) -> bool:
        """A tensor of another tower (vision) that a text GGUF leaves out."""
        return hf_name.startswith(self.skipped) if self.skipped else False

    def is_embedding(self, hf_name: str) -> bool:
        return self.canonical(hf_name) == self.embedding

    def is_output(self, hf_name: str) -> bool:
        return self.canonical(hf_name) == self.output

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of an HF tensor, "" for one the GGUF leaves out, None if unknown."""
        name = self.canonical(hf_name)
        if self.is_skipped(hf_name) or any(re.fullmatch(p, name) for p in self.ignored):
            return ""
        if name == self.output and not self.output_in_gguf:
            return ""
        m = re.search(r"\.(\d+)\.", name)
        blocks = 1 << max(5, (int(m.group(1)) + 1).bit_length()) if m else 32
        mapped = _tensor_map(self.model_arch, blocks, self.excluded).get_name(name, try_suffixes=(".weight", ".bias"))
        return mapped

    def transforms_of(self, hf_name: str) -> tuple[str, ...]:
        """The transforms (by name, in table order) a source tensor goes through."""
        name = self.canonical(hf_name)
        return tuple(t for suffix, t in self.transforms if name.endswith(suffix))

    def permutation(self, hf_name: str) -> str | None:
        """"q" or "k" when the tensor's rows are permuted to GGML's rotary layout, else None."""
        names = self.transforms_of(hf_name)
        return "q" if "permute_q" in names else "k" if "permute_k" in names else None


@functools.cache
def _tensor_map(arch: gguf.MODEL_ARCH, blocks: int, excluded: tuple[gguf.MODEL_TENSOR, ...]) -> gguf.TensorNameMap:
    """llama.cpp's HF -> GGUF name map for ``arch``, without the tensors the family never has."""
    tmap = gguf.get_tensor_name_map(arch, blocks)
    if excluded:
        tmap.mapping = {k: v for k, v in tmap.mapping.items() if v[0] not in excluded}
    return tmap


# Keys every family writes from config.json.
_CORE = (
    HParam(K.BLOCK_COUNT, ("num_hidden_layers",), V.UINT32, required=True),
    HParam(K.CONTEXT_LENGTH, ("max_position_embeddings",), V.UINT32),
    HParam(K.EMBEDDING_LENGTH, ("hidden_size",), V.UINT32, required=True),
    HParam(K.FEED_FORWARD_LENGTH, ("intermediate_size",), V.UINT32, required=True),
    HParam(A.HEAD_COUNT, ("num_attention_heads",), V.UINT32, required=True),
    HParam(A.HEAD_COUNT_KV, ("num_key_value_heads",), V.UINT32),
    HParam(A.LAYERNORM_RMS_EPS, ("rms_norm_eps",), V.FLOAT32, required=True),
)
_ROPE = ("rope_scaling", "rope_freq_base", "sliding_window_notice", "head_dim_lengths")

_PERMUTE = (("self_attn.q_proj.weight", "permute_q"), ("self_attn.q_proj.bias", "permute_q"),
            ("self_attn.k_proj.weight", "permute_k"), ("self_attn.k_proj.bias", "permute_k"))
_MOE = (T.FFN_GATE_INP, T.FFN_GATE_EXP, T.FFN_DOWN_EXP, T.FFN_UP_EXP, T.ATTN_ROT_EMBD)

LLAMA = Architecture(
    family="Llama",
    hf_names=("LlamaForCausalLM",),
    model_arch=gguf.MODEL_ARCH.LLAMA,
    hparams=_CORE,
    rules=_ROPE + ("vocab_size", "rope_dimension_count"),
    transforms=_PERMUTE,
    generated=("llama3_rope_freqs",),
    excluded=_MOE,
    rope_types=("", "default", "linear", "yarn", "dynamic", "llama3"),
    notes="Llama 2 (SentencePiece, byte fallback), Llama 3, 3.1, 3.2 (byte-level BPE, `llama3` rope scaling, tied embeddings in 3.2)",
)

# Mistral is Llama's layout under another class name.
MISTRAL = replace(LLAMA, family="Mistral", hf_names=("MistralForCausalLM",), notes="SentencePiece, `[INST]` control tokens (v0.3)")

QWEN2 = Architecture(
    family="Qwen2",
    hf_names=("Qwen2ForCausalLM",),
    model_arch=gguf.MODEL_ARCH.QWEN2,
    hparams=_CORE,
    rules=_ROPE,
    notes="Qwen2 / 2.5: q/k/v biases, tied embeddings, Qwen2 pre-tokenizer",
)

QWEN3 = Architecture(
    family="Qwen3",
    hf_names=("Qwen3ForCausalLM",),
    model_arch=gguf.MODEL_ARCH.QWEN3,
    hparams=_CORE,
    rules=_ROPE,
    notes="q/k norms",
)

_GEMMA_NORMS = (("norm.weight", "norm_plus_one"),)

GEMMA2 = Architecture(
    family="Gemma 2",
    hf_names=("Gemma2ForCausalLM",),
    model_arch=gguf.MODEL_ARCH.GEMMA2,
    hparams=_CORE + (
        HParam(K.ATTN_LOGIT_SOFTCAPPING, ("attn_logit_softcapping",), V.FLOAT32),
        HParam(K.FINAL_LOGIT_SOFTCAPPING, ("final_logit_softcapping",), V.FLOAT32),
        HParam(A.SLIDING_WINDOW, ("sliding_window",), V.UINT32),
    ),
    rules=("rope_scaling", "rope_freq_base", "head_dim_lengths"),
    transforms=_GEMMA_NORMS,
    output_in_gguf=False,
    notes="norms +1, post-attention/feed-forward norms, attention and final logit soft-capping, sliding window, tied output, SentencePiece without space prefix, `<end_of_turn>`",
)

GEMMA3 = Architecture(
    family="Gemma 3",
    hf_names=("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
    model_arch=gguf.MODEL_ARCH.GEMMA3,
    hparams=_CORE + (HParam(K.FINAL_LOGIT_SOFTCAPPING, ("final_logit_softcapping",), V.FLOAT32),),
    rules=("rope_scaling", "rope_freq_base", "rope_freq_base_swa", "head_dim_lengths", "sliding_window_layers"),
    transforms=_GEMMA_NORMS,
    prefixes=(("model.language_model.", "model."), ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head.")),
    skipped=("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
    notes="text model (a `Gemma3ForConditionalGeneration`'s vision tower is skipped), q/k norms, local/global layer pattern, two rope bases, `<end_of_turn>`",
)

PHI3 = Architecture(
    family="Phi-3",
    hf_names=("Phi3ForCausalLM",),
    model_arch=gguf.MODEL_ARCH.PHI3,
    hparams=_CORE + (HParam(A.SLIDING_WINDOW, ("sliding_window",), V.UINT32, default=0),),
    rules=("rope_scaling", "rope_freq_base", "rope_dimension_count", "longrope"),
    transforms=(("self_attn.qkv_proj.weight", "keep_fused"), ("mlp.gate_up_proj.weight", "keep_fused")),
    generated=("rope_factors",),
    rope_types=("", "default", "longrope", "su"),
    notes="Phi-3 / 3.5: fused `qkv_proj` and `gate_up_proj` kept fused, LongRoPE factors (128k), sliding window, `<\\|end\\|>`",
)

FAMILIES: tuple[Architecture, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3)
ARCHITECTURES: dict[str, Architecture] = {name: arch for arch in FAMILIES for name in arch.hf_names}


def architecture_of(config: Mapping[str, Any]) -> Architecture | None:
    """The table for config.json's ``architectures[0]``, or None."""
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    return ARCHITECTURES.get(str(name)) if name else None


def supported() -> str:
    """The supported HF architecture names, for messages."""
    return ", ".join(ARCHITECTURES)


def supported_table() -> str:
    """The README's table of supported architectures (generated from the tables; a test checks it)."""
    rows = ["| config.json `architectures` | GGUF architecture | transforms | notes |", "|---|---|---|---|"]
    for arch in FAMILIES:
        named = sorted({t for _, t in arch.transforms} | set(arch.generated))
        rows.append(f"| {', '.join(f'`{n}`' for n in arch.hf_names)} | `{arch.gguf_arch}` | "
                    f"{', '.join(f'`{t}`' for t in named) or '-'} | {arch.notes} |")
    return "\n".join(rows)


__all__ = ["ARCHITECTURES", "FAMILIES", "Architecture", "HParam", "architecture_of", "supported", "supported_table"]
