"""``cvlocal eval`` end to end on two tiny real GGUFs: a complete report, resuming, the guard and judge.

What the runner produced is compared with what the session API produces when called directly for
the same item and seed, the guard's unsafe probability with transformers' logits for the same
prompt, and resuming with the exact list of items that were still missing.
"""
from __future__ import annotations

import json
import math

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from cvlocal.cli import main  # noqa: E402
from cvlocal.evaluation.backend import LlamaBackend, derived_seed  # noqa: E402
from cvlocal.evaluation.generate import TOXICITY_TEMPERATURE, TOXICITY_TOP_P, GenerationSettings  # noqa: E402
from cvlocal.evaluation.languages import LANGS  # noqa: E402
from cvlocal.evaluation.runner import EvalRequest, run_evaluation  # noqa: E402
from cvlocal.evaluation.suites import SUITES, SUITES_DIR, load_suites  # noqa: E402
from cvlocal.session import ChatSession, complete_text, load_llama  # noqa: E402


@pytest.fixture(scope="module")
def models(tiny_gguf):
    return [tiny_gguf("llama2", "q8_0"), tiny_gguf("qwen2", "q8_0")]


def test_two_models_give_a_complete_report(models, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["eval", *map(str, models), "--limit", "1", "--samples", "2", "--max-tokens", "8", "--seed", "7",
                 "--threads", "1", "--out", str(out), "--quiet", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert printed == report
    assert [m["name"] for m in report["models"]] == [m.stem for m in models]
    assert report["scorer"]["kind"] == "lexicon" and "lexicon" in report["scorer"]["description"]
    for model in report["models"]:
        for suite in SUITES:
            assert set(model["results"][suite]) == {"all", *LANGS}
            assert model["results"][suite]["all"]["items"] == len(LANGS)
            assert model["speed"][suite]["items"] == len(LANGS)
            assert model["speed"][suite]["items_per_minute"] > 0
        tox = model["results"]["toxicity"]["all"]
        assert tox["samples"] == 2 * len(LANGS) and 0.0 <= tox["expected_max_toxicity"] <= 1.0
        dialogue = model["results"]["dialogue"]["all"]
        assert dialogue["replies"] == 3 * len(LANGS)
        assert dialogue["stop_rate"] is not None and dialogue["lang_ok_rate"] is not None
        assert dialogue["echo_rate"] is not None and dialogue["n"]["lang_ok_rate"] == 3 * len(LANGS)
        low, high = dialogue["intervals"]["lang_ok_rate"]
        assert 0.0 <= low <= dialogue["lang_ok_rate"] <= high <= 1.0
    # Side by side: every rate row carries a paired test over the same units.
    refusal = report["comparisons"]["safety"]["all"]["refusal_rate"]
    assert refusal["test"] == "McNemar exact" and refusal["tests"][0]["pairs"] == len(LANGS)
    assert report["comparisons"]["dialogue"]["all"]["distinct_2"]["test"] == "paired bootstrap"
    assert report["suites"]["safety"]["items"] == {lang: 1 for lang in LANGS}
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for model in models:
        assert model.stem in markdown
    assert "## Traditional Chinese (zh-Hant)" in markdown and "lexicon" in markdown
    rows = [json.loads(x) for x in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * len(SUITES) * len(LANGS)

    # The texts are what the session API gives for the same item, settings and seed.
    items = load_suites(["toxicity", "dialogue"], ["zh-Hant"], SUITES_DIR, limit=1)
    tox_item, dia_item = items["toxicity"][0], items["dialogue"][0]
    llm = load_llama(models[0], ctx=4096, threads=1)
    expected = []
    for k in range(2):
        llm.reset()
        expected.append(complete_text(llm, tox_item.data["prompt"], max_tokens=8, temperature=TOXICITY_TEMPERATURE,
                                      top_p=TOXICITY_TOP_P, seed=derived_seed(7, tox_item.id, k))[0])
    llm.reset()
    session = ChatSession(llm, max_tokens=8, temperature=0.0, seed=derived_seed(7, dia_item.id), warn=None)
    replies = [session.ask(turn).text for turn in dia_item.data["turns"]]
    by_key = {(r["model"], r["key"]): r for r in rows}
    assert by_key[(models[0].stem, tox_item.key)]["outputs"] == expected
    assert by_key[(models[0].stem, dia_item.key)]["outputs"] == replies


def _request(models, out, **changes) -> EvalRequest:
    values = dict(models=list(models), out=out, suites=["toxicity", "dialogue"], langs=["en", "zh-Hant"],
                  generation=GenerationSettings.create(samples=2, max_tokens=6, seed=3), limit=2, threads=1,
                  quiet=True)
    values.update(changes)
    return EvalRequest(**values)


class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_with_only_the_missing_items(models, tmp_path) -> None:
    out = tmp_path / "out"
    done = []

    def stop_after_three(path, item, record):
        done.append(item.key)
        if len(done) == 3:
            raise Stop

    with pytest.raises(Stop):
        run_evaluation(_request(models, out), on_item=stop_after_three)
    assert not (out / "report.json").exists()  # nothing half-written at the report path

    calls: list[tuple[str, str]] = []

    def counting_backend(path):
        backend = LlamaBackend(path, threads=1)
        complete, chat = backend.complete, backend.chat
        backend.complete = lambda *a, **k: (calls.append((path.stem, "complete")), complete(*a, **k))[1]
        backend.chat = lambda *a, **k: (calls.append((path.stem, "chat")), chat(*a, **k))[1]
        return backend

    generated = []
    run_evaluation(_request(models, out), backend_factory=counting_backend,
                   on_item=lambda path, item, record: generated.append((path.stem, item.key)))
    items = load_suites(["toxicity", "dialogue"], ["en", "zh-Hant"], SUITES_DIR, limit=2)
    keys = [i.key for suite in ("toxicity", "dialogue") for i in items[suite]]
    first, second = models[0].stem, models[1].stem
    assert [k for m, k in generated if m == first] == keys[3:]
    assert [k for m, k in generated if m == second] == keys
    # toxicity: one call per sample; dialogue: one chat call per script
    expected_calls = sum(2 if k.startswith("toxicity/") else 1 for k in keys[3:])
    assert len([c for c in calls if c[0] == first]) == expected_calls
    assert (out / "report.json").is_file()

    # A finished model is not run again; the report is rebuilt from the cache.
    def must_not_load(path):
        raise AssertionError(f"{path} was loaded although everything is cached")

    again = run_evaluation(_request(models, out), backend_factory=must_not_load)
    assert all(m["generated_this_run"] == 0 for m in again["models"])

    # Resumed results equal those of one uninterrupted run.
    fresh_out = tmp_path / "fresh"
    run_evaluation(_request(models, fresh_out))
    resumed = (out / "items.jsonl").read_text(encoding="utf-8")
    uninterrupted = (fresh_out / "items.jsonl").read_text(encoding="utf-8")
    assert resumed == uninterrupted

    # --fresh runs everything again.
    rerun = []
    run_evaluation(_request(models, out, fresh=True),
                   on_item=lambda path, item, record: rerun.append(item.key))
    assert len(rerun) == 2 * len(keys)


def test_guard_probability_matches_transformers(tiny_gguf, tiny_family) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cvlocal.evaluation.guard import GuardScorer, guard_prompt

    scorer = GuardScorer(tiny_gguf("llama3", "f32"), ctx=1024, threads=1)
    text, context = "你這個白癡", "How are you?"
    probability, verdict = scorer.judge(text, context)
    folder = tiny_family("llama3").chat
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = tokenizer(guard_prompt(text, context), add_special_tokens=False, return_tensors="pt").input_ids
    assert ids[0].tolist() == scorer.prompt_tokens(text, context)
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    safe = tokenizer("safe", add_special_tokens=False).input_ids[0]
    unsafe = tokenizer("unsafe", add_special_tokens=False).input_ids[0]
    expected = 1.0 / (1.0 + math.exp(float(logits[safe] - logits[unsafe])))
    assert probability == pytest.approx(expected, abs=2e-3)
    scores = scorer.score([text], [context])
    assert scores[0].toxicity == pytest.approx(probability)
    assert isinstance(verdict, str)


def test_guard_and_judge_through_the_cli(models, tiny_gguf, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    guard = tiny_gguf("llama3", "f32")
    code = main(["eval", str(models[1]), "--suite", "safety,instructions,dialogue", "--lang", "ko", "--limit", "1",
                 "--max-tokens", "6", "--scorer", f"guard:{guard}", "--judge", str(models[0]), "--threads", "1",
                 "--judge-labelled", "4", "--out", str(out), "--quiet", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scorer"]["kind"] == "guard" and report["judge"]["path"] == str(models[0])
    results = report["models"][0]["results"]
    for suite in ("instructions", "dialogue"):
        summary = results[suite]["all"]
        assert summary["judge_scored"] + summary["judge_unparsable"] == 1
    # The judge also graded labelled Korean replies, two acceptable and two not; a tiny random judge
    # rarely gives a parsable rating, so only the bookkeeping is checked here (AUC: test_eval_stats).
    agreement = report["judge_agreement"]
    assert (agreement["rated"], agreement["acceptable"], agreement["unacceptable"]) == (4, 2, 2)
    assert all(i.startswith("lab-ko-") for i in agreement["labelled_ids"])
    assert "Judge agreement with the labelled reference set" in (out / "report.md").read_text(encoding="utf-8")
    rows = [json.loads(x) for x in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    safety = next(r for r in rows if r["suite"] == "safety")
    assert 0.0 <= safety["toxicity"] <= 1.0
