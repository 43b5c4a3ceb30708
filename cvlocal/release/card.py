"""The release's ``README.md``: what each file costs in size and quality, where the model came from, how to run it.

Hubs read the YAML front matter (``base_model``, ``tags``, ``language``, ``quantized_by``); people
read the rest. Numbers are written with the precision they carry (KL divergence of a good 8-bit
file is around 1e-4, so it is printed in scientific notation when small).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from cvlocal import __version__
from cvlocal.errors import UsageError

LANGUAGE_NAMES = {
    "en": "English",
    "zh-Hant": "Traditional Chinese",
    "zh-Hans": "Simplified Chinese",
    "ko": "Korean",
    "ja": "Japanese",
}
# A language tag as model cards and GGUF files write them: an ISO 639 code (2-3 letters) with
# optional BCP 47 subtags (zh-Hant, en-US, pt-BR), or the Hub's special value "multilingual".
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*|multilingual")


def language_tags(values: Iterable[Any]) -> list[str]:
    """The well-formed language tags among ``values`` (model-card or GGUF metadata), in order, once each."""
    tags = [v.strip() for v in values if isinstance(v, str) and _LANGUAGE_TAG.fullmatch(v.strip())]
    return list(dict.fromkeys(tags))


def parse_languages(text: str) -> list[str]:
    """``--language zh-Hant,en``: the tags in order; a malformed one is a UsageError."""
    parts = [p.strip() for p in text.split(",")]
    bad = [p for p in parts if not _LANGUAGE_TAG.fullmatch(p)]
    if bad or not any(parts):
        raise UsageError(f"--language {text!r} is not a list of language codes",
                         fix="Give ISO 639 codes separated by commas, e.g. --language zh-Hant,en")
    return list(dict.fromkeys(parts))


def hub_languages(tags: Iterable[str]) -> list[str]:
    """The front matter's ``language`` list: the Hub takes ISO 639 codes, so zh-Hant and zh-Hans are zh."""
    return list(dict.fromkeys(t if t == "multilingual" else t.split("-")[0].lower() for t in tags))


@dataclass
class FileRow:
    """One released file."""

    qtype: str
    label: str
    file: str
    size: int
    bits_per_weight: float | None
    quality: dict[str, Any] | None     # scoring.Measurement.as_dict(); None for the reference
    reference: bool = False


@dataclass
class Provenance:
    """Where the weights came from, carried from the source into the card."""

    source: str                                  # "merged folder `x`" or "GGUF `x.gguf`"
    base_models: list[str] = field(default_factory=list)
    recipe: dict[str, Any] | None = None         # cvlocal's machine-readable merge recipe
    recipe_markdown: str | None = None           # recipe sections of the merged folder's README
    license: str | None = None
    languages: list[str] = field(default_factory=list)   # the model's languages (card `language`, general.languages)


@dataclass
class QualitySettings:
    """How the quality table was measured."""

    reference_label: str
    reference_file: str | None      # None: a conversion of the source made for measuring, not shipped
    n_ctx: int
    windows: int
    tokens: int
    languages: list[str]
    skipped_languages: list[str] = field(default_factory=list)
    tokens_per_language: dict[str, int] = field(default_factory=dict)


@dataclass
class CardInput:
    title: str
    rows: list[FileRow]
    failed: dict[str, str]
    quality: QualitySettings | None
    provenance: Provenance
    chat_template: str | None
    stops: list[str]
    ollama_family: str | None
    eval_summary: list[str] | None = None        # Markdown lines from eval_report.summary_markdown
    languages: list[str] = field(default_factory=list)   # the model's languages (--language or the source's)
    languages_from: str | None = None            # where they came from, for the card's text
    quantization: list[str] | None = None        # Markdown lines: the importance matrix and per-tensor types


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _kld(value: float, scientific: bool | None = None) -> str:
    """A KL divergence: scientific notation when small (or when ``scientific`` says so)."""
    if scientific is None:
        scientific = 0 < abs(value) < 1e-3
    return f"{value:.2e}" if scientific else f"{value:.4f}"


