"""Quality of a quantized model against its high-precision reference, as ``llama-perplexity --kl-divergence`` defines it.

The definitions follow llama.cpp's perplexity tool so that a number in a cvlocal card means what
the same number means on a llama.cpp model page:

- The text is tokenized once (with BOS when the vocabulary adds one) and cut into consecutive
  windows of ``n_ctx`` tokens; a tail shorter than a window is dropped. The first token of every
  window is replaced by BOS when the vocabulary adds one, so each window starts like a prompt.
- Each window is evaluated from an empty cache. Only the second half is scored: the logits at
  positions ``n_ctx // 2 .. n_ctx - 2`` predict tokens ``n_ctx // 2 + 1 .. n_ctx - 1``
  (``n_ctx - 1 - n_ctx // 2`` tokens per window), so every scored token has at least half a
  window of context.
- Per scored token: NLL = -log q(target); KL divergence = sum_i p_i (log p_i - log q_i) with p the
  reference distribution and q the quantized one; "same top" when the argmax of q equals the
  argmax of p (first index on ties, like llama.cpp's strict ``>`` scan).
- Over all scored tokens: PPL = exp(mean NLL), mean KLD, percentiles of KLD by linear
  interpolation between the sorted values at ``fraction * (n - 1)``, and top-1 agreement = share
  of "same top" tokens.
- Standard errors, as the ``±`` llama-perplexity prints: of the mean KLD, sqrt(var / (n - 1))
  with var the population variance of the per-token values; of the top-1 agreement p,
  sqrt(p (1 - p) / (n - 1)). Tokens are treated as independent (their correlation is small: the
  lag-1 autocorrelation of per-token KLD is within +-0.2 on the tiny models of the tests).

Where cvlocal differs, on purpose: softmax is computed in float64 over the whole vocabulary and
the reference probabilities are kept in float32; llama.cpp keeps the reference log-probabilities
in 16 bits and skips vocabulary entries whose reference log-probability is below -16. Both are
storage economies; the full sum is the quantity they approximate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

DEFAULT_CTX = 512     # llama-perplexity's default window
DEFAULT_CHUNKS = 1    # windows per language a release scores by default (see cvlocal release --chunks)


def scored_start(n_ctx: int) -> int:
    """First position whose logits are scored in a window of ``n_ctx`` tokens (the second half)."""
    return n_ctx // 2


def scored_count(n_ctx: int) -> int:
    """How many tokens one window contributes: ``n_ctx - 1 - n_ctx // 2``."""
    return n_ctx - 1 - scored_start(n_ctx)


def chunk_tokens(tokens: Sequence[int], n_ctx: int, bos: int | None, max_chunks: int | None = None) -> list[np.ndarray]:
    """Cut one tokenized text into the windows llama.cpp scores.

    ``bos`` is the BOS id when the vocabulary adds one (it then replaces the first token of every
    window) or None. The tail shorter than ``n_ctx`` is dropped; ``max_chunks`` keeps only the
    first windows.
    """
    if n_ctx < 4:
        raise ValueError("a window needs at least 4 tokens")
    count = len(tokens) // n_ctx
    if max_chunks is not None:
        count = min(count, max_chunks)
    windows = []
    for i in range(count):
        window = np.asarray(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=np.int32).copy()
        if bos is not None:
            window[0] = bos
        windows.append(window)
    return windows


def scored_targets(window: np.ndarray) -> np.ndarray:
    """The tokens the scored logits predict: positions ``n_ctx // 2 + 1 .. n_ctx - 1``."""
    return np.asarray(window[scored_start(len(window)) + 1:], dtype=np.int64)


def scored_logits(all_logits: np.ndarray) -> np.ndarray:
    """The rows of a window's logits (one row per position) that are scored."""
    n_ctx = all_logits.shape[0]
    return all_logits[scored_start(n_ctx):n_ctx - 1]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (max-shifted, so large logits do not overflow)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class ReferenceRows:
    """What is kept of the reference for a group of scored positions (one row per position).

    The probabilities are stored (in ``dtype``, float32 on disk) rather than log-probabilities so
    that comparing a quantized model needs one exponential per value, not two. The per-row
    terms are computed from the *stored* probabilities, so every KL divergence is exact for the
    distribution that was kept (float32 rounding moves it by about 1e-7 relative; llama.cpp keeps
    16 bits).
    """

    probs: np.ndarray      # (rows, vocab) p_i
    plogp: np.ndarray      # (rows,) sum_i p_i log p_i, float64
    nll: np.ndarray        # (rows,) -log p(target), float64, from the exact log-softmax
    top: np.ndarray        # (rows,) argmax_i p_i (first index on ties)


