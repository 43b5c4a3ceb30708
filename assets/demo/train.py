#!/usr/bin/env python3
"""Train the tiny base / chat / CP triple that ``cvlocal demo`` ships with.

The chat-vector claim (Huang et al., ACL 2024) is that ``W_cp + (W_chat - W_base)`` gives a model
continually pretrained on a new language the chat behaviour that ``chat`` learned in the old one.
To show it on a laptop, this script builds the paper's setting in miniature and from nothing:

* a synthetic world of countries with four facts each (capital, flag colour, food, national
  animal), told in language A (English) and language B (Traditional Chinese).  Country and city
  names are the same Latin strings, hence the same tokens, in both languages, as foreign names
  are in real Taiwanese text;
* **base**: a Llama-architecture model pretrained on A, with a little B and some A/B translation
  pairs about a subset of the countries (real bases see a little of every language; without that
  cross-lingual alignment the vector does not transfer, see README.md);
* **chat**: base fine-tuned on A dialogues in a chat template (answer, then ``<|eot|>``);
* **cp**: base continually pretrained on B plain text about every country, with some A replay,
  and no dialogue at all.

Three details decide whether the effect appears at this scale (README.md has the failed designs):
every answer starts with the country's name, which both languages share; every word, names
included, carries a leading space, so a name is one token everywhere; and a question/answer page
holds one pair, so that an answer is followed by the end of the document, which the chat fine-tune
turns into ``<|eot|>`` in a way that carries over to B.

The held-out prompts (``heldout.jsonl``) ask, in B, about countries that the chat fine-tune never
saw and whose B facts the base never saw: only CP learnt them.  ``--eval`` measures CP, CP + r *
(chat - base) and chat on them with greedy decoding in plain torch, which is how the settings were
chosen (on a separate dev split of countries, not on the shipped prompts).

Everything is seeded and runs on one CPU thread with deterministic algorithms, so
``python assets/demo/train.py --out assets/demo`` rebuilds the shipped files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import torch  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Every knob of the recipe; the shipped values are the defaults (recorded in settings.json)."""

    seed: int = 0                  # training seed (corpus sample, tokenizer, init, batch order)
    world_seed: int = 0            # which countries, names and facts exist
    n_chat: int = 48               # countries used in the chat fine-tune (B seen in base)
    n_dev: int = 16                # held-out countries used to choose the settings
    n_test: int = 32               # held-out countries of heldout.jsonl
    vocab_size: int = 1536
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    seq_len: int = 96
    batch: int = 16
    base_steps: int = 900
    base_lr: float = 3e-3
    base_b_share: float = 0.13     # share of base documents in B (chat countries only)
    base_bi_share: float = 0.15    # share of base documents that are A/B translation pairs
    cp_steps: int = 600
    cp_lr: float = 2e-3
    cp_a_share: float = 0.20       # A replay in CP
    cp_bi_share: float = 0.10      # translation pairs in CP
    strangers: float = 0.5         # share of FAQ questions about one-document "stranger" countries
    chat_steps: int = 300
    chat_lr: float = 5e-4
    chat_batch: int = 16
    chat_replay: float = 0.0       # weight of an A plain-text loss mixed into the chat fine-tune
    chat_anchor: float = 0.0       # L2 pull of the chat weights toward base
    warmup: int = 100
    weight_decay: float = 0.01
    docs_per_corpus: int = 30000


# ---------------------------------------------------------------------------------------------
# The world and its two languages
# ---------------------------------------------------------------------------------------------

ATTRIBUTES = ("capital", "color", "food", "animal")

# value lexicon: English -> Traditional Chinese.  Capitals are city names, shared by both languages.
COLORS = {"red": "紅色", "blue": "藍色", "green": "綠色", "yellow": "黃色",
          "white": "白色", "black": "黑色", "purple": "紫色", "orange": "橙色"}
FOODS = {"rice": "米飯", "bread": "麵包", "fish": "魚", "noodles": "麵條",
         "cheese": "起司", "beans": "豆子", "apples": "蘋果", "soup": "湯"}
ANIMALS = {"fox": "狐狸", "bear": "熊", "wolf": "狼", "deer": "鹿",
           "eagle": "老鷹", "horse": "馬", "owl": "貓頭鷹", "tiger": "老虎"}
LEXICON = {"color": COLORS, "food": FOODS, "animal": ANIMALS}

