"""The one reader of every JSON input file (config, index, tokenizer and generation configs, manifests).

Model folders come from strangers and from interrupted downloads, so a file that parses may still
hold a list where an object belongs, a string where an id belongs, or an id of ``10**12`` that
would make a vocabulary table of a trillion entries. ``load_json`` reads a file and
``JsonObject`` wraps a parsed object with typed accessors: each returns the field in the type the
caller needs or raises ``ConvertError`` naming the file and the field (``added_tokens[3].id``), so
that a malformed file is one line on stderr, never a traceback from deep inside the merge.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from convert.errors import ConvertError

FIX = "Repair or re-download it."
# Largest token id (or other count) a field may hold: far above any real vocabulary (256K), far
# below what would exhaust memory when a table is sized by it.
MAX_ID = 1 << 24
_MISSING = object()


def load_json(path: Path) -> Any:
    """Read a JSON file or raise a one-line ConvertError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError("file not found", path) from None
    except IsADirectoryError:
        raise ConvertError("is a folder, not a JSON file", path, FIX) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConvertError(f"not valid JSON ({err.__class__.__name__})", path, FIX) from None
    except RecursionError:
        raise ConvertError("not valid JSON (nested too deeply)", path, FIX) from None
    except OSError as err:
        raise ConvertError(f"cannot read: {err.strerror}", path, "Check the path and its permissions.") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


class JsonObject:
    """A JSON object read from ``path``; ``where`` is its position in the file (``""`` at the top)."""

    def __init__(self, data: dict[str, Any], path: Path, where: str = "") -> None:
        self.data = data
        self.path = Path(path)
        self.where = where

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def read(cls, path: Path) -> "JsonObject":
        """The file's top-level object (a file holding anything else is refused)."""
        data = load_json(path)
        if not isinstance(data, dict):
            raise ConvertError(f"not a JSON object (it holds {_kind(data)})", path, FIX)
        return cls(data, path)

    @classmethod
    def optional(cls, path: Path) -> "JsonObject | None":
        """The file's object, or None when the file does not exist."""
        return cls.read(path) if Path(path).is_file() else None

    # -- errors --------------------------------------------------------------------------
    def field_name(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.where}[{key}]"
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str | int, what: str, value: Any = _MISSING) -> ConvertError:
        """The one-line error for a field that is not ``what``."""
        got = "" if value is _MISSING else f", not {_kind(value)}"
        return ConvertError(f"field {self.field_name(key)!r} must be {what}{got}", self.path, FIX)

    # -- typed accessors -------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> list[str]:
        return list(self.data)

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as parsed, unchecked (for fields copied through, never interpreted)."""
        return self.data.get(key, default)

    def text(self, key: str, default: str | None = None) -> str | None:
        """A string field; ``default`` when absent or null."""
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, "a string", value)
        return value

    def integer(self, key: str, default: int | None = None, *, low: int = 0, high: int = MAX_ID) -> int | None:
        """An integer field within ``[low, high]`` (booleans and floats refused); ``default`` when absent."""
        value = self.data.get(key)
        if value is None:
            return default
        return check_int(value, low, high, lambda what, v: self.error(key, what, v))

    def integers(self, key: str, *, low: int = 0, high: int = MAX_ID) -> list[int]:
        """An integer or a list of integers (``eos_token_id``), as a list; [] when absent or null."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            return [check_int(value, low, high, lambda what, got: self.error(key, f"{what} or a list of integers", got))]
        return [check_int(v, low, high, lambda what, got, i=i: self.error(f"{key}[{i}]", what, got)) for i, v in enumerate(value)]

    def number(self, key: str, default: float | None = None) -> float | None:
        """A finite number; ``default`` when absent."""
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, "a finite number", value)
        return float(value)

    def obj(self, key: str, *, required: bool = False) -> "JsonObject | None":
        """A nested object (None when absent or null, unless ``required``)."""
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise self.error(key, "an object", value) if key in self.data else self.error(key, "present (an object)")
        return JsonObject(value, self.path, self.field_name(key))

    def objects(self, key: str) -> Iterator["JsonObject"]:
        """Each element of a list of objects ([] when absent or null)."""
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            raise self.error(key, "a list", value)
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConvertError(f"field {self.field_name(key)}[{i}] must be an object, not {_kind(item)}", self.path, FIX)
            yield JsonObject(item, self.path, f"{self.field_name(key)}[{i}]")

    def token_text(self, key: str) -> str | None:
        """A token given as a string or as an AddedToken object ``{"content": ...}`` (tokenizer_config)."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            return value["content"]
        raise self.error(key, "a string or an object with a string 'content'", value)


def check_int(value: Any, low: int, high: int, error: Any) -> int:
    """``value`` as an int in ``[low, high]``, else ``error(what, value)`` is raised."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error("an integer", value)
    if not low <= value <= high:
        raise error(f"an integer from {low} to {high} (it is {value})", _MISSING)
    return value


def parse_id(text: Any, where: JsonObject, key: str) -> int:
    """A token id stored as an object key (``added_tokens_decoder``: ``{"128000": {...}}``)."""
    if not isinstance(text, str) or not text.isdigit() or int(text) > MAX_ID:
        raise ConvertError(f"field {where.field_name(key)!r} has a key that is not a token id: {str(text)[:40]!r}", where.path, FIX)
    return int(text)
