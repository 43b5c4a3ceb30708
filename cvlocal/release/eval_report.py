"""The evaluation summary a release card shows when ``--eval-report report.json`` is given.

A ``cvlocal eval`` report (format ``cvlocal-eval/1``) is summarized with the evaluation's own
table builder (``cvlocal.evaluation.report.table_rows``): one row per metric, one column per
model, pooled over languages. Any other JSON (an older format, a hand-made summary) is read
defensively: the reader looks for per-model records and keeps their numeric results, flattening
nested suites into ``suite.metric`` columns, and failing that shows the top-level numbers. Only a
missing or non-JSON file is an error (one line).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvlocal.errors import UsageError

MAX_COLUMNS = 10
EVAL_FORMAT = "cvlocal-eval/1"
_NAME_KEYS = ("model", "name", "label", "path", "file")


def load_eval_report(path: Path) -> Any:
    """The parsed report, or a one-line UsageError naming the file."""
    if not path.is_file():
        raise UsageError("evaluation report not found", path, "Pass the JSON file written by `cvlocal eval --json`.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UsageError("evaluation report is not valid JSON", path, "Pass the JSON file written by `cvlocal eval --json`.") from None


def _numbers(value: Any, prefix: str = "", depth: int = 0) -> dict[str, float]:
    """Numeric leaves of nested dicts as ``a.b.c`` -> value (lists and strings are skipped)."""
    out: dict[str, float] = {}
    if isinstance(value, bool):
        return out
    if isinstance(value, (int, float)):
        out[prefix] = float(value)
    elif isinstance(value, dict) and depth < 4:
        for k, v in value.items():
            out.update(_numbers(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
    return out


def _model_name(record: dict[str, Any]) -> str | None:
    for key in _NAME_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value:
            return Path(value).name
    return None


def _model_records(report: Any) -> list[tuple[str, dict[str, float]]]:
    """(model name, numeric results) for each per-model record found in the report."""
    candidates: list[Any] = []
    if isinstance(report, list):
        candidates.append(report)
    elif isinstance(report, dict):
        for key in ("models", "results", "summary", "reports"):
            if key in report:
                candidates.append(report[key])
    for found in candidates:
        rows = []
        if isinstance(found, list):
            for rec in found:
                if isinstance(rec, dict) and _model_name(rec):
                    rows.append((_model_name(rec), _numbers({k: v for k, v in rec.items() if k not in _NAME_KEYS})))
        elif isinstance(found, dict) and all(isinstance(v, dict) for v in found.values()):
            rows = [(Path(str(k)).name, _numbers(v)) for k, v in found.items()]
        rows = [(n, nums) for n, nums in rows if n and nums]
        if rows:
            return rows
    return []


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.3g}"


def _cvlocal_eval_table(report: dict[str, Any], source: str) -> list[str] | None:
    """The pooled metric table of a ``cvlocal-eval/1`` report, or None if it is not one."""
    if report.get("format") != EVAL_FORMAT:
        return None
    from cvlocal.evaluation.report import table_rows

    try:
        rows = table_rows(report, "all")
        names = [str(m["name"]) for m in report["models"]]
        settings = report.get("settings") or {}
        scorer = (report.get("scorer") or {}).get("description")
    except (KeyError, TypeError, AttributeError):
        return None
    lines = [f"From `{source}` (`cvlocal eval`; suites: {', '.join(settings.get('suites', []))}; "
             f"languages: {', '.join(settings.get('langs', []))}), all languages pooled; ↑ higher is better, ↓ lower is better.", ""]
    if scorer:
        lines += [f"Toxicity scorer: {scorer}.", ""]
    lines += ["| suite | metric | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|---|" + "---:|" * len(names)]
    lines += [f"| {r['suite']} | {r['label']} | " + " | ".join(r["values"]) + " |" for r in rows]
    return lines


def summary_markdown(report: Any, source: str) -> list[str]:
    """Markdown lines: the evaluation's own table, a per-model table, or the report's top-level numbers."""
    if isinstance(report, dict):
        known = _cvlocal_eval_table(report, source)
        if known is not None:
            return known
    lines = [f"From `{source}`:", ""]
    rows = _model_records(report)
    if rows:
        columns: list[str] = []
        for _, nums in rows:
            for key in nums:
                if key not in columns:
                    columns.append(key)
        shown = columns[:MAX_COLUMNS]
        lines.append("| model | " + " | ".join(shown) + " |")
        lines.append("|---|" + "---:|" * len(shown))
        for name, nums in rows:
            lines.append(f"| `{name}` | " + " | ".join(_fmt(nums[c]) if c in nums else "" for c in shown) + " |")
        if len(columns) > len(shown):
            lines += ["", f"({len(columns) - len(shown)} more numbers are in the report.)"]
        return lines
    nums = _numbers(report)
    if not nums:
        return lines + ["The report holds no numbers this card can show; see the file itself."]
    lines += ["| result | value |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in list(nums.items())[:MAX_COLUMNS * 2]]
    return lines
