"""Save and load a conversation as JSON (``/save``, ``/load``, ``--script --json``).

The file holds the messages in the OpenAI shape (``role``, ``content``) so other tools can read
it, plus the settings and per-turn measurements. ``load`` accepts either this file or a bare list
of messages, and checks every field: a transcript is user input.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from convert.atomic import atomic_output
from cvlocal.errors import UsageError

FORMAT = "cvlocal-chat"
VERSION = 1
ROLES = ("system", "user", "assistant")


def transcript_dict(session: Any) -> dict[str, Any]:
    """The JSON-ready record of a session: model, template, settings, messages, turns."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": session.model_name,
        "template": session.template_source,
        "n_ctx": session.n_ctx,
        "settings": session.settings(),
        "messages": [dict(m) for m in session.messages],
        "turns": [t.as_dict() for t in session.turns],
    }


def save_transcript(session: Any, path: str | Path) -> Path:
    """Write the session to ``path`` (replaced if it exists), complete or not at all."""
    path = Path(path)
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(transcript_dict(session), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def load_transcript(path: str | Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Messages and settings from a saved transcript (or a bare JSON list of messages)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("no such transcript file", path=path, fix="Give a file written by /save")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"not a JSON transcript ({err})", path=path, fix="Give a file written by /save") from err
    if isinstance(data, list):
        data = {"messages": data}
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise UsageError("no 'messages' list in the transcript", path=path, fix="Give a file written by /save")
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
    return messages, settings
