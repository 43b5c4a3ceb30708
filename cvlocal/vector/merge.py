"""``cvlocal merge``: ``out = cp + sum(r_i * (chat_i - base_i))``, streamed chunk by chunk.

The arithmetic runs in float32 on the chosen device and is rounded once: to the output dtype (the
CP's, or ``--dtype``) for a HF folder (sharded safetensors, config, tokenizer, card); for a path
ending in ``.gguf``, the float32 result flows in row chunks straight into ``convert.write_ggufs``,
which rounds it once to each output type (f16, q8_0 ...), with no HF folder in between.
"""
from __future__ import annotations

import json
import math
import queue
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from cvlocal.outputs.atomic import atomic_output, check_output_path, scratch
from convert.checkpoint import Checkpoint, open_checkpoint
from convert.hub_cache import display_name
from cvlocal.outputs.types import parse_outtypes
from convert.tokenizer_facts import read_tokenizer_facts
from cvlocal.errors import UsageError
from cvlocal.ui import say, warn
from cvlocal.vector import tokens as tk
from cvlocal.vector.arithmetic import ChunkArithmetic, Term
from cvlocal.vector.card import RECIPE_FILE, build_recipe, write_card
from cvlocal.vector.compat import check_compatible
from cvlocal.vector.device import dtype_name, parse_dtype, resolve_device
from cvlocal.vector.hf_output import parse_size, stream_to_folder, tensor_bytes
from cvlocal.vector.pipeline import Chunk, compute_threads, plan_chunks, run_pipeline
from cvlocal.vector.progress_sink import tensor_progress
from cvlocal.vector.roles import is_embedding, is_vocab_tensor
from cvlocal.vector.side_files import write_config, write_generation_config, write_tokenizer
from cvlocal.vector.sources import DeltaSource

EMBEDDING_MODES = ("auto", "add", "overlap", "skip")


@dataclass
class MergePlan:
    """Every decision a merge makes, taken before the first tensor is read."""

    cp: Checkpoint
    sources: list[DeltaSource]
    dtypes: dict[str, torch.dtype]
    embeddings: dict[str, str] = field(default_factory=dict)      # vocab tensor -> add|overlap|skip
    delta_rows: dict[str, int] = field(default_factory=dict)      # vocab tensor -> rows the delta covers
    special: list[tk.TokenPair] = field(default_factory=list)
    overrides: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # tensor -> {cp row: chat row}
    notes: list[str] = field(default_factory=list)
    cp_vocab: dict[str, int] = field(default_factory=dict)
    chat_vocab: list[str | None] = field(default_factory=list)

    def output_plan(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(n, self.dtypes[n], self.cp.shape(n)) for n in self.cp.names()]


