"""Where /save writes and what /load accepts (issue 12), without a model.

The truth is the file system itself (what exists before and after, read with os and pathlib) and
hand-written JSON files; no transcript written by the code is read back as its own proof.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cvlocal.chat.transcript import TranscriptExists, load_transcript, save_target
from cvlocal.errors import UsageError

TURN = {"text": "好", "finish_reason": "length", "prompt_tokens": 10, "new_prompt_tokens": 10,
        "completion_tokens": 1, "ttft_s": 0.01, "prompt_rate": 1000.0, "gen_rate": 0.0}
MESSAGES = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_a_folder_is_never_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "keep"
    folder.mkdir()
    (folder / "precious.txt").write_text("x", encoding="utf-8")
    (folder / "chat-x.json").write_text("{}", encoding="utf-8")
    before = tree(tmp_path)
    for given, replace in ((folder, False), (folder, True), (str(folder) + "/", True)):
        target = save_target(given, replace=replace)
        assert target.parent == folder and target.suffix == ".json" and not target.exists()
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    assert save_target(link).parent == link  # a link to a folder is that folder
    link.unlink()
    assert tree(tmp_path) == before  # nothing was created, removed or changed


def test_an_existing_file_needs_replace(tmp_path: Path) -> None:
    existing = tmp_path / "t.json"
    existing.write_text("old", encoding="utf-8")
    with pytest.raises(TranscriptExists, match=r"already exists.*/save!"):
        save_target(existing)
    assert save_target(existing, replace=True) == existing
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(TranscriptExists):
        save_target(dangling)
    assert existing.read_text(encoding="utf-8") == "old"


@pytest.mark.parametrize("case, message", [
    ("missing_parent", "the folder for the transcript does not exist"),
    ("parent_is_a_file", "the folder for the transcript is not a folder"),
    ("trailing_slash", "no such folder"),
    ("device", "exists and is not a regular file"),
])
def test_paths_that_cannot_be_a_transcript(tmp_path: Path, case: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    given = {"missing_parent": tmp_path / "missing" / "t.json", "parent_is_a_file": tmp_path / "file.txt" / "t.json",
             "trailing_slash": f"{tmp_path}/newdir/", "device": Path(os.devnull)}[case]
    with pytest.raises(UsageError, match=message) as err:
        save_target(given, replace=True)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def write(tmp_path: Path, data: object, raw: bytes | None = None) -> Path:
    path = tmp_path / "in.json"
    path.write_bytes(raw if raw is not None else json.dumps(data, ensure_ascii=False).encode("utf-8"))
    return path


def test_turns_and_hidden_exchanges_are_loaded(tmp_path: Path) -> None:
    old = dict(TURN)  # a file from before dropped_turns / total_s existed
    loaded = load_transcript(write(tmp_path, {"messages": MESSAGES, "turns": [old], "hidden_exchanges": 0}))
    assert loaded.messages == MESSAGES and loaded.hidden_exchanges == 0
    assert [t.as_dict() for t in loaded.turns] == [dict(TURN, dropped_turns=0, total_s=0.0)]
    assert load_transcript(write(tmp_path, MESSAGES)).turns == []  # a bare list of messages


@pytest.mark.parametrize("change, message", [
    ({"turns": {"a": 1}}, "'turns' is not a list"),
    ({"turns": ["x"]}, "turn 0: not an object"),
    ({"turns": [dict(TURN, text=None)]}, "turn 0: 'text' is not a string"),
    ({"turns": [dict(TURN, finish_reason="eos")]}, "turn 0: 'finish_reason' is not one of"),
    ({"turns": [dict(TURN, prompt_tokens=-1)]}, "turn 0: 'prompt_tokens' is not a finite number >= 0"),
    ({"turns": [dict(TURN, prompt_tokens=1.5)]}, "turn 0: 'prompt_tokens' is not an integer"),
    ({"turns": [dict(TURN, completion_tokens=True)]}, "turn 0: 'completion_tokens' is not an integer"),
    ({"turns": [dict(TURN, ttft_s="1")]}, "turn 0: 'ttft_s' is not a number"),
    ({"turns": [{k: v for k, v in TURN.items() if k != "gen_rate"}]}, "turn 0: no 'gen_rate'"),
    ({"turns": [TURN, TURN]}, "2 turns for 1 replies"),
    ({"hidden_exchanges": -1}, "'hidden_exchanges' is not an integer >= 0"),
    ({"hidden_exchanges": "2"}, "'hidden_exchanges' is not an integer >= 0"),
])
def test_bad_transcripts_are_one_line_errors(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, {"messages": MESSAGES, **change})
    with pytest.raises(UsageError, match=message) as err:
        load_transcript(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_nonfinite_turn_numbers_are_refused(tmp_path: Path) -> None:
    raw = json.dumps({"messages": MESSAGES, "turns": [dict(TURN, gen_rate=0.5)]}).replace("0.5", "NaN").encode()
    with pytest.raises(UsageError, match="'gen_rate' is not a finite number"):
        load_transcript(write(tmp_path, None, raw))


@pytest.mark.parametrize("raw, message", [
    (b"\xff\xfe{}", "not a JSON transcript"),
    (b"[" * 100000, "not a JSON transcript"),
    (b'{"messages": "hi"}', "no 'messages' list"),
])
def test_undecodable_transcripts(tmp_path: Path, raw: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_transcript(write(tmp_path, None, raw))


def test_a_folder_is_not_a_transcript(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a folder, not a transcript file"):
        load_transcript(tmp_path)