def _ppl(value: float) -> str:
    return f"{value:.3f}" if value < 1000 else f"{value:.1f}"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _with_se(value: float, se: Any, fmt: Any) -> str:
    """``value ± SE`` when the row has a finite standard error (rows of older releases do not).

    A KL divergence and its error share one notation, scientific when either is below 1e-3, so
    that the error keeps two significant digits.
    """
    if not (isinstance(se, (int, float)) and se == se):
        return fmt(value)
    if fmt is _kld:
        scientific = any(0 < abs(x) < 1e-3 for x in (value, se))
        return f"{_kld(value, scientific)} ± {_kld(se, scientific)}"
    return f"{fmt(value)} ± {fmt(se)}"


def _front_matter(c: CardInput) -> list[str]:
    lines = ["---"]
    if c.provenance.base_models:
        lines.append("base_model:")
        lines += [f"- {json.dumps(b, ensure_ascii=False)}" for b in c.provenance.base_models]
    if c.provenance.license:
        lines.append(f"license: {json.dumps(c.provenance.license)}")
    # The model's languages, never the languages of the scoring text (which says nothing about the model).
    languages = hub_languages(c.languages)
    if languages:
        lines.append("language:")
        lines += [f"- {lang}" for lang in languages]
    lines += ["tags:", "- gguf", "- llama.cpp", "- cvlocal", "- chat-vector", "quantized_by: cvlocal", "---", ""]
    return lines


