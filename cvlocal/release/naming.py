"""File names of a release, by the GGUF naming convention (convert.metadata does the naming itself).

The parts (base name, size label, fine-tune, version) are read from the reference GGUF's
``general.*`` keys; ``--name`` replaces the model name (split into parts the way the converter
splits any model name, keeping the source's size label when the new name has none) and
``--version`` the version.
"""
from __future__ import annotations

from typing import Any, Mapping

from gguf import Keys

from convert.metadata import file_name, name_parts

_PARTS = {"basename": Keys.General.BASENAME, "size_label": Keys.General.SIZE_LABEL, "finetune": Keys.General.FINETUNE, "version": Keys.General.VERSION}


def release_general(metadata: Mapping[str, Any], *, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """The ``general.*`` keys that name the files, with the user's overrides applied."""
    general = {k: v for k, v in metadata.items() if k.startswith("general.")}
    if name:
        parts = name_parts(name, 0)
        if not parts["size_label"] and general.get(Keys.General.SIZE_LABEL):
            parts["size_label"] = str(general[Keys.General.SIZE_LABEL])
        general[Keys.General.NAME] = name
        for part, key in _PARTS.items():
            if parts[part]:
                general[key] = parts[part]
            else:
                general.pop(key, None)
    if version:
        general[Keys.General.VERSION] = version
    return general


def file_names(metadata: Mapping[str, Any], labels: list[str], *, name: str | None = None,
               version: str | None = None) -> dict[str, str]:
    """Encoding label (``Q4_K_M``) -> file name (``Model-1.1B-Chat-Q4_K_M.gguf``) for each label."""
    general = release_general(metadata, name=name, version=version)
    return {label: file_name(general, label) for label in labels}
