"""Chat-vector arithmetic: extract ``chat - base``, merge ``cp + sum(r_i * v_i)``, tensor by tensor.

- ``device``: choosing where the arithmetic runs.
- ``tokens``: what the tokenizers say (vocabularies, the chat template's special tokens).
- ``vector_folder``: the on-disk chat-vector format (``chat_vector.json`` and shards).
- ``sources``: the deltas a merge adds, from a vector folder or from base/chat directly.
- ``compat``: the compatibility check that lists every mismatch before any work.
- ``pipeline``: the streaming reader / compute / writer loop.
- ``hf_output``: writing a sharded HF folder with its config, tokenizer and card.
- ``extract`` and ``merge``: the two operations the CLI exposes.
"""
