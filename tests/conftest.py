"""Shared pytest fixtures: tiny real model families from tests/factory.py.

``tiny_family(kind, extended=False)`` builds each (kind, extended) once per test
session and returns the cached :class:`tests.factory.Family`; treat its folders as
read-only. Tests that modify files use ``tiny_family_fresh(kind, extended=False,
seed=0)``, which builds into the test's own ``tmp_path``.
"""

from __future__ import annotations

import pytest

from tests.factory import Family, make_family
from tests.gguf_fixtures import *  # noqa: F401,F403  (tiny_gguf)
from tests.imatrix_fixtures import tiny_imatrix  # noqa: F401  (a session fixture for every test file)


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    cache: dict[tuple[str, bool], Family] = {}

    def get(kind: str, extended: bool = False) -> Family:
        key = (kind, extended)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"family-{kind}{'-ext' if extended else ''}")
            cache[key] = make_family(kind, root, extended=extended)
        return cache[key]

    return get


@pytest.fixture
def tiny_family_fresh(tmp_path):
    def build(kind: str, extended: bool = False, seed: int = 0) -> Family:
        root = tmp_path / f"family-{kind}{'-ext' if extended else ''}-seed{seed}"
        return make_family(kind, root, extended=extended, seed=seed)

    return build
