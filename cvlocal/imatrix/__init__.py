"""Importance matrices computed on the model's own languages.

llama.cpp's very-low-bit types (IQ1/IQ2/IQ3_XXS, Q2_K_S) need an importance matrix: for every weight
matrix, the sum of squared input activations per input channel over some calibration text. The usual
recipe (``llama-imatrix`` on an English text) weights the wrong channels for a Traditional Chinese CP
model, so cvlocal calibrates by default on the held-out texts releases ship, in the languages the
model's tokenizer was built for.

- ``calibration``: which texts (``--text`` files, or the held-out text of ``--lang``), and the
  default languages read from the tokenizer.
- ``collect``: the matrix itself, with torch forward hooks on the HF model, on windows cut exactly as
  llama-imatrix cuts them. The file format lives in ``convert.imatrix_file``.
- ``auto``: ``--imatrix auto`` for convert, merge and release (compute from the source, keep the file
  beside the outputs).
"""
from __future__ import annotations

__all__ = ["calibration", "collect", "auto"]
