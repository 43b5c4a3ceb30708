"""``cvlocal eval --parallel N`` against the one-at-a-time path: the same records, cached and resumable.

At q8_0 the batched logits are the one-at-a-time logits, so every generated text of every suite
(sampled toxicity continuations with their seeds, greedy chat replies, multi-turn dialogues) must
be identical to what ``--parallel 1`` (today's ``Llama`` path) writes.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cvlocal.evaluation.generate import GenerationSettings
from cvlocal.evaluation.parallel import batching_pays, choose_parallel
from cvlocal.evaluation.runner import EvalRequest, run_evaluation

SUITES = ["toxicity", "safety", "instructions", "dialogue"]


def _texts(out) -> dict[str, list[tuple[str, str]]]:
    """Item key -> [(text, finish reason)] from the generation cache (not from our own report)."""
    records = {}
    for path in (out / "cache").glob("*.jsonl"):
        if path.name.count(".") == 1:  # generations; scores and verdicts have a second suffix
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                records[record["key"]] = [(o["text"], o["finish_reason"]) for o in record["outputs"]]
    return records


def _request(model, out, parallel):
    return EvalRequest(models=[model], out=out, suites=SUITES, langs=["en", "zh-Hant"],
                       generation=GenerationSettings.create(samples=2, max_tokens=12, seed=3, ctx=1024),
                       limit=2, threads=1, quiet=True, parallel=parallel)


def test_parallel_eval_writes_the_one_at_a_time_records(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    model = tiny_gguf("llama3", "q8_0")
    one = run_evaluation(_request(model, tmp_path / "one", 1))
    many = run_evaluation(_request(model, tmp_path / "many", 4))
    sequential, batched = _texts(tmp_path / "one"), _texts(tmp_path / "many")
    assert len(sequential) == 16 and sequential == batched
    assert many["models"][0]["generated_this_run"] == 16
    again = run_evaluation(_request(model, tmp_path / "many", 4))  # resume: everything is cached
    assert again["models"][0]["generated_this_run"] == 0
    assert one["models"][0]["results"] == many["models"][0]["results"]


def test_parallel_must_be_positive_on_the_command_line(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    proc = subprocess.run([sys.executable, "-m", "cvlocal", "eval", str(fake), "--parallel", "0", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--parallel" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_default_parallel_fits_a_quarter_of_free_memory():
    per_token = 2 * 2 * 22 * 4 * 64  # TinyLlama-1.1B: 22 layers, 4 KV heads of 64, f16 K and V
    per_seq = per_token * 4096  # 92,274,688 bytes at --ctx 4096
    assert choose_parallel(per_token, 4096, memory=8 * per_seq) == 2
    assert choose_parallel(per_token, 4096, memory=4 * 3 * per_seq + 1) == 3
    assert choose_parallel(per_token, 4096, memory=per_seq) == 1
    assert choose_parallel(per_token, 4096, memory=1 << 40) == 8
    assert choose_parallel(per_token, 4096, memory=1 << 40, model_bytes=1_169_805_728) == 8  # the 1.1B q8_0 GGUF


def test_default_parallel_is_one_for_a_model_that_batching_slows_down(tmp_path):
    """The demo's chat model (1.3 MB at q8_0) measured 0.57x with 8 sequences: the default is one."""
    from cvlocal.demo.bundle import load_bundle
    from cvlocal.llama.model import Model
    from cvlocal.outputs.gguf import convert_checkpoint

    path = tmp_path / "demo-chat-q8_0.gguf"
    convert_checkpoint(load_bundle().chat, path, outtype="q8_0", threads=2)
    model = Model(path)
    try:
        size = model.weight_bytes()
        # llama.cpp's own count: the tensor data of the file, well under the file (its header holds the vocabulary)
        assert 0 < size < path.stat().st_size
        assert choose_parallel(model.kv_bytes_per_token(), 512, memory=1 << 40, model_bytes=size) == 1
        assert not batching_pays(path)  # decided from the file before loading, so the model is loaded once
    finally:
        model.close()
