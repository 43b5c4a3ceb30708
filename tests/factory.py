"""Tiny but real test checkpoints: a base, a chat and a continually-pretrained (CP) model per family.

Why: every part of cvlocal (merge, GGUF conversion, chat, eval, release) must be
tested on checkpoints that look like the ones users download -- bf16 safetensors
written by ``save_pretrained``, a ``config.json`` in the layout found on the Hub,
SentencePiece or byte-level BPE tokenizers with their special tokens and chat
templates -- yet build in about a second. Weights are random; the tokenizers are
trained on the fly on :mod:`tests.corpus`.

The three folders of a :class:`Family` are related the way real ones are:

* ``base``: random init (``initializer_range`` 0.1 so that logits are well
  spread and the top-1 token is not a near tie), norm weights ``1 + 0.1*N(0,1)``
  and biases ``0.1*N(0,1)`` so that no tensor is a constant.
* ``chat``: ``base`` plus :func:`perturb` with ``CHAT_SCALE``, the family's real
  chat template and end-of-turn tokens.
* ``cp``: ``base`` plus :func:`perturb` with ``CP_SCALE`` (another seed), a base
  style tokenizer config (no chat template). With ``extended=True`` its tokenizer
  keeps every base token at the same id and appends new CJK tokens after the
  whole base vocabulary (special tokens included); ``embed_tokens`` /
  ``lm_head`` are resized and the new rows are random. The leading rows of an
  extended CP equal the rows of the non-extended CP built with the same seed.

Llama-3 only: as in the real Llama-3 base, the rows of every special token except
``<|begin_of_text|>`` / ``<|end_of_text|>`` are "untrained" (about 1e-4) in
base and CP; the chat model has trained rows for the tokens its template uses
(``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>``).

``config.json`` is rewritten in the layout of Hub checkpoints (``rope_theta``,
``rope_scaling``, ``torch_dtype``) unless ``config_style="v5"`` keeps what
transformers 5 writes (``rope_parameters``, ``dtype``); transformers loads both.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.corpus import CORPUS, EXTENSION_WORDS

KINDS = ("llama2", "llama3", "mistral", "qwen2", "qwen3")
# Families added with issue 15; built only by their own tests (not part of every KINDS parametrization).
NEW_KINDS = ("gemma2", "gemma3", "phi3")
ALL_KINDS = KINDS + NEW_KINDS
SLIDING_WINDOW = 32  # shorter than the parity prompt, so the local layers' window matters

HIDDEN = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 64
INTERMEDIATE = 512
MAX_POSITIONS = 2048
INIT_RANGE = 0.1
CHAT_SCALE = 0.05
CP_SCALE = 0.05
MIN_EXTENSION = 50


@dataclass(frozen=True)
class Family:
    """Paths of the three saved HF folders of one tiny model family."""

    kind: str
    base: Path
    chat: Path
    cp: Path


# --------------------------------------------------------------------------- chat templates
# The real templates of the families (Llama-3 and Qwen3 slightly shortened: no tool calls).

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{% if loop.last and system_message is defined %}"
    r"{{ '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user, assistant and system roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = LLAMA3_TEMPLATE.replace("\n", r"\n")

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    r"{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    r"{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    r"{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}"
    r"{{- '<|im_start|>assistant\n' }}"
    r"{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)

# --------------------------------------------------------------------------- tokenizer descriptions

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama-3.1's special tokens in their order, cut to 16 (the real list has 256).
LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|reserved_special_token_3|>",
    "<|reserved_special_token_4|>", "<|reserved_special_token_5|>", "<|reserved_special_token_6|>",
    "<|reserved_special_token_7|>",
)
# (content, special) appended after the regular vocabulary, as in Qwen2 / Qwen3.
QWEN2_ADDED = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True))
QWEN3_ADDED = QWEN2_ADDED + (("<tool_call>", False), ("</tool_call>", False), ("<think>", False), ("</think>", False))
# Mistral v0.3 style control pieces at ids 3.. inside tokenizer.model.
MISTRAL_CONTROLS = (
    "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)

SPM_VOCAB = 1000
BPE_VOCAB = {"llama3": 1264, "qwen2": 1277, "qwen3": 1273}  # regular tokens; totals 1280 with the specials

# Rows of these tokens are "untrained" in base and CP (Llama-3 only), and trained in chat for CHAT_TRAINED.
LLAMA3_UNTRAINED = LLAMA3_SPECIALS[2:]
LLAMA3_CHAT_TRAINED = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@dataclass(frozen=True)
class _Vocab:
    """What the model side needs to know about a written tokenizer."""

    size: int
    ids: Mapping[str, int] = field(default_factory=dict)  # special token text -> id


def _corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


# --------------------------------------------------------------------------- SentencePiece (llama2, mistral)


@functools.lru_cache(maxsize=None)
def _spm_model(kind: str, extended: bool) -> bytes:
    """Serialized SentencePiece ModelProto trained like Llama-2's (BPE, byte fallback, identity normalization)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    if extended:
        proto = pb.ModelProto()
        proto.ParseFromString(_spm_model(kind, False))
        _extend_spm(proto)
        return proto.SerializeToString()

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=SPM_VOCAB,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        character_coverage=0.9995,
        split_by_unicode_script=True,
        split_by_number=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        control_symbols=list(MISTRAL_CONTROLS) if kind == "mistral" else [],
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def _extend_spm(proto) -> None:
    """Append new pieces the way Chinese-LLaMA extended Llama's tokenizer.model.

    Characters missing from the vocabulary come first, then every prefix of each
    extension word needed for BPE to reach the word by pairwise merges. Scores
    continue below the lowest existing score so the new pieces merge last and
    every original piece keeps its id and behaviour.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    have = {p.piece for p in proto.pieces}
    score = min(p.score for p in proto.pieces)
    new: list[str] = []

    def add(piece: str) -> None:
        if piece not in have:
            have.add(piece)
            new.append(piece)

    for word in EXTENSION_WORDS:
        for char in word:
            add(char)
    for word in EXTENSION_WORDS:
        for end in range(2, len(word) + 1):
            add(word[:end])
    for piece in new:
        score -= 1.0
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=score, type=pb.ModelProto.SentencePiece.NORMAL))


@functools.lru_cache(maxsize=None)
def _spm_tokenizer_json(kind: str, extended: bool) -> str:
    """tokenizer.json as transformers converts the tokenizer.model (Hub Llama-2 / Mistral repos ship both)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.model").write_bytes(_spm_model(kind, extended))
        Path(tmp, "tokenizer_config.json").write_text(json.dumps(_spm_config(kind, extended, chat=False)))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        return tokenizer.backend_tokenizer.to_str()


