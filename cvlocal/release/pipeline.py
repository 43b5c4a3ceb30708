"""``cvlocal release``: one conversion, every type quantized from it, each verified and measured, then the card.

The order of work, and why:

1. Everything that can be wrong with the input (types, source, held-out text, eval report, the
   output folder) is checked before any work, so bad input costs nothing and leaves nothing.
2. The source is converted once to its lossless encoding (bf16 weights -> BF16, f16 -> F16,
   f32 -> F32); a f32/f16/bf16 GGUF source is used as it is. Every requested type is made from
   this reference, and the quality table compares every type against it.
3. The reference is evaluated once on the held-out windows; its next-token distributions are
   kept on disk (``scoring.reference_pass``) and every type is compared with them.
4. Each type is quantized under a temporary name, loaded and evaluated on a short prompt, hashed,
   and only then renamed to its final name; then it is measured against the reference. A type
   that fails at any step is reported, its file removed, and the release goes on without it.
5. ``README.md``, ``SHA256SUMS`` and one Ollama ``Modelfile`` per file are written last.

``.release-state.json`` records each step, so a second run after an interruption (or after a
failure) redoes only what is missing: a file whose bytes still hash to the recorded SHA-256 is
not rebuilt, and its quality row is kept while the reference and the measurement settings are
unchanged. The hidden reference (``.reference-<TYPE>.gguf``, when the lossless type is not one
of the requested ones) is kept until every type has succeeded, for the same reason.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from gguf import Keys

from cvlocal.outputs.atomic import atomic_output, check_output_path, partial_path, remove_path, remove_stale_partials
from convert.quant_tables import OutType
from cvlocal.errors import UsageError, WorkError
from cvlocal.release import scoring
from cvlocal.release.card import CardInput, FileRow, QualitySettings, render_card
from cvlocal.release.checksums import SUMS_NAME, sha256_file, write_sha256sums
from cvlocal.release.eval_report import load_eval_report, summary_markdown
from cvlocal.release.heldout import heldout_digest, load_heldout
from cvlocal.release.naming import file_names
from cvlocal.release.ollama import TemplateMatch, match_family, modelfile_text
from cvlocal.release.quality import DEFAULT_CHUNKS, DEFAULT_CTX
from cvlocal.release.source import Source, open_source
from cvlocal.release.state import STATE_NAME, ReleaseState, TypeRecord

CARD_NAME = "README.md"
MODELFILE_SUFFIX = ".Modelfile"


@dataclass
class ReleaseRequest:
    """Everything ``cvlocal release`` was asked to do."""

    source: Path
    out: Path
    types: list[OutType]
    name: str | None = None
    version: str | None = None
    eval_report: Path | None = None
    threads: int | None = None
    heldout: Path | None = None
    ctx: int = DEFAULT_CTX
    chunks: int | None = DEFAULT_CHUNKS     # windows per language (None: all the text gives)
    force: bool = False
    languages: list[str] | None = None      # the model's languages (--language); None: the source's own
    imatrix: str | Path | None = None       # an importance matrix file, or "auto" (computed from the source)
    tensor_types: tuple[str, ...] = ()      # llama-quantize's PATTERN=TYPE overrides


@dataclass
class TypeOutcome:
    """What happened to one requested type."""

    qtype: str
    label: str
    status: str                      # "built", "reused", "reference" or "failed"
    file: str | None = None
    sha256: str | None = None
    size: int | None = None
    bits_per_weight: float | None = None
    quality: dict[str, Any] | None = None
    error: str | None = None

    @property
    def shipped(self) -> bool:
        return self.status != "failed"


@dataclass
class ReleaseReport:
    """The result: one outcome per requested type, the reference, and how quality was measured."""

    out: Path
    outcomes: list[TypeOutcome]
    reference: dict[str, Any]
    quality: QualitySettings | None
    ollama_family: str | None = None
    stops: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)   # wall time of each stage of this run

    @property
    def failed(self) -> list[TypeOutcome]:
        return [o for o in self.outcomes if not o.shipped]

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.out),
            "reference": self.reference,
            "quality_settings": asdict(self.quality) if self.quality else None,
            "ollama_template": self.ollama_family,
            "stop_tokens": self.stops,
            "types": [asdict(o) for o in self.outcomes],
            "failed": [o.qtype for o in self.failed],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


class Progress:
    """The callbacks the pipeline reports through. This base class draws nothing (library use,
    tests); the CLI subclasses it to draw one rich bar per stage and type. ``key`` names a bar
    ("reference", "reference-pass", or a type name); ``total`` None means an unknown length."""

    def stage(self, key: str, description: str, total: float | None) -> None: ...
    def advance(self, key: str, amount: float = 1, detail: str = "") -> None: ...
    def done(self, key: str, detail: str = "") -> None: ...
    def note(self, message: str) -> None: ...


# ---- steps that tests may replace ---------------------------------------------------------------
def convert_reference(model_dir: Path, out: Path, outtype: str, *, threads: int | None, metadata: dict[str, Any],
                      on_progress: Callable[[str, int], None] | None) -> Path:
    """Convert the HF folder once to the lossless GGUF (convert's converter, atomic)."""
    from cvlocal.outputs.gguf import convert_checkpoint

    return convert_checkpoint(model_dir, out, outtype, threads=threads, force=True, metadata=metadata, on_progress=on_progress)


def build_file(reference: Path, out: Path, qtype: str, *, threads: int | None, quantize: Any = None) -> None:
    """Make one type from the reference (llama.cpp's quantizer, or convert's writer for direct types)."""
    from cvlocal.outputs.gguf import quantize_gguf

    quantize_gguf(reference, out, qtype, threads=threads, force=True, quantize=quantize)


# ---- input checks ------------------------------------------------------------------------------
def _prepare_output(out: Path, source: Source, force: bool) -> ReleaseState:
    """The state to continue from; refuses a folder that holds something else unless --force."""
    if out.exists() and not out.is_dir():
        raise UsageError("output exists and is not a folder", out, "Choose a folder path for the release.")
    if out.is_dir():
        previous = ReleaseState.load(out)
        if previous is not None and previous.source_id == source.identity and not force:
            return previous
        if previous is None and any(out.iterdir()):  # never written into, --force or not
            raise UsageError("output folder exists and is not a release folder; it is never written into, --force or not", out,
                             "Choose another folder (an empty or new one).")
        if not force and any(out.iterdir()):
            raise UsageError("output folder exists and was made from another source", out, "Choose another folder or pass --force to rebuild everything in it.")
        return ReleaseState(source_id=source.identity)
    check_output_path(out)
    out.mkdir()
    return ReleaseState(source_id=source.identity)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or err.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ---- the release ---------------------------------------------------------------------------------
class Release:
    """One run of ``cvlocal release`` (construct, then :meth:`run`)."""

    def __init__(self, req: ReleaseRequest, progress: Progress | None = None) -> None:
        self.req = req
        self.progress = progress or Progress()
        if req.ctx < 16:
            raise UsageError(f"--ctx {req.ctx} is too small", fix="Use a window of at least 16 tokens (llama.cpp's default is 512).")
        if req.chunks is not None and req.chunks < 1:
            raise UsageError(f"--chunks {req.chunks} must be at least 1")
        for value, flag in ((req.name, "--name"), (req.version, "--version")):
            if value is not None and (not value.strip() or "/" in value or "\\" in value):
                raise UsageError(f"{flag} {value!r} cannot be used in a file name", fix="Use letters, digits, dots and dashes.")
        self.source = open_source(req.source)
        self.texts = load_heldout(req.heldout)
        self.eval_lines = summary_markdown(load_eval_report(req.eval_report), req.eval_report.name) if req.eval_report else None
        self.out = Path(req.out)
        from cvlocal.imatrix.release import check_request, quantize_identity

        check_request(req)  # bad --imatrix / --tensor-type input before any work
        # files built with another matrix or other overrides are not this release's: --force rebuilds
        self.source.identity = quantize_identity(self.source.identity, req)
        self.state = _prepare_output(self.out, self.source, req.force)
        self.seconds: dict[str, float] = {}
        # The card's `language` is the model's: --language, else what the source says (model card, general.languages).
        self.languages = list(req.languages or self.source.provenance.languages)
        self.languages_from = ("as given with --language" if req.languages
                               else "from the source's metadata" if self.languages else None)
        self.quantize, self.imatrix_lines = None, None

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    # -- reference ----------------------------------------------------------------------------------
    def _reference(self) -> tuple[Path, str]:
        """The reference GGUF path and an id of its content (for quality-row reuse)."""
        src = self.source
        if src.is_gguf:
            return src.path, src.identity
        label = src.lossless.label
        hidden = self.out / f".reference-{label}.gguf"
        ref = self.state.reference
        if ref.get("label") == label and ref.get("sha256"):
            for candidate in (hidden, self.out / str(ref.get("file", ""))):
                if candidate.is_file() and candidate.name == ref.get("file"):
                    self.progress.stage("reference", f"check {candidate.name}", None)
                    if sha256_file(candidate) == ref["sha256"]:
                        self.progress.done("reference", "kept from the last run")
                        return candidate, ref["sha256"]
        metadata: dict[str, Any] = {}
        if self.req.name:  # the converter splits the name into base name, size label and fine-tune
            metadata[Keys.General.NAME] = self.req.name
        if self.req.version:
            metadata[Keys.General.VERSION] = self.req.version
        self.progress.stage("reference", f"convert to {label}", src.n_tensors or None)

        def on_progress(tensor_name: str, nbytes: int) -> None:
            self.progress.advance("reference", 1, detail=tensor_name)

        remove_path(hidden)
        with self._timed("convert"):
            convert_reference(src.path, hidden, src.lossless.name, threads=self.req.threads, metadata=metadata, on_progress=on_progress)
            digest = sha256_file(hidden)
        self.state.reference = {"file": hidden.name, "sha256": digest, "label": label}
        self.state.save(self.out)
        self.progress.done("reference", f"{hidden.name}")
        return hidden, digest

    # -- main ---------------------------------------------------------------------------------------
    def run(self) -> ReleaseReport:
        req, out, src = self.req, self.out, self.source
        _remove_leftovers(out)
        from cvlocal.imatrix.release import prepare_quantize

        self.quantize, self.imatrix_lines = prepare_quantize(req, src.path, out, self.progress)
        ref_path, ref_id = self._reference()
        # Names, the chat template, stop tokens and the windows come from the reference's vocabulary
        # and metadata (llama-cpp-python gives the scalar keys as strings).
        vocab = _open_vocab(ref_path)
        try:
            meta = dict(vocab.metadata)
            names = file_names(meta, [t.label for t in req.types], name=req.name, version=req.version)
            trained = str(meta.get(f"{meta.get('general.architecture')}.context_length", ""))
            n_ctx = min(req.ctx, int(trained)) if trained.isdigit() and int(trained) > 0 else req.ctx
            stops, template, match = _chat_facts(vocab)
            windows = scoring.make_windows(vocab, self.texts, n_ctx, req.chunks)
        finally:
            scoring.close_model(vocab)
        if n_ctx != req.ctx:
            self.progress.note(f"scoring window {n_ctx} tokens (the model's context length)")
        # ":se": rows measured before standard errors were recorded are measured again.
        quality_key = f"{ref_id}:{heldout_digest(self.texts)}:{n_ctx}:{req.chunks}:se"
        if not windows.languages:
            raise UsageError(f"the held-out text gives no window of {n_ctx} tokens", req.heldout,
                             "Pass a smaller --ctx or longer held-out text.")
        shipped_reference = names.get(src.lossless.label)
        settings = QualitySettings(
            reference_label=src.lossless.label,
            reference_file=shipped_reference or (ref_path.name if src.is_gguf else None),
            n_ctx=n_ctx, windows=len(windows.languages), tokens=windows.scored_tokens,
            languages=[lang for lang in self.texts if lang not in windows.skipped], skipped_languages=windows.skipped,
            tokens_per_language={lang: windows.languages.count(lang) * scoring.scored_count(n_ctx) for lang in self.texts
                                 if lang not in windows.skipped},
        )
        if not self.languages:
            self.progress.note("the source names no language (model card `language`, general.languages): "
                               "the card has no `language:` field; pass --language L,... to set it")
        for lang in windows.skipped:
            self.progress.note(f"held-out text '{lang}' is shorter than one window of {n_ctx} tokens; left out")

        ref_type = next((t for t in req.types if t.label == src.lossless.label), None)
        others = [t for t in req.types if t is not ref_type]
        intact = {t.name: self._intact(t, names[t.label]) for t in others}
        need_reference_pass = self.state.reference.get("quality_key") != quality_key or any(
            not (intact[t.name] and self._quality_current(t, quality_key)) for t in others)
        outcomes: dict[str, TypeOutcome] = {}
        reference_store: scoring.ReferenceStore | None = None
        try:
            if need_reference_pass:
                with self._timed("score reference"):
                    reference_store = self._reference_pass(ref_path, windows, quality_key)
            if ref_type is not None:
                outcomes[ref_type.name] = self._release_reference(ref_type, ref_path, names[ref_type.label])
                if not src.is_gguf and outcomes[ref_type.name].shipped:
                    ref_path = out / names[ref_type.label]   # the reference now lives under its final name
            for t in others:
                outcomes[t.name] = self._one_type(t, ref_path, names[t.label], intact[t.name], windows,
                                                  reference_store, quality_key)
        finally:
            if reference_store is not None:
                reference_store.remove()

        ordered = [outcomes[t.name] for t in req.types]
        report = ReleaseReport(out=out, outcomes=ordered, reference=dict(self.state.reference), quality=settings,
                               ollama_family=match.family.name if match else None, stops=stops, seconds=self.seconds)
        with self._timed("card, checksums, Modelfiles"):
            self._write_side_files(report, names, template, match)
        if not report.failed and src.kind == "hf":
            hidden = out / f".reference-{src.lossless.label}.gguf"
            if hidden.exists() and hidden != out / names.get(src.lossless.label, ""):
                remove_path(hidden)
        return report

    def _quality_current(self, t: OutType, key: str) -> bool:
        rec = self.state.types.get(t.name)
        return bool(rec and rec.built and rec.quality and rec.quality_key == key)

    def _intact(self, t: OutType, final_name: str) -> bool:
        """Whether the type's file from an earlier run is there, verified, and still hashes to its record."""
        rec = self.state.types.get(t.name)
        final = self.out / final_name
        if not (rec and rec.built and rec.file == final_name and final.is_file()):
            return False
        self.progress.stage(t.name, f"check {t.label}", None)
        return sha256_file(final) == rec.sha256

    def _reference_pass(self, ref_path: Path, windows: scoring.Windows, key: str) -> scoring.ReferenceStore:
        self.progress.stage("reference-pass", f"score {self.source.lossless.label} reference", len(windows.languages))
        llm = scoring.open_model(ref_path, windows.n_ctx, self.req.threads)
        try:
            scoring.verify(llm)
            size_bytes, n_params = scoring.model_size_info(llm)
            store = partial_path(self.out / "reference-probs.npy")  # owner PID in the name: see _remove_leftovers
            result = scoring.reference_pass(llm, windows, store, on_window=lambda: self.progress.advance("reference-pass"))
        except scoring.ModelLoadError as err:
            raise WorkError(f"the reference {ref_path.name} does not load: {_one_line(err)}") from err
        except scoring.VerificationError as err:
            raise WorkError(f"the reference {ref_path.name} does not work: {_one_line(err)}") from err
        finally:
            scoring.close_model(llm)
        self.state.reference.update(ppl=result.ppl, quality_key=key,
                                    bits_per_weight=8 * size_bytes / n_params if n_params else None)
        self.state.save(self.out)
        self.progress.done("reference-pass", f"PPL {result.ppl:.3f}")
        return result

    def _release_reference(self, t: OutType, ref_path: Path, final_name: str) -> TypeOutcome:
        """The requested type that is the reference itself: renamed (HF source) or copied (GGUF source)."""
        key = t.name
        final = self.out / final_name
        self.progress.stage(key, t.label, 1)
        try:
            if self.source.is_gguf:
                rec = self.state.types.get(key)
                if not (rec and rec.built and final.is_file() and sha256_file(final) == rec.sha256):
                    with atomic_output(final, force=True) as tmp:
                        shutil.copyfile(ref_path, tmp)
                    self.state.types[key] = TypeRecord(file=final.name, sha256=sha256_file(final), size=final.stat().st_size, verified=True)
            else:
                if ref_path != final:
                    if final.exists():
                        remove_path(final)
                    os.replace(ref_path, final)
                    self.state.reference["file"] = final.name
                    self.state.save(self.out)
                self.state.types[key] = TypeRecord(file=final.name, sha256=self.state.reference["sha256"], size=final.stat().st_size, verified=True)
            rec = self.state.types[key]
            rec.bits_per_weight = self.state.reference.get("bits_per_weight")
            rec.quality = {"reference": True, "ppl_base": self.state.reference.get("ppl")}
            rec.error = None
            self.state.save(self.out)
        except Exception as err:  # e.g. the disk filled up while copying; the other types go on
            return self._fail(t, final, err, remove=self.source.is_gguf)
        self.progress.done(key, "reference")
        return TypeOutcome(t.name, t.label, "reference", rec.file, rec.sha256, rec.size, rec.bits_per_weight, rec.quality)

    def _one_type(self, t: OutType, ref_path: Path, final_name: str, intact: bool, windows: scoring.Windows,
                  reference: scoring.ReferenceStore | None, key: str) -> TypeOutcome:
        name = t.name
        final = self.out / final_name
        rec = self.state.types.get(name)
        self.progress.stage(name, t.label, 2 + len(windows.languages))
        status = "reused"
        try:
            if not intact or rec is None:
                status = "built"
                with self._timed(f"{name} build+verify"):
                    rec = self._build_and_verify(t, ref_path, final)
            else:
                self.progress.advance(name, 2, "kept from the last run")
            if not (rec.quality and rec.quality_key == key):
                if reference is None:  # cannot happen: the pass runs whenever a row is missing
                    raise WorkError("no reference scores to compare with")
                with self._timed(f"{name} measure"):
                    llm = scoring.open_model(final, windows.n_ctx, self.req.threads)
                    try:
                        measurement = scoring.measure(llm, windows, reference, on_window=lambda: self.progress.advance(name))
                    finally:
                        scoring.close_model(llm)
                rec.quality, rec.quality_key = measurement.as_dict(), key
                self.state.save(self.out)
            else:
                self.progress.advance(name, len(windows.languages))
        except Exception as err:
            return self._fail(t, final, err)
        self.progress.done(name, f"KLD {rec.quality['mean_kld']:.2e}")
        return TypeOutcome(name, t.label, status, rec.file, rec.sha256, rec.size, rec.bits_per_weight, rec.quality)

    def _build_and_verify(self, t: OutType, ref_path: Path, final: Path) -> TypeRecord:
        """Quantize under a temporary name, load and evaluate it, hash it, then give it its final name."""
        name = t.name
        self.state.types[name] = rec = TypeRecord()
        self.state.save(self.out)
        with atomic_output(final, force=True) as tmp:
            # quantize only when given: build_file's plain signature is the seam tests replace
            build_file(ref_path, tmp, name, threads=self.req.threads, **({"quantize": self.quantize} if self.quantize else {}))
            self.progress.advance(name, 1, "built")
            llm = scoring.open_model(tmp, scoring.VERIFY_CTX, self.req.threads)
            try:
                scoring.verify(llm)
                size_bytes, n_params = scoring.model_size_info(llm)
            finally:
                scoring.close_model(llm)
            self.progress.advance(name, 1, "verified")
            digest = sha256_file(tmp)
            size = tmp.stat().st_size
        rec.file, rec.sha256, rec.size, rec.verified = final.name, digest, size, True
        rec.bits_per_weight = 8 * size_bytes / n_params if n_params else None
        self.state.save(self.out)
        return rec

    def _fail(self, t: OutType, final: Path, err: BaseException, remove: bool = True) -> TypeOutcome:
        """Record a failed type and take its file out of the release (unless it is the reference itself)."""
        message = _one_line(err)
        if remove:
            remove_path(final)
        self.state.types[t.name] = TypeRecord(error=message)
        self.state.save(self.out)
        self.progress.done(t.name, f"[red]failed[/red]: {message}")
        return TypeOutcome(t.name, t.label, "failed", error=message)

    # -- card, checksums, Modelfiles ------------------------------------------------------------------
    def _write_side_files(self, report: ReleaseReport, names: dict[str, str], template: str | None,
                          match: TemplateMatch | None) -> None:
        out = self.out
        shipped = [o for o in report.outcomes if o.shipped and o.file]
        title = _title(report, self.req)
        for o in report.outcomes:
            stem = (o.file or "").removesuffix(".gguf")
            if not o.shipped:
                continue
            with atomic_output(out / f"{stem}{MODELFILE_SUFFIX}", force=True) as tmp:
                tmp.write_text(modelfile_text(o.file, report.stops, match, f"{title} {o.label}"), encoding="utf-8")
        # A type that failed in this run may have shipped in an earlier one: its Modelfile must go too.
        for o in report.failed:
            remove_path(out / (names[o.label].removesuffix(".gguf") + MODELFILE_SUFFIX))
        write_sha256sums(out, {o.file: o.sha256 for o in shipped if o.sha256})
        card = CardInput(
            title=title,
            rows=[FileRow(o.qtype, o.label, o.file, o.size or 0, o.bits_per_weight, o.quality, o.status == "reference") for o in shipped],
            failed={o.label: o.error or "failed" for o in report.failed},
            quality=report.quality,
            provenance=self.source.provenance,
            chat_template=template,
            stops=report.stops,
            ollama_family=report.ollama_family,
            eval_summary=self.eval_lines,
            languages=self.languages,
            languages_from=self.languages_from,
            quantization=self.imatrix_lines,
        )
        with atomic_output(out / CARD_NAME, force=True) as tmp:
            tmp.write_text(render_card(card), encoding="utf-8")


# ---- helpers --------------------------------------------------------------------------------------
def _remove_leftovers(out: Path) -> None:
    """Temporary files of a run that was killed outright (SIGKILL, power loss) in this release folder.

    The reference's probability store is a partial too, so another release still writing into the
    same folder keeps its own.
    """
    remove_stale_partials(out)  # only those whose process is gone: another run may be writing its own


def _title(report: ReleaseReport, req: ReleaseRequest) -> str:
    first = next((o.file for o in report.outcomes if o.file), None)
    if req.name:
        return req.name
    if first:
        stem = first.removesuffix(".gguf")
        label = next((o.label for o in report.outcomes if o.file == first), "")
        return stem[: -len(label) - 1] if label and stem.endswith("-" + label) else stem
    return req.out.name


def _open_vocab(path: Path) -> Any:
    """The reference's vocabulary and metadata only (no weights): tokenizing, template, stop tokens."""
    from cvlocal.llama.loader import LoadError, open_llama

    # A vocabulary-only model has no training context, and llama.cpp warns about that on every
    # load; the capture keeps it off the progress bars and gives a failure its reason.
    try:
        return open_llama(path, vocab_only=True, verbose=False)
    except LoadError as err:
        detail = "; ".join([_one_line(err.cause), *err.problems[-2:]])
        raise WorkError(f"llama.cpp could not read the vocabulary of {path.name} ({detail})") from err.cause


def _chat_facts(vocab: Any) -> tuple[list[str], str | None, TemplateMatch | None]:
    """Stop-token texts, the chat template, and the Ollama family that reproduces it (if any)."""
    from cvlocal.chat.template import jinja_formatter, special_token_text, stop_token_ids

    ids = stop_token_ids(vocab)
    stops = [t for t in (special_token_text(vocab, i) for i in sorted(ids)) if t]
    template = vocab.metadata.get("tokenizer.chat_template") or None
    match = None
    if template:
        try:
            formatter = jinja_formatter(template, vocab, ids)
        except Exception:  # a template Jinja cannot even parse has no Ollama equivalent
            formatter = None
        bos = special_token_text(vocab, vocab.token_bos()) if vocab.token_bos() >= 0 else ""

        def render(messages: Any) -> str | None:
            try:
                text = formatter(messages=list(messages)).prompt  # type: ignore[misc]
            except Exception:
                return None
            return text[len(bos):] if bos and text.startswith(bos) else text

        if formatter is not None:
            match = match_family(render)
    return stops, template, match


def release(req: ReleaseRequest, progress: Progress | None = None) -> ReleaseReport:
    """Run a release; bad input raises UsageError/ConvertError before any work, failed types are in the report."""
    return Release(req, progress).run()


__all__ = ["ReleaseRequest", "ReleaseReport", "TypeOutcome", "Progress", "release", "DEFAULT_CTX", "DEFAULT_CHUNKS",
           "STATE_NAME", "SUMS_NAME", "CARD_NAME"]
