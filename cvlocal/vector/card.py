"""The merged folder's model card (README.md) and its machine-readable twin (cvlocal_recipe.json).

Whoever finds a merged model on disk or on a hub must be able to tell what went into it: every
input's path and fingerprint, every ratio, how embeddings and special tokens were treated. The
JSON twin is what ``cvlocal release`` and the GGUF ``cvlocal.*`` keys carry forward.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvlocal import __version__

RECIPE_FILE = "cvlocal_recipe.json"
RECIPE_FORMAT = 1


def build_recipe(cp: dict[str, Any], terms: list[dict[str, Any]], *, embeddings: dict[str, str], special_tokens: list[dict[str, Any]], dtype: str, notes: list[str]) -> dict[str, Any]:
    return {
        "format_version": RECIPE_FORMAT,
        "tool": f"cvlocal {__version__}",
        "formula": "out = cp + sum(ratio_i * (chat_i - base_i)), float32, rounded once",
        "cp": cp,
        "vectors": terms,
        "embeddings": embeddings,
        "special_tokens": special_tokens,
        "dtype": dtype,
        "notes": notes,
    }


def _name(path: Any) -> str:
    return Path(str(path)).name if path else "?"


def render_card(recipe: dict[str, Any], title: str) -> str:
    """README.md text: YAML front matter for hubs, then the recipe in words and tables."""
    base_models = [_name(recipe["cp"].get("path"))] + [_name((t.get("chat") or {}).get("path")) for t in recipe["vectors"]]
    lines = ["---", "base_model:"] + [f"- {b}" for b in dict.fromkeys(base_models)]
    lines += ["tags:", "- chat-vector", "- merge", "- cvlocal", "library_name: transformers", "---", "", f"# {title}", ""]
    lines += [
        "This model was made with [cvlocal](https://github.com/) by adding chat vectors to a continually",
        "pretrained (CP) model, following Huang et al., *Chat Vector* (ACL 2024):",
        "",
        f"`{recipe['formula']}` to {recipe['dtype']}.",
        "",
        "## Inputs",
        "",
        "| role | path | fingerprint |",
        "|---|---|---|",
        f"| CP | `{recipe['cp'].get('path')}` | `{recipe['cp'].get('fingerprint')}` |",
    ]
    for i, term in enumerate(recipe["vectors"], 1):
        if term.get("vector"):
            lines.append(f"| vector {i} (ratio {term['ratio']}) | `{term['vector'].get('path')}` | |")
        for role in ("base", "chat"):
            info = term.get(role) or {}
            lines.append(f"| {role} {i} | `{info.get('path')}` | `{info.get('fingerprint')}` |")
    lines += ["", "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| ratio {i} | {t['ratio']} |" for i, t in enumerate(recipe["vectors"], 1)]
    lines += [f"| {name} | {mode} |" for name, mode in recipe["embeddings"].items()]
    lines += [f"| dtype | {recipe['dtype']} |", f"| tool | {recipe['tool']} |", ""]
    if recipe["special_tokens"]:
        lines += ["Special-token rows taken from the chat model:", "", "| token | CP id | chat id |", "|---|---|---|"]
        lines += [f"| `{t['text']}` | {t['cp_id']} | {t['chat_id']} |" for t in recipe["special_tokens"]]
        lines.append("")
    if recipe["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in recipe["notes"]] + [""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'ids = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt")',
        "```",
        "",
        "Or convert it for llama.cpp: `cvlocal convert PATH -o model.gguf --outtype q4_k_m`.",
        "",
        f"`{RECIPE_FILE}` holds this recipe in machine-readable form.",
        "",
    ]
    return "\n".join(lines)


def write_card(out_dir: Path, recipe: dict[str, Any], title: str) -> None:
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(render_card(recipe, title), encoding="utf-8")