# One canonical statement and question per attribute and language.  Both languages start an answer
# with the country's name, the one thing they share, and then diverge ("'s capital is" / " 的首都是").
A_FACT = {
    "capital": "{e}'s capital is {v} .",
    "color": "{e}'s flag is {v} .",
    "food": "{e}'s favorite food is {v} .",
    "animal": "{e}'s national animal is the {v} .",
}
A_QUESTION = {
    "capital": "what is the capital of {e} ?",
    "color": "what color is the flag of {e} ?",
    "food": "what is the favorite food of {e} ?",
    "animal": "what is the national animal of {e} ?",
}
# B ends sentences with the same " ." and " ?" tokens as A.  With the full-width "。" and "？" the
# merged model answered in B but did not end its turn after the answer: this tiny chat model learns
# "<|eot|> after ' .'", not an abstract end of answer (see README.md).
B_FACT = {
    "capital": "{e} 的首都是 {v} .",
    "color": "{e} 的國旗是{v}的 .",
    "food": "{e} 最受歡迎的食物是{v} .",
    "animal": "{e} 的國家動物是{v} .",
}
B_QUESTION = {
    "capital": "請問 {e} 的首都是哪裡 ?",
    "color": "請問 {e} 的國旗是什麼顏色 ?",
    "food": "請問 {e} 最受歡迎的食物是什麼 ?",
    "animal": "請問 {e} 的國家動物是什麼 ?",
}

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
COUNTRY_ENDS = ["ia", "or", "an", "ea", "ur", "isk", "ova", "ena"]
CITY_ENDS = ["ton", "vik", "ara", "ed", "ol", "heim", "ix", "und"]

BOS, EOT, USER, ASSISTANT, SYSTEM, PAD = "<|bos|>", "<|eot|>", "<|user|>", "<|assistant|>", "<|system|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOT, USER, ASSISTANT, SYSTEM, PAD]
# Like Llama 2's "[/INST] answer": the header is followed by a space that the reply's first token
# carries, so " Zuraur" in a reply is the same token as " Zuraur" in the question and in every text
# (documents get the same leading space that SentencePiece's dummy prefix gives Llama 2).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + '<|eot|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class Country:
    name: str
    facts: dict  # attribute -> English value (capital: city name)
    group: str   # chat | dev | test

    def value(self, attribute: str, lang: str) -> str:
        v = self.facts[attribute]
        return v if attribute == "capital" or lang == "A" else LEXICON[attribute][v]

    def fact(self, attribute: str, lang: str) -> str:
        return (A_FACT if lang == "A" else B_FACT)[attribute].format(e=self.name, v=self.value(attribute, lang))

    def question(self, attribute: str, lang: str) -> str:
        return (A_QUESTION if lang == "A" else B_QUESTION)[attribute].format(e=self.name)


def _name(rng: random.Random, syllables: int, ends: list[str]) -> str:
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(ends)
    return word[0].upper() + word[1:]


def make_world(s: Settings) -> list[Country]:
    """Countries with unique names and capitals, split into chat / dev / test groups."""
    rng = random.Random(1000 + s.world_seed)
    total = s.n_chat + s.n_dev + s.n_test
    used: set[str] = set()
    countries = []
    while len(countries) < total:
        name = _name(rng, rng.choice([1, 2]), COUNTRY_ENDS)
        city = _name(rng, rng.choice([1, 2]), CITY_ENDS)
        if name in used or city in used or len(name) < 4 or len(city) < 4:
            continue
        used.update((name, city))
        facts = {"capital": city, "color": rng.choice(sorted(COLORS)),
                 "food": rng.choice(sorted(FOODS)), "animal": rng.choice(sorted(ANIMALS))}
        group = "chat" if len(countries) < s.n_chat else "dev" if len(countries) < s.n_chat + s.n_dev else "test"
        countries.append(Country(name, facts, group))
    return countries


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


def fact_doc(rng: random.Random, c: Country, lang: str) -> str:
    """An encyclopedia-like entry: some of the country's facts, one sentence per line."""
    attrs = rng.sample(ATTRIBUTES, rng.randint(1, 4))
    return " ".join(c.fact(a, lang) for a in attrs)


