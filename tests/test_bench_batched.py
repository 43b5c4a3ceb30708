"""benchmarks/batched.py's rigour: comparisons alternate, rows are medians, ratios are medians of
per-round ratios (the runs themselves are replaced by fakes with known times; no model runs)."""
from __future__ import annotations

from pathlib import Path

from benchmarks import batched


def test_eval_rounds_take_turns_and_ratios_are_medians_of_rounds(monkeypatch):
    order: list[str] = []
    # per round: parallel N, parallel 1, bare seconds; round 2 is "loaded" (everything 3x slower)
    times = iter([1.0, 2.0, 4.0, 3.0, 6.0, 12.0, 1.0, 3.0, 3.0])

    def fake_cvlocal(path, items, settings, parallel, threads):
        order.append(f"p{parallel}")
        return {"seconds": next(times), "tokens": 100, "records": {}}

    def fake_bare(path, items, settings, threads):
        order.append("bare")
        return {"seconds": next(times), "tokens": 100}

    monkeypatch.setattr(batched, "run_cvlocal", fake_cvlocal)
    monkeypatch.setattr(batched, "run_bare", fake_bare)
    fig = batched.bench_type(Path("m.gguf"), [object()] * 6, None, 8, 1, repeats=3)
    assert order == ["p8", "p1", "bare"] * 3
    assert fig["speedup_vs_parallel_1"] == {"median": 2.0, "min": 2.0, "max": 3.0}  # 2, 2, 3
    assert fig["speedup_vs_bare"] == {"median": 4.0, "min": 3.0, "max": 4.0}        # 4, 4, 3
    row = fig["rows"]["parallel 8"]
    assert row["seconds"] == 1.0 and row["runs"] == [1.0, 3.0, 1.0] and row["items_per_minute"] == 360.0
    assert row["tokens_per_second"] == {"median": 100.0, "min": 33.3, "max": 100.0}


def test_server_rounds_alternate_after_both_are_loaded(monkeypatch):
    events: list[str] = []

    class Proc:
        def terminate(self):
            events.append("stop")

        def wait(self, timeout=None):
            return 0

    def fake_start(command, port, log=None):
        name = "ours" if "cvlocal" in command else "theirs"
        events.append(f"start {name}")
        return Proc(), name

    rates = {"ours": iter([300.0, 100.0, 280.0]), "theirs": iter([100.0, 100.0, 140.0])}

    def fake_clients(client, model, max_tokens, number):
        events.append(client)
        numbers.append(number)
        rate = next(rates[client])
        return {"wall_seconds": 512 / rate, "aggregate_chunks_per_second": rate, "ttft_p50": 0.1, "ttft_p95": 0.2,
                "latency_p50": 1.0, "latency_p95": 2.0, "failed": 0, "ttft_max": 0.3, "latency_min": 0.5,
                "replies": {q: ("a" if client == "ours" and i == 0 else "b\ufffd" if client == "ours" and i == 1 else "b")
                            for i, q in enumerate(batched.SERVE_QUESTIONS)}}

    monkeypatch.setattr(batched, "start_server", fake_start)
    numbers: list[int] = []
    monkeypatch.setattr(batched, "_clients", fake_clients)
    out = batched.bench_serve(Path("m.gguf"), 8, 1, 2048, 64, repeats=3)
    assert events == ["start ours", "start theirs", "ours", "theirs", "ours", "theirs", "ours", "theirs", "stop", "stop"]
    assert numbers == [1, 1, 2, 2, 3, 3]  # each round asks its own questions, the same on both servers
    assert out["ratio"] == {"median": 2.0, "min": 1.0, "max": 3.0}  # 3, 1, 2: one loaded round does not decide it
    mine = out["servers"]["cvlocal serve --parallel 8"]
    assert mine["aggregate_chunks_per_second"] == {"median": 280.0, "min": 100.0, "max": 300.0}
    assert mine["failed"] == 0 and mine["waits"] == 0 and mine["rounds"] == 3
    n = len(batched.SERVE_QUESTIONS)
    assert out["identical_replies"] == {"same": n - 2, "outputs": n}
    assert out["identical_apart_from_replacement"] == {"same": n - 1, "outputs": n}  # "b\ufffd" is "b" with a cut character


def test_llama_server_joins_every_round_with_our_own_server_settings(monkeypatch):
    commands: dict[str, list[str]] = {}
    order: list[str] = []

    class Proc:
        def terminate(self):
            pass

        def wait(self, timeout=None):
            return 0

    def fake_start(command, port, log=None):
        name = "ours" if "cvlocal" in command else "upper" if command[0].endswith("llama-server") else "theirs"
        commands[name] = command
        return Proc(), name

    rates = {"ours": 200.0, "theirs": 100.0, "upper": 400.0}

    def fake_clients(client, model, max_tokens, number):
        order.append(client)
        return {"wall_seconds": 1.0, "aggregate_chunks_per_second": rates[client], "ttft_p50": 0.1, "ttft_p95": 0.2,
                "latency_p50": 1.0, "latency_p95": 2.0, "failed": 0, "ttft_max": 0.3, "latency_min": 0.5,
                "replies": {q: "x" for q in batched.SERVE_QUESTIONS}}

    monkeypatch.setattr(batched, "start_server", fake_start)
    monkeypatch.setattr(batched, "_clients", fake_clients)
    out = batched.bench_serve(Path("m.gguf"), 8, 2, 2048, 64, repeats=2, reference=Path("/x/llama-server"))
    assert order == ["ours", "theirs", "upper"] * 2
    upper = commands["upper"]
    # 8 slots of 2048 tokens, one KV stream each, flash attention off: the settings cvlocal's decoder uses
    assert upper[upper.index("-c") + 1] == "16384" and upper[upper.index("-np") + 1] == "8"
    assert upper[upper.index("-fa") + 1] == "off" and "--no-kv-unified" in upper
    assert upper[upper.index("--host") + 1] == "127.0.0.1"
    assert out["ratio"]["median"] == 2.0 and out["share_of_llama_server"]["median"] == 0.5
    assert batched.LLAMA_SERVER in out["servers"]
