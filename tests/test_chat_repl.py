"""``cvlocal chat`` in a real pseudo-terminal (pexpect), and ``--script`` without one.

The REPL is driven the way a person uses it: typed Chinese, Korean and English, wide-character
editing, every slash command, Ctrl-C during a reply, Ctrl-C twice and Ctrl-D at the prompt, a
context that overflows, /save then /load. Files written by the REPL (the transcript, the history)
are read back with json and plain file reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pexpect = pytest.importorskip("pexpect")


ROOT = Path(__file__).resolve().parents[1]
PROMPT = ">>>"  # prompt_toolkit draws the space after it by moving the cursor
SUMMARY = r"tok/s · first token"  # the line under every reply


def spawn_chat(model: Path, tmp_path: Path, *args: str) -> "pexpect.spawn":
    env = dict(os.environ, CVLOCAL_HISTORY=str(tmp_path / "history"), TERM="xterm-256color", COLUMNS="120",
               LINES="40", PYTHONIOENCODING="utf-8", LANG="C.UTF-8", LC_ALL="C.UTF-8",
               PROMPT_TOOLKIT_NO_CPR="1")  # pexpect does not answer cursor position requests
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "cvlocal", "chat", str(model), "--threads", "1", *args],
                          cwd=str(tmp_path), env=env, encoding="utf-8", dimensions=(40, 120), timeout=60,
                          # Ctrl-C makes the terminal driver discard its pending output, which can
                          # cut a character in two on the way to pexpect (a terminal shows U+FFFD too)
                          codec_errors="replace")
    child.expect_exact(PROMPT)
    return child


def say(child: "pexpect.spawn", text: str) -> None:
    """Type a message, wait for its reply and the next prompt."""
    child.sendline(text)
    child.expect(SUMMARY)
    child.expect_exact(PROMPT)


def command(child: "pexpect.spawn", line: str, expect: str) -> str:
    child.sendline(line)
    child.expect(expect)
    out = child.before + child.after
    child.expect_exact(PROMPT)
    return out


def turns_of(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["turns"]


def finish(child: "pexpect.spawn") -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


@pytest.fixture(scope="module")
def model(tiny_gguf) -> Path:
    return tiny_gguf("llama3", "f16")


def test_conversation_and_every_command(model: Path, tmp_path: Path) -> None:
    child = spawn_chat(model, tmp_path, "--ctx", "4096", "--max-tokens", "24", "--temperature", "0")
    say(child, "你好！請問臺北今天天氣如何？")
    say(child, "What is the capital of Korea?")
    say(child, "한국어로 대답해 주세요")
    stats = command(child, "/stats", r"context: \d+ of 4096")
    for n in ("1", "2", "3"):
        assert f"│ {n} " in stats or f"{n} │" in stats
    show = command(child, "/show", r"chat template \(gguf\)")
    assert "temperature" in show and "llama" in show and "<|eot_id|>" in show
    # a bounded pattern: "error.*" could swallow the next prompt when both arrive in one read
    command(child, "/set temperature -1", r"error: bad value '-1' for temperature")
    command(child, "/set temperature 0.5", r"temperature = 0\.5")
    command(child, "/set max_tokens 16", r"max_tokens = 16")
    command(child, "/system 你是一個樂於助人的助手。", "system prompt set")
    command(child, "/undo", "last exchange removed")
    child.sendline("/regen")
    child.expect(SUMMARY)
    child.expect_exact(PROMPT)
    command(child, "/help", r"/regen")
    command(child, "/check", r"(not installed|checks on the last reply)")
    saved = tmp_path / "conversation.json"
    command(child, f"/save {saved.name}", "saved 5 messages")
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert data["messages"][0]["content"] == "你是一個樂於助人的助手。"
    assert data["messages"][1]["content"] == "你好！請問臺北今天天氣如何？"
    assert data["messages"][3]["content"] == "What is the capital of Korea?"
    assert data["settings"]["temperature"] == 0.5 and len(data["turns"]) == 2
    command(child, "/clear", "conversation cleared")
    command(child, "/stats", "no replies yet")
    command(child, f"/load {saved.name}", "loaded 5 messages")
    say(child, "Thank you")
    resaved = tmp_path / "again.json"
    command(child, f"/save {resaved.name}", "saved 7 messages")
    again = json.loads(resaved.read_text(encoding="utf-8"))
    assert again["messages"][:5] == data["messages"]
    command(child, "/nonsense", "unknown command")
    child.sendline("/exit")
    assert finish(child) == 0
    history = (tmp_path / "history").read_text(encoding="utf-8")
    assert "한국어로 대답해 주세요" in history and "/stats" in history


def test_ctrl_c_stops_a_reply_and_wide_character_editing(model: Path, tmp_path: Path) -> None:
    child = spawn_chat(model, tmp_path, "--ctx", "4096", "--max-tokens", "3500", "--temperature", "0")
    command(child, "/set max_tokens 2000", "max_tokens = 2000")  # a reply long enough to type into
    child.sendline("Write a very long story about Taipei.")
    child.expect_exact("\x1b[?2004l")  # prompt_toolkit leaves bracketed-paste mode: the message is sent
    time.sleep(0.5)
    child.sendintr()
    index = child.expect([r"stopped; the partial reply is kept", SUMMARY])
    if index == 1:  # the whole reply ended before Ctrl-C arrived
        pytest.skip("the reply ended before Ctrl-C; nothing to interrupt")
    child.expect(r"interrupted")
    child.expect_exact(PROMPT)
    # the conversation goes on; then edit a wide-character line: 你好世界, Left Left, Backspace -> 你世界
    command(child, "/set max_tokens 8", "max_tokens = 8")
    child.send("你好世界")
    child.send("\x1b[D\x1b[D")  # Left, Left
    child.send("\x7f")  # Backspace
    child.send("\r")
    child.expect(SUMMARY)
    child.expect_exact(PROMPT)
    command(child, "/save t.json", "saved 4 messages")
    data = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert data["turns"][0]["finish_reason"] == "interrupted"
    assert data["turns"][0]["completion_tokens"] < 3500
    assert data["messages"][2]["content"] == "你世界"
    # a multi-line block is one message
    child.send('"""第一行\r')
    child.send('second line"""\r')
    child.expect(SUMMARY)
    child.expect_exact(PROMPT)
    # a bracketed paste with newlines is one message too, sent by the next Enter
    child.send("\x1b[200~pasted 第一行\nline two\x1b[201~")
    child.send("\r")
    child.expect(SUMMARY)
    child.expect_exact(PROMPT)
    child.sendline("/save t.json")  # it exists now: the REPL asks before replacing it
    child.expect_exact("t.json exists; replace it? [y/N]")
    command(child, "y", "saved 8 messages")
    data = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert data["messages"][4]["content"] == "第一行\nsecond line"
    assert data["messages"][6]["content"] == "pasted 第一行\nline two"
    child.sendintr()
    child.expect(r"Ctrl-C again")
    child.sendintr()
    assert finish(child) == 0