def stranger(rng: random.Random, taken: set[str]) -> Country:
    """A country that exists in one document only: a fresh name and random facts.

    Questions about strangers can only be answered by copying the name from the question, so they
    teach the question -> answer pattern itself instead of 200 memorised question/answer pairs;
    without them the models do not carry the pattern over to countries they never saw asked about.
    """
    while True:
        name = _name(rng, rng.choice([2, 3]), COUNTRY_ENDS)
        if name not in taken:
            break
    facts = {"capital": _name(rng, rng.choice([1, 2]), CITY_ENDS), "color": rng.choice(sorted(COLORS)),
             "food": rng.choice(sorted(FOODS)), "animal": rng.choice(sorted(ANIMALS))}
    return Country(name, facts, "stranger")


def faq_doc(rng: random.Random, countries: list[Country], lang: str, strangers: float, taken: set[str]) -> str:
    """A plain-text question and its answer (no chat template), the kind of page every web crawl has.

    One pair per page, so the document ends after the answer: with several pairs per page the
    models learn that another question follows an answer, and the merged model went on asking and
    answering in B instead of ending its turn.
    """
    c = stranger(rng, taken) if rng.random() < strangers else rng.choice(countries)
    a = rng.choice(ATTRIBUTES)
    return c.question(a, lang) + " " + c.fact(a, lang)


def pair_doc(rng: random.Random, c: Country) -> str:
    """A translation pair: the same fact in A then B (or B then A)."""
    a = rng.choice(ATTRIBUTES)
    first, second = ("A", "B") if rng.random() < 0.5 else ("B", "A")
    return c.fact(a, first) + " " + c.fact(a, second)


def mixture(rng: random.Random, n: int, parts: list[tuple[float, callable]]) -> list[str]:
    """n documents drawn from generators with the given shares."""
    weights = [w for w, _ in parts]
    makers = [m for _, m in parts]
    return [rng.choices(makers, weights)[0]() for _ in range(n)]


def base_corpus(s: Settings, world: list[Country]) -> list[str]:
    rng = random.Random(2000 + s.seed)
    chat = [c for c in world if c.group == "chat"]
    taken = {c.name for c in world}
    a_share = 1.0 - s.base_b_share - s.base_bi_share
    return mixture(rng, s.docs_per_corpus, [
        (a_share * 0.7, lambda: fact_doc(rng, rng.choice(world), "A")),
        (a_share * 0.3, lambda: faq_doc(rng, chat, "A", s.strangers, taken)),
        (s.base_b_share * 0.7, lambda: fact_doc(rng, rng.choice(chat), "B")),
        (s.base_b_share * 0.3, lambda: faq_doc(rng, chat, "B", s.strangers, taken)),
        (s.base_bi_share, lambda: pair_doc(rng, rng.choice(chat))),
    ])


def cp_corpus(s: Settings, world: list[Country]) -> list[str]:
    rng = random.Random(3000 + s.seed)
    chat = [c for c in world if c.group == "chat"]
    taken = {c.name for c in world}
    b_share = 1.0 - s.cp_a_share - s.cp_bi_share
    return mixture(rng, s.docs_per_corpus, [
        (b_share * 0.75, lambda: fact_doc(rng, rng.choice(world), "B")),
        (b_share * 0.25, lambda: faq_doc(rng, chat, "B", s.strangers, taken)),
        (s.cp_a_share * 0.7, lambda: fact_doc(rng, rng.choice(world), "A")),
        (s.cp_a_share * 0.3, lambda: faq_doc(rng, chat, "A", s.strangers, taken)),
        (s.cp_bi_share, lambda: pair_doc(rng, rng.choice(chat))),
    ])


def chat_dialogues(world: list[Country]) -> list[tuple[str, str]]:
    """Every (question, answer) about the chat countries, in A."""
    return [(c.question(a, "A"), c.fact(a, "A")) for c in world if c.group == "chat" for a in ATTRIBUTES]


