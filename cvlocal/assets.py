"""Where the data files (eval suites, word lists, held-out text, demo models) are.

In a source checkout or an editable install they sit in ``assets/`` beside the package; a wheel
installs them under ``<prefix>/share/cvlocal/assets`` (pyproject's data-files). ``CVLOCAL_ASSETS``
overrides both, for a user who keeps them elsewhere.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def assets_dir() -> Path:
    """The assets folder: $CVLOCAL_ASSETS, else the checkout's, else the installed copy."""
    override = os.environ.get("CVLOCAL_ASSETS")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[1] / "assets"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "cvlocal" / "assets"


def asset_path(*parts: str) -> Path:
    """A path inside the assets folder (not checked for existence: callers report what is missing)."""
    return assets_dir().joinpath(*parts)
