"""convert: Hugging Face checkpoints to GGUF, tensor by tensor.

A library with a small, flat API (no CLI, no rich, no import of cvlocal):

- ``convert.checkpoint``: read HF folders (config, safetensors shards and index, ``.bin`` through
  ``torch.load(weights_only=True)``) one tensor at a time.
- ``convert.errors``: ``ConvertError``, the one exception bad input raises.
- ``convert.convert_model``: ``convert_checkpoint``, ``write_gguf`` / ``write_ggufs`` (from a folder
  or a merge's tensor stream), ``quantize_gguf``; each writes to the path it is given (the caller
  may pass how an output is opened, e.g. atomically: cvlocal's output policy lives in cvlocal).
- ``convert.tokenizer_facts``: the one reader of a folder's tokenizer files (vocabulary, special
  tokens, end of turn, chat templates, generation config); ``convert.chat_render`` renders
  templates as transformers does.
- ``convert.quant_tables``: ``OUTTYPES``, the output types by name.
- ``convert.llama_quantize``: llama.cpp's quantizer in a child process (interruptible), with
  ``QuantizeOptions`` (importance matrix, per-tensor types, requantize).
- ``convert.imatrix_file``: llama.cpp's imatrix files (GGUF and legacy .dat), read, written and
  checked against a model.
"""
from convert.errors import ConvertError

__all__ = ["ConvertError"]

# The converter's entry points import torch and numpy; they are loaded on first use so that
# ``import convert.errors`` (every CLI start) stays cheap.
_LAZY = {
    "convert_checkpoint": "convert.convert_model",
    "write_gguf": "convert.convert_model",
    "write_ggufs": "convert.convert_model",
    "quantize_gguf": "convert.convert_model",
    "OUTTYPES": "convert.quant_tables",
    "QuantizeError": "convert.llama_quantize",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convert' has no attribute {name!r}")
