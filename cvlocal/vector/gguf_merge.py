"""The exact merge ``CP + r (chat - base)`` when the CP model exists only as a float GGUF.

``extract --check CP.gguf`` needs the exact merge as a reference, but there are no CP weights in
HF layout to merge. The converter's only change to a tensor's values is the Q/K rotary row
permutation, a reordering, so ``permute(cp + r d) == permute(cp) + r permute(d)`` to the bit:
each tensor of the CP GGUF gets ``r * permute(chat - base)`` added in the GGUF's own layout, with
the same float32 operations in the same order as ``cvlocal merge`` (``cp + (r * (chat - base))``),
and the result is written as an f32 GGUF with the CP file's metadata. Only f32/f16/bf16 CP files
qualify: a quantized CP has lost the values the merge is defined on, so it is refused.
"""
from __future__ import annotations

from pathlib import Path

import torch
from gguf import GGMLQuantizationType as GGMLType

from convert.checkpoint import Checkpoint, open_checkpoint
from convert.gguf_reader import read_gguf
from convert.quant_tables import outtype
from convert.tensor_plan import permute_rotary, rotary_heads
from convert.transcode import transcode
from cvlocal.errors import UsageError
from cvlocal.vector.compat import check_pair
from cvlocal.vector.lora_targets import adapter_architecture

FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    """A regular file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def check_float_cp(cp: Path, arch_name: str) -> None:
    """Refuse, in one line, a CP GGUF the merge cannot be defined on (quantized, other architecture)."""
    with read_gguf(cp) as src:
        if src.architecture != arch_name:
            raise UsageError(f"the CP GGUF is a {src.architecture!r} model but base/chat are {arch_name!r}", cp,
                             "Pass the CP model of the same family as base and chat.")
        quantized = [t for t in src.tensors if t.ggml_type not in FLOAT_TYPES]
        if quantized:
            t = quantized[0]
            raise UsageError(f"the CP GGUF is quantized ({len(quantized)} tensors, first {t.name} is {t.ggml_type.name}); "
                             "the exact merge needs its unrounded weights", cp,
                             "Pass an f32, f16 or bf16 GGUF of the CP model (or its HF folder).")


def _delta_plan(base: Checkpoint, chat: Checkpoint) -> tuple[str, dict[str, tuple[str, int]]]:
    """The GGUF architecture and, per GGUF tensor name, its HF name and rotary heads (0: no permutation)."""
    check_pair(base, chat)
    arch = adapter_architecture(chat.config, chat.path / "config.json")
    plan: dict[str, tuple[str, int]] = {}
    for name in chat.names():
        g = arch.gguf_name(name)
        if not g:
            continue
        which = arch.permutation(name)
        plan[g] = (name, rotary_heads(which, chat.config, chat.path) if which else 0)
    return arch.gguf_arch, plan


def target_architecture(base: Path, chat: Path) -> str:
    """The GGUF architecture name of the (base, chat) pair, after checking that they match."""
    base_ck, chat_ck = open_checkpoint(base), open_checkpoint(chat)
    try:
        return _delta_plan(base_ck, chat_ck)[0]
    finally:
        base_ck.close()
        chat_ck.close()


def merge_gguf(cp: Path, out: Path, base: Path, chat: Path, ratio: float) -> Path:
    """Write ``CP + ratio (chat - base)`` at ``out`` as an f32 GGUF; ``cp`` is an f32/f16/bf16 GGUF."""
    base_ck, chat_ck = open_checkpoint(base), open_checkpoint(chat)
    try:
        arch_name, plan = _delta_plan(base_ck, chat_ck)
        check_float_cp(cp, arch_name)
        with read_gguf(cp) as src:
            shapes = {t.name: t.shape for t in src.tensors}
        missing = [g for g in plan if g not in shapes]
        if missing:
            raise UsageError(f"the CP GGUF has no {missing[0]} ({len(missing)} tensors of the vector missing)", cp,
                             "Pass the GGUF of the CP model the vector is meant for.")
        for g, (hf, _) in plan.items():
            if tuple(shapes[g]) != tuple(chat_ck.shape(hf)):
                raise UsageError(f"{g} is {list(shapes[g])} in the CP GGUF but {list(chat_ck.shape(hf))} in the chat model", cp,
                                 "Pass the CP model of the same shape as base and chat.")

        def add_delta(name: str, values: torch.Tensor) -> torch.Tensor:
            if name not in plan:
                return values  # a tensor the vector does not touch (rope_freqs)
            hf, heads = plan[name]
            rows = int(chat_ck.shape(hf)[0])
            d = chat_ck.read_rows(hf, 0, rows).float() - base_ck.read_rows(hf, 0, rows).float()
            if heads:
                d = permute_rotary(d, heads)
            return values.float() + d.mul_(ratio) if ratio != 1.0 else values.float() + d

        transcode(cp, out, outtype("f32"), adjust=add_delta)
    finally:
        base_ck.close()
        chat_ck.close()
    return out
