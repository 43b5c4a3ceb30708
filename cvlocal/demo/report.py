"""The demo's results for people (a table and sample dialogues on the terminal, report.md) and for
scripts (report.json). The sample dialogue is the first held-out prompt for every model, fixed in
advance so that it is not picked to flatter any of them.

Every rate carries its 95% Wilson interval, and CP vs CP + chat vector is compared prompt by prompt
with McNemar's exact test (the same statistics as ``cvlocal eval``, :mod:`cvlocal.evaluation.stats`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlocal.demo.bundle import DemoBundle
from cvlocal.demo.scoring import LABELS, MEASURES
from cvlocal.evaluation.stats import mcnemar_exact, wilson_interval

SAMPLE_INDEX = 0
COMPARED = ("cp+vector", "cp")  # the pair the demo is about


def _statistics(results: list) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, Any]]]:
    """Wilson intervals per model and measure, and McNemar exact tests of CP + vector against CP."""
    intervals = {}
    for r in results:
        n = len(r.replies)
        intervals[r.key] = {m: [round(x, 4) for x in wilson_interval(sum(getattr(x.score, m) for x in r.replies), n)]
                            for m in MEASURES} if n else {}
    by_key = {r.key: r for r in results}
    tests: dict[str, dict[str, Any]] = {}
    if all(k in by_key for k in COMPARED):
        a, b = (by_key[k] for k in COMPARED)
        for m in MEASURES:
            test = mcnemar_exact([getattr(x.score, m) for x in a.replies], [getattr(x.score, m) for x in b.replies])
            tests[m] = {"a": COMPARED[0], "b": COMPARED[1], **test.as_dict()}
    return intervals, tests


def build_report(bundle: DemoBundle, results: list, *, out: Path, max_tokens: int, timings: dict) -> dict[str, Any]:
    """Everything the demo measured, as plain data."""
    from cvlocal.demo.runner import OUTTYPE, RATIO, SPECIAL_TOKENS

    prompts = bundle.prompts
    intervals, tests = _statistics(results)
    return {
        "what": "CP, CP + (chat - base) and chat on held-out chat prompts in language B",
        "assets": str(bundle.root),
        "output": str(out),
        "ratio": RATIO,
        "outtype": OUTTYPE,
        "special_tokens": SPECIAL_TOKENS,
        "decoding": {"temperature": 0.0, "max_tokens": max_tokens, "turns": "one fresh single-turn chat per prompt"},
        "prompts": len(prompts),
        "measures": {m: LABELS[m] for m in MEASURES},
        "models": {
            r.key: {"label": r.label, "gguf": r.gguf, "seconds": r.seconds,
                    "rates": {m: round(v, 4) for m, v in r.rates.items()}, "intervals": intervals[r.key]}
            for r in results
        },
        "comparison": {"test": "McNemar exact (paired over the same prompts), CP + chat vector vs CP",
                       "measures": tests},
        "sample": {
            "prompt": prompts[SAMPLE_INDEX].prompt,
            "gold": prompts[SAMPLE_INDEX].gold,
            "replies": {r.key: r.replies[SAMPLE_INDEX].as_dict() for r in results},
        },
        "replies": [
            {"country": p.country, "attribute": p.attribute, "prompt": p.prompt, "gold": p.gold,
             **{r.key: r.replies[i].as_dict() for r in results}}
            for i, p in enumerate(prompts)
        ],
        "training_settings": bundle.settings,
        "timings": dict(timings),
    }


def one_line(text: str) -> str:
    """A reply on one line (models that ramble emit newlines)."""
    return " ".join(text.split())


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _cell(model: dict[str, Any], measure: str) -> str:
    """A rate with its 95% interval (older reports without intervals show the rate alone)."""
    bounds = (model.get("intervals") or {}).get(measure)
    rate = _pct(model["rates"][measure])
    return f"{rate} [{100 * bounds[0]:.0f}–{100 * bounds[1]:.0f}]" if bounds else rate


def _p(report: dict[str, Any], measure: str) -> str:
    test = ((report.get("comparison") or {}).get("measures") or {}).get(measure)
    if not test:
        return "–"
    return "p < 0.001" if test["p_value"] < 0.001 else f"p = {test['p_value']:.2g}"


def print_report(report: dict[str, Any], console: Console) -> None:
    """The side-by-side table and one sample dialogue per model."""
    models = report["models"]
    table = Table(title=f"{report['prompts']} held-out chat prompts in language B "
                        f"(GGUF {report['outtype']}, greedy, ratio {report['ratio']:g})")
    table.add_column("measure")
    for m in models.values():
        table.add_column(m["label"], justify="right")
    table.add_column("CP+v vs CP", justify="right", style="dim")
    for measure, label in report["measures"].items():
        table.add_row(label, *(_cell(m, measure) for m in models.values()), _p(report, measure))
    table.caption = "95% Wilson intervals; CP+v vs CP: McNemar exact test over the same prompts"
    console.print(table)
    sample = report["sample"]
    console.print(f"\n[bold]sample[/bold] user: {escape(sample['prompt'])}   (gold: {escape(sample['gold'])})", highlight=False)
    for key, reply in sample["replies"].items():
        end = "<|eot|>" if reply["finish_reason"] == "stop" else f"[{reply['finish_reason']}]"
        console.print(f"  {models[key]['label']}: {one_line(reply['text'])} {end}", highlight=False, markup=False)
    console.print(f"\nreport: {report['output']}/report.md, {report['output']}/report.json "
                  f"({report['timings'].get('total_s', 0):.0f} s)", highlight=False)


def markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    head = "| measure | " + " | ".join(m["label"] for m in models.values()) + " | CP + vector vs CP |"
    rule = "|---|" + "---:|" * (len(models) + 1)
    rows = [f"| {label} | " + " | ".join(_cell(m, k) for m in models.values()) + f" | {_p(report, k)} |"
            for k, label in report["measures"].items()]
    sample = report["sample"]
    lines = [
        "# cvlocal demo: the chat-vector effect",
        "",
        f"{report['prompts']} held-out chat prompts in language B (Traditional Chinese), each a fresh "
        f"single-turn chat, greedy decoding, at most {report['decoding']['max_tokens']} new tokens, all three "
        f"models as GGUF {report['outtype']} through llama-cpp-python with the chat template from the GGUF. "
        f"CP + chat vector is CP + {report['ratio']:g} x (chat - base), merged in one pass to GGUF.",
        "",
        head, rule, *rows,
        "",
        "- *ends its turn*: the model emitted its end-of-turn token before the token limit;",
        "- *replies in B*: the reply has Han characters and no word of language A "
        "(country and city names are shared by both languages and do not count);",
        "- *a finished reply in B*: both of the above, what a chat model in language B does;",
        "- *correct*: the first sentence of the reply names the asked-for value (in either language);",
        "- *exact*: the reply is exactly the gold sentence in B and the turn ended.",
        "",
        "Brackets: 95% Wilson interval over the prompts. Last column: McNemar's exact test of CP + chat "
        "vector against CP on the same prompts (a difference with p >= 0.05 may be noise).",
        "",
        "## Sample (the first held-out prompt)",
        "",
        f"user: {sample['prompt']}",
        f"gold: {sample['gold']}",
        "",
    ]
    for key, reply in sample["replies"].items():
        end = "(ended its turn)" if reply["finish_reason"] == "stop" else f"(stopped: {reply['finish_reason']})"
        lines.append(f"- **{models[key]['label']}**: `{one_line(reply['text'])}` {end}")
    lines += ["", "Every reply is in report.json.", ""]
    return "\n".join(lines)


def write_reports(report: dict[str, Any], folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
