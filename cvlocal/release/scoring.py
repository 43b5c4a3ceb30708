"""Run GGUF models over the held-out windows with llama-cpp-python and score them (see ``quality``).

The reference (high-precision) model is evaluated once; its next-token probabilities for the
scored positions are written window by window to a temporary ``.npy`` file (float32,
memory-mapped), and all float64 work is done in blocks of rows, so memory stays at about one
window's logits whatever the vocabulary and the number of windows. Each
quantized model is then evaluated on the very same token windows and compared row by row.

Every model is opened with ``logits_all`` (logits for every position, which scoring needs) and a
batch as large as a window, so one window is one decode from an empty cache, as in llama.cpp's
perplexity tool.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvlocal.llama import facts
from cvlocal.release.quality import (
    QualitySummary,
    ReferenceRows,
    TokenScores,
    chunk_tokens,
    compare,
    reference_rows,
    scored_count,
    scored_logits,
    scored_targets,
    summarize,
)

# A short multilingual prompt every file must evaluate with finite, non-constant logits, in a
# context of VERIFY_CTX tokens (llama.cpp's smallest; the prompt is cut to fit).
VERIFY_CTX = 256
BLOCK_VALUES = 2_000_000
VERIFY_PROMPT = "The weather today is mild. 今天天氣很好。오늘은 날씨가 좋아요. 今日はいい天気です。"


class ModelLoadError(Exception):
    """llama.cpp refused to open a file."""


class VerificationError(Exception):
    """A file loaded but did not evaluate a prompt sanely."""


def open_model(path: Path, n_ctx: int, threads: int | None) -> Any:
    """A llama-cpp-python model with logits for every position and a window-sized batch.

    (``cvlocal.session.load_llama`` opens models for chat; scoring needs ``logits_all`` and the
    batch size, which it does not expose.)
    """
    from cvlocal.llama.loader import LoadError, open_llama

    # llama.cpp's load-time lines (e.g. that it rounded the context up past the trained length)
    # would scatter over the progress bars; they are kept for the error message instead.
    try:
        return open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads,
                          n_threads_batch=threads, seed=0, verbose=False)
    except LoadError as err:
        reason = "; ".join([str(err.cause), *err.problems[-2:]])
        raise ModelLoadError(f"llama.cpp could not load {path.name} ({reason})") from None


def close_model(llm: Any) -> None:
    """Free llama.cpp's memory now rather than at garbage collection (models can be large)."""
    close = getattr(llm, "close", None)
    if callable(close):
        close()


def model_size_info(llm: Any) -> tuple[int, int]:
    """(bytes of all tensors, number of parameters), as llama.cpp reports them."""
    return facts.size_bytes(llm), facts.n_params(llm)


def context_length(llm: Any) -> int:
    """The context the model was trained with (an upper bound for the scoring window)."""
    return facts.n_ctx_train(llm)


def window_logits(llm: Any, window: np.ndarray) -> np.ndarray:
    """Logits (positions x vocabulary, float32) of one window evaluated from an empty cache.

    A view of llama-cpp-python's own buffer (no copy of a window x vocabulary array): valid until
    the model evaluates again.
    """
    llm.reset()
    llm.eval([int(t) for t in window])
    return llm.scores[: len(window)]