def test_context_overflow_drops_oldest_turns_and_ctrl_d_exits(model: Path, tmp_path: Path) -> None:
    child = spawn_chat(model, tmp_path, "--ctx", "128", "--max-tokens", "16", "--temperature", "0",
                       "--system", "短")
    for i in range(6):
        child.sendline(f"Turn {i}: the quick brown fox jumps over the lazy dog 臺灣")
        index = child.expect([r"dropped the \d+ oldest exchange", SUMMARY])
        if index == 0:
            child.expect(SUMMARY)
            child.expect_exact(PROMPT)
            break
        child.expect_exact(PROMPT)
    else:
        pytest.fail("the context never overflowed")
    child.sendline("fox " * 300)
    child.expect(r"error: the message needs \d+ prompt tokens but the context holds 128")
    child.expect_exact(PROMPT)
    command(child, "/save o.json", r"saved \d+ messages")
    data = json.loads((tmp_path / "o.json").read_text(encoding="utf-8"))
    assert data["messages"][0] == {"role": "system", "content": "短"}
    # issue 12: trimming changes what the model sees, never what the transcript holds
    users = [m["content"] for m in data["messages"] if m["role"] == "user"]
    assert users == [f"Turn {n}: the quick brown fox jumps over the lazy dog 臺灣" for n in range(i + 1)]
    assert len(data["turns"]) == i + 1 == sum(m["role"] == "assistant" for m in data["messages"])
    assert data["hidden_exchanges"] >= 1
    assert sum(t["dropped_turns"] for t in data["turns"]) == data["hidden_exchanges"]
    # /load restores every turn and its statistics: /stats lists them all, a second save is the same
    command(child, "/clear", "conversation cleared")
    command(child, "/load o.json", rf"loaded {len(data['messages'])} messages")
    stats = command(child, "/stats", r"context: \d+ of 128")
    assert f"│ {i + 1} " in stats
    command(child, "/save! again.json", r"saved \d+ messages")
    again = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    for key in ("messages", "turns", "hidden_exchanges", "settings"):
        assert again[key] == data[key], key
    child.sendeof()
    assert finish(child) == 0


