"""cvlocal: give a continually-pretrained LLM chat abilities with a chat vector, locally.

The CLI (``cvlocal.cli``) is a thin layer over functions in the modules of this package; the
GGUF converter lives in the separate ``convert`` library, which never imports cvlocal.
"""
__version__ = "0.1.0"
