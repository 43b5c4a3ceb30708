"""Opening a GGUF as llama-cpp-python's high-level ``Llama``, with llama.cpp's load log captured.

The chat, the server, the release checks and the evaluators all open models this way; each used
to import ``Llama`` and capture (or redirect) the log its own way. Here a load keeps llama.cpp's
lines off the terminal (they would break a spinner or a progress bar) and, when it fails, hands
them to the caller, who words the error for its own command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cvlocal.errors import UsageError
from cvlocal.llama.log import captured_log


class LoadError(Exception):
    """llama.cpp refused the file: ``cause`` is llama-cpp-python's exception, ``problems`` the
    warning and error lines llama.cpp logged while trying (in order)."""

    def __init__(self, cause: BaseException, problems: list[str]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.problems = problems


def llama_class() -> Any:
    """llama-cpp-python's ``Llama``; a one-line UsageError when the package is missing."""
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise UsageError(f"llama-cpp-python is not installed ({err})", fix="Run: pip install llama-cpp-python") from err
    return Llama


def open_llama(path: str | Path, *, capture: bool = True, **settings: Any) -> Any:
    """``Llama(model_path=path, **settings)``; a refused file raises :class:`LoadError`.

    With ``capture`` off (``--verbose``) llama.cpp's log is left to llama-cpp-python's printer.
    """
    llama = llama_class()
    if not capture:
        return llama(model_path=str(path), **settings)
    with captured_log() as log:
        try:
            return llama(model_path=str(path), **settings)
        except (ValueError, RuntimeError, OSError) as err:
            raise LoadError(err, log.problems()) from err


def as_usage_error(path: str | Path, err: LoadError) -> UsageError:
    """The one-line error a command gives for a GGUF that llama.cpp refused (its last log lines say why)."""
    reason = "; ".join(err.problems[-2:]) or str(err.cause)
    return UsageError(f"llama.cpp could not load the model ({reason})", path=Path(path),
                      fix="Check that the file is complete and was written by a recent converter")
