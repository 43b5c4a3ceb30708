"""LoRA adapters in the batched path: the decoder's context, ``eval --parallel``, ``serve --parallel``.

Truth is llama-cpp-python's own LoRA loader (``Llama(lora_path=..., lora_scale=...)``, greedy, a
fresh state per prompt) for the decoder and the server, and the one-at-a-time ``eval`` (``--parallel
1``, ``Llama`` with the adapters attached) for the records. At f16 and q8_0 the batched logits are
the one-at-a-time logits, so greedy replies must be identical, token for token.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

PROMPTS = ["Hello there, how are", "The cat sat on the", "一二三四五", "Why is the sky", "1 2 3 4 5 6",
           "Once upon a time"]
LIMITS = [12, 7, 9, 15, 5, 10]
# Scales per request: None is the model's own (the spec's 0.5); the others make the decoder group
# requests and switch the context's scales between groups.
SCALES = [None, (1.0,), None, (0.0,), (1.0,), None]


@pytest.fixture(scope="module")
def lora_setup(tiny_family, tmp_path_factory):
    """A llama2 CP at f16 and q8_0 and its chat vector as a rank-32 f16 GGUF adapter."""
    from convert import write_gguf
    from cvlocal.vector.lora_extract import extract_lora

    family = tiny_family("llama2")
    root = tmp_path_factory.mktemp("engine-adapters")
    cps = {t: write_gguf(family.cp, root / f"cp-{t}.gguf", t) for t in ("f16", "q8_0")}
    adapter = root / "chat.gguf"
    extract_lora(family.base, family.chat, adapter, rank=32, outtype="f16", quiet=True)
    return {"cp": cps, "adapter": adapter, "root": root}


def _reference_ids(model: Path, adapter: Path, scale: float, prompts, limits) -> list[list[int]]:
    """Greedy token ids per prompt from llama-cpp-python's own loader at ``scale``, fresh state each."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, seed=0,
                lora_path=str(adapter), lora_scale=scale)
    out = []
    try:
        for prompt, limit in zip(prompts, limits):
            llm.reset()
            ids = []
            tokens = llm.generate(llm.tokenize(prompt.encode("utf-8")), top_k=40, top_p=1.0, min_p=0.0,
                                  repeat_penalty=1.0, temp=0.0)
            for token in tokens:
                if token == llm.token_eos() or len(ids) >= limit:
                    break
                ids.append(int(token))
            tokens.close()
            out.append(ids)
    finally:
        llm.close()
    return out


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_batched_decoder_with_an_adapter_equals_llama_cpp_pythons_lora(lora_setup, outtype):
    from cvlocal.llama import BatchedDecoder, Model, Request
    from cvlocal.llama.adapters import AdapterSpec

    cp, adapter = lora_setup["cp"][outtype], lora_setup["adapter"]
    model = Model(cp, adapters=[AdapterSpec(adapter, 0.5)])
    try:
        requests = [Request(model.vocab.tokenize(p.encode("utf-8")), n, tag=i, scales=s)
                    for i, (p, n, s) in enumerate(zip(PROMPTS, LIMITS, SCALES))]
        with BatchedDecoder(model, n_seq=4, n_ctx_seq=256, threads=1) as decoder:
            got = decoder.run(requests)
            assert decoder.scales == (0.5,)  # the last group ran at the model's own scale
            assert all(decoder.seq_pos_max(s) == -1 for s in range(4))
        bad = Request(model.vocab.tokenize(b"x"), 3, scales=(1.0, 1.0))
        with BatchedDecoder(model, n_seq=2, n_ctx_seq=64, threads=1) as decoder:
            refused = decoder.run([bad])[0]
        assert refused.finish_reason == "refused" and "2 adapter scales" in refused.error
    finally:
        model.close()
    for scale in (0.5, 1.0, 0.0):
        picked = [i for i, s in enumerate(SCALES) if (s or (0.5,))[0] == scale]
        truth = _reference_ids(cp, adapter, scale, [PROMPTS[i] for i in picked], [LIMITS[i] for i in picked])
        assert [got[i].token_ids for i in picked] == truth, f"scale {scale}"
    # the adapter matters on this model: the same prompt at 0 and at 1 differs
    assert _reference_ids(cp, adapter, 0.0, PROMPTS[:2], [12, 12]) != _reference_ids(cp, adapter, 1.0, PROMPTS[:2], [12, 12])


