"""The paper's own way to apply a chat vector, as the reference cvlocal is measured against.

Faithful to the method of the authors' repository (aqweteddy/ChatVector, ``extract_chat_vector.py``
then ``add_chat_vector.py``), written here from its description:

1. load base and chat whole with ``AutoModelForCausalLM.from_pretrained(..., dtype="auto")``
   (bf16 for bf16 checkpoints, as the paper loads them);
2. the chat vector is ``chat_param - base_param`` for every parameter, computed in the models'
   dtype (bf16), parameters paired in order;
3. load the CP model the same way and add ``ratio * vector`` to each parameter in place (bf16);
   embeddings (``embed_tokens``) and ``lm_head`` are added too unless ``--skip-embed`` is given,
   which the repository's ``--skip_embed`` offers for a CP with an extended vocabulary (our
   synthetic triple shares one vocabulary, so the default adds them, like cvlocal's
   ``--embeddings auto``);
4. ``save_pretrained(safe_serialization=True, max_shard_size="8GB")``, and the CP tokenizer with
   the chat model's chat template and eos token.

One deliberate difference, in the reference's favour: the repository runs the two steps as two
programs and passes the vector through a pickle (``torch.save`` / ``torch.load``) of a whole
model's size; here both steps run in one process and the vector stays in memory, so the reference
is timed without writing and reading that extra 2.2 GB. Its peak memory is the same as the
repository's extraction step (base, chat and vector held at once).
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The paper's chat-vector method (reference for the benchmark).")
    parser.add_argument("cp", type=Path)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--chat", type=Path, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--skip-embed", action="store_true", help="leave embed_tokens and lm_head as the CP's")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Step 1: extract (extract_chat_vector.py).
    base_model = AutoModelForCausalLM.from_pretrained(args.base, dtype="auto")
    chat_model = AutoModelForCausalLM.from_pretrained(args.chat, dtype="auto")
    vector = {}
    for (name, p_base), (_, p_chat) in zip(base_model.named_parameters(), chat_model.named_parameters()):
        vector[name] = p_chat.data - p_base.data
    del base_model, chat_model
    gc.collect()

    # Step 2: add (add_chat_vector.py).
    cp_model = AutoModelForCausalLM.from_pretrained(args.cp, dtype="auto")
    for name, param in cp_model.named_parameters():
        if ("embed_tokens" in name or "lm_head" in name) and args.skip_embed:
            continue
        param.data += args.ratio * vector[name]
    del vector
    gc.collect()

    tokenizer = AutoTokenizer.from_pretrained(args.cp)
    chat_tokenizer = AutoTokenizer.from_pretrained(args.chat)
    if chat_tokenizer.chat_template is not None:
        tokenizer.chat_template = chat_tokenizer.chat_template
        tokenizer.eos_token = chat_tokenizer.eos_token
    cp_model.save_pretrained(args.output, safe_serialization=True, max_shard_size="8GB")
    tokenizer.save_pretrained(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
