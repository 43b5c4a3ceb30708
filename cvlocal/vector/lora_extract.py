"""``cvlocal extract BASE CHAT -o x.gguf --rank R|auto``: the chat vector as a GGUF LoRA adapter.

Why an adapter: one CP GGUF plus one small file gives every ratio at load time (llama.cpp's
scale is ``user_scale * alpha / rank``), instead of a merge and a conversion per ratio.

Per tensor (streamed: one tensor's delta in memory at a time), ``D = W_chat - W_base`` in
float32 is factored by ``lora_svd`` into ``B @ A``. The file follows what llama.cpp's
``convert_lora_to_gguf.py`` writes: ``NAME.lora_a`` with numpy shape (rank, in) and
``NAME.lora_b`` (out, rank) for projections, Q/K rows of ``B`` in GGML's rotary order, and for
``token_embd`` the flipped pair ``lora_a`` (vocab, rank), ``lora_b`` (hidden, rank).

``adapter.lora.alpha`` is one number for the whole file. With one rank everywhere it is that
rank (so scale = ratio exactly, as users of other tools expect); where a tensor's rank differs
(``--rank auto``, or a rank clamped to a small matrix) both of its factors are multiplied by
``sqrt(rank / alpha)``, so that ``alpha / rank`` still cancels and scale = ratio everywhere.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvlocal.outputs.atomic import atomic_output, check_output_path
from convert.tensor_plan import permute_rotary
from cvlocal import __version__
from cvlocal.errors import UsageError
from cvlocal.vector.compat import check_pair
from cvlocal.vector.device import resolve_device
from cvlocal.vector.lora_svd import Factors, factorize
from cvlocal.vector.lora_targets import LEFT_OUT_REASONS, LoraTarget, plan_targets
from cvlocal.vector.progress_sink import tensor_progress
from cvlocal.vector.sources import DeltaSource

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# Below this many elements a tensor's SVD runs on one CPU thread: its many small matmuls gain
# nothing from a second thread and, when the cores are busy, torch's spin-waiting threads make it
# far slower (measured on the 1.2M-parameter demo models, machine load ~18 on 2 cores: the whole
# extraction took 26.5 s with 2 threads, 1.2 s with 1).
SMALL_TENSOR = 1 << 22


@dataclass(frozen=True)
class RankSpec:
    """``--rank``: a fixed integer, ``full`` (the smallest side of each matrix) or ``auto`` with an energy."""

    fixed: int | None
    energy: float | None = None

    @property
    def label(self) -> str:
        if self.energy is not None:
            return f"auto (energy {self.energy:g})"
        return "full" if self.fixed is None else str(self.fixed)

    def rank_of(self, target: LoraTarget) -> int | None:
        """The rank known before any SVD (None for auto)."""
        if self.energy is not None:
            return None
        return target.max_rank if self.fixed is None else min(self.fixed, target.max_rank)


def parse_rank(rank: str | int, energy: float | None) -> RankSpec:
    """Validate ``--rank`` / ``--energy`` before any work (one-line errors, exit 2)."""
    text = str(rank).strip().lower()
    if text == "auto":
        e = 0.9 if energy is None else float(energy)
        if not (0.0 < e <= 1.0) or math.isnan(e):
            raise UsageError(f"--energy {energy} is outside (0, 1]", None, "Pass a fraction such as --energy 0.9.")
        return RankSpec(None, e)
    if energy is not None:
        raise UsageError("--energy only applies to --rank auto", None, "Drop --energy or pass --rank auto.")
    if text == "full":
        return RankSpec(None)
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--rank {rank!r} is not a number, 'auto' or 'full'", None, "Pass e.g. --rank 64 or --rank auto --energy 0.9.") from None
    if value <= 0:
        raise UsageError(f"--rank {value} must be at least 1", None, "Pass e.g. --rank 64.")
    return RankSpec(value)


@dataclass
class _Accounting:
    """What the summary reports: ranks, energy kept, what was left out."""

    ranks: dict[str, int] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    kept: float = 0.0
    carried_total: float = 0.0
    left_out: list[dict[str, Any]] = field(default_factory=list)
    left_out_total: float = 0.0


def _ggml_types() -> dict[str, Any]:
    import gguf

    q = gguf.GGMLQuantizationType
    return {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0}


def _encode(array: torch.Tensor, outtype: str) -> tuple[np.ndarray, Any]:
    """A numpy array for the GGUF writer and its GGML type (q8_0 rows not a multiple of 32 fall back to f16)."""
    import gguf

    types = _ggml_types()
    data = array.detach().to("cpu", torch.float32).contiguous().numpy()
    if outtype == "q8_0" and data.shape[-1] % 32:
        outtype = "f16"
    if outtype in ("f32", "f16"):
        return gguf.quants.quantize(data, types[outtype]), None
    return gguf.quants.quantize(data, types[outtype]), types[outtype]


def _orient(target: LoraTarget, f: Factors, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lora_a, lora_b)`` in the layout llama.cpp's loader checks, scale folded when rank != alpha."""
    a, b = f.a, f.b
    if f.rank != alpha:
        c = math.sqrt(f.rank / alpha)
        a, b = a * c, b * c
    if target.kind == "embedding":
        return b, a.T.contiguous()       # lora_a (vocab, rank), lora_b (hidden, rank): llm_build_inp_embd
    if target.permute_heads:
        b = permute_rotary(b, target.permute_heads)
    return a, b


