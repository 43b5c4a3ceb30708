"""Save and load a conversation as JSON (``/save``, ``/load``, ``--script --json``).

The file holds the messages in the OpenAI shape (``role``, ``content``) so other tools can read
it, plus the settings, the per-turn measurements and how many of the oldest exchanges the model
no longer saw (context trimming hides turns from the model, never from the transcript). ``load``
accepts either this file or a bare list of messages, and checks every field: a transcript is user
input.

A transcript is a file. Saving never removes anything: a folder given as the path gets a new file
inside it, an existing file is replaced only when the caller says so (``/save!`` or a yes to the
question), and the new file is written beside the target and renamed over it, so a failed write
leaves the old file as it was.
"""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvlocal.outputs.atomic import partial_path
from cvlocal.errors import UsageError
from cvlocal.session import Turn

FORMAT = "cvlocal-chat"
VERSION = 1
ROLES = ("system", "user", "assistant")
FIX_LOAD = "Give a file written by /save"


class TranscriptExists(UsageError):
    """The target is an existing file and replacing it was not asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__("already exists", path=path, fix="Use /save! PATH to replace it, or give another name")
        self.target = path


@dataclass
class Transcript:
    """What a transcript file holds, checked."""

    messages: list[dict[str, str]]
    settings: dict[str, Any] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)
    hidden_exchanges: int = 0


def transcript_dict(session: Any) -> dict[str, Any]:
    """The JSON-ready record of a session: model, template, settings, every message and turn."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": session.model_name,
        "template": session.template_source,
        "n_ctx": session.n_ctx,
        "settings": session.settings(),
        "messages": [dict(m) for m in session.messages],
        "turns": [t.as_dict() for t in session.turns],
        "hidden_exchanges": session.hidden_exchanges,
    }


def new_name_in(folder: Path) -> Path:
    """A file name in ``folder`` that does not exist yet: ``chat-YYYYMMDD-HHMMSS[-N].json``."""
    stem = time.strftime("chat-%Y%m%d-%H%M%S")
    candidate = folder / f"{stem}.json"
    n = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / f"{stem}-{n}.json"
        n += 1
    return candidate


def save_target(path: str | Path, *, replace: bool = False) -> Path:
    """The file a save to ``path`` writes; UsageError when it must not be written.

    An existing folder (or a path ending in ``/``) means a new file inside it. An existing file is
    a TranscriptExists unless ``replace``; anything else that exists (a device, a pipe) is refused.
    """
    text = str(path)
    path = Path(path).expanduser()
    if path.is_dir():
        return new_name_in(path)
    if text.endswith(("/", os.sep)):
        raise UsageError("no such folder", path=path, fix="Create the folder first, or give a file name")
    if path.exists() or path.is_symlink():
        if path.exists() and not path.is_file():
            raise UsageError("exists and is not a regular file", path=path, fix="Give a file name")
        if not replace:
            raise TranscriptExists(path)
    parent = path.parent
    if not parent.is_dir():
        reason = "is not a folder" if parent.exists() else "does not exist"
        raise UsageError(f"the folder for the transcript {reason}", path=parent,
                         fix="Create the folder first, or give another path")
    return path


def _write_error(err: OSError, target: Path) -> UsageError:
    fixes = {errno.ENOSPC: "Free some space or save elsewhere", errno.EDQUOT: "Free some space or save elsewhere",
             errno.EACCES: "Save in a folder you can write to", errno.EPERM: "Save in a folder you can write to",
             errno.EROFS: "Save in a folder you can write to"}
    reason = err.strerror or str(err)
    return UsageError(f"cannot write the transcript ({reason})", path=target,
                      fix=fixes.get(err.errno or 0, "Give another path"))


def write_transcript(session: Any, target: Path) -> Path:
    """Write the session to ``target`` (a path from :func:`save_target`), complete or not at all.

    The text goes to a hidden sibling first and is renamed over ``target``: a rename never replaces
    a folder, and on failure only that sibling (which this wrote) is removed.
    """
    data = (json.dumps(transcript_dict(session), ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    tmp = partial_path(target)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError):
            raise _write_error(err, target) from err
        raise
    return target


def save_transcript(session: Any, path: str | Path, *, replace: bool = False) -> Path:
    """Save the session to ``path`` (see :func:`save_target`); returns the file written."""
    try:
        target = save_target(path, replace=replace)
    except OSError as err:  # a name too long, a loop of symlinks ...
        raise _write_error(err, Path(path)) from err
    return write_transcript(session, target)


def _turns(data: dict[str, Any], path: Path, replies: int) -> list[Turn]:
    raw = data.get("turns", [])
    if not isinstance(raw, list):
        raise UsageError("'turns' is not a list", path=path, fix="Fix or remove 'turns'")
    turns = []
    for i, record in enumerate(raw):
        try:
            turns.append(Turn.from_dict(record))
        except ValueError as err:
            raise UsageError(f"turn {i}: {err}", path=path, fix="Fix or remove that turn") from err
    if len(turns) > replies:
        raise UsageError(f"{len(turns)} turns for {replies} replies", path=path,
                         fix="Remove the extra turns (there is one per reply, the last ones)")
    return turns


def load_transcript(path: str | Path) -> Transcript:
    """Everything a saved transcript (or a bare JSON list of messages) holds, checked."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError("is a folder, not a transcript file", path=path, fix="Give a file written by /save")
    if not path.is_file():
        raise UsageError("no such transcript file", path=path, fix=FIX_LOAD)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read the transcript ({err.strerror})", path=path, fix=FIX_LOAD) from err
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise UsageError(f"not a JSON transcript ({err})", path=path, fix=FIX_LOAD) from err
    if isinstance(data, list):
        data = {"messages": data}
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise UsageError("no 'messages' list in the transcript", path=path, fix=FIX_LOAD)
    messages: list[dict[str, str]] = []
    for i, message in enumerate(data["messages"]):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            raise UsageError(f"message {i} is not a {{role, content}} object with role one of {', '.join(ROLES)}",
                             path=path, fix="Fix or remove that message")
        if message["role"] == "system" and i != 0:
            raise UsageError(f"message {i} is a system message; only the first may be", path=path,
                             fix="Move it to the start")
        messages.append({"role": message["role"], "content": message["content"]})
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    hidden = data.get("hidden_exchanges", 0)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise UsageError("'hidden_exchanges' is not an integer >= 0", path=path, fix="Fix or remove it")
    turns = _turns(data, path, sum(m["role"] == "assistant" for m in messages))
    return Transcript(messages, settings, turns, hidden)
