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
    command(child, "/save t.json", "saved 8 messages")
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
    assert not data["messages"][1]["content"].startswith("Turn 0")
    child.sendeof()
    assert finish(child) == 0


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "cvlocal", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


def test_script_json_and_text(model: Path, tmp_path: Path) -> None:
    script = tmp_path / "turns.txt"
    script.write_text('你好\n\n/set max_tokens 5\n"""multi\nline 한국어"""\n//slash message\n', encoding="utf-8")
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
