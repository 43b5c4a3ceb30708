"""Models in the local Hugging Face hub cache, named by folder, by ``models--ORG--NAME`` or by repo id.

``huggingface-cli download`` and ``snapshot_download`` store a model as
``HF_HUB_CACHE/models--ORG--NAME/snapshots/COMMIT/``, whose files are relative symlinks into
``../../blobs/``; ``refs/main`` names the commit. A user who has such a download should be able
to pass the repo id (``meta-llama/Llama-3.1-8B``) or the ``models--...`` folder wherever a model
folder is expected. Resolution goes through huggingface_hub's own ``snapshot_download`` with
``local_files_only=True``: it reads only the cache and never opens a connection.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from convert.errors import ConvertError

# A hub repo id as the hub accepts it: ORG/NAME, letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_CACHE_FOLDER = re.compile(r"models--([A-Za-z0-9][A-Za-z0-9._-]*)--([A-Za-z0-9][A-Za-z0-9._-]*)")


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment now (HF_HUB_CACHE, then HF_HOME/hub), as huggingface_hub does."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The cached snapshot of ``repo_id``'s main revision, or None if the cache does not hold it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        return None


def model_folder(spec: str | Path) -> Path:
    """The folder a model argument names: itself, the snapshot of a ``models--`` folder, or a cached repo id.

    An existing path other than a ``models--`` folder is returned as it is (the callers say what
    is wrong with it); a repo id that is not in the cache is refused with a one-line error.
    """
    path = Path(spec)
    match = _CACHE_FOLDER.fullmatch(path.name) if path.name else None
    if path.is_dir() and match and (path / "snapshots").is_dir() and not (path / "config.json").exists():
        found = _snapshot(f"{match.group(1)}/{match.group(2)}", path.parent)
        if found is None:
            raise ConvertError("hub-cache folder without a complete snapshot of its main revision", path,
                               "Finish the download (huggingface-cli download ORG/NAME) or pass a snapshots/COMMIT folder.")
        return found
    if path.exists() or not _REPO_ID.fullmatch(str(spec)) or ".." in str(spec) or "--" in str(spec):
        return path
    cache = hub_cache_dir()
    found = _snapshot(str(spec), cache)
    if found is None:
        raise ConvertError(f"no such folder, and {spec} is not in the local hub cache ({cache})", spec,
                           f"Pass the model folder, or download it first (huggingface-cli download {spec}); nothing is downloaded here.")
    return found


def display_name(folder: Path) -> str:
    """A folder's name for people and file names: NAME for a hub snapshot (not its commit hash)."""
    real = Path(folder).resolve()
    if real.parent.name == "snapshots":
        match = _CACHE_FOLDER.fullmatch(real.parent.parent.name)
        if match:
            return match.group(2)
    return real.name