def _alpha(spec: RankSpec, targets: list[LoraTarget]) -> float:
    """One alpha for the file: the fixed rank, the largest full rank, or 1 for auto."""
    known = [spec.rank_of(t) for t in targets if t.carried]
    if spec.energy is not None or not known:
        return 1.0
    return float(spec.fixed if spec.fixed is not None else max(r for r in known if r is not None))


def _check_not_input(out: Path, inputs: list[Path]) -> None:
    resolved = out.resolve()
    for folder in inputs:
        folder = folder.resolve()
        if resolved == folder or folder in resolved.parents:
            raise UsageError("the adapter would be written inside an input model folder", out, "Write it somewhere else.")


def extract_lora(
    base: Path,
    chat: Path,
    out: Path,
    *,
    rank: str | int = 64,
    energy: float | None = None,
    outtype: str = "f16",
    device: str = "auto",
    force: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write the chat vector of (base, chat) as a GGUF LoRA adapter at ``out``; return a summary."""
    import gguf

    started = time.perf_counter()
    spec = parse_rank(rank, energy)
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype {outtype} is not an adapter type", out, f"Use one of {', '.join(OUTTYPES)}.")
    out = check_output_path(Path(out), force)
    _check_not_input(out, [Path(base), Path(chat)])
    compute_device = resolve_device(device)
    threads = torch.get_num_threads()
    source = DeltaSource.from_pair(Path(base), Path(chat), 1.0)
    base_ck, chat_ck = source.base, source.chat
    assert base_ck is not None and chat_ck is not None
    acc = _Accounting()
    try:
        check_pair(base_ck, chat_ck)
        arch, targets = plan_targets(chat_ck)
        alpha = _alpha(spec, targets)
        writer = gguf.GGUFWriter(None, arch.gguf_arch, use_temp_file=True)
        squared: dict[str, float] = {}
        with atomic_output(out, force=force) as tmp:
            with tensor_progress("extract LoRA", sum(chat_ck.nbytes(t.hf_name) for t in targets), len(targets), quiet) as advance:
                for t in targets:
                    chat_w, base_w = source.read(t.hf_name, 0, t.shape[0])
                    delta = chat_w.to(compute_device, torch.float32) - base_w.to(compute_device, torch.float32)
                    del chat_w, base_w
                    squared[t.gguf_name] = float(delta.double().pow(2).sum())
                    if t.carried:
                        if compute_device.type == "cpu":
                            torch.set_num_threads(1 if delta.numel() < SMALL_TENSOR else threads)
                        f = factorize(delta, spec.rank_of(t) if spec.energy is None else None, spec.energy)
                        lora_a, lora_b = _orient(t, f, alpha)
                        for suffix, tensor in (("lora_a", lora_a), ("lora_b", lora_b)):
                            data, raw = _encode(tensor, outtype)
                            writer.add_tensor(f"{t.gguf_name}.{suffix}", data, raw_dtype=raw)
                        acc.ranks[t.gguf_name] = f.rank
                        acc.energy[t.gguf_name] = round(f.energy, 6)
                        acc.methods[f.method] = acc.methods.get(f.method, 0) + 1
                        acc.kept += f.kept
                        acc.carried_total += f.total
                    del delta
                    advance(chat_ck.nbytes(t.hf_name), True)
            total = sum(squared.values())
            for t in targets:
                if not t.carried:
                    share = squared[t.gguf_name] / total if total > 0 else 0.0
                    acc.left_out.append({"tensor": t.gguf_name, "kind": t.kind, "share": share, "reason": LEFT_OUT_REASONS[t.kind]})
                    acc.left_out_total += squared[t.gguf_name]
            _write_metadata(writer, base_ck.path, chat_ck, base_ck.fingerprint(), spec, alpha, outtype, acc)
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    finally:
        source.close()
        if compute_device.type == "cpu":
            torch.set_num_threads(threads)
    return _summary(out, spec, alpha, outtype, acc, total, compute_device, started)


def _write_metadata(writer: Any, base_path: Path, chat_ck: Any, base_fp: str, spec: RankSpec, alpha: float, outtype: str, acc: _Accounting) -> None:
    import gguf

    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(f"{Path(chat_ck.path).resolve().name} chat vector LoRA")
    writer.add_file_type(int(file_types[outtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("cvlocal.version", __version__)
    writer.add_string("cvlocal.formula", "chat - base, float32, truncated SVD: lora_b = U S^1/2, lora_a = S^1/2 V^T; scale = ratio")
    writer.add_string("cvlocal.base", str(base_path))
    writer.add_string("cvlocal.base_fingerprint", base_fp)
    writer.add_string("cvlocal.chat", str(chat_ck.path))
    writer.add_string("cvlocal.chat_fingerprint", chat_ck.fingerprint())
    writer.add_string("cvlocal.rank", spec.label)
    if spec.energy is not None:
        writer.add_float32("cvlocal.energy", float(spec.energy))
    writer.add_string("cvlocal.ranks", json.dumps(acc.ranks))
    writer.add_string("cvlocal.left_out", json.dumps([{k: v for k, v in e.items() if k != "reason"} for e in acc.left_out]))


def _summary(out: Path, spec: RankSpec, alpha: float, outtype: str, acc: _Accounting, total: float, device: torch.device, started: float) -> dict[str, Any]:
    ranks = sorted(acc.ranks.values())
    return {
        "output": str(out),
        "format": "gguf-lora",
        "files": [str(out)],
        "bytes": out.stat().st_size,
        "outtype": outtype,
        "rank": spec.label,
        "alpha": alpha,
        "tensors": len(acc.ranks),
        "ranks": acc.ranks,
        "rank_min": ranks[0] if ranks else 0,
        "rank_median": ranks[len(ranks) // 2] if ranks else 0,
        "rank_max": ranks[-1] if ranks else 0,
        "energy": acc.energy,
        # of the vector's squared norm: what the adapter keeps, what the carried tensors lose, what is left out
        "energy_kept": acc.kept / total if total > 0 else 1.0,
        "energy_kept_carried": acc.kept / acc.carried_total if acc.carried_total > 0 else 1.0,
        "left_out": acc.left_out,
        "left_out_share": acc.left_out_total / total if total > 0 else 0.0,
        "svd": acc.methods,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 3),
    }
