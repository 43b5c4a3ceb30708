"""``cvlocal extract``: write ``chat - base`` as a chat-vector folder, chunk by chunk.

The vector is computed in float32 and rounded once to the inputs' dtype (``--dtype float32``
keeps it exact). Besides the tensors, the folder keeps what a later merge needs from the chat
model and would otherwise have to load it for: tokenizer, template, stop tokens, generation
defaults, and the embedding / lm_head rows of its special tokens.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cvlocal import __version__
from cvlocal.outputs.atomic import atomic_output, check_output_path
from convert.checkpoint import TOKENIZER_FILES, Checkpoint
from convert.safetensors_format import StreamingWriter
from cvlocal.errors import UsageError
from cvlocal.vector import tokens as tk
from cvlocal.vector.arithmetic import ChunkArithmetic, Term
from cvlocal.vector.compat import check_pair
from cvlocal.vector.device import dtype_name, parse_dtype, resolve_device
from cvlocal.vector.hf_output import parse_size, stream_to_folder, tensor_bytes
from cvlocal.vector.pipeline import Chunk, compute_threads
from cvlocal.vector.roles import config_signature, is_embedding, is_lm_head
from cvlocal.vector.sources import DeltaSource
from cvlocal.vector.side_files import write_config
from cvlocal.vector.vector_folder import FORMAT, FORMAT_VERSION, SPECIAL_ROWS, TOKENIZER_DIR, is_vector_folder, write_manifest


def _copy_chat_side(chat: Checkpoint, folder: Path) -> None:
    """chat_tokenizer/: the chat model's tokenizer, generation config and config (AutoTokenizer needs config.json)."""
    folder.mkdir()
    for name in (*TOKENIZER_FILES, "generation_config.json", "config.json"):
        if (chat.path / name).is_file():
            shutil.copyfile(chat.path / name, folder / name)


def _write_special_rows(chat: Checkpoint, source: DeltaSource, template: str | None, path: Path) -> list[dict[str, Any]]:
    """Store the chat model's rows for every special token, so --special-tokens works from the vector."""
    table = source.chat_tokens()
    ids = sorted(table.special | set(source.eos_ids()) | set(tk.special_ids_in_template(table, template)))
    vocab = table.tokens
    plan: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for kind, test in (("embed", is_embedding), ("lm_head", is_lm_head)):
        name = next((n for n in chat.names() if test(n, chat.config)), None)
        if name is None:
            continue
        rows = chat.rows(name)
        usable = [i for i in ids if i < rows]
        if not usable:
            continue
        tensors[kind] = torch.stack([chat.read_rows(name, i, i + 1)[0] for i in usable])
        plan[kind] = (tensors[kind].dtype, tuple(tensors[kind].shape))
        ids = usable
    if not tensors:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = StreamingWriter(path, plan, {"format": "pt"})
    for kind in plan:
        writer.write(kind, tensors[kind])
    writer.close()
    return [{"id": i, "text": vocab[i] if i < len(vocab) else None} for i in ids]


