"""``cvlocal demo``: the chat-vector effect, end to end, on the tiny models in ``assets/demo``.

- :mod:`cvlocal.demo.bundle`: find and check the bundled base / chat / CP triple and its prompts;
- :mod:`cvlocal.demo.scoring`: the four measures of a reply (ends its turn, language B, correct,
  exact), shared with ``assets/demo/train.py`` so training and demo count the same way;
- :mod:`cvlocal.demo.runner`: merge and convert to GGUF q8_0, chat with each model, score;
- :mod:`cvlocal.demo.report`: the side-by-side table, report.json and report.md.
"""