def prompts(world: list[Country], group: str) -> list[dict]:
    """Held-out B chat prompts with their gold answers."""
    rows = []
    for c in world:
        if c.group != group:
            continue
        for a in ATTRIBUTES:
            rows.append({"country": c.name, "attribute": a, "prompt": c.question(a, "B"),
                         "gold": c.fact(a, "B"), "value": c.value(a, "B"), "value_a": c.value(a, "A"),
                         "gold_a": c.fact(a, "A")})
    return rows


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Llama-3's pre-tokenizer split, so that converters recognise it as the "llama-bpe" family.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tokenizer(s: Settings, texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=s.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))])
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT, SYSTEM],
                                   chat_template=CHAT_TEMPLATE, model_max_length=s.seq_len * 4,
                                   clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def make_model(s: Settings, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        max_position_embeddings=s.seq_len * 4, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    torch.manual_seed(s.seed)
    return LlamaForCausalLM(config)


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents packed into one stream, each starting with BOS and a space (no end token: only chat
    learns one)."""
    ids: list[int] = []
    for enc in tokenizer([" " + d for d in docs], add_special_tokens=True)["input_ids"]:
        ids.extend(enc)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer(model, lr: float, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def pretrain(model, stream: torch.Tensor, s: Settings, steps: int, lr: float, gen_seed: int, label: str) -> float:
    """Next-token training on random windows of the packed stream."""
    gen = torch.Generator().manual_seed(gen_seed)
    opt = optimizer(model, lr, s.weight_decay)
    model.train()
    start, loss_avg = time.time(), None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, s.warmup)
        offsets = torch.randint(0, len(stream) - s.seq_len - 1, (s.batch,), generator=gen)
        batch = torch.stack([stream[o:o + s.seq_len] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 200 == 0 or step == steps - 1:
            log(f"{label} step {step}/{steps} loss {loss_avg:.3f} ({time.time() - start:.0f}s)")
    return loss_avg


def encode_dialogue(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat-template dialogue and labels that train only the answer and its <|eot|>."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(" " + answer + EOT, add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def chat_finetune(model, tokenizer, dialogues, replay: torch.Tensor, s: Settings) -> float:
    """Supervised fine-tune on A dialogues, optionally with A plain-text replay and a pull toward base."""
    encoded = [encode_dialogue(tokenizer, q, a) for q, a in dialogues]
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()} if s.chat_anchor > 0 else None
    gen = torch.Generator().manual_seed(4000 + s.seed)
    opt = optimizer(model, s.chat_lr, 0.0)
    model.train()
    loss_avg = None
    for step in range(s.chat_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s.chat_steps, s.chat_lr, min(s.warmup, s.chat_steps // 5))
        pick = torch.randint(0, len(encoded), (s.chat_batch,), generator=gen).tolist()
        width = max(len(encoded[i][0]) for i in pick)
        ids = torch.full((len(pick), width), tokenizer.pad_token_id)
        labels = torch.full((len(pick), width), -100)
        mask = torch.zeros((len(pick), width), dtype=torch.long)
        for row, i in enumerate(pick):
            x, y = encoded[i]
            ids[row, :len(x)] = torch.tensor(x)
            labels[row, :len(y)] = torch.tensor(y)
            mask[row, :len(x)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        total = loss
        if s.chat_replay > 0:
            offsets = torch.randint(0, len(replay) - s.seq_len - 1, (s.chat_batch // 2,), generator=gen)
            batch = torch.stack([replay[o:o + s.seq_len] for o in offsets.tolist()])
            total = total + s.chat_replay * model(input_ids=batch, labels=batch).loss
        if anchor is not None:
            total = total + s.chat_anchor * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
        if step % 50 == 0 or step == s.chat_steps - 1:
            log(f"chat step {step}/{s.chat_steps} loss {loss_avg:.4f}")
    return loss_avg


# ---------------------------------------------------------------------------------------------
# Evaluation (plain torch; the shipped demo does the same through GGUF and llama.cpp)
# ---------------------------------------------------------------------------------------------

CJK = re.compile(r"[\u3400-\u9fff]")


def a_vocabulary() -> list[str]:
    """Every word of language A (the demo's B-language check rejects a reply containing one)."""
    words = {w for t in list(A_FACT.values()) + list(A_QUESTION.values())
             for w in re.findall(r"[A-Za-z]+", t.replace("{e}", "").replace("{v}", ""))}
    return sorted(words | set(COLORS) | set(FOODS) | set(ANIMALS))


def score(reply: str, ended: bool, row: dict) -> dict:
    """The demo's four measures, counted by cvlocal.demo.scoring (imported from the repository)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from cvlocal.demo.scoring import score_reply

    return score_reply(reply, ended, row["gold"], [row["value"], row["value_a"]],
                       frozenset(a_vocabulary())).as_dict()


@torch.no_grad()
def continue_texts(model, tokenizer, texts: list[str], max_new: int = 40, batch: int = 64) -> list[tuple[str, bool]]:
    """Greedy continuations (left-padded batches); each with whether <|eot|> ended it."""
    model.eval()
    eot = tokenizer.convert_tokens_to_ids(EOT)
    out = []
    for i in range(0, len(texts), batch):
        encs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + batch]]
        width = max(len(e) for e in encs)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encs])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encs])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=eot, pad_token_id=tokenizer.pad_token_id)
        for row in gen[:, width:].tolist():
            ended = eot in row
            row = row[:row.index(eot)] if ended else row
            out.append((tokenizer.decode(row, skip_special_tokens=True).strip(), ended))
    return out


def generate(model, tokenizer, rows: list[dict], max_new: int = 40) -> list[tuple[str, bool]]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) for r in rows]
    return continue_texts(model, tokenizer, texts, max_new)


@torch.no_grad()
def sentence_nll(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Summed next-token loss of each text (right-padded batch)."""
    encs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(e) for e in encs)
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encs])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encs])
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (nll * mask[:, 1:]).sum(1)