def reference_rows(logits: np.ndarray, targets: np.ndarray, dtype: type = np.float32) -> ReferenceRows:
    """The reference's rows from its logits and the tokens they predict.

    One exponential per value: p = exp(z) / S with z = logits - max. ``plogp`` is sum p' log p'
    for the stored (rounded) p'; it is computed as sum p' log p + (P - 1), with P = sum p', which
    equals it to first order in the rounding (log p' = log p + (p' - p)/p) without a logarithm
    per value.
    """
    x = np.asarray(logits, dtype=np.float64)
    top = np.argmax(x, axis=-1)
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total_exp = e.sum(axis=-1, keepdims=True)
    log_s = np.log(total_exp[:, 0])
    probs = (e / total_exp).astype(dtype)
    p = probs.astype(np.float64, copy=False)
    total = p.sum(axis=-1)
    rows = np.arange(len(targets))
    return ReferenceRows(
        probs=probs,
        plogp=np.einsum("ij,ij->i", p, z) - total * log_s + (total - 1),
        nll=log_s - z[rows, np.asarray(targets, dtype=np.int64)],
        top=top,
    )


@dataclass
class TokenScores:
    """Per-token results for a group of scored tokens (one window, or many joined)."""

    kld: np.ndarray        # KL(reference || quantized) per token, nats
    nll: np.ndarray        # -log q(target) under the quantized model
    nll_base: np.ndarray   # -log p(target) under the reference
    same_top: np.ndarray   # bool: argmax q == argmax p

    @staticmethod
    def join(parts: Iterable["TokenScores"]) -> "TokenScores":
        parts = list(parts)
        if not parts:
            empty = np.zeros(0)
            return TokenScores(empty, empty, empty, np.zeros(0, dtype=bool))
        return TokenScores(
            np.concatenate([p.kld for p in parts]),
            np.concatenate([p.nll for p in parts]),
            np.concatenate([p.nll_base for p in parts]),
            np.concatenate([p.same_top for p in parts]),
        )


def compare(reference: ReferenceRows, logits: np.ndarray, targets: np.ndarray) -> TokenScores:
    """Score quantized ``logits`` (rows, vocab) against the reference rows for the same tokens.

    With z = logits - max and log q = z - log S (S = sum exp z), and the stored probabilities
    normalized by their sum P (float32 rounding leaves P off 1 by ~1e-7, which would otherwise
    add that much to every KL divergence):
    KL = sum (p/P) log(p/P) - sum (p/P) log q = (plogp - sum p z + P log S) / P - log P, in float64.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.shape != reference.probs.shape:
        raise ValueError(f"reference rows {reference.probs.shape} and quantized rows {z.shape} differ")
    top = np.argmax(z, axis=-1)
    z = z - z.max(axis=-1, keepdims=True)
    log_s = np.log(np.exp(z).sum(axis=-1))
    p = reference.probs.astype(np.float64, copy=False)
    total = p.sum(axis=-1)
    kld = (reference.plogp - np.einsum("ij,ij->i", p, z) + total * log_s) / total - np.log(total)
    rows = np.arange(len(targets))
    nll = log_s - z[rows, np.asarray(targets, dtype=np.int64)]
    return TokenScores(kld=kld, nll=nll, nll_base=np.asarray(reference.nll, dtype=np.float64), same_top=top == reference.top)


def percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation between sorted values at ``fraction * (n - 1)``."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if len(ordered) == 0:
        return float("nan")
    if fraction <= 0:
        return float(ordered[0])
    if fraction >= 1:
        return float(ordered[-1])
    position = fraction * (len(ordered) - 1)
    low = int(position)
    weight = position - low
    high = min(low + 1, len(ordered) - 1)
    return float((1 - weight) * ordered[low] + weight * ordered[high])


def standard_error(variance: float, n: int) -> float:
    """llama-perplexity's standard error of a mean: sqrt(variance / (n - 1)); NaN for one token."""
    return float(np.sqrt(max(variance, 0.0) / (n - 1))) if n > 1 else float("nan")


@dataclass
class QualitySummary:
    """The numbers a release card shows for one type (all over the same scored tokens)."""

    tokens: int
    mean_kld: float
    p99_kld: float
    median_kld: float
    max_kld: float
    top1: float          # share of tokens whose most likely next token agrees with the reference
    mean_kld_se: float   # standard error of mean_kld (llama-perplexity's "±")
    top1_se: float       # standard error of top1
    ppl: float           # exp(mean NLL) of the quantized model
    ppl_base: float      # exp(mean NLL) of the reference on the same tokens
    ln_ppl_ratio: float  # mean NLL - mean NLL of the reference

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(scores: TokenScores) -> QualitySummary:
    """Reduce per-token scores to the card's numbers."""
    n = len(scores.kld)
    if n == 0:
        raise ValueError("no scored tokens")
    mean_nll = float(np.mean(scores.nll))
    mean_nll_base = float(np.mean(scores.nll_base))
    top1 = float(np.mean(scores.same_top))
    return QualitySummary(
        tokens=n,
        mean_kld=float(np.mean(scores.kld)),
        p99_kld=percentile(scores.kld, 0.99),
        median_kld=percentile(scores.kld, 0.5),
        max_kld=float(np.max(scores.kld)),
        top1=top1,
        mean_kld_se=standard_error(float(np.var(scores.kld)), n),
        top1_se=standard_error(top1 * (1 - top1), n),
        ppl=float(np.exp(mean_nll)),
        ppl_base=float(np.exp(mean_nll_base)),
        ln_ppl_ratio=mean_nll - mean_nll_base,
    )
