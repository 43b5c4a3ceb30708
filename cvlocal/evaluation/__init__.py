"""Offline evaluation of chat models: toxicity, safety, instruction following, dialogue quality.

``cvlocal eval`` (:mod:`cvlocal.commands.eval`) runs the suites in ``assets/eval`` through
:func:`cvlocal.evaluation.runner.run_evaluation`. The chat REPL's ``/check`` uses
:func:`check_reply`. Importing this package stays light: no torch, transformers or llama_cpp
(the classifier, guard and judge load them only when used).
"""
from __future__ import annotations

from cvlocal.evaluation.check import check_reply

__all__ = ["check_reply"]