def parse_vector_arg(text: str) -> tuple[Path, float]:
    """``DIR[:RATIO]`` -> (path, ratio); the ratio may be any real number, negative included."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def check_ratio(value: float) -> float:
    """A ratio must be a finite number: NaN or Inf would write a model of NaN (and NaN into the recipe)."""
    if not math.isfinite(float(value)):
        raise UsageError(f"the ratio {value} is not a finite number", fix="Give a finite ratio (--ratio R, --vector DIR:R), e.g. 1.0 or -0.5.")
    return float(value)


def _sources(vectors: list[tuple[Path, float]], base: Path | None, chat: Path | None, ratio: float) -> list[DeltaSource]:
    if vectors and (base or chat):
        raise UsageError("give either --vector or --base/--chat, not both", fix="Use --vector DIR[:RATIO] ... or --base BASE --chat CHAT --ratio R.")
    if vectors:
        return [DeltaSource.from_vector(path, r) for path, r in vectors]
    if base is None or chat is None:
        raise UsageError("nothing to add", fix="Use --vector DIR[:RATIO] ... or both --base BASE and --chat CHAT.")
    return [DeltaSource.from_pair(base, chat, ratio)]


def _decide_embeddings(plan: MergePlan, mode: str, cp_table: tk.TokenTable) -> None:
    """Per vocab tensor: add (same rows), overlap (shared leading rows, checked) or skip."""
    if mode not in EMBEDDING_MODES:
        raise UsageError(f"unknown --embeddings {mode!r}", fix="Use auto, add, overlap or skip.")
    for name in (n for n in plan.cp.names() if is_vocab_tensor(n, plan.cp.config)):
        cp_rows = plan.cp.rows(name)
        src_rows = [s.shape(name)[0] for s in plan.sources]
        same = all(r == cp_rows for r in src_rows)
        chosen = ("add" if same else "overlap") if mode == "auto" else mode
        if chosen == "add" and not same:
            raise UsageError(f"{name} has {cp_rows} rows in the CP model but {src_rows} in the vector", plan.cp.path, "Use --embeddings overlap (shared leading ids) or skip.")
        if chosen == "overlap":
            cp_vocab = cp_table.tokens
            for source in plan.sources:
                chat_vocab = source.chat_tokens().tokens
                bad = tk.first_vocab_mismatch(cp_vocab, chat_vocab)
                if bad is not None:
                    raise UsageError(
                        f"--embeddings overlap: id {bad} is {cp_vocab[bad]!r} in the CP tokenizer but {chat_vocab[bad]!r} in the chat tokenizer",
                        plan.cp.path,
                        "The vocabularies are not an extension of one another; use --embeddings skip.",
                    )
        plan.embeddings[name] = chosen
        plan.delta_rows[name] = min([cp_rows, *src_rows]) if chosen != "skip" else 0
        if mode == "auto":
            plan.notes.append(f"{name}: {chosen} ({cp_rows} CP rows, {min(src_rows)} vector rows)")


def _decide_special_tokens(plan: MergePlan, spec: str) -> None:
    """Which CP rows take the chat model's rows (the template's special tokens)."""
    spec = (spec or "auto").strip()
    if spec == "none":
        return
    source = plan.sources[0]
    chat_table = source.chat_tokens()
    if spec == "auto":
        ids = tk.special_ids_in_template(chat_table, source.chat_template())
        ids += [i for i in source.eos_ids() if i not in ids]
        pairs = tk.map_by_text(plan.cp_vocab, [(i, plan.chat_vocab[i]) for i in ids if i < len(plan.chat_vocab) and plan.chat_vocab[i]])
    else:
        pairs = []
        for cp_id, chat_id in tk.parse_manual_map(spec):
            if chat_id >= len(plan.chat_vocab) or cp_id >= plan.cp.rows(next(n for n in plan.cp.names() if is_embedding(n, plan.cp.config))):
                raise UsageError(f"--special-tokens {cp_id}={chat_id}: id out of range", fix="Use ids that exist in the CP and chat vocabularies.")
            pairs.append(tk.TokenPair(cp_id, chat_id, plan.chat_vocab[chat_id] or ""))
    for name in (n for n in plan.cp.names() if is_vocab_tensor(n, plan.cp.config)):
        kind = "embed" if is_embedding(name, plan.cp.config) else "lm_head"
        rows = {}
        for pair in pairs:
            row = source.special_row(kind, pair.chat_id)
            if row is None:
                if spec != "auto":
                    raise UsageError(f"no chat row stored for id {pair.chat_id} in {kind}", source.label, "Pick a special token of the chat model, or re-extract the vector.")
                continue
            if tuple(row.shape) != plan.cp.shape(name)[1:]:
                raise UsageError(f"the stored {kind} row of token {pair.chat_id} has {list(row.shape)} values, {name} rows have {list(plan.cp.shape(name)[1:])}",
                                 source.label, "Re-extract the vector from the base and chat models of this CP model.")
            if pair.cp_id < plan.cp.rows(name):
                rows[pair.cp_id] = row
        if rows:
            plan.overrides[name] = rows
    plan.special = pairs


def plan_merge(cp_path: Path, sources: list[DeltaSource], *, embeddings: str, special_tokens: str, dtype: torch.dtype | None) -> MergePlan:
    """Open and check everything, then take every decision; no output is touched."""
    cp = open_checkpoint(cp_path)
    check_compatible(cp, sources)
    plan = MergePlan(cp=cp, sources=sources, dtypes={n: dtype or cp.dtype(n) for n in cp.names()})
    cp_facts = read_tokenizer_facts(cp.path)
    cp_table = cp_facts.table
    plan.cp_vocab = cp_table.ids()
    plan.chat_vocab = sources[0].chat_tokens().tokens
    _decide_embeddings(plan, embeddings, cp_table)
    _decide_special_tokens(plan, special_tokens)
    cp_facts.generation  # noqa: B018  (every side file is checked now, before the first tensor is read)
    sources[0].generation_config()
    return plan


class MergeComputer:
    """The read and compute steps of the pipeline for one plan."""

    def __init__(self, plan: MergePlan, device: torch.device, allow_nonfinite: bool = False) -> None:
        self.plan = plan
        self.device = device
        self.arithmetic = ChunkArithmetic(device)
        self.allow_nonfinite = allow_nonfinite
        self.nonfinite: dict[str, int] = {}  # "CP tensor NAME" -> NaN/Inf values found (with --allow-nonfinite)

    def read(self, chunk: Chunk) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...] | None]]:
        cp_rows = self.plan.cp.read_rows(chunk.name, chunk.start, chunk.stop)
        stop = min(chunk.stop, self.plan.delta_rows.get(chunk.name, chunk.stop))
        parts = [s.read(chunk.name, chunk.start, stop) if stop > chunk.start else None for s in self.plan.sources]
        return cp_rows, parts

    def compute(self, chunk: Chunk, data: tuple[torch.Tensor, list[tuple[torch.Tensor, ...] | None]]) -> torch.Tensor:
        cp_rows, parts = data
        terms = [Term(part, source.ratio) for source, part in zip(self.plan.sources, parts) if part is not None]
        out = self.arithmetic.combine(cp_rows, terms, self.plan.dtypes[chunk.name], tuple(cp_rows.shape))
        if self.arithmetic.nonfinite:
            self._nonfinite(chunk, [i for i, p in enumerate(parts) if p is not None])
        for row, value in self.plan.overrides.get(chunk.name, {}).items():
            if chunk.start <= row < chunk.stop:
                out[row - chunk.start] = value.to(torch.float32).to(out.dtype)
        return out

    def _nonfinite(self, chunk: Chunk, used: list[int]) -> None:
        """Refuse NaN/Inf in an input (naming the tensor and its file), or count it with --allow-nonfinite."""
        name = chunk.name
        for term, part, count in self.arithmetic.nonfinite:
            if term == -2:
                label, file, what = f"merged tensor {name}", self.plan.cp.path, f"the merged tensor {name} overflows float32 in rows {chunk.start}:{chunk.stop} (its inputs are finite)"
            else:
                source = self.plan.sources[used[term]] if term >= 0 else None
                ckpt = self.plan.cp if source is None else _part_checkpoint(source, part)
                role = "CP" if source is None else ("vector" if source.vector else ("chat", "base")[part])
                label, file = f"{role} tensor {name}", ckpt.infos[name].file if name in ckpt.infos else ckpt.path
                what = f"{label} holds {count} NaN/Inf value(s) in rows {chunk.start}:{chunk.stop}"
            if not self.allow_nonfinite:
                raise UsageError(what, file, "Repair or re-download that model, or pass --allow-nonfinite to merge anyway.")
            self.nonfinite[label] = self.nonfinite.get(label, 0) + count


def _part_checkpoint(source: DeltaSource, part: int) -> Checkpoint:
    """The checkpoint a delta's part was read from: the vector, or chat (part 0) / base (part 1)."""
    if source.vector:
        return source.vector.checkpoint
    return source.chat if part == 0 else source.base  # type: ignore[return-value]