def test_save_never_removes_a_folder_and_a_failed_command_keeps_the_chat(model: Path, tmp_path: Path) -> None:
    """Issue 12: /save DIR deleted the folder; a failed /save ended the chat; /check guessed; typing echoed."""
    import re

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("do not delete", encoding="utf-8")
    (tmp_path / "mine.txt").write_text("mine", encoding="utf-8")
    child = spawn_chat(model, tmp_path, "--ctx", "4096", "--max-tokens", "6", "--temperature", "0")
    say(child, "한국어로 대답해 주세요")
    # a folder gets a new file inside it, and nothing in it is touched (also ".")
    out = command(child, "/save keep", r"saved 2 messages to \S+\.json")
    written = [f for f in keep.iterdir() if f.suffix == ".json"]
    assert len(written) == 1 and written[0].name in out
    assert (keep / "precious.txt").read_text(encoding="utf-8") == "do not delete"
    assert json.loads(written[0].read_text(encoding="utf-8"))["messages"][0]["content"] == "한국어로 대답해 주세요"
    command(child, "/save keep", r"saved 2 messages")  # a second file, a new name
    assert len([f for f in keep.iterdir() if f.suffix == ".json"]) == 2
    command(child, "/save .", r"saved 2 messages")
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "mine" and keep.is_dir()
    # an existing file: asked first (no keeps it), /save! replaces it without asking
    command(child, "/save first.json", "saved 2 messages")
    first = (tmp_path / "first.json").read_bytes()
    finish_reason = json.loads(first)["turns"][0]["finish_reason"]
    # /check: the language of the user's message, the reply's real finish reason
    checks = command(child, "/check", r"ended\s*│\s*(True|False)")
    assert re.search(r"│ lang\s*│ ko\s*│", checks), checks
    assert re.search(rf"│ finish_reason\s*│ {finish_reason}\s*│", checks), checks
    # typed while the reply streams: not echoed into the reply, still the next input
    command(child, "/set max_tokens 2000", "max_tokens = 2000")  # a reply long enough to type into
    child.sendline("Write a very long story about Taipei.")
    child.expect_exact("\x1b[?2004l")  # the prompt is done (the terminal is back in cooked mode) ...
    child.expect_exact("\x1b[?25l")  # ... and the live reply has started (it hides the cursor)
    child.send("zqzq")
    child.expect(SUMMARY)
    assert "zqzq" not in child.before
    child.expect_exact(PROMPT)
    child.expect_exact("zqzq")  # the next prompt holds it
    child.send("\r")
    child.expect(SUMMARY)
    child.expect_exact(PROMPT)
    command(child, "/set max_tokens 6", "max_tokens = 6")
    child.sendline("/save first.json")
    child.expect_exact("first.json exists; replace it? [y/N]")
    command(child, "n", r"not saved: \S*first\.json exists \(/save! first\.json replaces it\)")
    assert (tmp_path / "first.json").read_bytes() == first
    command(child, "/save! first.json", "saved 6 messages")
    users = [m["content"] for m in json.loads((tmp_path / "first.json").read_text("utf-8"))["messages"]
             if m["role"] == "user"]
    assert users == ["한국어로 대답해 주세요", "Write a very long story about Taipei.", "zqzq"]
    assert turns_of(tmp_path / "first.json")[1]["completion_tokens"] > 100  # the typing fell inside a long reply
    # failures are one line and the conversation goes on
    command(child, "/save missing/x.json", r"error: \S*missing: the folder for the transcript does not exist")
    command(child, "/save first.json/x.json", r"error: \S*first\.json: the folder for the transcript is not a folder")
    command(child, "/save newdir/", r"error: \S*newdir: no such folder")
    command(child, f"/save {'n' * 300}.json", r"error: \S+: cannot write the transcript \(File name too long\)")
    command(child, "/load keep", r"error: \S*keep: is a folder, not a transcript file")
    command(child, "/load first.json/x", r"error: .*no such transcript file")
    (tmp_path / "bad.json").write_text('{"messages": [], "turns": [{"text": 1}]}', encoding="utf-8")
    command(child, "/load bad.json", r"error: \S*bad\.json: turn 0: 'text' is not a string")
    (tmp_path / "nan.json").write_text('{"messages": [], "settings": {"temperature": Infinity}}', encoding="utf-8")
    command(child, "/load nan.json", r"error: bad value inf for temperature")
    command(child, "/set temperature inf", r"error: bad value 'inf' for temperature")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        command(child, "/save locked/x.json", r"error: \S+x\.json: cannot write the transcript \(Permission denied\)")
    say(child, "still here?")
    command(child, "/save! first.json", "saved 8 messages")
    assert not [f for f in tmp_path.rglob("*partial*")]
    assert sorted(f.name for f in keep.iterdir() if not f.name.endswith(".json")) == ["precious.txt"]
    child.sendline("/exit")
    assert finish(child) == 0


