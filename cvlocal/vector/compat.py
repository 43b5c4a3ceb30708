"""The compatibility check that runs before any work, listing every mismatch at once.

A chat vector only makes sense on a model of the same architecture and shapes as the base it
was taken from. Finding that out after an hour of merging, or one mismatch at a time, is what
this module prevents: it compares configs, tensor names, shapes and dtypes of every input and
raises one error that lists them all.
"""
from __future__ import annotations

from convert.checkpoint import Checkpoint
from cvlocal.errors import UsageError
from cvlocal.vector.roles import config_signature, is_vocab_tensor
from cvlocal.vector.sources import DeltaSource

MAX_LISTED = 12


def _signature_mismatches(left_label: str, left: dict, right_label: str, right: dict) -> list[str]:
    out = []
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        if key == "tie_word_embeddings":
            a, b = bool(a), bool(b)
        if a == b or ((a is None or b is None) and key != "architecture"):
            continue  # equal, or a key only one config spells out
        out.append(f"{key}: {left_label} {a} vs {right_label} {b}")
    return out


def _float_problems(label: str, ckpt: Checkpoint) -> list[str]:
    return [f"{label} tensor {n} is {ckpt.dtype(n)} (not floating point)" for n in ckpt.names() if not ckpt.dtype(n).is_floating_point]


def pair_mismatches(base: Checkpoint, chat: Checkpoint) -> list[str]:
    """Base and chat must be the same architecture with identical tensor names and shapes."""
    out = _signature_mismatches("base", config_signature(base.config), "chat", config_signature(chat.config))
    names_b, names_c = set(base.names()), set(chat.names())
    out += [f"tensor {n} only in chat" for n in sorted(names_c - names_b)]
    out += [f"tensor {n} only in base" for n in sorted(names_b - names_c)]
    for n in sorted(names_b & names_c):
        if base.shape(n) != chat.shape(n):
            out.append(f"{n}: base {list(base.shape(n))} vs chat {list(chat.shape(n))}")
    return out + _float_problems("base", base) + _float_problems("chat", chat)


def cp_mismatches(cp: Checkpoint, source: DeltaSource, index: int) -> list[str]:
    """The CP model against one delta: same architecture and tensors; only vocab rows may differ."""
    label = f"vector {index + 1}"
    if source.vector:
        theirs = source.vector.manifest.get("signature") or config_signature(source.chat_config)
    else:
        theirs = config_signature(source.chat_config)
    out = _signature_mismatches("CP", config_signature(cp.config), label, theirs)
    names_cp, names_v = set(cp.names()), set(source.names())
    out += [f"tensor {n} in CP but not in {label}" for n in sorted(names_cp - names_v)]
    out += [f"tensor {n} in {label} but not in CP" for n in sorted(names_v - names_cp)]
    for n in sorted(names_cp & names_v):
        a, b = cp.shape(n), source.shape(n)
        if a == b:
            continue
        if is_vocab_tensor(n, cp.config) and len(a) == len(b) and a[1:] == b[1:]:
            continue  # a different vocabulary: --embeddings decides
        out.append(f"{n}: CP {list(a)} vs {label} {list(b)}")
    if source.base is not None and source.chat is not None:
        out += [f"{label}: {m}" for m in pair_mismatches(source.base, source.chat)]
    elif source.vector is not None:
        out += _float_problems(label, source.vector.checkpoint)
    return out


def check_compatible(cp: Checkpoint, sources: list[DeltaSource]) -> None:
    """Raise one UsageError listing every mismatch between the CP model and the deltas."""
    problems = _float_problems("CP", cp)
    for i, source in enumerate(sources):
        problems += cp_mismatches(cp, source, i)
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise UsageError(
            f"{len(problems)} mismatch(es) between the inputs: {shown}{more}",
            cp.path,
            "The CP model, base and chat must share one architecture (the CP and chat models continued from that base).",
        )


def check_pair(base: Checkpoint, chat: Checkpoint) -> None:
    """Raise one UsageError listing every mismatch between base and chat (for extract)."""
    problems = pair_mismatches(base, chat)
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise UsageError(f"{len(problems)} mismatch(es) between base and chat: {shown}{more}", chat.path, "The chat model must be a fine-tune of this base model.")