def row_blocks(n_rows: int, n_vocab: int) -> list[slice]:
    """Row ranges of about 2 M float64 values each, so per-token float64 work stays ~16 MB per array."""
    step = max(1, BLOCK_VALUES // max(1, n_vocab))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def verify(llm: Any) -> None:
    """Evaluate VERIFY_PROMPT; raise VerificationError unless the logits are finite and informative."""
    tokens = llm.tokenize(VERIFY_PROMPT.encode("utf-8"), add_bos=True, special=False)
    # llama.cpp may round the context up; llama-cpp-python's arrays keep the size that was asked for.
    tokens = tokens[: min(int(llm.n_ctx()), len(llm.input_ids))]
    if len(tokens) < 2:
        raise VerificationError("the verification prompt tokenized to fewer than 2 tokens")
    logits = window_logits(llm, np.asarray(tokens))
    if not np.isfinite(logits).all():
        raise VerificationError("evaluating a short prompt gave non-finite logits")
    if float(np.ptp(logits[-1])) == 0.0:
        raise VerificationError("evaluating a short prompt gave constant logits")


@dataclass
class Windows:
    """The token windows every model is scored on, and the language each came from."""

    n_ctx: int
    tokens: np.ndarray                 # (windows, n_ctx) int32
    languages: list[str]               # language of each window
    skipped: list[str] = field(default_factory=list)   # languages too short for one window

    @property
    def scored_tokens(self) -> int:
        return len(self.languages) * scored_count(self.n_ctx)


def make_windows(llm: Any, texts: dict[str, str], n_ctx: int, max_chunks: int | None) -> Windows:
    """Tokenize each language's text as llama.cpp does (BOS if the vocabulary adds one, no special-token parsing) and cut it into windows."""
    add_bos = facts.adds_bos(llm)
    bos = int(llm.token_bos()) if add_bos else None
    rows: list[np.ndarray] = []
    languages: list[str] = []
    skipped: list[str] = []
    for lang, text in texts.items():
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if bos is not None:
            tokens = [bos, *tokens]
        windows = chunk_tokens(tokens, n_ctx, bos, max_chunks)
        if not windows:
            skipped.append(lang)
        rows.extend(windows)
        languages.extend([lang] * len(windows))
    array = np.stack(rows) if rows else np.zeros((0, n_ctx), dtype=np.int32)
    return Windows(n_ctx=n_ctx, tokens=array, languages=languages, skipped=skipped)


@dataclass
class ReferenceStore:
    """The reference model's next-token distributions for every scored position.

    The probabilities (windows x positions x vocabulary, float32) are on disk; the per-position
    terms (sum p log p, -log p(target), argmax) are small and kept in memory.
    """

    path: Path
    shape: tuple[int, int, int]        # (windows, scored positions, vocabulary)
    plogp: np.ndarray                  # (windows, positions)
    nll: np.ndarray                    # (windows, positions)
    top: np.ndarray                    # (windows, positions)

    @property
    def ppl(self) -> float:
        """The reference's own perplexity on the scored tokens."""
        return float(np.exp(self.nll.mean()))

    def rows(self, probs: np.ndarray, window: int, rows: slice) -> ReferenceRows:
        return ReferenceRows(probs=probs[window, rows], plogp=self.plogp[window, rows], nll=self.nll[window, rows],
                             top=self.top[window, rows])

    def open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def reference_pass(llm: Any, windows: Windows, out: Path, on_window: Callable[[], None] | None = None) -> ReferenceStore:
    """Evaluate the reference on every window and keep its scored distributions (probabilities in ``out``, .npy)."""
    n_vocab = int(llm.n_vocab())
    shape = (len(windows.languages), scored_count(windows.n_ctx), n_vocab)
    store = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)
    plogp = np.zeros(shape[:2])
    nll = np.zeros(shape[:2])
    top = np.zeros(shape[:2], dtype=np.int64)
    try:
        for i, window in enumerate(windows.tokens):
            logits = scored_logits(window_logits(llm, window))
            targets = scored_targets(window)
            for rows in row_blocks(len(targets), n_vocab):
                ref = reference_rows(logits[rows], targets[rows])
                store[i, rows] = ref.probs
                plogp[i, rows], nll[i, rows], top[i, rows] = ref.plogp, ref.nll, ref.top
            if on_window is not None:
                on_window()
        store.flush()
    except BaseException:
        del store
        try:
            os.unlink(out)
        except FileNotFoundError:
            pass
        raise
    del store
    return ReferenceStore(path=out, shape=shape, plogp=plogp, nll=nll, top=top)


@dataclass
class Measurement:
    """A type's quality over all windows and per language."""

    overall: QualitySummary
    languages: dict[str, QualitySummary]

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = self.overall.as_dict()
        data["languages"] = {lang: s.as_dict() for lang, s in self.languages.items()}
        return data


def measure(llm: Any, windows: Windows, reference: ReferenceStore, on_window: Callable[[], None] | None = None) -> Measurement:
    """Score ``llm`` against the stored reference on the same windows."""
    if int(llm.n_vocab()) != reference.shape[2]:
        raise VerificationError(f"vocabulary of {llm.n_vocab()} tokens differs from the reference's {reference.shape[2]}")
    base = reference.open()
    per_language: dict[str, list[TokenScores]] = {}
    for i, window in enumerate(windows.tokens):
        logits = scored_logits(window_logits(llm, window))
        targets = scored_targets(window)
        blocks = [compare(reference.rows(base, i, rows), logits[rows], targets[rows])
                  for rows in row_blocks(len(targets), reference.shape[2])]
        per_language.setdefault(windows.languages[i], []).append(TokenScores.join(blocks))
        if on_window is not None:
            on_window()
    del base
    overall = summarize(TokenScores.join(s for parts in per_language.values() for s in parts))
    return Measurement(overall=overall, languages={lang: summarize(TokenScores.join(parts)) for lang, parts in per_language.items()})