def test_a_save_that_fails_mid_write_leaves_nothing_and_the_chat_goes_on(model: Path, tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE, as a full disk) makes the write fail: one line, no partial, chat kept."""
    import resource

    big = [{"role": "user", "content": "臺北 " * 6000}, {"role": "assistant", "content": "好"}]
    (tmp_path / "big.json").write_text(json.dumps(big, ensure_ascii=False), encoding="utf-8")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

    env = dict(os.environ, CVLOCAL_HISTORY=str(tmp_path / "history"), TERM="xterm-256color", LANG="C.UTF-8",
               LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8", PROMPT_TOOLKIT_NO_CPR="1")
    child = pexpect.spawn(sys.executable, ["-m", "cvlocal", "chat", str(model), "--threads", "1", "--max-tokens", "6",
                                           "--temperature", "0"], cwd=str(tmp_path), env=env, encoding="utf-8",
                          dimensions=(40, 120), timeout=60, codec_errors="replace", preexec_fn=limit)
    child.expect_exact(PROMPT)
    command(child, "/load big.json", "loaded 2 messages")
    command(child, "/save out.json", r"error: \S*out\.json: cannot write the transcript \(File too large\)")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["big.json", "history"]
    command(child, "/clear", "conversation cleared")
    say(child, "hello")
    command(child, "/save out.json", "saved 2 messages")
    child.sendline("/exit")
    assert finish(child) == 0


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "cvlocal", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


def test_script_json_and_text(model: Path, tmp_path: Path) -> None:
    script = tmp_path / "turns.txt"
    saved = tmp_path / "s.json"
    script.write_text(f'你好\n\n/set max_tokens 5\n"""multi\nline 한국어"""\n//slash message\n/save {saved}\n',
                      encoding="utf-8")
    done = run_cli("chat", str(model), "--script", str(script), "--json", "--max-tokens", "12", "--temperature", "0",
                   "--threads", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["你好", "multi\nline 한국어",
                                                                                "/slash message"]
    assert [t["completion_tokens"] <= 5 for t in data["turns"][1:]] == [True, True]
    turn = data["turns"][0]
    assert turn["prompt_tokens"] > 0 and turn["new_prompt_tokens"] > 0 and turn["finish_reason"] in ("stop", "length")
    text = run_cli("chat", str(model), "--script", str(script), "--max-tokens", "12", "--temperature", "0",
                   "--threads", "1", "--quiet")
    assert text.returncode == 0, text.stderr
    # the first run saved s.json; a script cannot be asked, so the second run keeps it
    assert f"not saved: {saved} exists (/save! {saved} replaces it)" in text.stderr
    assert json.loads(saved.read_text(encoding="utf-8"))["messages"] == data["messages"]
    assert text.stdout.startswith(">>> 你好\n")
    assert ">>> multi\nline 한국어\n" in text.stdout
    # the same greedy replies in both forms
    for message in data["messages"]:
        if message["role"] == "assistant" and message["content"]:
            assert message["content"] in text.stdout


def test_bad_input_is_one_line_and_exit_2(model: Path, tmp_path: Path) -> None:
    missing = run_cli("chat", str(tmp_path / "nope.gguf"), "--script", "-", stdin="hi\n")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.gguf" in missing.stderr
    unclosed = tmp_path / "bad.txt"
    unclosed.write_text('"""never closed\n', encoding="utf-8")
    bad = run_cli("chat", str(model), "--script", str(unclosed))
    assert bad.returncode == 2 and "never closed" in bad.stderr and bad.stderr.count("\n") == 1
    no_tty = run_cli("chat", str(model), stdin="")
    assert no_tty.returncode == 2 and "--script" in no_tty.stderr
