"""The bundled demo models and prompts (``assets/demo``), found and checked before any work starts.

The folder holds ``base/``, ``chat/`` and ``cp/`` (HF folders written by ``assets/demo/train.py``),
``heldout.jsonl`` (language-B chat prompts about countries that neither the chat fine-tune nor the
base model's B text ever mentioned, with gold answers) and ``world.json`` (the two languages'
vocabularies). A missing piece is a usage error that says how to rebuild it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cvlocal.assets import asset_path
from cvlocal.errors import UsageError

DEFAULT_ASSETS = asset_path("demo")
REBUILD = "Rebuild the demo models with `make demo-models` (assets/demo/train.py)."


@dataclass(frozen=True)
class Prompt:
    """One held-out question in language B and what a right reply contains."""

    country: str
    attribute: str
    prompt: str
    gold: str      # the exact B sentence the chat format asks for
    value: str     # the gold value in B
    value_a: str   # the same value in A (a correct answer in the wrong language still counts as correct)


@dataclass(frozen=True)
class DemoBundle:
    root: Path
    base: Path
    chat: Path
    cp: Path
    prompts: list[Prompt]
    a_words: frozenset[str]
    settings: dict


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UsageError(f"line {number} is not JSON ({err.msg})", path=path, fix=REBUILD) from err
    return rows


def load_bundle(root: Path | None = None) -> DemoBundle:
    """Check that every file of the demo is there and read the prompts."""
    root = Path(root) if root is not None else DEFAULT_ASSETS
    if not root.is_dir():
        raise UsageError("demo assets folder not found", path=root, fix=REBUILD)
    for name in ("base", "chat", "cp"):
        folder = root / name
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            raise UsageError(f"the demo's {name} model is missing or incomplete", path=folder, fix=REBUILD)
    for name in ("heldout.jsonl", "world.json"):
        if not (root / name).is_file():
            raise UsageError(f"{name} is missing", path=root / name, fix=REBUILD)
    try:
        world = json.loads((root / "world.json").read_text(encoding="utf-8"))
        a_words = frozenset(w.lower() for w in world["a_words"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"world.json is not a demo world description ({err})", path=root / "world.json", fix=REBUILD) from err
    fields = Prompt.__dataclass_fields__
    try:
        prompts = [Prompt(**{k: row[k] for k in fields}) for row in _read_jsonl(root / "heldout.jsonl")]
    except (KeyError, TypeError) as err:
        raise UsageError(f"a held-out prompt lacks a field ({err})", path=root / "heldout.jsonl", fix=REBUILD) from err
    if not prompts:
        raise UsageError("no held-out prompts", path=root / "heldout.jsonl", fix=REBUILD)
    settings_path = root / "settings.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    return DemoBundle(root, root / "base", root / "chat", root / "cp", prompts, a_words, settings)
