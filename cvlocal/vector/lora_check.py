"""``cvlocal extract ... -o x.gguf --check CP``: how faithful CP + adapter(r) is to the exact merge CP + r v.

An adapter is an approximation (a truncated SVD per tensor, norms and biases left out), so its
cost is measured, not assumed, with the release's own quality measure (``release.quality``:
llama-perplexity's KL divergence and top-1 agreement, second half of each window scored) on the
held-out text in five languages:

- the reference is the exact merge ``CP + r (chat - base)`` written by ``cvlocal merge`` as an
  f32 GGUF (``--special-tokens none``: the pure arithmetic the adapter stands for); a CP given
  as an f32/f16/bf16 GGUF gets the same sum in the GGUF's own layout (``gguf_merge``);
- "adapter" is the CP model as an f32 GGUF with the adapter at scale r, through llama.cpp;
- "CP alone" is the same model with the adapter at scale 0, the yardstick of how far the
  vector moves the model at all.

Every model runs with an f32 KV cache: with llama.cpp's default f16 cache, one-ulp roundings of
keys and values (which differ between W x + B A x and (W + D) x at the 1e-7 level) move tiny
models' logits by ~2e-3, which would be charged to the adapter wrongly.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from cvlocal.errors import UsageError
from cvlocal.llama.adapters import AdapterSpec, open_model
from cvlocal.release.heldout import load_heldout
from cvlocal.release.scoring import make_windows, measure, reference_pass
from cvlocal.ui import item_progress

RATIOS = (0.5, 1.0)
GGML_TYPE_F32 = 0


def scoring_settings(n_ctx: int, threads: int | None) -> dict[str, Any]:
    """``Llama`` settings for scoring: logits at every position, one window per batch, f32 KV cache."""
    return dict(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads, n_threads_batch=threads,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, seed=0, verbose=False)


def check_cp(cp: Path, base: Path, chat: Path) -> bool:
    """Refuse (one line) a --check CP that is neither an HF folder nor a float GGUF; True for a GGUF.

    Called before the adapter is written, so a bad --check leaves nothing behind.
    """
    from cvlocal.vector.gguf_merge import check_float_cp, is_gguf, target_architecture

    cp = Path(cp)
    from_gguf = is_gguf(cp)
    if not cp.is_dir() and not from_gguf:
        raise UsageError("--check needs the CP model's HF folder or its f32/f16/bf16 GGUF", cp,
                         "Pass the continually-pretrained model's folder or float GGUF.")
    if from_gguf:
        check_float_cp(cp, target_architecture(Path(base), Path(chat)))
    return from_gguf


def check_adapter(
    cp: Path,
    base: Path,
    chat: Path,
    adapter: Path | Sequence[Path],
    *,
    ratios: Sequence[float] = RATIOS,
    n_ctx: int = 256,
    chunks: int | None = 1,
    threads: int | None = None,
    heldout: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """KL / top-1 of CP+adapter(r) and of CP alone against the exact merge, for each ratio.

    Several adapters (say, one per rank) are measured against the same merges, built once:
    ``result["ratios"][r]["adapters"][i]`` is the i-th adapter's; ``["adapter"]`` the first's.
    """
    from convert import write_gguf
    from convert.quant_tables import outtype
    from convert.transcode import transcode
    from cvlocal.vector.gguf_merge import merge_gguf
    from cvlocal.vector.merge import merge_models

    cp = Path(cp)
    from_gguf = check_cp(cp, base, chat)
    paths = [Path(adapter)] if isinstance(adapter, (str, Path)) else [Path(a) for a in adapter]
    texts = load_heldout(heldout)
    results: dict[str, Any] = {"n_ctx": n_ctx, "ratios": {}}
    with tempfile.TemporaryDirectory(prefix=".cvlocal-check-", dir=paths[0].resolve().parent) as side:
        work = Path(side)
        with item_progress(quiet) as progress:
            task = progress.add_task("check adapter", total=1 + (2 + len(paths)) * len(ratios), detail="CP -> f32 GGUF")
            cp_gguf = work / "cp-f32.gguf"
            if from_gguf:
                transcode(cp, cp_gguf, outtype("f32"))
            else:
                write_gguf(cp, cp_gguf, "f32")
            progress.update(task, advance=1)
            llm, adapters = open_model(cp_gguf, [AdapterSpec(p, 0.0) for p in paths], **scoring_settings(n_ctx, threads))
            try:
                windows = make_windows(llm, texts, n_ctx, chunks)
                if not len(windows.languages):
                    raise UsageError(f"the held-out text is shorter than one window of {n_ctx} tokens", heldout, "Use a smaller window.")
                results["tokens"] = windows.scored_tokens
                results["languages"] = sorted(set(windows.languages))
                for r in ratios:
                    progress.update(task, detail=f"exact merge at {r:g}")
                    if from_gguf:
                        merged = merge_gguf(cp, work / f"merge-{r:g}.gguf", base, chat, r)
                    else:
                        merged = merge_models(cp, work / f"merge-{r:g}.gguf", base=base, chat=chat, ratio=r, special_tokens="none",
                                              dtype="float32", outtype="f32", quiet=True)["files"][0]
                    ref_llm, _ = open_model(merged, (), **scoring_settings(n_ctx, threads))
                    try:
                        reference = reference_pass(ref_llm, windows, work / f"ref-{r:g}.npy")
                    finally:
                        ref_llm.close()
                    Path(merged).unlink()
                    progress.update(task, advance=1, detail=f"adapters at {r:g}")
                    try:
                        measured = []
                        for i in range(len(paths)):
                            adapters.set_scales([r if j == i else 0.0 for j in range(len(paths))])
                            measured.append(measure(llm, windows, reference).overall.as_dict())
                            progress.update(task, advance=1)
                        adapters.set_scales([0.0] * len(paths))
                        alone = measure(llm, windows, reference).overall.as_dict()
                    finally:
                        reference.remove()
                    results["ratios"][f"{r:g}"] = {"adapter": measured[0], "adapters": measured, "cp": alone}
                    progress.update(task, advance=1)
            finally:
                llm.close()
    return results


def format_check(check: dict[str, Any]) -> str:
    """The check as a small table for the terminal."""
    lines = [f"fidelity against the exact merge ({check['tokens']} held-out tokens, {', '.join(check['languages'])}):",
             "  ratio  model        mean KL    top-1"]
    for r, row in check["ratios"].items():
        for label, key in (("CP+adapter", "adapter"), ("CP alone", "cp")):
            lines.append(f"  {r:>5}  {label:<11} {row[key]['mean_kld']:9.5f}  {row[key]['top1']:6.1%}")
    return "\n".join(lines)
