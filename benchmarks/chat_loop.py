"""A bare llama-cpp-python chat loop: the baseline for ``cvlocal chat --script``'s speed.

``python chat_loop.py MODEL.gguf SCRIPT.txt --max-tokens N --threads T --ctx C`` plays the same
user turns (one per line) the way a short program written straight on llama-cpp-python would:
format the conversation with the GGUF's own chat template (llama-cpp-python's Jinja formatter),
tokenize, and iterate ``Llama.generate`` greedily until end of sequence or ``N`` tokens.
``generate`` keeps the KV cache of the prefix the new prompt shares with the last one, so later
turns evaluate only their new tokens, as cvlocal's session does.

It prints one JSON document: per turn the time to first token, the generation rate (tokens per
second after the first one, the same definition cvlocal reports) and the token counts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare llama-cpp-python chat loop")
    parser.add_argument("model")
    parser.add_argument("script")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args(argv)

    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads,
                seed=0, verbose=False)
    load_s = time.perf_counter() - t0
    eos = llm.token_eos()
    text = lambda ids: llm.detokenize(ids, special=True).decode("utf-8", "replace")  # noqa: E731
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=text([eos]),
                                    bos_token=text([llm.token_bos()]))
    messages: list[dict[str, str]] = []
    turns = []
    with open(args.script, encoding="utf-8") as f:
        users = [line.strip() for line in f if line.strip()]
    for user in users:
        messages.append({"role": "user", "content": user})
        prompt = formatter(messages=messages).prompt
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        out: list[int] = []
        sampled = 0
        t_start = time.perf_counter()
        t_first = t_last = None
        for token in llm.generate(tokens, top_k=40, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            sampled += 1
            t_last = time.perf_counter()
            if t_first is None:
                t_first = t_last
            if token == eos:
                break
            out.append(token)
            if len(out) >= args.max_tokens:
                break
        reply = llm.detokenize(out).decode("utf-8", "replace").strip()
        messages.append({"role": "assistant", "content": reply})
        gen_time = (t_last - t_first) if t_first is not None and t_last is not None else 0.0
        turns.append({
            "prompt_tokens": len(tokens),
            "completion_tokens": len(out),
            "ttft_s": (t_first - t_start) if t_first is not None else None,
            "gen_rate": (sampled - 1) / gen_time if gen_time > 0 else 0.0,
        })
    print(json.dumps({"load_s": load_s, "turns": turns}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
