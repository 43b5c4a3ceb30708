"""GGUF releases: several quantizations of one model, a quality table, a card, checksums and Modelfiles.

    from cvlocal.release import ReleaseRequest, release
    from cvlocal.outputs.types import parse_outtypes
    report = release(ReleaseRequest(source=Path("merged"), out=Path("rel"), types=parse_outtypes("q4_k_m,q8_0")))
    report.outcomes        # one TypeOutcome per type: status, file, sha256, size, bits/weight, quality
    report.failed          # types left out, with the reason

Modules, one job each: ``source`` (what a release is made from, checked up front, and its
provenance), ``naming`` (file names), ``heldout`` (the multilingual text), ``quality`` (the
llama-perplexity definitions of KLD, top-1 and PPL, pure numpy), ``scoring`` (running GGUFs over
the windows with llama-cpp-python), ``ollama`` (Modelfiles and exact TEMPLATE detection),
``card`` (README.md), ``eval_report`` (the evaluation summary), ``checksums``, ``state``
(resume) and ``pipeline`` (the order of work).
"""
from typing import Any

__all__ = ["Progress", "ReleaseReport", "ReleaseRequest", "TypeOutcome", "release"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI imports this package to build its parser, and the pipeline
    # pulls in torch and the converter, which ``cvlocal --help`` should not pay for.
    if name in __all__:
        from cvlocal.release import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
