"""Compute an importance matrix with torch forward hooks on the HF model.

The definition (llama.cpp's ``IMatrixCollector::collect_imatrix``): for every weight matrix W of a
transformer block that multiplies the activations x (``y = W x``), ``in_sum2[j] = sum over tokens
of x_j**2`` and ``counts = number of tokens``. The embedding (a lookup, not a product) and the
output head (llama-imatrix skips it unless ``--process-output``) have no entry.

The windows are cut as ``llama-imatrix`` cuts them: each text is tokenized once with the
tokenizer's special tokens (BOS), consecutive windows of ``ctx`` tokens are taken (a remainder
shorter than ``ctx`` is dropped), the first token of every window is replaced by BOS when the
tokenizer adds one, and each window is its own sequence (positions 0..ctx-1). With several texts
the windows are taken in turn from each (the first window of every text, then the second ...)
until ``chunks`` windows, so that every language weighs the same. One text and the same settings
give llama-imatrix's windows.

A hook sees the input of each ``nn.Linear`` whose weight maps (through convert's architecture
table) to a ``blk.N.*`` GGUF tensor: ``q_proj``/``k_proj``/``v_proj`` the attention norm's output,
``o_proj`` the attention output, ``gate_proj``/``up_proj`` the FFN norm's output and ``down_proj``
``act(gate) * up``. Sums are accumulated in float64 (float32 on MPS).
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from convert.architectures import ARCHITECTURES
from convert.imatrix_file import Imatrix
from cvlocal.errors import UsageError
from cvlocal.imatrix.calibration import CalibrationText

MIN_CTX = 16  # llama.cpp's collector ignores products over fewer than 16 tokens

ChunkProgress = Callable[[int, int, int, float], None]
"""``on_chunk(done, total, tokens_done, seconds)`` after each window."""


@dataclass(frozen=True)
class Windows:
    """The token windows of the calibration texts, in the order they are evaluated."""

    windows: list[list[int]]
    tokens_per_text: dict[str, int]
    used_per_text: dict[str, int]     # windows taken from each text


@dataclass(frozen=True)
class CollectResult:
    matrix: Imatrix
    tokens: int
    seconds: float
    device: str
    windows: Windows

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.inf


def bos_policy(tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one in front of a text (llama.cpp's add_bos), else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def cut_windows(token_lists: dict[str, list[int]], ctx: int, chunks: int | None, bos: int | None) -> Windows:
    """Windows of ``ctx`` tokens, taken in turn from each text, first token set to ``bos``."""
    per_text = {label: [ids[i * ctx:(i + 1) * ctx] for i in range(len(ids) // ctx)] for label, ids in token_lists.items()}
    order: list[list[int]] = []
    used = {label: 0 for label in per_text}
    depth = max((len(w) for w in per_text.values()), default=0)
    for i in range(depth):
        for label, windows in per_text.items():
            if i < len(windows) and (chunks is None or len(order) < chunks):
                window = list(windows[i])
                if bos is not None:
                    window[0] = bos
                order.append(window)
                used[label] += 1
    return Windows(order, {label: len(ids) for label, ids in token_lists.items()}, used)


def linear_names(model: torch.nn.Module, architecture: str) -> dict[str, str]:
    """HF module name -> GGUF weight name, for every nn.Linear of a block (``blk.*``)."""
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        raise UsageError(f"no tensor table for architecture {architecture!r}", fix="Use a Llama, Mistral, Qwen2 or Qwen3 model.")
    names: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = arch.gguf_name(f"{name}.weight")
            if gguf_name and gguf_name.startswith("blk."):
                names[name] = gguf_name
    return names


class _Collector:
    """Forward pre-hooks that add each Linear's squared inputs per channel, and count its rows."""

    def __init__(self, model: torch.nn.Module, names: dict[str, str], device: torch.device) -> None:
        self.acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles = []
        modules = dict(model.named_modules())
        for hf_name, gguf_name in names.items():
            module = modules[hf_name]
            self.sums[gguf_name] = torch.zeros(module.in_features, dtype=self.acc_dtype, device=device)
            self.counts[gguf_name] = 0
            self.handles.append(module.register_forward_pre_hook(self._hook(gguf_name)))

    def _hook(self, gguf_name: str):
        def hook(module, args):  # noqa: ARG001 - torch's hook signature
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1]).to(self.acc_dtype)
            self.sums[gguf_name] += (rows * rows).sum(dim=0)
            self.counts[gguf_name] += rows.shape[0]
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _source(model_path: Path) -> tuple[Path, dict]:
    """The folder and from_pretrained arguments for an HF folder or a GGUF file (local files only)."""
    model_path = Path(model_path)
    kwargs: dict = {"local_files_only": True, "trust_remote_code": False}
    if model_path.is_file():
        if model_path.suffix.lower() != ".gguf":
            raise UsageError("not a model folder or a .gguf file", model_path, "Pass an HF model folder or a GGUF file.")
        return model_path.parent, {**kwargs, "gguf_file": model_path.name}
    if model_path.is_dir():
        if not (model_path / "config.json").is_file():
            raise UsageError("no config.json in the model folder", model_path, "Pass an HF model folder (config.json, weights, tokenizer).")
        return model_path, kwargs
    raise UsageError("model not found", model_path, "Pass an HF model folder or a GGUF file.")


