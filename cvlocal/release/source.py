"""What a release is made from: a merged HF folder or a high-precision GGUF, checked before any work.

Also reads the provenance the source carries (the merged folder's ``cvlocal_recipe.json`` and
README front matter, or a GGUF's ``cvlocal.recipe`` and ``general.base_model.*`` keys) and a
cheap identity that tells a resumed release whether the source changed underneath it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType as GGMLType
from gguf import Keys

from convert.checkpoint import open_checkpoint
from convert.json_file import load_json
from convert.errors import ConvertError
from convert.gguf_reader import read_gguf
from convert.hub_cache import model_folder
from convert.tokenizer_facts import read_tokenizer_facts
from convert.quant_tables import FTYPE_LABELS, OUTTYPES, OutType
from cvlocal.errors import UsageError
from cvlocal.release.card import Provenance, language_tags

RECIPE_FILE = "cvlocal_recipe.json"
RECIPE_KEY = "cvlocal.recipe"
# Lossless GGUF encodings a release may start from (llama_ftype numbers).
HIGH_PRECISION_FTYPES = {0: "f32", 1: "f16", 32: "bf16"}
_GGML_OUTTYPE = {GGMLType.BF16: "bf16", GGMLType.F16: "f16", GGMLType.F32: "f32"}


@dataclass
class Source:
    """A checked source and what the release needs from it."""

    path: Path
    kind: str                 # "hf" or "gguf"
    identity: str             # changes when the source's files change
    lossless: OutType         # the GGUF encoding that keeps its weights exactly (convert.convert_model.lossless_type)
    provenance: Provenance
    config: dict[str, Any] | None = None
    n_tensors: int = 0        # tensors to convert (HF folders), for the progress bar

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"


def open_source(path: str | Path) -> Source:
    """Check the source and return it; bad input raises a one-line ConvertError/UsageError."""
    path = model_folder(path)  # a repo id or models--ORG--NAME folder in the local hub cache, too
    if not path.exists():
        raise UsageError("source not found", path, "Pass a merged model folder or a f32/f16/bf16 GGUF file.")
    if path.is_dir():
        return _open_hf(path)
    return _open_gguf(path)


def _open_hf(folder: Path) -> Source:
    from convert.convert_model import lossless_type, prepare

    ckpt = open_checkpoint(folder)
    try:
        read_tokenizer_facts(folder, require_tokenizer=True)  # the converter's reader: a bad file fails now
        plan = {n: (ckpt.dtype(n), ckpt.shape(n)) for n in ckpt.names()}
        lossless = OUTTYPES[_GGML_OUTTYPE[lossless_type(plan)]]
        # The converter's own checks (architecture, tensor plan, tokenizer), without reading weights,
        # so that a folder it would refuse fails here, before the release folder is created.
        prepare(folder, plan, lossless)
        h = hashlib.sha256(ckpt.fingerprint().encode())
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return Source(path=folder, kind="hf", identity="hf:" + h.hexdigest()[:24], lossless=lossless,
                      provenance=hf_provenance(folder), config=ckpt.config, n_tensors=len(plan))
    finally:
        ckpt.close()


def _open_gguf(path: Path) -> Source:
    gguf = read_gguf(path)
    try:
        ftype = gguf.file_type
        if ftype not in HIGH_PRECISION_FTYPES:
            label = FTYPE_LABELS.get(ftype, f"file type {ftype}") if ftype is not None else "an unknown file type"
            raise UsageError(f"the GGUF is {label}, not f32/f16/bf16", path,
                             "Release from the merged folder or a f32/f16/bf16 GGUF; quantizing a quantized file compounds the error.")
        if Keys.Tokenizer.MODEL not in gguf.metadata:
            raise UsageError("the GGUF has no tokenizer (tokenizer.ggml.model)", path,
                             "Convert the model again from a folder that has its tokenizer files.")
        st = path.stat()
        identity = "gguf:" + hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:24]
        return Source(path=path, kind="gguf", identity=identity, lossless=OUTTYPES[HIGH_PRECISION_FTYPES[ftype]],
                      provenance=gguf_provenance(path, gguf.metadata))
    finally:
        gguf.close()


# ---- provenance --------------------------------------------------------------------------------
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def front_matter(readme: str) -> dict[str, Any]:
    """The YAML front matter of a model card, or {} when there is none or it does not parse."""
    import yaml

    m = _FRONT_MATTER.match(readme)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def markdown_sections(readme: str, titles: tuple[str, ...]) -> str | None:
    """The named ``## `` sections of a Markdown card (heading included), in their order, or None."""
    out: list[str] = []
    keep = False
    for line in _FRONT_MATTER.sub("", readme, count=1).splitlines():
        if line.startswith("## "):
            keep = line[3:].strip().lower() in titles
            if keep:
                line = "#" + line  # nested one level under the release card's own heading
        elif line.startswith("# "):
            keep = False
        if keep:
            out.append(line)
    text = "\n".join(out).strip()
    return text or None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v]
    return [str(value)]


def hf_provenance(folder: Path) -> Provenance:
    """Provenance from a merged folder: cvlocal_recipe.json, else the README's recipe sections."""
    recipe = None
    if (folder / RECIPE_FILE).is_file():
        try:
            loaded = load_json(folder / RECIPE_FILE)
            recipe = loaded if isinstance(loaded, dict) else None
        except ConvertError:
            recipe = None
    meta: dict[str, Any] = {}
    recipe_md = None
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        meta = front_matter(text)
        recipe_md = markdown_sections(text, ("inputs", "recipe", "notes"))
    return Provenance(
        source=f"merged folder `{folder.name}`",
        base_models=_as_list(meta.get("base_model")),
        recipe=recipe,
        recipe_markdown=recipe_md,
        license=str(meta["license"]) if meta.get("license") else None,
        languages=language_tags(_as_list(meta.get("language"))),
    )


def gguf_provenance(path: Path, metadata: dict[str, Any]) -> Provenance:
    """Provenance from a GGUF: the ``cvlocal.recipe`` JSON and the ``general.base_model.*`` keys."""
    recipe = None
    raw = metadata.get(RECIPE_KEY)
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
            recipe = parsed if isinstance(parsed, dict) else None
        except ValueError:
            recipe = None
    bases = []
    count = metadata.get(Keys.General.BASE_MODEL_COUNT)
    for i in range(int(count) if isinstance(count, int) else 0):
        name = metadata.get(Keys.General.BASE_MODEL_NAME.format(id=i)) or metadata.get(Keys.General.BASE_MODEL_REPO_URL.format(id=i))
        if name:
            bases.append(str(name))
    license_ = metadata.get(Keys.General.LICENSE)
    return Provenance(source=f"GGUF `{path.name}`", base_models=bases, recipe=recipe,
                      license=str(license_) if license_ else None,
                      languages=language_tags(_as_list(metadata.get(Keys.General.LANGUAGES))))