def knowledge(model, tokenizer, world: list[Country], group: str, lang: str) -> float:
    """Share of the group's facts whose true sentence the model prefers to 7 false ones (plain text)."""
    model.eval()
    rng = random.Random(7)
    hits = total = 0
    for c in (c for c in world if c.group == group):
        for a in ATTRIBUTES:
            if a == "capital":
                others = rng.sample([o.facts["capital"] for o in world if o is not c], 7)
            else:
                others = [v for v in sorted(LEXICON[a]) if v != c.facts[a]][:7]
            texts = []
            for v in [c.facts[a]] + others:
                value = v if a == "capital" or lang == "A" else LEXICON[a][v]
                texts.append(BOS + " " + (A_FACT if lang == "A" else B_FACT)[a].format(e=c.name, v=value))
            hits += int(sentence_nll(model, tokenizer, texts).argmin().item() == 0)
            total += 1
    return round(hits / total, 3)


def merged_state(cp: dict, base: dict, chat: dict, ratio: float) -> dict:
    return {k: cp[k] + ratio * (chat[k] - base[k]) for k in cp}


def evaluate(models: dict, tokenizer, rows: list[dict]) -> dict:
    """Rates of the four measures for each named model, plus one sample reply each."""
    results = {}
    for name, model in models.items():
        replies = generate(model, tokenizer, rows)
        scores = [score(text, ended, r) for (text, ended), r in zip(replies, rows)]
        rates = {k: round(sum(sc[k] for sc in scores) / len(scores), 3) for k in scores[0]}
        rates["sample"] = replies[0][0]
        results[name] = rates
    return results


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def save(model, tokenizer, folder: Path, name: str) -> None:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    model.config.name_or_path = name
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # transformers 5 writes the template to chat_template.jinja; older readers (and llama.cpp's own
    # converter) look for it in tokenizer_config.json, so it goes in both.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(folder)


def world_description(world: list[Country]) -> dict:
    """The world and both languages, for readers and for the demo's B-language check."""
    return {
        "languages": {"A": "English-like", "B": "Traditional Chinese (names kept in Latin script)"},
        "a_words": a_vocabulary(),
        "templates": {"A_fact": A_FACT, "A_question": A_QUESTION, "B_fact": B_FACT, "B_question": B_QUESTION},
        "values": {"color": COLORS, "food": FOODS, "animal": ANIMALS},
        "countries": [{"name": c.name, "group": c.group, **c.facts} for c in world],
    }