def _cannot_load(model_path: Path, err: Exception) -> UsageError:
    return UsageError(f"transformers cannot load the model ({' '.join(str(err).split())[:160]})", model_path,
                      "Pass an HF folder of a Llama, Mistral, Qwen2 or Qwen3 model (or a GGUF of one).")


def load_tokenizer(model_path: Path):
    """The model's tokenizer (first, so that a too short text is refused before the weights load)."""
    from transformers import AutoTokenizer

    folder, kwargs = _source(model_path)
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise _cannot_load(model_path, err) from None


def load_model(model_path: Path, device: torch.device, dtype: torch.dtype):
    """The HF model from a folder, or from a GGUF through transformers' GGUF loader, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder, kwargs = _source(model_path)
    hf_logging.disable_progress_bar()  # our own bar reports the work; theirs would break the one-line rule
    try:
        # transformers' GGUF loader draws a plain tqdm bar that disable_progress_bar() does not reach;
        # it de-quantizes (q8_0, k-quants, ...) to ``dtype`` through gguf-py, so any GGUF it reads works
        with contextlib.redirect_stderr(io.StringIO()) if "gguf_file" in kwargs else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        raise _cannot_load(model_path, err) from None
    return model.to(device).eval()


def tokenize_texts(tokenizer, texts: Sequence[CalibrationText]) -> dict[str, list[int]]:
    """Each text tokenized once with the tokenizer's special tokens, as llama-imatrix does."""
    # verbose=False: the whole text is longer than the model's context on purpose (it is cut into windows)
    return {t.label: list(tokenizer(t.text, add_special_tokens=True, verbose=False)["input_ids"]) for t in texts}


def collect(
    model: torch.nn.Module,
    windows: Windows,
    *,
    architecture: str,
    ctx: int,
    datasets: list[str],
    device: torch.device,
    batch: int = 1,
    on_chunk: ChunkProgress | None = None,
) -> CollectResult:
    """Run the windows through ``model`` (``batch`` windows per forward) and return the matrix."""
    names = linear_names(model, architecture)
    collector = _Collector(model, names, device)
    started = time.monotonic()
    done = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(windows.windows), batch):
                ids = torch.tensor(windows.windows[start:start + batch], dtype=torch.long, device=device)
                model(input_ids=ids, use_cache=False)
                done += ids.shape[0]
                if on_chunk is not None:
                    on_chunk(done, len(windows.windows), done * ctx, time.monotonic() - started)
    finally:
        collector.remove()
    seconds = time.monotonic() - started
    sums, counts = {}, {}
    for name, acc in collector.sums.items():
        values = acc.to("cpu", torch.float64).numpy()
        if not np.isfinite(values).all():
            raise UsageError(f"the activations of {name} are not finite (NaN or Inf) on the calibration text", fix="Check the model's weights (cvlocal convert reports non-finite values).")
        sums[name] = values.astype(np.float32).reshape(1, -1)
        counts[name] = np.array([collector.counts[name]], dtype=np.float32)
    matrix = Imatrix(sums, counts, datasets, chunk_count=len(windows.windows), chunk_size=ctx)
    return CollectResult(matrix, len(windows.windows) * ctx, seconds, str(device), windows)


def compute_imatrix(
    model_path: Path,
    *,
    text_files: Sequence[Path] = (),
    languages: Sequence[str] | None = None,
    ctx: int = 512,
    chunks: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch: int = 1,
    on_chunk: ChunkProgress | None = None,
    on_start: Callable[[int, list[str]], None] | None = None,
) -> CollectResult:
    """The importance matrix of ``model_path`` on ``text_files``, or the held-out text of ``languages``.

    Without either, the languages come from the tokenizer (``calibration.default_languages``).
    Everything that can be wrong with the options is refused before the model is run.
    ``on_start(n_windows, labels)`` is called once the windows are known.
    """
    from cvlocal.imatrix.calibration import default_languages, heldout_texts, read_text_files

    if ctx < MIN_CTX:
        raise UsageError(f"--ctx {ctx} is too small: llama.cpp's collector ignores products over fewer than {MIN_CTX} tokens", fix=f"Use --ctx {MIN_CTX} or more (llama-imatrix's default is 512).")
    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks {chunks} must be at least 1", fix="Pass a positive number, or leave it out to use every full window.")
    if batch < 1:
        raise UsageError(f"--batch {batch} must be at least 1", fix="Pass a positive number of windows per forward pass.")
    texts = read_text_files(text_files) if text_files else None
    device = device or torch.device("cpu")
    tokenizer = load_tokenizer(model_path)
    if texts is None:
        chosen = list(languages) if languages else default_languages(lambda t: tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])
        texts = heldout_texts(chosen)
    token_lists = tokenize_texts(tokenizer, texts)
    windows = cut_windows(token_lists, ctx, chunks, bos_policy(tokenizer))
    if not windows.windows:
        longest = max(token_lists.values(), key=len, default=[])
        raise UsageError(
            f"the calibration text is too short: {len(longest)} tokens at most, fewer than one window of --ctx {ctx}",
            fix="Pass a longer --text, more languages, or a smaller --ctx.",
        )
    model = load_model(model_path, device, dtype)
    if on_start is not None:
        on_start(len(windows.windows), [t.label for t in texts])
    architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    datasets = [t.dataset for t in texts if windows.used_per_text.get(t.label)]
    return collect(model, windows, architecture=architecture, ctx=ctx, datasets=datasets, device=device, batch=batch, on_chunk=on_chunk)