def extract_vector(
    base: Path,
    chat: Path,
    out: Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str = "auto",
    shard_size: str | int = "5GB",
    force: bool = False,
    quiet: bool = False,
    allow_nonfinite: bool = False,
) -> dict[str, Any]:
    """Write the chat vector of (base, chat) to ``out``; return a summary."""
    started = time.perf_counter()
    out = check_output_path(out, force, directory=Path(out).suffix.lower() != ".gguf", own=is_vector_folder)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) or dtype is None else parse_dtype(dtype)
    compute_device = resolve_device(device)
    max_shard = shard_size if isinstance(shard_size, int) else parse_size(shard_size)
    source = DeltaSource.from_pair(Path(base), Path(chat), 1.0)
    base_ck, chat_ck = source.base, source.chat
    assert base_ck is not None and chat_ck is not None
    try:
        check_pair(base_ck, chat_ck)
        chat_table = source.chat_tokens()
        gen = source.generation_config()  # validated before any work
        template = source.chat_template()
        names = chat_ck.names()
        dtypes = {n: torch_dtype or chat_ck.dtype(n) for n in names}
        tensors = [(n, dtypes[n], chat_ck.shape(n)) for n in names]
        arithmetic = ChunkArithmetic(compute_device)

        def compute(chunk: Chunk, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
            out = arithmetic.combine(None, [Term(parts)], dtypes[chunk.name], tuple(parts[0].shape))
            for term, part, count in arithmetic.nonfinite if not allow_nonfinite else ():
                ckpt, role = (chat_ck, "chat") if part == 0 else (base_ck, "base")
                file = ckpt.infos[chunk.name].file if chunk.name in ckpt.infos else ckpt.path
                what = f"{role} tensor {chunk.name} holds {count} NaN/Inf value(s)" if term >= 0 else f"chat - base of {chunk.name} overflows float32"
                raise UsageError(f"{what} in rows {chunk.start}:{chunk.stop}", file,
                                 "Repair or re-download that model, or pass --allow-nonfinite to extract anyway.")
            return out

        def read(chunk: Chunk) -> tuple[torch.Tensor, ...]:
            return source.read(chunk.name, chunk.start, chunk.stop)

        with atomic_output(out, directory=True, force=force, own=is_vector_folder) as tmp:
            with compute_threads(compute_device):
                files = stream_to_folder(tmp, tensors, max_shard, read, compute, "extract", quiet)
            main_dtype = torch_dtype or max({d for _, d, _ in tensors}, key=lambda d: sum(chat_ck.nbytes(n) for n, dd, _ in tensors if dd == d))
            write_config(tmp, chat_ck.config, main_dtype, [])
            _copy_chat_side(chat_ck, tmp / TOKENIZER_DIR)
            special = _write_special_rows(chat_ck, source, template, tmp / SPECIAL_ROWS)
            eos = source.eos_ids()
            vocab = chat_table.tokens
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_by": f"cvlocal {__version__}",
                "formula": "chat - base, computed in float32, rounded once",
                "base": {"path": str(base_ck.path), "fingerprint": base_ck.fingerprint()},
                "chat": {"path": str(chat_ck.path), "fingerprint": chat_ck.fingerprint()},
                "architecture": chat_ck.architecture,
                "signature": config_signature(chat_ck.config),
                "dtype": dtype_name(main_dtype),
                "tensors": {n: list(s) for n, _, s in tensors},
                "files": files,
                "chat_template": template,
                "bos_token": chat_table.bos,
                "eos_token": chat_table.eos,
                "stop_tokens": [{"id": i, "text": vocab[i] if i < len(vocab) else None} for i in eos],
                "generation_config": gen.data if gen is not None else None,
                "special_rows": {"file": SPECIAL_ROWS, "tokens": special},
            }
            write_manifest(tmp, manifest)
            (tmp / "README.md").write_text(_readme(manifest), encoding="utf-8")
    finally:
        source.close()
    return {
        "output": str(out),
        "files": files,
        "tensors": len(tensors),
        "bytes": sum(tensor_bytes(d, s) for _, d, s in tensors),
        "dtype": dtype_name(main_dtype),
        "device": str(compute_device),
        "special_rows": len(special),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _readme(manifest: dict[str, Any]) -> str:
    return "\n".join([
        "# Chat vector",
        "",
        f"`{manifest['chat']['path']}` minus `{manifest['base']['path']}` ({manifest['architecture']}, {manifest['dtype']}),",
        f"extracted by {manifest['created_by']}. Fingerprints: base `{manifest['base']['fingerprint']}`, chat `{manifest['chat']['fingerprint']}`.",
        "",
        "Add it to a model continually pretrained from the same base:",
        "",
        "```",
        "cvlocal merge CP_MODEL --vector THIS_FOLDER:1.0 -o merged/",
        "```",
        "",
        "`chat_vector.json` records the provenance, the chat template and stop tokens; `extras/` holds the",
        "chat model's embedding and lm_head rows of its special tokens.",
        "",
    ])