def _spm_specials(kind: str) -> list[tuple[int, str]]:
    controls = MISTRAL_CONTROLS if kind == "mistral" else ()
    return [(0, "<unk>"), (1, "<s>"), (2, "</s>")] + [(3 + i, c) for i, c in enumerate(controls)]


def _spm_config(kind: str, extended: bool, *, chat: bool) -> dict:
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_token(text, True) for i, text in _spm_specials(kind)},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    if chat:
        config["chat_template"] = LLAMA2_TEMPLATE if kind == "llama2" else MISTRAL_TEMPLATE
    return config


def _write_spm(kind: str, out_dir: Path, *, extended: bool, chat: bool) -> _Vocab:
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = _spm_model(kind, extended)
    (out_dir / "tokenizer.model").write_bytes(model)
    (out_dir / "tokenizer.json").write_text(_spm_tokenizer_json(kind, extended), encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", _spm_config(kind, extended, chat=chat))
    _write_json(out_dir / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    proto = pb.ModelProto()
    proto.ParseFromString(model)
    return _Vocab(size=len(proto.pieces), ids={text: i for i, text in _spm_specials(kind)})


# --------------------------------------------------------------------------- byte-level BPE (llama3, qwen2, qwen3)


def _bpe_added(kind: str) -> tuple[tuple[str, bool], ...]:
    if kind == "llama3":
        return tuple((text, True) for text in LLAMA3_SPECIALS)
    return QWEN3_ADDED if kind == "qwen3" else QWEN2_ADDED


def _byte_level_pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers

    regex = LLAMA3_REGEX if kind == "llama3" else QWEN2_REGEX
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


@functools.lru_cache(maxsize=None)
def _bpe_trained(kind: str) -> str:
    """tokenizer.json text of the regular vocabulary (no special tokens yet), trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=kind == "llama3"))
    if kind != "llama3":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(kind)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB[kind],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer)
    return tokenizer.to_str()


@functools.lru_cache(maxsize=None)
def _bpe_tokenizer_json(kind: str, extended: bool) -> str:
    """Full tokenizer.json: trained vocabulary, added special tokens, post-processor, optional extension.

    Layout: regular tokens 0..R-1, added tokens R..R+S-1 (as on the Hub, where
    they live only in ``added_tokens``). Extended: the new tokens get ids from
    R+S on, with merges appended after the original ones; because the model's
    vocabulary then has a gap, the added tokens are also listed in
    ``model.vocab`` at their ids (otherwise ``tokenizers`` would renumber them).
    """
    from tokenizers import Tokenizer

    data = json.loads(_bpe_trained(kind))
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    regular = len(vocab)
    added = _bpe_added(kind)
    added_ids = {text: regular + i for i, (text, _special) in enumerate(added)}
    if extended:
        new_tokens, new_merges = _bpe_extension(kind)
        vocab.update(added_ids)
        for i, token in enumerate(new_tokens):
            vocab[token] = regular + len(added) + i
        merges += list(new_merges)
    data["model"]["vocab"] = vocab
    data["model"]["merges"] = merges
    data["added_tokens"] = [
        _added_token(text, special) | {"id": added_ids[text]} for text, special in added
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if kind == "llama3":
        bos = "<|begin_of_text|>"
        bos_id = added_ids[bos]
        template = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
        data["post_processor"] = {"type": "Sequence", "processors": [byte_level, template]}
    else:
        data["post_processor"] = byte_level
    text = json.dumps(data, ensure_ascii=False, indent=2)
    Tokenizer.from_str(text)  # fail here, not in a test, if the file is not loadable
    return text


def _bpe_segment(word: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE of one pre-token: apply the lowest-ranked merge present, leftmost first, until none."""
    pieces = list(word)
    while len(pieces) > 1:
        pairs = [ranks.get((a, b), len(ranks)) for a, b in zip(pieces, pieces[1:])]
        best = min(range(len(pairs)), key=pairs.__getitem__)
        if pairs[best] == len(ranks):
            break
        pieces[best : best + 2] = [pieces[best] + pieces[best + 1]]
    return pieces


@functools.lru_cache(maxsize=None)
def _bpe_extension(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """New byte-level tokens and merges making each extension character and word one token.

    Each character, then each word, is segmented with the merges added so far,
    and its pieces are joined left to right, one new merge per step;
    intermediate pieces not yet in the vocabulary become tokens too. A new merge
    ranks after every existing one, so earlier merges run first and the chain
    then completes the word; text without the new characters is tokenized as
    before. (Every extension word is a single pre-token, so segmenting it alone
    is what the tokenizer does inside a sentence too.)
    """
    from tokenizers import pre_tokenizers

    data = json.loads(_bpe_trained(kind))
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    known = set(vocab)
    new_tokens: list[str] = []
    new_merges: list[str] = []
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    for text in [c for w in EXTENSION_WORDS for c in w] + list(EXTENSION_WORDS):
        word = "".join(p for p, _ in to_bytes.pre_tokenize_str(text))
        if word in known:
            continue
        pieces = _bpe_segment(word, ranks)
        joined = pieces[0]
        for piece in pieces[1:]:
            if (joined, piece) not in ranks:
                ranks[(joined, piece)] = len(ranks)
                new_merges.append(f"{joined} {piece}")
            joined += piece
            if joined not in known:
                known.add(joined)
                new_tokens.append(joined)
    return tuple(new_tokens), tuple(new_merges)


def _bpe_config(kind: str, *, chat: bool) -> dict:
    added = _bpe_added(kind)
    regular = len(json.loads(_bpe_trained(kind))["model"]["vocab"])
    decoder = {str(regular + i): _added_token(text, special) for i, (text, special) in enumerate(added)}
    if kind == "llama3":
        config = {
            "added_tokens_decoder": decoder,
            "bos_token": "<|begin_of_text|>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|eot_id|>" if chat else "<|end_of_text|>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 1000000000000000019884624838656,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        if chat:
            config["chat_template"] = LLAMA3_TEMPLATE
        return config
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>" if chat else "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768 if kind == "qwen2" else 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if chat:
        config["chat_template"] = QWEN2_TEMPLATE if kind == "qwen2" else QWEN3_TEMPLATE
    return config


def _write_bpe(kind: str, out_dir: Path, *, extended: bool, chat: bool) -> _Vocab:
    text = _bpe_tokenizer_json(kind, extended)
    (out_dir / "tokenizer.json").write_text(text, encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", _bpe_config(kind, chat=chat))
    data = json.loads(text)
    ids = {token["content"]: token["id"] for token in data["added_tokens"]}
    size = max(max(data["model"]["vocab"].values()), max(ids.values())) + 1
    return _Vocab(size=size, ids=ids)


# --------------------------------------------------------------------------- Gemma 2/3 and Phi-3 (SentencePiece)

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    r"{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    r"{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    r"{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    r"{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    r"{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Gemma's control pieces at the front of tokenizer.model (as in the real one: pad, eos, bos, unk),
# its turn markers as user-defined pieces inside it.
GEMMA_SPECIALS = ((0, "<pad>"), (1, "<eos>"), (2, "<bos>"), (3, "<unk>"), (4, "<mask>"), (5, "<start_of_turn>"), (6, "<end_of_turn>"))
# Phi-3's added tokens after the SentencePiece vocabulary, in their real order (32000...).
PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")
PHI3_VOCAB = 1024  # embedding rows: the tokenizer's 1011 padded, as Phi-3's 32064 pads 32011
PHI3_HEAD_DIM = HIDDEN // HEADS


@functools.lru_cache(maxsize=None)
def _gemma_spm_model() -> bytes:
    """A SentencePiece model trained like Gemma's: BPE, byte fallback, no dummy prefix, digits split."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()), model_writer=buffer, model_type="bpe", vocab_size=SPM_VOCAB,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, max_sentencepiece_length=16,
        character_coverage=0.9995, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=["<mask>"], user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], num_threads=1, minloglevel=2,
    )
    return buffer.getvalue()


def _new_spm_config(kind: str, *, chat: bool) -> dict:
    if kind == "phi3":
        decoder = {str(i): _added_token(t, True) for i, t in _spm_specials("llama2")}
        decoder.update({str(SPM_VOCAB + i): _added_token(t, True) for i, t in enumerate(PHI3_ADDED)})
        config = {
            "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
            "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "legacy": False,
            "pad_token": "<|endoftext|>", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
            "model_max_length": 131072,
        }
        if chat:
            config["chat_template"] = PHI3_TEMPLATE
        return config
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_token(t, True) for i, t in GEMMA_SPECIALS},
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>", "mask_token": "<mask>", "pad_token": "<pad>", "sp_model_kwargs": {},
        "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>",
    }
    if chat:
        config["chat_template"] = GEMMA_TEMPLATE
    return config


@functools.lru_cache(maxsize=None)
def _new_spm_tokenizer_json(kind: str) -> str:
    """tokenizer.json as transformers converts the tokenizer.model (the Hub repos ship both)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.model").write_bytes(_gemma_spm_model() if kind != "phi3" else _spm_model("llama2", False))
        Path(tmp, "tokenizer_config.json").write_text(json.dumps(_new_spm_config(kind, chat=False)))
        return AutoTokenizer.from_pretrained(tmp).backend_tokenizer.to_str()


def _write_new_spm(kind: str, out_dir: Path, *, chat: bool) -> _Vocab:
    model = _gemma_spm_model() if kind != "phi3" else _spm_model("llama2", False)
    (out_dir / "tokenizer.model").write_bytes(model)
    (out_dir / "tokenizer.json").write_text(_new_spm_tokenizer_json(kind), encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", _new_spm_config(kind, chat=chat))
    if kind == "phi3":
        ids = {t: i for i, t in _spm_specials("llama2")} | {t: SPM_VOCAB + i for i, t in enumerate(PHI3_ADDED)}
        _write_json(out_dir / "added_tokens.json", {t: SPM_VOCAB + i for i, t in enumerate(PHI3_ADDED)})
        return _Vocab(size=PHI3_VOCAB, ids=ids)
    return _Vocab(size=SPM_VOCAB, ids={t: i for i, t in GEMMA_SPECIALS})


def _new_model_config(kind: str, vocab: _Vocab, common: dict, *, chat: bool):
    """Gemma 2 (soft-capping, alternating local/global layers), Gemma 3 (q/k norms, two rope bases),
    Phi-3 128k (LongRoPE, GQA) at the tiny sizes of the other families."""
    from transformers import Gemma2Config, Gemma3TextConfig, Phi3Config

    ids = vocab.ids
    if kind == "phi3":
        common = {k: v for k, v in common.items() if k != "head_dim"}
        gen = torch.Generator().manual_seed(3)
        pairs = PHI3_HEAD_DIM // 2
        rope = {
            "rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [round(float(x), 4) for x in 1.0 + 2.0 * torch.rand(pairs, generator=gen)],
            "long_factor": [round(float(x), 4) for x in 1.0 + 8.0 * torch.rand(pairs, generator=gen)],
            "original_max_position_embeddings": 4096,
        }
        common["max_position_embeddings"] = 131072
        return Phi3Config(**common, rms_norm_eps=1e-5, rope_parameters=rope, original_max_position_embeddings=4096,
                          sliding_window=2047, tie_word_embeddings=False, bos_token_id=ids["<s>"],
                          eos_token_id=ids["<|end|>" if chat else "<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
    common = {k: v for k, v in common.items() if k != "hidden_act"}
    shared = dict(
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, query_pre_attn_scalar=HEAD_DIM, sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
        bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"],
    )
    if kind == "gemma2":
        return Gemma2Config(**common, **shared, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
    return Gemma3TextConfig(**common, **shared, rope_parameters=rope)


# --------------------------------------------------------------------------- public tokenizer API


def _added_token(text: str, special: bool) -> dict:
    return {
        "content": text,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _check_kind(kind: str) -> None:
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(ALL_KINDS)}")


def _write_tokenizer(kind: str, out_dir: Path, *, extended: bool, chat: bool) -> _Vocab:
    _check_kind(kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind in ("llama2", "mistral"):
        return _write_spm(kind, out_dir, extended=extended, chat=chat)
    if kind in NEW_KINDS:
        if extended:
            raise ValueError(f"{kind}: no extended-vocabulary variant")
        return _write_new_spm(kind, out_dir, chat=chat)
    return _write_bpe(kind, out_dir, extended=extended, chat=chat)


def make_tokenizer(kind: str, out_dir: Path, *, extended: bool = False, chat: bool = False) -> None:
    """Write only the tokenizer files of ``kind`` into ``out_dir`` (created if missing).

    ``extended`` gives the CP's extended vocabulary; ``chat`` the chat model's
    tokenizer_config (chat template, end-of-turn eos) instead of the base one.
    Training is cached per process, so repeated calls are cheap.
    """
    _write_tokenizer(kind, Path(out_dir), extended=extended, chat=chat)


# --------------------------------------------------------------------------- weights


def perturb(tensors: Mapping[str, torch.Tensor], *, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Return ``t + scale * std(t) * N(0, 1)`` for every tensor, in float32.

    Why std-scaled: the change is the same relative size for embeddings,
    projections, norms and biases, like the drift of fine-tuning. Noise is drawn
    from one generator seeded with ``seed``, tensors taken in sorted name order,
    so the result depends only on the inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(tensors):
        tensor = tensors[name].detach().to(torch.float32)
        std = float(tensor.std()) if tensor.numel() > 1 else 0.0
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        out[name] = tensor + scale * (std or 1.0) * noise
    return out


def _model_class(kind: str):
    import transformers

    name = {
        "llama2": "LlamaForCausalLM",
        "llama3": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "gemma2": "Gemma2ForCausalLM",
        "gemma3": "Gemma3ForCausalLM",
        "phi3": "Phi3ForCausalLM",
    }[kind]
    return getattr(transformers, name)


def _model_config(kind: str, vocab: _Vocab, *, chat: bool):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab.size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_RANGE,
        hidden_act="silu",
    )
    ids = vocab.ids
    if kind in NEW_KINDS:
        return _new_model_config(kind, vocab, common, chat=chat)
    if kind == "llama2":
        return LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
    if kind == "mistral":
        return MistralConfig(
            **common, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, bos_token_id=1, eos_token_id=2
        )
    if kind == "llama3":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        common["max_position_embeddings"] = 131072  # as Llama-3.1; must exceed the original 8192
        return LlamaConfig(
            **common,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=rope_scaling,
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=ids["<|eot_id|>" if chat else "<|end_of_text|>"],
        )
    cls = Qwen2Config if kind == "qwen2" else Qwen3Config
    extra = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": LAYERS}
    if kind == "qwen3":
        extra["attention_bias"] = False
    return cls(
        **common,
        **extra,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>" if chat else "<|endoftext|>"],
    )


def _generation_config(kind: str, vocab: _Vocab, *, chat: bool):
    from transformers import GenerationConfig

    ids = vocab.ids
    if kind in NEW_KINDS:
        eos, eot = (ids["<eos>"], ids["<end_of_turn>"]) if kind != "phi3" else (ids["<|endoftext|>"], ids["<|end|>"])
        bos = ids["<bos>"] if kind != "phi3" else ids["<s>"]
        return GenerationConfig(bos_token_id=bos, eos_token_id=[eos, eot] if chat else eos, pad_token_id=ids.get("<pad>", eos))
    if kind in ("llama2", "mistral"):
        return GenerationConfig(bos_token_id=1, eos_token_id=2)
    if kind == "llama3":
        eos = [ids["<|end_of_text|>"], ids["<|eot_id|>"]] if chat else ids["<|end_of_text|>"]
        return GenerationConfig(bos_token_id=ids["<|begin_of_text|>"], eos_token_id=eos)
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]] if chat else ids["<|endoftext|>"]
    return GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=eos, pad_token_id=ids["<|endoftext|>"])


def _params(model) -> dict[str, torch.Tensor]:
    """Float32 copies of the model's parameters (tied weights appear once)."""
    return {name: p.detach().to(torch.float32).clone() for name, p in model.named_parameters()}


def _load_params(model, values: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(values[name])


def _embedding_names(model) -> tuple[str, str | None]:
    names = dict(model.named_parameters())
    head = "lm_head.weight" if "lm_head.weight" in names else None
    return "model.embed_tokens.weight", head


def _init_base(model, kind: str, vocab: _Vocab, generator: torch.Generator) -> dict[str, torch.Tensor]:
    params = _params(model)
    for name, tensor in params.items():
        if name.endswith("norm.weight"):
            tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
        elif name.endswith(".bias"):
            tensor.copy_(INIT_RANGE * torch.randn(tensor.shape, generator=generator))
    if kind == "llama3":
        rows = [vocab.ids[text] for text in LLAMA3_UNTRAINED]
        for name in filter(None, _embedding_names(model)):
            tiny = 1e-4 * torch.randn((len(rows), HIDDEN), generator=generator)
            params[name][rows] = tiny
    return params


def _fix_config_file(folder: Path, style: str) -> None:
    """Rewrite config.json in the layout of Hub checkpoints (rope_theta / rope_scaling / torch_dtype)."""
    if style == "v5":
        return
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    config.pop("layer_types", None)
    _write_json(path, dict(sorted(config.items())))


def _save(model, folder: Path, params: Mapping[str, torch.Tensor], style: str) -> None:
    from transformers.utils import logging as hf_logging

    _load_params(model, params)
    model.to(torch.bfloat16)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a shard bar per folder is noise in test logs
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.to(torch.float32)
    _fix_config_file(folder, style)


def make_family(
    kind: str, root: Path, *, extended: bool = False, seed: int = 0, config_style: str = "hub"
) -> Family:
    """Build and save the base, chat and CP checkpoints of ``kind`` under ``root``.

    Folders: ``root/<kind>-base``, ``root/<kind>-chat`` and ``root/<kind>-cp``
    (``<kind>-cp-ext`` when ``extended``). Deterministic for a given ``seed``;
    base and chat do not depend on ``extended``.
    """
    _check_kind(kind)
    if kind in NEW_KINDS:
        config_style = "v5"  # transformers 5's layout (Gemma 3's per-layer-type rope settings have no older form)
    if config_style not in ("hub", "v5"):
        raise ValueError(f"config_style must be 'hub' or 'v5', not {config_style!r}")
    root = Path(root)
    family = Family(
        kind=kind,
        base=root / f"{kind}-base",
        chat=root / f"{kind}-chat",
        cp=root / (f"{kind}-cp-ext" if extended else f"{kind}-cp"),
    )
    for folder in (family.base, family.chat, family.cp):
        if folder.exists():
            shutil.rmtree(folder)

    base_vocab = _write_tokenizer(kind, family.base, extended=False, chat=False)
    _write_tokenizer(kind, family.chat, extended=False, chat=True)
    cp_vocab = _write_tokenizer(kind, family.cp, extended=extended, chat=False)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _model_class(kind)(_model_config(kind, base_vocab, chat=False))
    model.eval()
    base = _init_base(model, kind, base_vocab, generator)
    chat = perturb(base, seed=seed * 7919 + 1, scale=CHAT_SCALE)
    cp = perturb(base, seed=seed * 7919 + 2, scale=CP_SCALE)
    embed, head = _embedding_names(model)
    if kind == "llama3":
        # Untrained in base and CP; trained (fresh rows) in chat for the template's tokens.
        untrained = [base_vocab.ids[text] for text in LLAMA3_UNTRAINED]
        trained = [base_vocab.ids[text] for text in LLAMA3_CHAT_TRAINED]
        for name in filter(None, (embed, head)):
            cp[name][untrained] = base[name][untrained]
            chat[name][untrained] = base[name][untrained]
            chat[name][trained] = INIT_RANGE * torch.randn((len(trained), HIDDEN), generator=generator)

    model.generation_config = _generation_config(kind, base_vocab, chat=False)
    _save(model, family.base, base, config_style)

    model.config.eos_token_id = _model_config(kind, base_vocab, chat=True).eos_token_id
    model.generation_config = _generation_config(kind, base_vocab, chat=True)
    _save(model, family.chat, chat, config_style)

    model.config.eos_token_id = _model_config(kind, base_vocab, chat=False).eos_token_id
    model.generation_config = _generation_config(kind, base_vocab, chat=False)
    _load_params(model, cp)
    if cp_vocab.size != base_vocab.size:
        model.resize_token_embeddings(cp_vocab.size, mean_resizing=False)
        cp = _params(model)
        new_rows = slice(base_vocab.size, cp_vocab.size)
        for name in filter(None, _embedding_names(model)):
            rows = cp[name][new_rows]
            rows.copy_(INIT_RANGE * torch.randn(rows.shape, generator=generator))
    _save(model, family.cp, cp, config_style)
    return family
