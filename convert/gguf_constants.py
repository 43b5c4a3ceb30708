"""GGUF format constants: magic, version, value types, GGML tensor types, token types, key names.

These numbers are part of the on-disk format that llama.cpp reads (``ggml.h``, ``gguf.h``,
``llama.h`` and ``src/llama-arch.cpp``), so they are written out here rather than computed. Only
what the converter needs is listed; the quantization tables live in ``convert.quant_tables``.
"""
from __future__ import annotations

from enum import IntEnum

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32
# GGML_QNT_VERSION in ggml.h: the layout version of the quantized block formats.
GGML_QUANT_VERSION = 2


class GGUFValueType(IntEnum):
    """Type tags of metadata values (``enum gguf_type``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class GGMLType(IntEnum):
    """Tensor data types (``enum ggml_type``)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


class TokenType(IntEnum):
    """``tokenizer.ggml.token_type`` values (``enum llama_token_type``)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Keys:
    """Metadata key names. ``{arch}`` is replaced by the GGUF architecture name (``llama``, ``qwen2`` ...)."""

    # general.*
    ARCHITECTURE = "general.architecture"
    TYPE = "general.type"
    QUANTIZATION_VERSION = "general.quantization_version"
    ALIGNMENT = "general.alignment"
    FILE_TYPE = "general.file_type"
    NAME = "general.name"
    BASENAME = "general.basename"
    FINETUNE = "general.finetune"
    VERSION = "general.version"
    SIZE_LABEL = "general.size_label"
    QUANTIZED_BY = "general.quantized_by"
    LICENSE = "general.license"
    ORGANIZATION = "general.organization"
    BASE_MODEL_COUNT = "general.base_model.count"
    BASE_MODEL_NAME = "general.base_model.{id}.name"
    BASE_MODEL_ORGANIZATION = "general.base_model.{id}.organization"
    BASE_MODEL_REPO_URL = "general.base_model.{id}.repo_url"
    TAGS = "general.tags"
    LANGUAGES = "general.languages"

    # {arch}.*  (hyper-parameters)
    VOCAB_SIZE = "{arch}.vocab_size"
    CONTEXT_LENGTH = "{arch}.context_length"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    BLOCK_COUNT = "{arch}.block_count"
    FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
    HEAD_COUNT = "{arch}.attention.head_count"
    HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
    KEY_LENGTH = "{arch}.attention.key_length"
    VALUE_LENGTH = "{arch}.attention.value_length"
    LAYERNORM_RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
    ROPE_DIMENSION_COUNT = "{arch}.rope.dimension_count"
    ROPE_FREQ_BASE = "{arch}.rope.freq_base"
    ROPE_SCALING_TYPE = "{arch}.rope.scaling.type"
    ROPE_SCALING_FACTOR = "{arch}.rope.scaling.factor"
    ROPE_SCALING_ORIG_CTX_LEN = "{arch}.rope.scaling.original_context_length"
    ROPE_SCALING_YARN_EXT_FACTOR = "{arch}.rope.scaling.yarn_ext_factor"
    ROPE_SCALING_YARN_ATTN_FACTOR = "{arch}.rope.scaling.yarn_attn_factor"
    ROPE_SCALING_YARN_BETA_FAST = "{arch}.rope.scaling.yarn_beta_fast"
    ROPE_SCALING_YARN_BETA_SLOW = "{arch}.rope.scaling.yarn_beta_slow"

    # tokenizer.*
    TOKENIZER_MODEL = "tokenizer.ggml.model"
    TOKENIZER_PRE = "tokenizer.ggml.pre"
    TOKEN_LIST = "tokenizer.ggml.tokens"
    TOKEN_TYPE = "tokenizer.ggml.token_type"
    TOKEN_SCORES = "tokenizer.ggml.scores"
    MERGES = "tokenizer.ggml.merges"
    BOS_ID = "tokenizer.ggml.bos_token_id"
    EOS_ID = "tokenizer.ggml.eos_token_id"
    EOT_ID = "tokenizer.ggml.eot_token_id"
    EOM_ID = "tokenizer.ggml.eom_token_id"
    UNK_ID = "tokenizer.ggml.unknown_token_id"
    SEP_ID = "tokenizer.ggml.seperator_token_id"  # sic: the spelling llama.cpp reads
    PAD_ID = "tokenizer.ggml.padding_token_id"
    MASK_ID = "tokenizer.ggml.mask_token_id"
    ADD_BOS = "tokenizer.ggml.add_bos_token"
    ADD_EOS = "tokenizer.ggml.add_eos_token"
    ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
    CHAT_TEMPLATE = "tokenizer.chat_template"
    CHAT_TEMPLATE_N = "tokenizer.chat_template.{name}"
    CHAT_TEMPLATES = "tokenizer.chat_templates"


# The value type llama.cpp expects for the keys we write. A key written with another type is
# either rejected at load time or read as garbage, so every writer goes through this table.
KEY_TYPES: dict[str, GGUFValueType] = {
    Keys.ARCHITECTURE: GGUFValueType.STRING,
    Keys.TYPE: GGUFValueType.STRING,
    Keys.QUANTIZATION_VERSION: GGUFValueType.UINT32,
    Keys.ALIGNMENT: GGUFValueType.UINT32,
    Keys.FILE_TYPE: GGUFValueType.UINT32,
    Keys.NAME: GGUFValueType.STRING,
    Keys.BASENAME: GGUFValueType.STRING,
    Keys.FINETUNE: GGUFValueType.STRING,
    Keys.VERSION: GGUFValueType.STRING,
    Keys.SIZE_LABEL: GGUFValueType.STRING,
    Keys.QUANTIZED_BY: GGUFValueType.STRING,
    Keys.LICENSE: GGUFValueType.STRING,
    Keys.ORGANIZATION: GGUFValueType.STRING,
    Keys.BASE_MODEL_COUNT: GGUFValueType.UINT32,
    Keys.VOCAB_SIZE: GGUFValueType.UINT32,
    Keys.CONTEXT_LENGTH: GGUFValueType.UINT32,
    Keys.EMBEDDING_LENGTH: GGUFValueType.UINT32,
    Keys.BLOCK_COUNT: GGUFValueType.UINT32,
    Keys.FEED_FORWARD_LENGTH: GGUFValueType.UINT32,
    Keys.HEAD_COUNT: GGUFValueType.UINT32,
    Keys.HEAD_COUNT_KV: GGUFValueType.UINT32,
    Keys.KEY_LENGTH: GGUFValueType.UINT32,
    Keys.VALUE_LENGTH: GGUFValueType.UINT32,
    Keys.LAYERNORM_RMS_EPS: GGUFValueType.FLOAT32,
    Keys.ROPE_DIMENSION_COUNT: GGUFValueType.UINT32,
    Keys.ROPE_FREQ_BASE: GGUFValueType.FLOAT32,
    Keys.ROPE_SCALING_TYPE: GGUFValueType.STRING,
    Keys.ROPE_SCALING_FACTOR: GGUFValueType.FLOAT32,
    Keys.ROPE_SCALING_ORIG_CTX_LEN: GGUFValueType.UINT32,
    Keys.ROPE_SCALING_YARN_EXT_FACTOR: GGUFValueType.FLOAT32,
    Keys.ROPE_SCALING_YARN_ATTN_FACTOR: GGUFValueType.FLOAT32,
    Keys.ROPE_SCALING_YARN_BETA_FAST: GGUFValueType.FLOAT32,
    Keys.ROPE_SCALING_YARN_BETA_SLOW: GGUFValueType.FLOAT32,
    Keys.TOKENIZER_MODEL: GGUFValueType.STRING,
    Keys.TOKENIZER_PRE: GGUFValueType.STRING,
    Keys.BOS_ID: GGUFValueType.UINT32,
    Keys.EOS_ID: GGUFValueType.UINT32,
    Keys.EOT_ID: GGUFValueType.UINT32,
    Keys.EOM_ID: GGUFValueType.UINT32,
    Keys.UNK_ID: GGUFValueType.UINT32,
    Keys.SEP_ID: GGUFValueType.UINT32,
    Keys.PAD_ID: GGUFValueType.UINT32,
    Keys.MASK_ID: GGUFValueType.UINT32,
    Keys.ADD_BOS: GGUFValueType.BOOL,
    Keys.ADD_EOS: GGUFValueType.BOOL,
    Keys.ADD_SPACE_PREFIX: GGUFValueType.BOOL,
    Keys.CHAT_TEMPLATE: GGUFValueType.STRING,
}

# Element types of the array-valued keys we write.
ARRAY_KEY_TYPES: dict[str, GGUFValueType] = {
    Keys.TOKEN_LIST: GGUFValueType.STRING,
    Keys.MERGES: GGUFValueType.STRING,
    Keys.TOKEN_TYPE: GGUFValueType.INT32,
    Keys.TOKEN_SCORES: GGUFValueType.FLOAT32,
    Keys.CHAT_TEMPLATES: GGUFValueType.STRING,
    Keys.TAGS: GGUFValueType.STRING,
    Keys.LANGUAGES: GGUFValueType.STRING,
}


def key_type(key: str, arch: str) -> GGUFValueType | None:
    """The fixed value type of a known key (``{arch}`` resolved), or None for a free-form key."""
    for template, vtype in KEY_TYPES.items():
        if template.format(arch=arch) == key:
            return vtype
    return None


def array_key_type(key: str) -> GGUFValueType | None:
    """The element type of a known array-valued key, or None."""
    return ARRAY_KEY_TYPES.get(key)


# Tensor names that llama.cpp looks up (``LLM_TENSOR_NAMES`` in src/llama-arch.cpp).
class TensorNames:
    TOKEN_EMBD = "token_embd"
    OUTPUT_NORM = "output_norm"
    OUTPUT = "output"
    ROPE_FREQS = "rope_freqs"
    ATTN_NORM = "blk.{bid}.attn_norm"
    ATTN_Q = "blk.{bid}.attn_q"
    ATTN_K = "blk.{bid}.attn_k"
    ATTN_V = "blk.{bid}.attn_v"
    ATTN_OUT = "blk.{bid}.attn_output"
    ATTN_Q_NORM = "blk.{bid}.attn_q_norm"
    ATTN_K_NORM = "blk.{bid}.attn_k_norm"
    FFN_NORM = "blk.{bid}.ffn_norm"
    FFN_GATE = "blk.{bid}.ffn_gate"
    FFN_UP = "blk.{bid}.ffn_up"
    FFN_DOWN = "blk.{bid}.ffn_down"