def _write_side_files(plan: MergePlan, folder: Path) -> None:
    """config.json, tokenizer (CP vocab, chat template and eos), generation_config.json."""
    source = plan.sources[0]
    chat_gen = source.generation_config()
    cp_facts = read_tokenizer_facts(plan.cp.path)
    cp_gen = cp_facts.generation
    gen = write_generation_config(folder, chat_gen, cp_gen, plan.chat_vocab, plan.cp_vocab)
    eos = gen.get("eos_token_id")
    eos_list = [eos] if isinstance(eos, int) else list(eos or [])
    write_config(folder, plan.cp.config, _dominant_dtype(plan) or torch.float32, eos_list if chat_gen else [])
    plan.notes += write_tokenizer(folder, cp_facts, source.chat_template(), source.chat_tokens().eos, plan.cp_vocab)


def _dominant_dtype(plan: MergePlan) -> torch.dtype | None:
    """The dtype most of the output bytes have (what config.json should say)."""
    sizes: dict[torch.dtype, int] = {}
    for name, dtype in plan.dtypes.items():
        sizes[dtype] = sizes.get(dtype, 0) + plan.cp.nbytes(name)
    return max(sizes, key=sizes.__getitem__) if sizes else None


def _recipe(plan: MergePlan) -> dict[str, Any]:
    return build_recipe(
        {"path": str(plan.cp.path), "fingerprint": plan.cp.fingerprint()},
        [s.provenance() for s in plan.sources],
        embeddings=plan.embeddings,
        special_tokens=[p.as_dict() for p in plan.special],
        dtype=dtype_name(_dominant_dtype(plan) or torch.float32),
        notes=plan.notes,
    )


