"""``general.*`` metadata and GGUF file names by the GGUF naming convention.

The convention (ggml docs/gguf.md) is ``<BaseName>-<SizeLabel>-<FineTune>-<Version>-<Encoding>.gguf``
with absent parts left out, e.g. ``TinyLlama-1.1B-Chat-v1.0-Q4_K_M.gguf``. The parts come from the
model's name: an explicit ``general.name`` in the caller's metadata, else the HF repo id in
config.json's ``_name_or_path``, else the folder name. The name is split on ``-``: a part like
``8B``, ``1.1B`` or ``8x7B`` is the size label, ``v1.0`` the version, parts after the size label the
fine-tune, parts before it the base name. A name without a size label is split before the first
fine-tune word (``Chat``, ``Instruct``, ``it``, ``SFT`` ...), and the size label is computed from
the parameter count by gguf-py (two significant digits: ``1.7M``, ``494M``, ``1.1B``, ``8.0B``).

Also read: the model card's front matter (``README.md``) for ``license`` and ``base_model``,
which become ``general.license`` and ``general.base_model.*``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import gguf
from gguf import Keys

from convert.hub_cache import display_name

QUANTIZED_BY = "cvlocal"
_SIZE = re.compile(r"(\d+x)?\d+(\.\d+)?[KMBT]", re.IGNORECASE)
_VERSION = re.compile(r"v\d+(\.\d+)*", re.IGNORECASE)
_ENCODING = re.compile(r"(b?f(16|32)|q\d(_\w+)*|iq\d(_\w+)*|gguf)", re.IGNORECASE)
# Words that start the fine-tune part of a name that has no size label ("Llama-3-Chat").
_FINETUNE_WORDS = re.compile(r"(chat|instruct|it|sft|dpo|rlhf)", re.IGNORECASE)


def size_label(n_params: int) -> str:
    """A parameter count as gguf-py labels it (two significant digits, K/M/B/T): 1.7M, 494M, 1.1B, 70B."""
    return gguf.size_label(n_params, n_params, 0, 0)


def _label_params(label: str) -> float:
    label = label.upper()
    experts = 1
    if "X" in label:
        count, _, label = label.partition("X")
        experts = int(count)
    return experts * float(label[:-1]) * {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[label[-1]]


def model_name(folder: Path, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """The model's name: metadata override, HF repo id in config.json, or the folder name."""
    name = overrides.get(Keys.General.NAME)
    if isinstance(name, str) and name.strip():
        return name.strip()
    source = config.get("_name_or_path")
    if isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists():
        return source.split("/", 1)[1]
    return display_name(folder)


def name_parts(name: str, n_params: int) -> dict[str, str | None]:
    """Split a model name into basename, size label, fine-tune and version."""
    parts = [p for p in re.split(r"[-\s]+", name.replace("/", "-")) if p]
    size_i = next((i for i, p in enumerate(parts) if i > 0 and _SIZE.fullmatch(p)), None)
    size = None
    if size_i is not None:
        label = parts[size_i].upper().replace("X", "x")
        if n_params <= 0 or 0.5 <= _label_params(label) / n_params <= 2.0:
            size = label
    if size_i is None:
        size_i = next((i for i, p in enumerate(parts) if i > 0 and _FINETUNE_WORDS.fullmatch(p)), None)
        before, after = (parts[:size_i], parts[size_i:]) if size_i is not None else (parts, [])
    else:
        before, after = parts[:size_i], parts[size_i + 1:]
    version = None
    for group in (after, before):
        if group and _VERSION.fullmatch(group[-1]) and len(group) > (0 if group is after else 1):
            version = group.pop()
            break
    after = [p for p in after if not _ENCODING.fullmatch(p)]
    before = [p for p in before if not (_ENCODING.fullmatch(p) and len(before) > 1)]
    return {
        "basename": "-".join(before) or None,
        "size_label": size or (size_label(n_params) if n_params > 0 else None),
        "finetune": "-".join(after) or None,
        "version": version,
    }


def _model_card(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        import yaml

        card = yaml.safe_load(match.group(1))
    except Exception:  # a broken model card must not stop a conversion
        return {}
    return card if isinstance(card, dict) else {}


def general_metadata(folder: Path, config: Mapping[str, Any], n_params: int, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``general.*`` keys for a model in ``folder`` (caller's ``overrides`` are applied on top by the caller)."""
    overrides = overrides or {}
    name = model_name(folder, config, overrides)
    parts = name_parts(name, n_params)
    out: dict[str, Any] = {Keys.General.TYPE: "model", Keys.General.NAME: name}
    for key, part in ((Keys.General.BASENAME, "basename"), (Keys.General.SIZE_LABEL, "size_label"), (Keys.General.FINETUNE, "finetune"), (Keys.General.VERSION, "version")):
        if parts[part]:
            out[key] = parts[part]
    out[Keys.General.QUANTIZED_BY] = QUANTIZED_BY
    card = _model_card(folder)
    if isinstance(card.get("license"), str):
        out[Keys.General.LICENSE] = card["license"]
    bases = card.get("base_model")
    bases = [bases] if isinstance(bases, str) else [b for b in bases or [] if isinstance(b, str)]
    if bases:
        out[Keys.General.BASE_MODEL_COUNT] = len(bases)
        for i, base in enumerate(bases):
            org, _, repo = base.rpartition("/")
            out[Keys.General.BASE_MODEL_NAME.format(id=i)] = repo or base
            if org:
                out[Keys.General.BASE_MODEL_ORGANIZATION.format(id=i)] = org
                out[Keys.General.BASE_MODEL_REPO_URL.format(id=i)] = f"https://huggingface.co/{base}"
    return out


def file_name(general: Mapping[str, Any], label: str) -> str:
    """The GGUF naming-convention file name for metadata ``general`` and encoding ``label`` (gguf-py's)."""
    def part(key: str) -> str | None:
        value = general.get(key)
        return re.sub(r"[\s/\\]+", "-", str(value).strip()) if value else None

    name = gguf.naming_convention(part(Keys.General.NAME) or "model", part(Keys.General.BASENAME), part(Keys.General.FINETUNE),
                                  part(Keys.General.VERSION), part(Keys.General.SIZE_LABEL), label)
    return name + ".gguf"