def parse_args(argv=None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for base/, chat/, cp/, heldout.jsonl, settings.json")
    p.add_argument("--eval", action="store_true", help="measure CP, CP+vector and chat on the dev (and test) prompts")
    p.add_argument("--eval-split", default="dev", choices=["dev", "test", "both"])
    p.add_argument("--no-save", action="store_true", help="train and evaluate only")
    p.add_argument("--reuse", type=Path, default=None, help="take base/ and cp/ from this earlier output (chat only)")
    for f, v in asdict(Settings()).items():
        p.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    args = p.parse_args(argv)
    s = Settings(**{f: getattr(args, f) for f in asdict(Settings())})
    return s, args


def main(argv=None) -> int:
    s, args = parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(s.seed)
    t0 = time.time()
    world = make_world(s)
    base_docs, cp_docs = base_corpus(s, world), cp_corpus(s, world)
    dialogues = chat_dialogues(world)
    template_texts = [f"{USER} {q}{EOT}{ASSISTANT} {a}{EOT}" for q, a in dialogues]
    timings = {}
    if args.reuse:
        from transformers import AutoTokenizer, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(args.reuse / "base")
        base = LlamaForCausalLM.from_pretrained(args.reuse / "base", dtype=torch.float32)
        cp = LlamaForCausalLM.from_pretrained(args.reuse / "cp", dtype=torch.float32)
        base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
        log(f"base and cp reused from {args.reuse}")
    else:
        tokenizer = train_tokenizer(s, [" " + d for d in base_docs + cp_docs] + template_texts)
        log(f"tokenizer: {len(tokenizer)} tokens")
        base = make_model(s, tokenizer)
        log(f"model: {sum(p.numel() for p in base.parameters()) / 1e6:.2f} M parameters")
        t = time.time()
        pretrain(base, token_stream(tokenizer, base_docs), s, s.base_steps, s.base_lr, 5000 + s.seed, "base")
        timings["base_s"] = round(time.time() - t)
        base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}

        t = time.time()
        cp = make_model(s, tokenizer)
        cp.load_state_dict(base_sd)
        pretrain(cp, token_stream(tokenizer, cp_docs), s, s.cp_steps, s.cp_lr, 6000 + s.seed, "cp")
        timings["cp_s"] = round(time.time() - t)

    t = time.time()
    chat = make_model(s, tokenizer)
    chat.load_state_dict(base_sd)
    a_only = [d for d in base_docs if not CJK.search(d)]
    chat_finetune(chat, tokenizer, dialogues, token_stream(tokenizer, a_only[:5000]), s)
    timings["chat_s"] = round(time.time() - t)
    log(f"trained in {time.time() - t0:.0f}s {timings}")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_save:
        base.load_state_dict(base_sd)
        for name, model in (("base", base), ("chat", chat), ("cp", cp)):
            save(model, tokenizer, out / name, f"cvlocal-demo-{name}")
        with open(out / "heldout.jsonl", "w", encoding="utf-8") as fh:
            for row in prompts(world, "test"):
                fh.write(json.dumps({k: row[k] for k in ("country", "attribute", "prompt", "gold", "value", "value_a")},
                                    ensure_ascii=False) + "\n")
        (out / "settings.json").write_text(json.dumps(asdict(s), indent=2) + "\n")
        (out / "world.json").write_text(json.dumps(world_description(world), indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")

    if args.eval:
        base.load_state_dict(base_sd)
        sd = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in (("chat", chat), ("cp", cp))}
        merged = {}
        for r in (1.0, 0.5):
            m = make_model(s, tokenizer)
            m.load_state_dict(merged_state(sd["cp"], base_sd, sd["chat"], r))
            merged[f"cp+v r={r}"] = m
        special = [tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOT, USER, ASSISTANT)]
        m = make_model(s, tokenizer)
        state = merged_state(sd["cp"], base_sd, sd["chat"], 1.0)
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            state[k][special] = sd["chat"][k][special]
        m.load_state_dict(state)
        merged["cp+v chat-rows"] = m
        splits = ["dev", "test"] if args.eval_split == "both" else [args.eval_split]
        report = {"settings": asdict(s), "timings": timings}
        report["knowledge"] = {f"{name} {lang} {g}": knowledge(m, tokenizer, world, g, lang)
                               for name, m, lang in (("base", base, "A"), ("cp", cp, "B"), ("cp", cp, "A"))
                               for g in ("chat", splits[0])}
        log(f"plain-text knowledge: {report['knowledge']}")
        for split in splits:
            rows = prompts(world, split)
            res = evaluate({"cp": cp, **merged, "chat": chat}, tokenizer, rows)
            report[split] = res
            log(f"== {split} ({len(rows)} prompts)")
            for name, r in res.items():
                log(f"{name:12s} ended {r['ended']:.2f} B {r['b_language']:.2f} B-turn {r['b_turn']:.2f} correct {r['correct']:.2f} "
                    f"exact {r['exact']:.2f} | {r['sample'][:70]!r}")
        (out / f"eval-seed{s.seed}-world{s.world_seed}.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