def is_merged_folder(path: Path) -> bool:
    """Whether ``path`` is a folder an earlier merge wrote (``--force`` may replace only such a folder)."""
    return (path / RECIPE_FILE).is_file()


def _stream_to_hf(plan: MergePlan, computer: MergeComputer, out: Path, shard_size: int, force: bool, quiet: bool) -> list[str]:
    with atomic_output(out, directory=True, force=force, own=is_merged_folder) as tmp:
        files = stream_to_folder(tmp, plan.output_plan(), shard_size, computer.read, computer.compute, "merge", quiet)
        _write_side_files(plan, tmp)
        write_card(tmp, _recipe(plan), out.name)
    return files


def _merged_rows(plan: MergePlan, computer: MergeComputer, quiet: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged tensors as runs of whole rows (``(name, rows)``, in order) from a pipeline in a background thread.

    The converter takes a tensor in consecutive row pieces, so nothing is assembled here: the
    queue holds one chunk, and memory stays a few chunks whatever the size of the embedding.
    """
    tensors = plan.output_plan()
    chunks = plan_chunks((n, s) for n, _, s in tensors)
    done: queue.Queue[Any] = queue.Queue(maxsize=1)
    cancel = threading.Event()
    end = object()
    error: list[BaseException] = []
    total = sum(tensor_bytes(d, s) for _, d, s in tensors)

    def produce() -> None:
        try:
            with tensor_progress("merge -> gguf", total, len(tensors), quiet) as advance:
                def write(chunk: Chunk, rows: torch.Tensor) -> None:
                    advance(rows.numel() * rows.element_size(), chunk.last)
                    while not cancel.is_set():
                        try:
                            done.put((chunk.name, rows), timeout=0.1)
                            return
                        except queue.Full:
                            continue
                    raise KeyboardInterrupt
                run_pipeline(chunks, computer.read, computer.compute, write)
        except BaseException as err:
            error.append(err)
        finally:
            while not cancel.is_set():
                try:
                    done.put(end, timeout=0.1)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=produce, name="cvlocal-merge", daemon=True)
    thread.start()
    try:
        while True:
            item = done.get()
            if item is end:
                break
            yield item
        if error:
            raise error[0]
    finally:
        # Runs when the consumer fails too (the caller closes this generator): the pipeline stops
        # and is joined, so no thread is left computing when the process exits.
        cancel.set()
        thread.join()


def _stream_to_gguf(plan: MergePlan, computer: MergeComputer, out: Path, outtypes: str, force: bool, quiet: bool, threads: int | None,
                    quantize: Any = None) -> list[str]:
    """One pass: the merged tensors flow straight into the GGUF writer (one file per type)."""
    from cvlocal.outputs.gguf import write_ggufs  # the converter library; loaded only for GGUF output
    from cvlocal.outputs.names import output_paths

    with scratch(out, "side", directory=True) as side_dir:
        _write_side_files(plan, side_dir)
        recipe = _recipe(plan)
        name = f"{display_name(plan.cp.path)}-ChatVector"
        write_card(side_dir, recipe, name)  # its front matter gives the converter general.base_model.*
        metadata = {"general.name": name, "cvlocal.recipe": json.dumps(recipe, ensure_ascii=False), "cvlocal.version": recipe["tool"]}
        shapes = {n: (d, s) for n, d, s in plan.output_plan()}
        targets = output_paths(out, outtypes, side_dir, plan=shapes, metadata=metadata)
        for path in targets.values():
            check_output_path(path, force)
        with closing(_merged_rows(plan, computer, quiet)) as tensors:
            written = write_ggufs(
                side_dir, targets, plan=shapes, tensors=tensors, threads=threads, force=force, origin=plan.cp.path,
                metadata=metadata, on_stage=lambda t: say(f"quantizing to {t}", quiet), on_warning=lambda w: say(f"note: {w}", quiet),
                quantize=quantize,
            )
    return [str(p) for p in written.values()]


def merge_models(
    cp: Path,
    out: Path,
    *,
    base: Path | None = None,
    chat: Path | None = None,
    ratio: float = 1.0,
    vectors: list[tuple[Path, float]] | tuple = (),
    embeddings: str = "auto",
    special_tokens: str = "auto",
    dtype: str | torch.dtype | None = None,
    device: str = "auto",
    shard_size: str | int = "5GB",
    outtype: str | None = None,
    threads: int | None = None,
    force: bool = False,
    quiet: bool = False,
    allow_nonfinite: bool = False,
    quantize: Any = None,
) -> dict[str, Any]:
    """Merge chat vectors into a CP model; return a summary (what ``--json`` prints).

    NaN or Inf in an input tensor stops the merge with an error naming the tensor and its file,
    unless ``allow_nonfinite`` (then each is counted, reported and kept in the output).
    ``quantize`` (convert's QuantizeOptions: importance matrix, per-tensor types) applies to the
    llama.cpp types of a one-pass GGUF output.
    """
    started = time.perf_counter()
    out = Path(out)
    to_gguf = out.suffix.lower() == ".gguf"
    if "{" not in out.name:
        check_output_path(out, force, directory=not to_gguf, own=is_merged_folder)
    if outtype and not to_gguf:
        raise UsageError("--outtype needs an output path ending in .gguf", out, "Name the output *.gguf for a one-pass merge to GGUF.")
    if to_gguf:
        parse_outtypes(outtype or "f16")  # a bad type is found before any work
    max_shard = shard_size if isinstance(shard_size, int) else parse_size(shard_size)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) or dtype is None else parse_dtype(dtype)
    compute_device = resolve_device(device)
    for value in [ratio, *(r for _, r in vectors)]:
        check_ratio(value)
    sources = _sources([(Path(p), float(r)) for p, r in vectors], Path(base) if base else None, Path(chat) if chat else None, float(ratio))
    try:
        # A GGUF output is rounded once, by the converter, to each output type: the merge hands it
        # float32 (unless --dtype says otherwise). An HF folder keeps the CP's dtype.
        merged_dtype = torch_dtype if torch_dtype is not None or not to_gguf else torch.float32
        plan = plan_merge(Path(cp), sources, embeddings=embeddings, special_tokens=special_tokens, dtype=merged_dtype)
        if plan.special:
            say("special tokens from the chat model: " + ", ".join(f"{p.text}: {p.cp_id}<-{p.chat_id}" for p in plan.special), quiet)
        for name, mode in plan.embeddings.items():
            say(f"{name}: {mode}", quiet)
        computer = MergeComputer(plan, compute_device, allow_nonfinite)
        with compute_threads(compute_device):
            if to_gguf:
                files = _stream_to_gguf(plan, computer, out, outtype or "f16", force, quiet, threads, quantize)
            else:
                files = _stream_to_hf(plan, computer, out, max_shard, force, quiet)
        for label, count in computer.nonfinite.items():
            warn(f"{label}: {count} NaN/Inf value(s) kept (--allow-nonfinite)")
    finally:
        for source in sources:
            source.close()
    return {
        "output": str(out),
        "format": "gguf" if to_gguf else "hf",
        "outtype": (outtype or "f16") if to_gguf else None,
        "files": files,
        "tensors": len(plan.cp.names()),
        "bytes": sum(tensor_bytes(d, s) for _, d, s in plan.output_plan()),
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(compute_device),
        "ratios": [s.ratio for s in sources],
        "embeddings": plan.embeddings,
        "special_tokens": [p.as_dict() for p in plan.special],
        "notes": plan.notes,
        "nonfinite": computer.nonfinite,
    }
