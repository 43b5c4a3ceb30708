"""``cvlocal release --imatrix FILE|auto --tensor-type PATTERN=TYPE``: the matrix of a release.

Checked before any work (``check_request``); a release folder built with another matrix or other
overrides counts as another source (``quantize_identity``), so it is never silently reused; the
matrix is computed (``auto``: from the source, on its languages, kept in the release folder as
``imatrix.gguf``) at the start of the run, and the card records what was used: the file, its
sha256, its datasets, languages and chunk count, and the per-tensor types. The GGUFs themselves
carry llama-quantize's ``quantize.imatrix.*`` keys (see ``convert.llama_quantize``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cvlocal.errors import UsageError
from cvlocal.release.checksums import sha256_file

AUTO_NAME = "imatrix.gguf"


def _is_auto(spec: str | Path | None) -> bool:
    return isinstance(spec, str) and spec.strip().lower() == "auto"


def check_request(req: Any) -> None:
    """Refuse bad --imatrix / --tensor-type input, or a type needing a matrix without one (exit 2)."""
    from convert.imatrix_file import read_imatrix
    from convert.quant_tables import require_imatrix
    from cvlocal.outputs.types import parse_tensor_type
    from cvlocal.imatrix.auto import needs_imatrix

    overrides = [parse_tensor_type(spec) for spec in req.tensor_types]
    needs_imatrix(lambda: require_imatrix(list(req.types), req.imatrix is not None, overrides))
    if req.imatrix is not None and not _is_auto(req.imatrix):
        path = Path(req.imatrix)
        if not path.is_file():
            raise UsageError("importance matrix not found", path, "Pass an imatrix file (cvlocal imatrix MODEL -o imatrix.gguf) or --imatrix auto.")
        read_imatrix(path)


def quantize_identity(identity: str, req: Any) -> str:
    """The source identity, extended by the matrix and overrides when there are any."""
    if req.imatrix is None and not req.tensor_types:
        return identity
    h = hashlib.sha256()
    h.update(b"auto" if _is_auto(req.imatrix) else sha256_file(Path(req.imatrix)).encode() if req.imatrix else b"none")
    for spec in req.tensor_types:
        h.update(b"\0" + spec.encode("utf-8"))
    return f"{identity}+quantize:{h.hexdigest()[:16]}"


def prepare_quantize(req: Any, source: Path, out: Path, progress: Any) -> tuple[Any, list[str] | None]:
    """QuantizeOptions for every type, and the card's lines; ``auto`` computes the matrix into ``out``."""
    from cvlocal.outputs.atomic import atomic_output
    from convert.imatrix_file import read_imatrix, write_imatrix_gguf
    from cvlocal.imatrix.auto import options_for

    if req.imatrix is None and not req.tensor_types:
        return None, None
    path: Path | None = None
    how = ""
    if _is_auto(req.imatrix):
        from cvlocal.imatrix.collect import compute_imatrix
        from cvlocal.vector.device import resolve_device

        def on_start(total: int, labels: list[str]) -> None:
            progress.stage("imatrix", f"imatrix on {', '.join(labels)}", total)

        def on_chunk(done: int, total: int, tokens: int, seconds: float) -> None:
            progress.advance("imatrix", 1, f"{tokens / max(seconds, 1e-9):,.0f} tok/s")

        result = compute_imatrix(source, device=resolve_device("auto"), on_start=on_start, on_chunk=on_chunk)
        path = out / AUTO_NAME
        with atomic_output(path, force=True) as tmp:  # inside the release folder, which this command owns
            write_imatrix_gguf(result.matrix, tmp)
        progress.done("imatrix", f"{result.tokens_per_second:,.0f} tok/s")
        how = "computed by `cvlocal release --imatrix auto` from the source"
    elif req.imatrix is not None:
        path = Path(req.imatrix)
        how = "given with `--imatrix`"
    lines: list[str] = []
    if path is not None:
        matrix = read_imatrix(path)
        languages = [d.removeprefix("heldout/").removesuffix(".txt") for d in matrix.datasets if d.startswith("heldout/")]
        lines.append(
            f"- Importance matrix: `{path.name}` ({how}; sha256 `{sha256_file(path)}`), {matrix.chunk_count} windows of "
            f"{matrix.chunk_size} tokens from {', '.join(f'`{d}`' for d in matrix.datasets) or 'unnamed text'}"
            + (f" (languages: {', '.join(languages)})" if languages else "") + f", {len(matrix.sums)} matrices. "
            "The llama.cpp types were quantized with it (the files carry `quantize.imatrix.*` keys)."
        )
    if req.tensor_types:
        lines.append("- Per-tensor types (llama-quantize's `--tensor-type`): " + ", ".join(f"`{s}`" for s in req.tensor_types) + ".")
    return options_for(path, req.tensor_types), lines
