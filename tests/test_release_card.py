"""The card's pieces: provenance carried from a merged folder or a GGUF, the eval summary, the held-out set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvlocal.errors import UsageError
from cvlocal.release.card import CardInput, FileRow, Provenance, QualitySettings, parse_languages, render_card
from cvlocal.release.eval_report import load_eval_report, summary_markdown
from cvlocal.release.heldout import LANGUAGE_ORDER, default_heldout_dir, load_heldout
from cvlocal.release.source import front_matter, gguf_provenance, hf_provenance

RECIPE = {
    "format_version": 1,
    "tool": "cvlocal 0.1.0",
    "formula": "out = cp + sum(ratio_i * (chat_i - base_i)), float32, rounded once",
    "cp": {"path": "/models/llama3-cp-zh", "fingerprint": "cafe0001"},
    "vectors": [{"ratio": 0.5, "base": {"path": "/models/llama3-base", "fingerprint": "b0b0"},
                 "chat": {"path": "/models/llama3-chat", "fingerprint": "c0c0"}}],
    "embeddings": {"embed_tokens": "overlap", "lm_head": "overlap"},
    "special_tokens": [{"text": "<|eot_id|>", "cp_id": 128009, "chat_id": 128009}],
    "dtype": "bfloat16",
    "notes": ["CP vocabulary extended by 2000 tokens"],
}


def test_heldout_set_is_five_languages_of_natural_text():
    texts = load_heldout()
    assert list(texts) == list(LANGUAGE_ORDER)
    for lang, text in texts.items():
        assert len(text.encode("utf-8")) >= 2500, lang
        assert text.count("\n\n") >= 5, lang  # paragraphs, not a list of sentences
    han = lambda t: sum("\u4e00" <= c <= "\u9fff" for c in t)  # noqa: E731
    assert han(texts["zh-Hant"]) > 800 and han(texts["zh-Hans"]) > 800
    assert sum("\uac00" <= c <= "\ud7a3" for c in texts["ko"]) > 800
    assert sum("\u3040" <= c <= "\u30ff" for c in texts["ja"]) > 300
    # The Traditional text uses Traditional forms and the Simplified text Simplified ones (checked with OpenCC).
    import opencc

    t2s = opencc.OpenCC("t2s")
    assert t2s.convert(texts["zh-Hant"]) != texts["zh-Hant"]
    assert t2s.convert(texts["zh-Hans"]) == texts["zh-Hans"]


def test_heldout_bad_folder(tmp_path):
    with pytest.raises(UsageError, match="no non-empty"):
        load_heldout(tmp_path)
    with pytest.raises(UsageError, match="not found"):
        load_heldout(tmp_path / "missing")
    assert default_heldout_dir().is_dir()


def test_provenance_from_merged_folder(tmp_path):
    (tmp_path / "cvlocal_recipe.json").write_text(json.dumps(RECIPE))
    (tmp_path / "README.md").write_text(
        "---\nbase_model:\n- meta-llama/Llama-3-8B\n- someone/llama3-cp-zh\nlicense: llama3\n---\n\n# Merged\n\n"
        "## Inputs\n\n| role | path |\n|---|---|\n\n## Recipe\n\n| ratio 1 | 0.5 |\n\n## Use\n\nnot carried\n")
    prov = hf_provenance(tmp_path)
    assert prov.base_models == ["meta-llama/Llama-3-8B", "someone/llama3-cp-zh"]
    assert prov.license == "llama3"
    assert prov.recipe == RECIPE
    assert "### Recipe" in prov.recipe_markdown and "not carried" not in prov.recipe_markdown
    assert front_matter("no front matter") == {}


def test_provenance_from_gguf_keys(tmp_path):
    meta = {"cvlocal.recipe": json.dumps(RECIPE), "general.base_model.count": 1,
            "general.base_model.0.name": "Llama-3-8B", "general.license": "llama3"}
    prov = gguf_provenance(tmp_path / "m.gguf", meta)
    assert prov.recipe == RECIPE and prov.base_models == ["Llama-3-8B"] and prov.license == "llama3"
    assert gguf_provenance(tmp_path / "m.gguf", {"cvlocal.recipe": "{not json"}).recipe is None


def _card(**kw) -> str:
    rows = [
        FileRow("f16", "F16", "M-1M-F16.gguf", 2_000_000, 16.0, {"ppl_base": 12.5}, reference=True),
        FileRow("q4_k_m", "Q4_K_M", "M-1M-Q4_K_M.gguf", 600_000, 4.85,
                {"mean_kld": 0.0123, "p99_kld": 0.2, "top1": 0.9312, "ppl": 13.1, "ppl_base": 12.5,
                 "languages": {"en": {"mean_kld": 0.01, "top1": 0.95}, "ko": {"mean_kld": 0.00005, "top1": 0.9}}}),
    ]
    settings = QualitySettings("F16", "M-1M-F16.gguf", 512, 5, 1275, ["en", "ko"])
    base = dict(title="M", rows=rows, failed={"Q2_K": "llama.cpp could not quantize"}, quality=settings,
                provenance=Provenance("merged folder `m`", ["org/base"], RECIPE, None, "apache-2.0"),
                chat_template="{{ messages }}", stops=["<|eot_id|>"], ollama_family="llama3")
    base.update(kw)
    return render_card(CardInput(**base))


def test_card_contents():
    card = _card()
    front = card.split("---")[1]
    assert "- \"org/base\"" in front and "license: \"apache-2.0\"" in front
    assert "| `M-1M-Q4_K_M.gguf` | Q4_K_M | 600.00 kB | 4.85 | 0.0123 | 0.2000 | 93.12% | 13.100 |" in card
    assert "| `M-1M-F16.gguf` | F16 (reference) |" in card
    assert "5.00e-05 / 90.00%" in card  # per-language KLD below 1e-3 in scientific notation
    assert "**Q2_K**: llama.cpp could not quantize" in card
    assert "`/models/llama3-cp-zh`" in card and "ratio 0.5" in card and "`<|eot_id|>` | 128009 | 128009" in card
    assert "1275 tokens" in card and "Korean" in card
    for section in ("### llama.cpp", "### llama-cpp-python", "### Ollama", "### LM Studio", "sha256sum -c SHA256SUMS"):
        assert section in card
    assert "ollama create m-1m-q4_k_m -f M-1M-Q4_K_M.Modelfile" in card


def _front_matter_languages(card: str) -> list[str] | None:
    import yaml

    return yaml.safe_load(card.split("---")[1]).get("language")


def test_card_language_is_the_models_not_the_scoring_texts():
    # Scored on English and Korean text, but the model's languages are unknown: no `language:` at all.
    assert _front_matter_languages(_card()) is None
    card = _card(languages=["zh-Hant", "en"], languages_from="from the source's metadata")
    assert _front_matter_languages(card) == ["zh", "en"]  # ISO 639 codes, as the Hub reads them
    assert "Languages: Traditional Chinese (`zh-Hant`), English (`en`), from the source's metadata." in card
    assert _front_matter_languages(_card(languages=["zh-Hant", "zh-Hans", "multilingual"])) == ["zh", "multilingual"]


def test_language_option_parsing():
    assert parse_languages("zh-Hant,en") == ["zh-Hant", "en"]
    assert parse_languages(" ko , ko,ja") == ["ko", "ja"]
    for bad in ("", ",", "zh_TW", "english!", "zh-Hant,,en", "e"):
        with pytest.raises(UsageError, match="--language"):
            parse_languages(bad)


def test_language_from_the_source_metadata(tmp_path):
    (tmp_path / "README.md").write_text("---\nlanguage:\n- zh\n- en\nlicense: mit\n---\n# M\n")
    assert hf_provenance(tmp_path).languages == ["zh", "en"]
    (tmp_path / "README.md").write_text("---\nlanguage: ko\n---\n")
    assert hf_provenance(tmp_path).languages == ["ko"]
    (tmp_path / "README.md").write_text("---\nlanguage: [12, {a: 1}, 'not a code!']\n---\n")
    assert hf_provenance(tmp_path).languages == []
    assert gguf_provenance(tmp_path / "m.gguf", {"general.languages": ["ja", "en"]}).languages == ["ja", "en"]
    assert gguf_provenance(tmp_path / "m.gguf", {}).languages == []


def test_card_reports_tokens_per_language_and_standard_errors():
    rows = [
        FileRow("f16", "F16", "M-F16.gguf", 2_000_000, 16.0, {"ppl_base": 12.5}, reference=True),
        FileRow("q4_k_m", "Q4_K_M", "M-Q4_K_M.gguf", 600_000, 4.85,
                {"mean_kld": 0.0123, "mean_kld_se": 0.0011, "p99_kld": 0.2, "top1": 0.9312, "top1_se": 0.0051,
                 "ppl": 13.1, "ppl_base": 12.5,
                 "languages": {"en": {"mean_kld": 0.01, "mean_kld_se": 0.002, "top1": 0.95},
                               "ko": {"mean_kld": 0.00005, "mean_kld_se": 0.00001, "top1": 0.9}}}),
    ]
    settings = QualitySettings("F16", "M-F16.gguf", 512, 2, 510, ["en", "ko"], tokens_per_language={"en": 255, "ko": 255})
    card = _card(rows=rows, quality=settings)
    assert "| 0.0123 ± 0.0011 | 0.2000 | 93.12% ± 0.51% |" in card
    assert "255 tokens per language" in card and "standard error" in card
    assert "English (255 tokens) KLD / top-1" in card and "Korean (255 tokens) KLD / top-1" in card
    assert "0.0100 ± 0.0020 / 95.00%" in card and "5.00e-05 ± 1.00e-05 / 90.00%" in card
    rows[1].quality["mean_kld_se"] = 0.0004  # an error below 1e-3 keeps two digits: both in scientific notation
    assert "| 1.23e-02 ± 4.00e-04 |" in _card(rows=rows, quality=settings)


def test_card_without_recipe_or_template():
    card = _card(provenance=Provenance("GGUF `m.gguf`"), chat_template=None, ollama_family=None)
    assert "No merge recipe was found" in card
    assert "carry no chat template" in card
    assert "no `TEMPLATE`" in card


def _eval_report(tmp_path: Path) -> Path:
    report = {
        "format": "cvlocal-eval/1",
        "settings": {"suites": ["safety", "dialogue"], "langs": ["zh-Hant", "en"]},
        "scorer": {"description": "lexicon word lists"},
        "suites": {"safety": {}, "dialogue": {}},
        "models": [
            {"name": "cp", "results": {"safety": {"all": {"refusal_rate": 0.1}}, "dialogue": {"all": {"stop_rate": 0.0}}}},
            {"name": "cp+v", "results": {"safety": {"all": {"refusal_rate": 0.85}}, "dialogue": {"all": {"stop_rate": 0.97}}}},
        ],
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def test_eval_summary_of_a_cvlocal_report(tmp_path):
    path = _eval_report(tmp_path)
    lines = summary_markdown(load_eval_report(path), path.name)
    text = "\n".join(lines)
    assert "| suite | metric | `cp` | `cp+v` |" in text
    assert any(row.startswith("| safety | refusal (harmful)") and "10.0%" in row and "85.0%" in row for row in lines)
    assert any(row.startswith("| dialogue | ended by itself") and "0.0%" in row and "97.0%" in row for row in lines)
    assert "lexicon word lists" in text


def test_eval_summary_of_other_shapes(tmp_path):
    generic = {"models": [{"model": "/x/a.gguf", "safety": {"refusal": 0.5}}, {"model": "b.gguf", "safety": {"refusal": 0.25}}]}
    text = "\n".join(summary_markdown(generic, "r.json"))
    assert "| `a.gguf` | 0.5 |" in text and "| `b.gguf` | 0.25 |" in text
    text = "\n".join(summary_markdown({"score": 3, "nested": {"x": 0.125}}, "r.json"))
    assert "| score | 3 |" in text and "| nested.x | 0.125 |" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_eval_report(bad)
    with pytest.raises(UsageError, match="not found"):
        load_eval_report(tmp_path / "missing.json")
