"""The demo pipeline: three GGUFs (CP, CP + chat vector, chat), the same held-out chats with each.

CP + (chat - base) at ratio 1.0 goes straight to GGUF q8_0 in one pass (``merge_models`` with an
output ending in ``.gguf``); CP and chat are converted to q8_0 too, so the three are compared at
the same precision and through the same runtime (llama-cpp-python, chat template from the GGUF,
greedy decoding). Each prompt is a fresh single-turn conversation.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cvlocal.outputs.atomic import atomic_output, check_output_path
from cvlocal.demo.bundle import DemoBundle, Prompt, load_bundle
from cvlocal.demo.scoring import Score, rates, score_reply
from cvlocal.ui import item_progress, say

OUTTYPE = "q8_0"
RATIO = 1.0
MAX_TOKENS = 48
# The paper's plain arithmetic on every row. The merge's default ("auto") gives the template's special
# tokens the chat model's own rows instead; on these models that stops the merged model from ending
# its turn (measured while training: see assets/demo/README.md), because CP moved the rows around them.
SPECIAL_TOKENS = "none"

# (key, label, GGUF file name) in the order the table shows them
MODELS = (
    ("cp", "CP", "demo-cp-Q8_0.gguf"),
    ("cp+vector", "CP + chat vector", "demo-cp-chat-vector-Q8_0.gguf"),
    ("chat", "chat", "demo-chat-Q8_0.gguf"),
)


@dataclass
class Reply:
    text: str
    finish_reason: str
    score: Score

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason, **self.score.as_dict()}


@dataclass
class ModelResult:
    key: str
    label: str
    gguf: str
    replies: list[Reply] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rates(self) -> dict[str, float]:
        return rates([r.score for r in self.replies])


def build_models(bundle: DemoBundle, folder: Path, *, threads: int | None, quiet: bool) -> dict[str, Path]:
    """Write the three q8_0 GGUFs into ``folder``; return them by key."""
    from cvlocal.outputs.gguf import convert_checkpoint
    from cvlocal.vector.merge import merge_models

    paths = {key: folder / name for key, _, name in MODELS}
    say(f"merging CP + {RATIO:g} x (chat - base) straight to GGUF {OUTTYPE}", quiet)
    merge_models(bundle.cp, paths["cp+vector"], base=bundle.base, chat=bundle.chat, ratio=RATIO,
                 special_tokens=SPECIAL_TOKENS, outtype=OUTTYPE, device="cpu", threads=threads, quiet=quiet)
    for key in ("cp", "chat"):
        say(f"converting {key} to GGUF {OUTTYPE}", quiet)
        convert_checkpoint(getattr(bundle, key), paths[key], outtype=OUTTYPE, threads=threads)
    return paths


DEMO_CTX = 512  # tokens per chat: a held-out prompt and its reply are far shorter


def chat_with(gguf: Path, prompts: list[Prompt], a_words: frozenset[str], *, threads: int | None,
              max_tokens: int, on_reply: Callable[[Prompt, Reply], None] | None = None,
              parallel: int | None = 1, n_gpu_layers: int = 0) -> list[Reply]:
    """One fresh single-turn greedy chat per prompt, scored (``gguf`` may be ``CP.gguf+ADAPTER.gguf@RATIO``).

    ``parallel`` chats are decoded together on the batched engine (None: as many as memory allows,
    up to 8; 1: one at a time on a ``Llama``). ``on_reply`` is called in this thread, in the order
    replies finish; the list comes back in the prompts' order.
    """
    from cvlocal.evaluation.parallel import open_shared
    from cvlocal.llama.adapters import parse_model_spec

    model, adapters = parse_model_spec(gguf)
    shared = open_shared(model, adapters, parallel=parallel, ctx=DEMO_CTX, threads=threads, n_gpu_layers=n_gpu_layers)
    if shared is not None:
        return _chat_batched(shared, gguf.name, prompts, a_words, max_tokens=max_tokens, on_reply=on_reply)
    from cvlocal.session import load_llama

    llm = load_llama(model, ctx=DEMO_CTX, threads=threads, n_gpu_layers=n_gpu_layers, seed=0, adapters=adapters)
    try:
        replies = []
        for p in prompts:
            reply = _chat_once(llm, gguf.name, p, a_words, max_tokens)
            replies.append(reply)
            if on_reply is not None:
                on_reply(p, reply)
        return replies
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()


def _chat_once(llm: Any, name: str, p: Prompt, a_words: frozenset[str], max_tokens: int) -> Reply:
    """A fresh conversation of one prompt, scored; Ctrl-C stops the run (a sweep caches replies)."""
    from cvlocal.session import ChatSession

    session = ChatSession(llm, max_tokens=max_tokens, temperature=0.0, warn=None, model_name=name)
    turn = session.ask_whole(p.prompt)
    ended = turn.finish_reason == "stop"
    return Reply(turn.text, turn.finish_reason, score_reply(turn.text, ended, p.gold, (p.value, p.value_a), a_words))


def _chat_batched(llm: Any, name: str, prompts: list[Prompt], a_words: frozenset[str], *, max_tokens: int,
                  on_reply: Callable[[Prompt, Reply], None] | None) -> list[Reply]:
    """:func:`chat_with` on a shared batched decoder (closed here, with its model): each chat in a
    worker thread, the replies the one-at-a-time path gives at q8_0 and float types."""
    from cvlocal.evaluation.parallel import run_on_shared

    replies: list[Reply | None] = [None] * len(prompts)

    def done(index: int, reply: Reply) -> None:
        replies[index] = reply
        if on_reply is not None:
            on_reply(prompts[index], reply)

    try:
        run_on_shared(llm, llm.decoder.n_seq, range(len(prompts)),
                      lambda index: _chat_once(llm, name, prompts[index], a_words, max_tokens), done, name="cvlocal-demo")
    finally:
        llm.close()
        llm.model.close()
    return [r for r in replies if r is not None]


def evaluate(paths: dict[str, Path], bundle: DemoBundle, *, threads: int | None, max_tokens: int,
             quiet: bool) -> list[ModelResult]:
    results = []
    with item_progress(quiet) as progress:
        for key, label, name in MODELS:
            task = progress.add_task(f"chatting with {label}", total=len(bundle.prompts), detail="")
            started = time.perf_counter()
            replies = chat_with(paths[key], bundle.prompts, bundle.a_words, threads=threads, max_tokens=max_tokens,
                                on_reply=lambda _p, _r: progress.advance(task))
            results.append(ModelResult(key, label, name, replies, round(time.perf_counter() - started, 2)))
    return results


def is_demo_folder(path: Path) -> bool:
    """A folder an earlier demo wrote (its report.json names the demo's models): --force may replace it."""
    try:
        report = json.loads((path / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"prompts", "ratio", "models"} <= report.keys()


def run_demo(out: Path, *, assets: Path | None = None, force: bool = False, quiet: bool = False,
             threads: int | None = None, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """Build, chat, score and write the report into ``out`` (complete or not at all)."""
    from cvlocal.demo.report import build_report, write_reports

    started = time.perf_counter()
    out = check_output_path(out, force, directory=True, own=is_demo_folder)
    bundle = load_bundle(assets)
    with atomic_output(out, directory=True, force=force, own=is_demo_folder) as tmp:
        paths = build_models(bundle, tmp, threads=threads, quiet=quiet)
        built = time.perf_counter()
        results = evaluate(paths, bundle, threads=threads, max_tokens=max_tokens, quiet=quiet)
        timings = {"build_s": round(built - started, 2), "chat_s": round(time.perf_counter() - built, 2)}
        report = build_report(bundle, results, out=out, max_tokens=max_tokens, timings=timings)
        report["timings"]["total_s"] = round(time.perf_counter() - started, 2)
        write_reports(report, tmp)
    return report