def _records(out: Path) -> dict[str, list]:
    """Item key -> outputs, from the generation cache (the records, not our report)."""
    records = {}
    for path in (out / "cache").glob("*.jsonl"):
        if not path.name.endswith(".scores.jsonl"):  # generations (scores have a second suffix)
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                records[record["key"]] = [(o["text"], o["finish_reason"]) for o in record["outputs"]]
    return records


def test_eval_parallel_takes_an_adapter_spec(lora_setup, tmp_path):
    """``eval --parallel 4 CP+ADAPTER@0.5`` writes the records ``--parallel 1`` writes (q8_0 CP).

    Greedy suites only: with an adapter the LoRA product runs through kernels whose rounding
    depends on how many sequences share the batch, so a *sampled* reply (toxicity) may take
    another token where two candidates are within that rounding; greedy replies must not differ."""
    from cvlocal.evaluation.generate import GenerationSettings
    from cvlocal.evaluation.runner import EvalRequest, run_evaluation

    spec = Path(f"{lora_setup['cp']['q8_0']}+{lora_setup['adapter']}@0.5")

    def run(parallel: int, out: Path) -> dict:
        return run_evaluation(EvalRequest(models=[spec], out=out, suites=["instructions", "dialogue"], langs=["en"],
                                          generation=GenerationSettings.create(samples=2, max_tokens=10, seed=3, ctx=512),
                                          limit=2, threads=1, quiet=True, parallel=parallel))

    one, many = run(1, tmp_path / "one"), run(4, tmp_path / "many")
    sequential, batched = _records(tmp_path / "one"), _records(tmp_path / "many")
    assert len(sequential) == 4 and sequential == batched
    assert many["models"][0]["generated_this_run"] == 4
    assert one["models"][0]["results"] == many["models"][0]["results"]


def test_serve_parallel_with_an_adapter_and_per_request_lora(lora_setup, tmp_path_factory):
    """``serve --parallel 4 --adapter A:0.5``: concurrent requests at the server-wide scale and with
    llama-server's ``"lora"`` field each get llama-cpp-python's own LoRA reply at that scale."""
    pytest.importorskip("fastapi")
    import urllib.request

    from tests.test_serve import _serve

    cp, adapter = lora_setup["cp"]["q8_0"], lora_setup["adapter"]
    for client, _model, _models, port in _serve(cp, tmp_path_factory, "--parallel", "4",
                                                "--adapter", f"{adapter}:0.5"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lora-adapters", timeout=30) as response:
            assert json.loads(response.read()) == [{"id": 0, "path": str(adapter), "scale": 0.5}]
        replies: dict[int, list] = {}
        start = threading.Barrier(len(PROMPTS))

        def ask(i: int) -> None:
            extra = {} if SCALES[i] is None else {"lora": [{"id": 0, "scale": SCALES[i][0]}]}
            start.wait()
            reply = client.completions.create(model="x", prompt=PROMPTS[i], max_tokens=LIMITS[i], temperature=0,
                                              top_p=1.0, extra_body={"top_k": 40, "min_p": 0.0, "repeat_penalty": 1.0,
                                                                     **extra}, logprobs=None)
            replies[i] = [reply.choices[0].text, reply.usage.completion_tokens]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(replies) == list(range(len(PROMPTS)))
        with pytest.raises(Exception, match="id 3"):
            client.completions.create(model="x", prompt="Hi", max_tokens=2, extra_body={"lora": [{"id": 3, "scale": 1}]})
    from llama_cpp import Llama

    for scale in (0.5, 1.0, 0.0):
        picked = [i for i, s in enumerate(SCALES) if (s or (0.5,))[0] == scale]
        truth = _reference_ids(cp, adapter, scale, [PROMPTS[i] for i in picked], [LIMITS[i] for i in picked])
        vocab = Llama(model_path=str(cp), vocab_only=True, verbose=False)
        try:
            expected = [vocab.detokenize(ids).decode("utf-8", errors="replace") for ids in truth]
        finally:
            vocab.close()
        # a random tiny model emits stray byte tokens: compare the text apart from where bytes were dropped
        assert [replies[i][0].replace("\ufffd", "") for i in picked] == [e.replace("\ufffd", "") for e in expected], \
            f"scale {scale}"
        assert [replies[i][1] for i in picked] == [len(ids) for ids in truth]