def quality_table(rows: list[FileRow]) -> list[str]:
    lines = [
        "| File | Type | Size | Bits/weight | Mean KLD | 99% KLD | Top-1 agreement | PPL |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bpw = f"{r.bits_per_weight:.2f}" if r.bits_per_weight else "?"
        if r.reference:
            q = r.quality or {}
            ppl = _ppl(q["ppl_base"]) if "ppl_base" in q else ""
            lines.append(f"| `{r.file}` | {r.label} (reference) | {human_size(r.size)} | {bpw} | 0 | 0 | 100% | {ppl} |")
        elif r.quality:
            q = r.quality
            lines.append(
                f"| `{r.file}` | {r.label} | {human_size(r.size)} | {bpw} | {_with_se(q['mean_kld'], q.get('mean_kld_se'), _kld)} "
                f"| {_kld(q['p99_kld'])} | {_with_se(q['top1'], q.get('top1_se'), _pct)} | {_ppl(q['ppl'])} |"
            )
        else:
            lines.append(f"| `{r.file}` | {r.label} | {human_size(r.size)} | {bpw} | | | | |")
    return lines


def language_table(rows: list[FileRow], languages: list[str], tokens: dict[str, int] | None = None) -> list[str]:
    measured = [r for r in rows if r.quality and r.quality.get("languages") and not r.reference]
    if not measured:
        return []
    tokens = tokens or {}

    def head(lang: str) -> str:
        n = tokens.get(lang)
        return f"{LANGUAGE_NAMES.get(lang, lang)} ({n} tokens) KLD / top-1" if n else f"{LANGUAGE_NAMES.get(lang, lang)} KLD / top-1"

    lines = ["| Type | " + " | ".join(head(lang) for lang in languages) + " |", "|---|" + "---:|" * len(languages)]
    for r in measured:
        cells = []
        for lang in languages:
            s = r.quality["languages"].get(lang)
            cells.append(f"{_with_se(s['mean_kld'], s.get('mean_kld_se'), _kld)} / {_pct(s['top1'])}" if s else "")
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return lines


def recipe_lines(recipe: dict[str, Any]) -> list[str]:
    """A cvlocal merge recipe (cvlocal_recipe.json or the GGUF's cvlocal.recipe) as tables, read defensively."""
    def info(d: Any) -> tuple[str, str]:
        d = d if isinstance(d, dict) else {}
        return str(d.get("path", "")), str(d.get("fingerprint", ""))

    lines = []
    formula = recipe.get("formula")
    if formula:
        lines += [f"Merge: `{formula}`" + (f", stored as {recipe['dtype']}." if recipe.get("dtype") else "."), ""]
    lines += ["| role | path | fingerprint |", "|---|---|---|"]
    path, fp = info(recipe.get("cp"))
    lines.append(f"| CP (continually pretrained) | `{path}` | `{fp}` |")
    vectors = recipe.get("vectors") if isinstance(recipe.get("vectors"), list) else []
    for i, term in enumerate(vectors, 1):
        term = term if isinstance(term, dict) else {}
        ratio = term.get("ratio", "?")
        if isinstance(term.get("vector"), dict):
            path, fp = info(term["vector"])
            lines.append(f"| chat vector {i} (ratio {ratio}) | `{path}` | `{fp}` |")
        for role in ("base", "chat"):
            if role in term:
                path, fp = info(term[role])
                lines.append(f"| {role} {i} (ratio {ratio}) | `{path}` | `{fp}` |")
    lines.append("")
    settings: list[tuple[str, str]] = []
    embeddings = recipe.get("embeddings")
    if isinstance(embeddings, dict):
        settings += [(f"embeddings: {k}", str(v)) for k, v in embeddings.items()]
    elif embeddings is not None:
        settings.append(("embeddings", str(embeddings)))
    for key in ("dtype", "tool", "tool_version"):
        if recipe.get(key) is not None:
            settings.append((key, str(recipe[key])))
    if settings:
        lines += ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings] + [""]
    special = recipe.get("special_tokens") or recipe.get("special_tokens_map")
    if isinstance(special, list) and special:
        lines += ["Special-token rows taken from the chat model:", "", "| token | CP id | chat id |", "|---|---|---|"]
        for t in special:
            if isinstance(t, dict):
                lines.append(f"| `{t.get('text', '')}` | {t.get('cp_id', '')} | {t.get('chat_id', '')} |")
        lines.append("")
    notes = recipe.get("notes")
    if isinstance(notes, list) and notes:
        lines += [f"- {n}" for n in notes] + [""]
    lines += [
        "<details><summary>Recipe as JSON</summary>",
        "",
        "```json",
        json.dumps(recipe, indent=2, ensure_ascii=False),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def usage_lines(c: CardInput) -> list[str]:
    pick = next((r for r in c.rows if r.qtype == "q4_k_m"), None) or next((r for r in c.rows if not r.reference), None) or c.rows[0]
    f = pick.file
    stem = f.removesuffix(".gguf")
    stop_args = "".join(f" -r {json.dumps(s)}" for s in c.stops[:2])
    return [
        "## Usage",
        "",
        "### llama.cpp",
        "",
        "```sh",
        f"llama-cli -m {f} -cnv{stop_args}",
        f"llama-server -m {f} --port 8080    # OpenAI-compatible API at http://127.0.0.1:8080/v1",
        "```",
        "",
        "### llama-cpp-python",
        "",
        "```python",
        "from llama_cpp import Llama",
        f'llm = Llama(model_path="{f}", n_ctx=4096)',
        'out = llm.create_chat_completion(messages=[{"role": "user", "content": "你好，請介紹一下你自己。"}])',
        'print(out["choices"][0]["message"]["content"])',
        "```",
        "",
        "### Ollama",
        "",
        "```sh",
        f"ollama create {stem.lower()} -f {stem}.Modelfile",
        f"ollama run {stem.lower()}",
        "```",
        "",
        ("Each file has its own `Modelfile` (`FROM` the file, a `PARAMETER stop` per stop token"
         + (f", and a `TEMPLATE` of the {c.ollama_family} family, checked to render prompts exactly as the model's own chat template does)."
            if c.ollama_family else "; no `TEMPLATE`, so Ollama uses the chat template stored in the GGUF).")),
        "",
        "### LM Studio",
        "",
        "Copy the `.gguf` file into a folder under LM Studio's models directory (for example "
        f"`~/.lmstudio/models/local/{stem}/`), or run `lms import {f}`; LM Studio reads the chat template "
        "and stop tokens from the file.",
        "",
    ]


def render_card(c: CardInput) -> str:
    lines = _front_matter(c)
    lines += [f"# {c.title} GGUF", ""]
    lines += [
        f"GGUF files of {c.title} for llama.cpp and the tools built on it, made with `cvlocal release` "
        f"(cvlocal {__version__}). Every file was loaded and evaluated before it was listed here.",
        "",
        "## Files and quality",
        "",
    ]
    if c.rows:
        lines += quality_table(c.rows) + [""]
    else:
        lines += ["No file passed its checks, so none is shipped; see the failures below.", ""]
    q = c.quality
    if q:
        names = ", ".join(LANGUAGE_NAMES.get(lang, lang) for lang in q.languages)
        reference = (f"the reference `{q.reference_file}` ({q.reference_label})" if q.reference_file
                     else f"a {q.reference_label} conversion of the source (lossless for its weights; not shipped)")
        counts = sorted(set(q.tokens_per_language.get(lang) for lang in q.languages) - {None})
        per_language = (f"{counts[0]} tokens per language" if len(counts) == 1
                        else f"{counts[0]}-{counts[-1]} tokens per language" if counts else "")
        lines += [
            f"Quality is measured against {reference} on {q.tokens} tokens of held-out text "
            f"({names}; {per_language + ', ' if per_language else ''}{q.windows} windows of {q.n_ctx} tokens), "
            "the way `llama-perplexity --kl-divergence` measures it: each window is evaluated from an empty cache "
            "and only its second half is scored. *Mean KLD* and *99% KLD* are the mean and 99th percentile of the "
            "KL divergence from the reference's next-token distribution to the file's, in nats; *top-1 agreement* is "
            "how often both rank the same next token first; *PPL* is exp(mean negative log-likelihood) of the text. "
            "Lower KLD and higher agreement mean closer to the reference. `±` is the standard error of the mean "
            "over the scored tokens, as llama-perplexity computes it: a mean is known to about twice its standard "
            "error. Bits/weight is the tensor data size over the parameter count, as llama.cpp reports it.",
            "",
        ]
        base_ppl = next((r.quality["ppl_base"] for r in c.rows if r.quality and r.quality.get("ppl_base")), None)
        if base_ppl is not None:
            lines += [f"The reference's own PPL on the same tokens is {_ppl(base_ppl)}.", ""]
        if q.skipped_languages:
            lines += [f"Held-out text too short for one window (left out): {', '.join(q.skipped_languages)}.", ""]
        by_lang = language_table(c.rows, q.languages, q.tokens_per_language)
        if by_lang:
            lines += ["### By language", ""] + by_lang + [""]
    if c.quantization:
        lines += ["### Quantization", ""] + c.quantization + [""]
    if c.failed:
        lines += ["### Types that failed (not shipped)", ""]
        lines += [f"- **{t}**: {reason}" for t, reason in c.failed.items()] + [""]
    lines += ["## Provenance", "", f"Converted from the {c.provenance.source}.", ""]
    if c.languages:
        named = ", ".join(f"{LANGUAGE_NAMES[lang]} (`{lang}`)" if lang in LANGUAGE_NAMES else f"`{lang}`" for lang in c.languages)
        lines += [f"Languages: {named}" + (f", {c.languages_from}." if c.languages_from else "."), ""]
    if c.provenance.base_models:
        lines += ["Base models: " + ", ".join(f"`{b}`" for b in c.provenance.base_models) + ".", ""]
    if c.provenance.recipe:
        lines += ["### Merge recipe", ""] + recipe_lines(c.provenance.recipe)
    elif c.provenance.recipe_markdown:
        lines += ["### Merge recipe (from the merged folder's card)", "", c.provenance.recipe_markdown.strip(), ""]
    else:
        lines += ["No merge recipe was found in the source (no `cvlocal_recipe.json`, README recipe or `cvlocal.recipe` key).", ""]
    lines += ["## Chat template", ""]
    if c.stops:
        lines += ["Stop tokens: " + ", ".join(f"`{s}`" for s in c.stops) + ".", ""]
    if c.chat_template:
        lines += ["The files carry this Jinja chat template (`tokenizer.chat_template`):", "", "```jinja", c.chat_template.strip(), "```", ""]
    else:
        lines += ["The files carry no chat template; pass one to your runtime (for llama.cpp: `--chat-template`).", ""]
    if c.eval_summary:
        lines += ["## Evaluation", ""] + c.eval_summary + [""]
    if c.rows:
        lines += usage_lines(c)
    lines += [
        "## Checksums",
        "",
        "`SHA256SUMS` lists the SHA-256 of every `.gguf` file listed above; check them with `sha256sum -c SHA256SUMS`.",
        "",
    ]
    return "\n".join(lines)
