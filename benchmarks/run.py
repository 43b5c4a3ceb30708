"""cvlocal against its peers, side by side in one run: ``make bench`` (``python benchmarks/run.py``).

Every figure is measured for cvlocal and for its peers on the same inputs, in the same run, as the
median of ``--repeats`` runs (the tools take turns, so a slow minute on a shared machine does not
land on one tool only), with the page cache warm for the inputs and dirty pages flushed before
each run. Sections (``--only``):

* ``merge``: one-shot ``cvlocal merge CP --base B --chat C`` against the paper's reference method
  (``reference_chatvector.py``), mergekit's ``task_arithmetic`` and the I/O floor.
* ``convert``: ``cvlocal convert`` against llama.cpp's ``convert_hf_to_gguf.py``, f16 and q8_0.
* ``e2e``: from the three HF folders to a q4_k_m GGUF: cvlocal's one pass against the chain
  reference merge, llama.cpp convert (f16), llama.cpp quantize.
* ``equality``: merged tensors against the exact arithmetic and across tools; GGUF tensor data of
  cvlocal and llama.cpp byte for byte (f16, q8_0).
* ``chat``: generation rate of ``cvlocal chat --script`` against a bare llama-cpp-python loop, and
  time to first token at turn 1 and turn 10.
* ``eval``: items per minute of each ``cvlocal eval`` suite (``--limit``).
* ``batched``: ``cvlocal eval --parallel 8`` against ``--parallel 1`` and a bare llama-cpp-python loop
  (items per minute, generated tokens/s, identical greedy replies) at q8_0 and q4_k_m, and ``cvlocal serve
  --parallel 8`` against llama-cpp-python's own server with 8 concurrent streaming clients (``batched.py``).
* ``release``: ``cvlocal release --types q4_k_m,q8_0`` against llama.cpp convert + two quantize runs.
* ``imatrix``: ``cvlocal imatrix`` against llama.cpp's own ``llama-imatrix`` (Pearson and median
  relative error per matrix), and ``cvlocal quantize --imatrix`` against ``llama-quantize --imatrix``
  from the same matrix (iq2_xs, q4_k_m); the two tools are built once into ``.build/llama-tools``
  (``imatrix_parity.py``, ``llama_tools.py``; a tiny model, whatever ``--size``), and the matrix
  computation rate (tokens/s) of both tools on the same GGUF, tiny and (unless ``--size tiny``) the
  size's chat model.
* ``sweep``: ``cvlocal sweep`` over five ratios on the demo models (``assets/demo``, whatever ``--size``)
  against the same seven GGUFs and evaluations done by hand, one ``cvlocal merge -o x.gguf`` (or
  ``convert`` for the CP and chat references) and one ``cvlocal eval`` per model; wall time and
  whether every number in ``sweep.json`` equals the ``cvlocal eval`` one (``sweep.py``).
* ``imatrix_kl``: ``imatrix_kl.py`` (KL against f16 by language, matrices on different languages) on
  the demo recipe trained at hidden 256 once into the cache (~17 min); the shipped demo CP at tiny.
* ``adapter``: ``cvlocal extract BASE CHAT -o x.gguf`` (the chat vector as a GGUF LoRA adapter) at rank 64
  and ``auto`` against mergekit's ``mergekit-extract-lora`` + llama.cpp's ``convert_lora_to_gguf.py``,
  and the generation rate of CP + adapter against the merged GGUF (both f16).
* ``scaling``: how time and peak anonymous memory grow with the input (``scaling.py``): merge to an HF
  folder, one-pass merge to an f16 GGUF and convert (f16) at the small, full (1.1B) and 8b-slice sizes
  (``--scaling-sizes``; tiny and small for smoke sizes), one run each, with ``SCALING.md``/``.json`` and the
  plot ``scaling.png``/``.svg`` beside the results.

A section whose cvlocal command does not exist (yet) is reported as "not available"; a tool that
fails is reported with its exit status and last error line; neither stops the run. Results go to
``RESULTS.md`` and ``RESULTS.json``: in ``benchmarks/`` for the full size, in the cache for the
smaller smoke sizes (``--out`` overrides); sections not re-run are kept from the previous file.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import compare, harness, scaling, synthetic  # noqa: E402
from benchmarks.peers import Peers, Unavailable  # noqa: E402

SECTIONS = ("merge", "convert", "e2e", "equality", "chat", "eval", "batched", "release", "imatrix", "adapter", "imatrix_kl",
            "sweep", "scaling")
UNTIMED = ("equality", "imatrix", "imatrix_kl")  # sections of comparisons, not of timings
MB = 1e6
GB = 1e9
ANON_TARGET = 1 * GB
ADAPTER_ANON_TARGET = 1.5 * GB
ADAPTER_RANK = 64
BATCHED_TYPES = ("q8_0", "q4_k_m")
EVAL_SUITES = ("toxicity", "safety", "instructions", "dialogue")
CHAT_TURNS = (
    "Tell me about the weather today.",
    "請用繁體中文介紹台灣的夜市。",
    "What did I ask you first?",
    "Write three short lines about the sea.",
    "한국어로 인사해 주세요.",
    "日本語で自己紹介をしてください。",
    "Summarise our conversation so far.",
    "Give me a list of five fruits.",
    "为什么天空是蓝色的？",
    "Thank you. Say goodbye in one sentence.",
)

Command = tuple[list[str], dict[str, str]]


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One tool in one section: its median figure, or why there is none."""

    tool: str
    status: str = "ok"  # ok | failed | not available
    reason: str = ""
    seconds: float | None = None
    peak_rss: int | None = None
    peak_anon: int | None = None
    runs: list[dict] = field(default_factory=list)
    metrics: dict[str, float | int | str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Target:
    text: str
    value: str
    met: bool | None  # None: could not be measured

    def as_dict(self) -> dict:
        return {"text": self.text, "value": self.value, "met": self.met}


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    columns: list[tuple[str, str]] = field(default_factory=list)  # extra metric columns (header, key)
    relative_to: str | None = "cvlocal"
    started: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))

    def row(self, tool: str) -> Row | None:
        return next((r for r in self.rows if r.tool == tool), None)

    def as_dict(self) -> dict:
        return {
            "title": self.title,
            "measured_at": self.started,
            "relative_to": self.relative_to,
            "columns": self.columns,
            "rows": [r.__dict__ for r in self.rows],
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
        }


def ratio_target(text: str, numerator: Row | None, denominator: Row | None, at_least: float | None = None,
                 at_most: float | None = None, key: str = "seconds") -> Target:
    """A target on the ratio of two rows' figures (e.g. mergekit time / cvlocal time >= 2)."""
    if not (numerator and denominator and numerator.ok and denominator.ok):
        missing = [r.tool for r in (numerator, denominator) if r is not None and not r.ok]
        return Target(text, "not measured" + (f" ({', '.join(missing)} not available or failed)" if missing else ""), None)
    a = numerator.metrics.get(key) if key not in ("seconds",) else numerator.seconds
    b = denominator.metrics.get(key) if key not in ("seconds",) else denominator.seconds
    if not a or not b:
        return Target(text, "not measured", None)
    value = float(a) / float(b)
    met = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    return Target(text, f"{value:.2f}x", met)


def memory_target(text: str, row: Row | None, limit: float = ANON_TARGET) -> Target:
    if not row or not row.ok or row.peak_anon is None:
        return Target(text, "not measured", None)
    return Target(text, f"{row.peak_anon / MB:,.0f} MB", row.peak_anon < limit)


# --------------------------------------------------------------------------- the bench


@dataclass
class Tool:
    """A contender in a section: a name, and the commands it runs into a fresh work folder."""

    name: str
    commands: Callable[[Path], list[Command]] | None
    unavailable: str = ""


class Bench:
    """One benchmark run: the inputs, the peers, a private work folder, and one method per section.

    Outputs a later section reads (merged folders and GGUFs for the equality checks) are kept in
    ``kept``; the others are dropped as soon as their section is done.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache: Path = args.cache or synthetic.default_cache()
        self.size: str = args.size
        self.repeats: int = args.repeats
        self.ratio: float = args.ratio
        self.threads: int = args.threads or os.cpu_count() or 1
        self.python = sys.executable
        self.peers = Peers(self.cache, install=not args.no_install)
        self.work = self.cache / "work" / f"{self.size}-{os.getpid()}"  # per run: two runs never share outputs
        self.kept: dict[str, Path] = {}
        self._has: dict[str, bool] = {}
        self._chat_gguf: Path | str | None = None  # "" once building it failed
        self.triple: synthetic.Triple | None = None
        self.env = scaling.bench_env(self.threads)

    # -- helpers --------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"[bench {datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    def cvlocal(self, *args: str | Path) -> list[str]:
        return [self.python, "-m", "cvlocal", *[str(a) for a in args]]

    def has(self, command: str) -> bool:
        """Whether ``cvlocal COMMAND`` exists (its --help exits 0)."""
        if command not in self._has:
            proc = subprocess.run(self.cvlocal(command, "--help"), capture_output=True, env={**os.environ, **self.env},
                                  cwd=ROOT, timeout=300)
            self._has[command] = proc.returncode == 0
        return self._has[command]

    def cvlocal_tool(self, command: str, build: Callable[[Path], list[Command]], name: str = "cvlocal") -> Tool:
        if self.has(command):
            return Tool(name, build)
        return Tool(name, None, f"`cvlocal {command}` does not exist yet")

    def inputs(self) -> synthetic.Triple:
        if self.triple is None:
            self.log(f"inputs: synthetic {self.size} triple in {self.cache / 'models' / self.size}")
            self.triple = synthetic.ensure_triple(self.size, self.cache)
        return self.triple

    def folder(self, section: str, tool: str) -> Path:
        return self.work / section / "".join(c if c.isalnum() or c in "-_." else "_" for c in tool)

    def drop(self, section: str, tools: list[Tool]) -> None:
        """Remove the outputs of a section that no later section reads (they can be GBs)."""
        for tool in tools:
            shutil.rmtree(self.folder(section, tool.name), ignore_errors=True)
            self.kept.pop(f"{section}/{tool.name}", None)

    def fresh(self, section: str, tool: str) -> Path:
        folder = self.folder(section, tool)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def execute(self, commands: list[Command], timeout: float | None = None) -> harness.Run:
        steps = []
        for argv, env in commands:
            run = harness.run_command(argv, env={**self.env, **env}, cwd=ROOT, timeout=timeout or self.args.timeout,
                                      keep_stdout=True)
            steps.append(run)
            if not run.ok:
                break
        return harness.chain(steps)

    def measure(self, section: str, tools: list[Tool], warm_paths: list[Path], repeats: int | None = None,
                on_run: Callable[[Tool, Path, harness.Run], dict] | None = None) -> list[Row]:
        """Run every available tool ``repeats`` times, taking turns; the last output of each stays in the work folder."""
        repeats = repeats or self.repeats
        rows = {t.name: Row(t.name) for t in tools}
        live = []
        for t in tools:
            if t.commands is None:
                rows[t.name].status, rows[t.name].reason = "not available", t.unavailable
            else:
                live.append(t)
        metrics: dict[str, list[dict]] = {t.name: [] for t in live}
        runs: dict[str, list[harness.Run]] = {t.name: [] for t in live}
        for r in range(repeats):
            for t in live:
                row = rows[t.name]
                if row.status != "ok":
                    continue
                out = self.fresh(section, t.name)
                harness.warm(warm_paths)
                harness.settle()
                self.log(f"{section}: {t.name} (run {r + 1}/{repeats})")
                run = self.execute(t.commands(out))  # type: ignore[misc]
                self.log(f"{section}: {t.name}: {'ok' if run.ok else f'failed ({run.returncode})'} in {run.seconds:.1f} s, "
                         f"peak anon {run.peak_anon / MB:,.0f} MB")
                if not run.ok:
                    row.status = "failed"
                    row.reason = f"exit {run.returncode}: {run.stderr_tail.splitlines()[-1] if run.stderr_tail else ''}"[:300]
                    continue
                runs[t.name].append(run)
                if on_run is not None:
                    try:
                        metrics[t.name].append(on_run(t, out, run))
                    except (ValueError, KeyError, TypeError, OSError) as err:
                        row.status, row.reason = "failed", f"unreadable output: {err}"[:300]
                self.kept[f"{section}/{t.name}"] = out
        for t in live:
            row = rows[t.name]
            if row.status != "ok" or not runs[t.name]:
                continue
            figure = harness.Figure.of(runs[t.name])
            row.seconds, row.peak_rss, row.peak_anon = figure.seconds, figure.peak_rss, figure.peak_anon
            per_run = metrics[t.name] if len(metrics[t.name]) == len(runs[t.name]) else [{} for _ in runs[t.name]]
            row.runs = [{"seconds": round(x.seconds, 3), "peak_rss": x.peak_rss, "peak_anon": x.peak_anon, "metrics": m,
                         "steps": [{"seconds": round(s.seconds, 3), "peak_rss": s.peak_rss, "peak_anon": s.peak_anon} for s in x.steps]}
                        for x, m in zip(runs[t.name], per_run)]
            if metrics[t.name]:
                keys = metrics[t.name][0].keys()
                for k in keys:
                    values = [m[k] for m in metrics[t.name] if isinstance(m.get(k), (int, float))]
                    row.metrics[k] = statistics.median(values) if values else metrics[t.name][-1].get(k)
        return [rows[t.name] for t in tools]

    # -- shared command builders ------------------------------------------------------------
    def reference_cmd(self, out: Path) -> Command:
        t = self.inputs()
        return ([self.python, str(HERE / "reference_chatvector.py"), str(t.cp), "--base", str(t.base), "--chat", str(t.chat),
                 "--ratio", repr(self.ratio), "-o", str(out)], {})

    def llama_convert_cmd(self, model: Path, out: Path, outtype: str) -> Command:
        conv = self.peers.llama_convert()
        return (conv.command(model, out, outtype), conv.env)

    def quantize_cmd(self, source: Path, out: Path, qtype: str) -> Command:
        return (self.peers.quantize_command(self.python, source, out, qtype, self.threads), {})

    def llama_tool(self, name: str, build: Callable[[Path], list[Command]]) -> Tool:
        try:
            self.peers.llama_convert()
        except Unavailable as err:
            return Tool(name, None, f"llama.cpp converter: {err}")
        return Tool(name, build)

    # -- merge ------------------------------------------------------------------------------
    def merge_tools(self) -> list[Tool]:
        t = self.inputs()
        tools = [self.cvlocal_tool("merge", lambda out: [(self.cvlocal("merge", t.cp, "--base", t.base, "--chat", t.chat, "--ratio",
                                                                        repr(self.ratio), "--special-tokens", "none", "-o",
                                                                        out / "merged", "--quiet"), {})])]
        tools.append(Tool("reference (paper)", lambda out: [self.reference_cmd(out / "merged")]))
        try:
            mergekit = self.peers.mergekit()

            def mk(out: Path) -> list[Command]:
                config = out / "task_arithmetic.yml"
                config.write_text(mergekit_config(t, self.ratio))
                return [([str(mergekit), str(config), str(out / "merged")], {})]

            tools.append(Tool("mergekit task_arithmetic", mk))
        except Unavailable as err:
            tools.append(Tool("mergekit task_arithmetic", None, str(err)))
        tools.append(Tool("I/O floor", lambda out: [([self.python, str(HERE / "io_floor.py"), str(t.cp), str(t.base), str(t.chat),
                                                       str(out / "merged")], {})]))
        return tools

    def section_merge(self) -> Section:
        t = self.inputs()
        s = Section("merge", "Merge: one-shot chat vector (cp + r * (chat - base)) into an HF folder")
        s.rows = self.measure("merge", self.merge_tools(), list(t.folders()))
        cv, ref, mk, floor = (s.row(n) for n in ("cvlocal", "reference (paper)", "mergekit task_arithmetic", "I/O floor"))
        s.targets = [
            ratio_target("cvlocal at least 2x faster than mergekit (mergekit time / cvlocal time >= 2)", mk, cv, at_least=2),
            ratio_target("cvlocal at least 2x faster than the paper's reference (reference time / cvlocal time >= 2)", ref, cv, at_least=2),
            ratio_target("cvlocal within 1.5x of the I/O floor (cvlocal time / floor time <= 1.5)", cv, floor, at_most=1.5),
            memory_target("cvlocal peak anonymous memory under 1 GB", cv),
        ]
        s.notes.append(f"ratio r = {self.ratio}; input {harness.size_of(t.folders()) / GB:.2f} GB (three models), "
                       f"one model {harness.size_of([t.cp]) / GB:.2f} GB.")
        s.notes.append("cvlocal runs with --special-tokens none so that its arithmetic is exactly the peers' (its default gives the "
                       "chat template's special tokens the chat model's rows, which neither peer does).")
        s.notes.append("mergekit: task_arithmetic with base_model = base, models cp (weight 1) and chat (weight r), "
                       "normalize false, dtype float32, out_dtype bfloat16: out = base + (cp - base) + r (chat - base).")
        self.drop("merge", [Tool("I/O floor", None)])
        return s

    # -- convert ----------------------------------------------------------------------------
    def convert_tools(self, outtype: str) -> list[Tool]:
        """cvlocal's and llama.cpp's conversion of the chat model to ``model-OUTTYPE.gguf``."""
        t = self.inputs()
        name = f"model-{outtype}.gguf"
        return [
            self.cvlocal_tool("convert", lambda out: [(self.cvlocal(
                "convert", t.chat, "-o", out / name, "--outtype", outtype, "--threads", str(self.threads), "--quiet"), {})],
                name=f"cvlocal {outtype}"),
            self.llama_tool(f"llama.cpp {outtype}", lambda out: [self.llama_convert_cmd(t.chat, out / name, outtype)]),
        ]

    def section_convert(self) -> Section:
        t = self.inputs()
        s = Section("convert", "Convert: HF folder (the chat model) to GGUF")
        s.relative_to = None
        tools = self.convert_tools("f16") + self.convert_tools("q8_0")
        s.rows = self.measure("convert", tools, [t.chat])
        for outtype in ("f16", "q8_0"):
            cv, ll = s.row(f"cvlocal {outtype}"), s.row(f"llama.cpp {outtype}")
            s.targets.append(ratio_target(f"cvlocal {outtype} no slower than llama.cpp (llama.cpp time / cvlocal time >= 1)", ll, cv, at_least=1))
            s.targets.append(memory_target(f"cvlocal {outtype} peak anonymous memory under 1 GB", cv))
        s.notes.append("Each cvlocal row is compared with the llama.cpp row of the same type; byte equality is in the equality section.")
        return s

    # -- end to end -------------------------------------------------------------------------
    def section_e2e(self) -> Section:
        t = self.inputs()
        s = Section("e2e", "End to end: three HF folders to a q4_k_m GGUF")
        tools = [self.cvlocal_tool("merge", lambda out: [(self.cvlocal(
            "merge", t.cp, "--base", t.base, "--chat", t.chat, "--ratio", repr(self.ratio), "--special-tokens", "none",
            "-o", out / "merged-q4_k_m.gguf",
            "--outtype", "q4_k_m", "--threads", str(self.threads), "--quiet"), {})], name="cvlocal one pass")]
        tools.append(self.llama_tool("chain: reference merge + llama.cpp convert f16 + quantize", lambda out: [
            self.reference_cmd(out / "merged"),
            self.llama_convert_cmd(out / "merged", out / "merged-f16.gguf", "f16"),
            self.quantize_cmd(out / "merged-f16.gguf", out / "merged-q4_k_m.gguf", "q4_k_m"),
        ]))
        s.rows = self.measure("e2e", tools, list(t.folders()))
        s.relative_to = "cvlocal one pass"
        cv, chain = s.rows
        s.targets = [ratio_target("cvlocal one pass at least 1.5x faster than the chain (chain time / cvlocal time >= 1.5)", chain, cv, at_least=1.5),
                     memory_target("cvlocal one pass peak anonymous memory under 1 GB", cv)]
        if chain.ok and chain.runs:
            steps = chain.runs[-1]["steps"]
            s.notes.append("chain steps (last run): " + ", ".join(
                f"{n} {st['seconds']:.1f} s / {st['peak_anon'] / MB:,.0f} MB anon" for n, st in zip(("merge", "convert", "quantize"), steps)))
        s.notes.append("quantize: llama.cpp's llama_model_quantize (the function llama-quantize calls) through benchmarks/llama_quantize.py.")
        self.drop("e2e", tools)
        return s

    # -- equality ---------------------------------------------------------------------------
    def _output(self, key: str, tool: Tool | None) -> Path | None:
        """The kept output of a tool from an earlier section of this run, or produce it once now."""
        if key in self.kept:
            return self.kept[key]
        if tool is None or tool.commands is None:
            return None
        section, name = key.split("/", 1)
        out = self.fresh(section, name)
        self.log(f"equality: producing {key}")
        run = self.execute(tool.commands(out))
        if not run.ok:
            return None
        self.kept[key] = out
        return out

    def section_equality(self) -> Section:
        t = self.inputs()
        s = Section("equality", "Output equality")
        s.relative_to = None
        merge_tools = {tool.name: tool for tool in self.merge_tools()}
        merged: dict[str, Path | None] = {}
        for name in ("cvlocal", "mergekit task_arithmetic", "reference (paper)"):
            out = self._output(f"merge/{name}", merge_tools.get(name))
            merged[name] = out / "merged" if out else None
        present = {name: folder for name, folder in merged.items() if folder is not None}
        pairs = [("cvlocal", other) for other in ("mergekit task_arithmetic", "reference (paper)")
                 if "cvlocal" in present and other in present]
        self.log("equality: merged tensors")
        diffs = compare.compare_merges(present, t.cp, t.base, t.chat, self.ratio, pairs) if present else {}
        for name in merged:
            row = Row(f"merged {name} vs exact arithmetic")
            if name not in diffs:
                row.status, row.reason = "not available", (merge_tools[name].unavailable or "its merge failed")
            else:
                row.metrics = {"result": diffs[name].summary()}
                row.runs = [diffs[name].as_dict()]
            s.rows.append(row)
        for other in ("mergekit task_arithmetic", "reference (paper)"):
            row = Row(f"merged cvlocal vs {other}")
            key = f"cvlocal vs {other}"
            if key not in diffs:
                row.status, row.reason = "not available", "an output is missing"
            else:
                row.metrics = {"result": diffs[key].summary()}
                row.runs = [diffs[key].as_dict()]
            s.rows.append(row)
        exact_cv = s.rows[0]
        s.targets.append(Target("cvlocal merged tensors bit-equal to the exact arithmetic (float32, rounded once)",
                                str(exact_cv.metrics.get("result", "not measured")),
                                exact_cv.runs[0]["identical"] if exact_cv.ok and exact_cv.runs else None))
        s.notes.append("mergekit sums the weighted task vectors before adding base, base + ((cp - base) + r (chat - base)), "
                       "the same formula as cvlocal's in another float32 order; where the two orders round apart the "
                       "result differs by one bf16 ulp, so its row is a measurement, not a target.")
        s.notes.append("The paper's reference computes chat - base and the sum in bf16 (two roundings), so it is not expected "
                       "to be bit-equal; its row shows how far it is from the exact result.")

        for outtype in ("f16", "q8_0"):
            conv = {}
            for tool in self.convert_tools(outtype):
                folder = self._output(f"convert/{tool.name}", tool)
                conv[tool.name] = folder / f"model-{outtype}.gguf" if folder else None
            row = Row(f"GGUF {outtype}: cvlocal vs llama.cpp tensor data")
            a, b = conv[f"cvlocal {outtype}"], conv[f"llama.cpp {outtype}"]
            if a is None or b is None or not a.is_file() or not b.is_file():
                row.status, row.reason = "not available", "an output is missing (converter not available or failed)"
                s.targets.append(Target(f"GGUF {outtype} tensor data byte-identical to llama.cpp's", "not measured", None))
            else:
                diff = compare.compare_gguf(a, b)
                keys = compare.gguf_metadata_keys(a, b)
                row.metrics = {"result": diff.summary()}
                row.runs = [diff.as_dict() | {"metadata_keys": keys}]
                s.targets.append(Target(f"GGUF {outtype} tensor data byte-identical to llama.cpp's", diff.summary(), diff.identical))
                if keys["only_left"] or keys["only_right"]:
                    s.notes.append(f"{outtype} metadata keys only in cvlocal's file: {', '.join(keys['only_left']) or 'none'}; "
                                   f"only in llama.cpp's: {', '.join(keys['only_right']) or 'none'}.")
            s.rows.append(row)
        s.columns = [("result", "result")]
        return s

    # -- a GGUF for chat and eval ---------------------------------------------------------------
    def chat_gguf(self) -> Path | None:
        """The size's chat model at q4_k_m, built once per cache (llama.cpp's tools if present, else cvlocal's)."""
        if self._chat_gguf is None:
            self._chat_gguf = self._build_chat_gguf()
        return self._chat_gguf or None

    def _build_chat_gguf(self) -> Path | str:
        t = self.inputs()
        target = self.cache / "gguf" / self.size / "chat-q4_k_m.gguf"
        marker = target.with_suffix(".json")
        stamp = json.dumps(synthetic._marker(self.size, synthetic.SIZES[self.size]))
        if target.is_file() and marker.is_file() and marker.read_text() == stamp:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_f16 = target.parent / "chat-f16.gguf"
        try:
            commands = [self.llama_convert_cmd(t.chat, tmp_f16, "f16"), self.quantize_cmd(tmp_f16, target, "q4_k_m")]
        except Unavailable:
            if not self.has("convert"):
                return ""
            commands = [(self.cvlocal("convert", t.chat, "-o", target, "--outtype", "q4_k_m", "--force", "--quiet"), {})]
        self.log(f"building {target}")
        run = self.execute(commands)
        tmp_f16.unlink(missing_ok=True)
        if not run.ok:
            last = run.stderr_tail.splitlines()[-1] if run.stderr_tail else f"exit {run.returncode}"
            self.log(f"could not build {target}: {last}")
            return ""
        marker.write_text(stamp)
        return target

    # -- chat -------------------------------------------------------------------------------
    def section_chat(self) -> Section:
        s = Section("chat", "Chat: generation rate and time to first token")
        s.columns = [("gen rate (tok/s)", "gen_rate"), ("TTFT turn 1 (s)", "ttft_1"), ("TTFT turn 10 (s)", "ttft_10"),
                     ("tokens generated", "completion_tokens")]
        model = self.chat_gguf()
        if model is None:
            s.rows = [Row("cvlocal chat --script", "not available", "no GGUF could be built for the chat model"),
                      Row("bare llama-cpp-python loop", "not available", "no GGUF")]
            return s
        max_tokens = self.args.chat_tokens
        script = self.work / "chat-script.txt"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("\n".join(CHAT_TURNS) + "\n", encoding="utf-8")
        ctx = 4096

        def metrics(tool: Tool, out: Path, run: harness.Run) -> dict:
            text = run.stdout if tool is cv else run.stdout.strip().splitlines()[-1]
            return turn_metrics(json.loads(text)["turns"])

        cv = self.cvlocal_tool("chat", lambda out: [(self.cvlocal(
            "chat", model, "--script", script, "--json", "--quiet", "--temperature", "0", "--max-tokens", str(max_tokens),
            "--threads", str(self.threads), "--ctx", str(ctx), "--seed", "0"), {})], name="cvlocal chat --script")
        bare = Tool("bare llama-cpp-python loop", lambda out: [([self.python, str(HERE / "chat_loop.py"), str(model), str(script),
                                                                  "--max-tokens", str(max_tokens), "--threads", str(self.threads),
                                                                  "--ctx", str(ctx)], {})])
        s.rows = self.measure("chat", [cv, bare], [model], on_run=metrics)
        s.relative_to = "cvlocal chat --script"
        cvr, bar = s.rows
        if cvr.ok and bar.ok and cvr.metrics.get("gen_rate") and bar.metrics.get("gen_rate"):
            overhead = 1 - float(cvr.metrics["gen_rate"]) / float(bar.metrics["gen_rate"])
            s.targets.append(Target("cvlocal chat generation-rate overhead under 5% against the bare loop", f"{100 * overhead:.1f}%", overhead < 0.05))
        else:
            s.targets.append(Target("cvlocal chat generation-rate overhead under 5% against the bare loop", "not measured", None))
        if cvr.ok and cvr.metrics.get("ttft_1") and cvr.metrics.get("ttft_10"):
            growth = float(cvr.metrics["ttft_10"]) / float(cvr.metrics["ttft_1"])
            s.targets.append(Target("cvlocal time to first token at turn 10 within 1.5x of turn 1", f"{growth:.2f}x", growth <= 1.5))
        else:
            s.targets.append(Target("cvlocal time to first token at turn 10 within 1.5x of turn 1", "not measured", None))
        s.notes.append(f"GGUF: {model.name} ({model.stat().st_size / MB:,.0f} MB), greedy, at most {max_tokens} tokens per reply, "
                       f"{len(CHAT_TURNS)} turns (English, Chinese, Korean, Japanese), {self.threads} threads, context {ctx}. "
                       "Generation rate: tokens per second after the first token, median over turns; time and memory are "
                       "the whole process (model load included).")
        return s

    # -- eval -------------------------------------------------------------------------------
    def section_eval(self) -> Section:
        s = Section("eval", "Evaluation: items per minute per suite")
        s.columns = [("items", "items"), ("items / minute", "items_per_minute")]
        s.relative_to = None
        model = self.chat_gguf()
        limit = self.args.eval_limit
        tools = []
        for suite in EVAL_SUITES:
            if model is None:
                tools.append(Tool(f"cvlocal eval {suite}", None, "no GGUF could be built for the chat model"))
                continue
            tools.append(self.cvlocal_tool("eval", lambda out, su=suite: [(self.cvlocal(
                "eval", model, "--suite", su, "--limit", str(limit), "--out", out / "report", "--quiet"), {})],
                name=f"cvlocal eval {suite}"))

        def rate(tool: Tool, out: Path, run: harness.Run) -> dict:
            items = count_items(out / "report") or limit
            return {"items": items, "items_per_minute": items * 60 / run.seconds}

        s.rows = self.measure("eval", tools, [model] if model else [], repeats=1, on_run=rate)
        s.notes.append(f"`--limit {limit}`: the first {limit} item(s) of each suite in each language, on "
                       f"{model.name if model else 'no model'}; one run per suite (a rate over many items needs no median). "
                       "The time includes loading the model. Random weights never emit end of sequence, so every reply runs "
                       "to the suite's max_tokens: a real model is faster per item.")
        return s

    # -- batched decoding (issue 14) -----------------------------------------------------------
    def section_batched(self) -> Section:
        """Issue 14: eval --parallel N against --parallel 1 and a bare loop; serve --parallel N against llama-cpp-python's server."""
        from benchmarks import batched
        from cvlocal.evaluation.generate import GenerationSettings
        from cvlocal.evaluation.suites import SUITES_DIR, load_suites

        n = self.args.batched_parallel
        s = Section("batched", f"Batched decoding: eval and serve with {n} sequences at once")
        s.relative_to = None
        s.columns = [("items / minute", "items_per_minute"), ("generated tok/s: median (lowest to highest)", "tokens_per_second"),
                     ("identical replies", "identical"), ("chunks/s: median (lowest to highest)", "chunks_per_second"),
                     ("TTFT p50 / p95 (s)", "ttft"), ("latency p50 / p95 (s)", "latency"), ("failed", "failed")]
        limit, tokens, repeats = self.args.eval_limit, self.args.chat_tokens, self.repeats
        suites = load_suites(list(EVAL_SUITES), ["en", "zh-Hant"], SUITES_DIR, limit)
        items = [i for su in EVAL_SUITES for i in suites[su]]
        settings = GenerationSettings.create(samples=2, max_tokens=tokens, seed=0, ctx=2048)
        def eval_rows(label: str, gguf: Path) -> None:
            self.log(f"batched: eval --parallel {n} / 1 / bare llama-cpp-python at {label}, {repeats} rounds")
            fig = batched.bench_type(gguf, items, settings, n, self.threads, repeats)
            g = fig["identical_greedy"]
            for name, r in fig["rows"].items():
                row = Row(f"{label}: eval {name}", seconds=r["seconds"], runs=[{"seconds": x} for x in r["runs"]])
                row.metrics = {"items_per_minute": r["items_per_minute"], "tokens_per_second": batched._range(r["tokens_per_second"])}
                if name == f"parallel {n}":
                    row.metrics["identical"] = f"greedy {g['same']}/{g['outputs']} to parallel 1"
                s.rows.append(row)
            speedup, vs_bare = fig["speedup_vs_parallel_1"], fig["speedup_vs_bare"]
            if label == "q8_0":
                s.targets.append(Target(f"q8_0: eval --parallel {n} at least 1.5x faster than --parallel 1 (median of "
                                        f"{repeats} per-round ratios)", f"{speedup['median']:.2f}x "
                                        f"({speedup['min']:.2f}x to {speedup['max']:.2f}x)", speedup["median"] >= 1.5))
            s.notes.append(f"{label}: eval --parallel {n} is {batched._range(speedup)}x --parallel 1 and "
                           f"{batched._range(vs_bare)}x the bare loop (median of the per-round ratios, lowest to highest); "
                           f"greedy replies identical to --parallel 1: {g['same']}/{g['outputs']}, seeded toxicity samples "
                           f"{fig['identical_sampled']['same']}/{fig['identical_sampled']['outputs']}"
                           + (f"; records that changed between rounds: {', '.join(fig['records_changed_between_rounds'])}"
                              if fig["records_changed_between_rounds"] else "") + ".")

        for outtype in BATCHED_TYPES:
            eval_rows(outtype, batched.build_gguf(self.size, outtype, self.cache))
        demo = batched.build_demo_gguf("q8_0", self.cache)
        eval_rows("demo chat q8_0", demo)
        self.log(f"batched: the demo's held-out chats, --parallel {n} / 1, {repeats} rounds")
        chats = batched.bench_demo(demo, n, self.threads, repeats)
        for name, r in chats["rows"].items():
            row = Row(f"demo chat q8_0: {chats['chats']} held-out chats, {name}", seconds=r["seconds"],
                      runs=[{"seconds": x} for x in r["runs"]])
            row.metrics = {"items_per_minute": r["chats_per_minute"]}
            if name == f"parallel {n}":
                row.metrics["identical"] = f"{chats['identical']['same']}/{chats['identical']['outputs']} to parallel 1"
            s.rows.append(row)
        s.notes.append(f"demo chat q8_0 (1.3 MB): the held-out chats with --parallel {n} are "
                       f"{batched._range(chats['speedup_vs_parallel_1'])}x --parallel 1. A model this small is bound by "
                       "the loop's own per-token work, not by reading weights, so batching does not pay; the default "
                       "(`--parallel` unset) decodes models under 16 MB one at a time.")
        serve_type = BATCHED_TYPES[0]
        self.log(f"batched: serve --parallel {n} against llama-cpp-python's server at {serve_type}, {repeats} rounds each")
        from benchmarks import llama_tools

        try:
            reference: Path | None = llama_tools.build(targets=(llama_tools.SERVER,))[llama_tools.SERVER]
        except llama_tools.BuildFailed as err:
            reference = None
            s.notes.append(f"llama-server (the upper reference) is not in this run: {err}")
        served = batched.bench_serve(batched.build_gguf(self.size, serve_type, self.cache), n, self.threads, 2048, tokens,
                                     repeats, reference)
        same = served["identical_replies"]
        for name, r in served["servers"].items():
            row = Row(f"{serve_type}: {name}", seconds=r["wall_seconds"], runs=[{"seconds": x} for x in r["runs"]])
            row.metrics = {"chunks_per_second": batched._range(r["aggregate_chunks_per_second"]), "failed": r["failed"],
                           "ttft": f"{r['ttft_p50']} / {r['ttft_p95']}", "latency": f"{r['latency_p50']} / {r['latency_p95']}"}
            if name.startswith("cvlocal"):
                text = served["identical_apart_from_replacement"]
                row.metrics["identical"] = (f"{same['same']}/{same['outputs']} to llama-cpp-python's server "
                                            f"({text['same']}/{text['outputs']} apart from U+FFFD)")
            s.rows.append(row)
        if served.get("share_of_llama_server"):
            s.notes.append(f"cvlocal serve --parallel {n} reaches {batched._range(served['share_of_llama_server'])} of "
                           "llama-server's aggregate rate (llama.cpp's C++ server built from the same sources, "
                           f"-np {n} slots, flash attention off; median of the per-round shares).")
        mine = served["servers"][f"cvlocal serve --parallel {n}"]
        ratio = served["ratio"]
        s.targets.append(Target(f"cvlocal serve --parallel {n}: aggregate throughput at least 2x llama-cpp-python's server "
                                f"(median of {repeats} per-round ratios)",
                                f"{ratio['median']:.2f}x ({ratio['min']:.2f}x to {ratio['max']:.2f}x)" if ratio else "not measured",
                                ratio["median"] >= 2 if ratio else None))
        s.targets.append(Target(f"cvlocal serve --parallel {n}: no failed request", f"{mine['failed']} failed in {repeats} rounds",
                                mine["failed"] == 0))
        s.targets.append(Target(f"cvlocal serve --parallel {n}: no stream waits for another request to finish before its first token "
                                "(in every round the latest first token comes before the earliest finished request)",
                                f"{mine['waits']} of {repeats} rounds with a wait; closest round: latest TTFT {mine['ttft_max']} s, "
                                f"earliest finish {mine['latency_min']} s", mine["failed"] == 0 and mine["waits"] == 0))
        s.notes.append(f"Synthetic chat model `{self.size}` (random weights: every reply runs to its limit), cvlocal's own converter; "
                       f"{len(items)} eval items (`--limit {limit}`, en and zh-Hant, the four suites, 2 toxicity samples), at most "
                       f"{tokens} tokens per reply, {self.threads} threads, context 2048, all in one process, model load excluded; "
                       f"{repeats} rounds taking turns (parallel {n}, parallel 1, bare; again), each row the median of its runs "
                       "and each ratio the median of the per-round ratios. Server: both servers loaded first, then "
                       f"{repeats} rounds each, alternating (cvlocal, llama-cpp-python, cvlocal, ...), of "
                       f"{len(batched.SERVE_QUESTIONS)} concurrent streaming `openai` clients, greedy, {tokens} tokens; aggregate "
                       "streamed chunks per second (about one per token); llama-cpp-python's server with `--interrupt_requests False` "
                       "(it serves one request at a time). Identical replies: the two servers' greedy replies to the same questions "
                       "(first round). On a shared machine the absolute rates move with the load (machine table above); the "
                       "spreads say by how much.")
        return s

    # -- release ----------------------------------------------------------------------------
    def section_release(self) -> Section:
        t = self.inputs()
        s = Section("release", "Release: q4_k_m and q8_0 from an HF folder (the chat model)")
        tools = [self.cvlocal_tool("release", lambda out: [(self.cvlocal(
            "release", t.chat, "-o", out / "release", "--types", "q4_k_m,q8_0", "--threads", str(self.threads), "--quiet",
            "--json"), {})],
            name="cvlocal release (with quality table)")]
        tools.append(self.llama_tool("chain: llama.cpp convert f16 + 2 quantize (no table)", lambda out: [
            self.llama_convert_cmd(t.chat, out / "f16.gguf", "f16"),
            self.quantize_cmd(out / "f16.gguf", out / "q4_k_m.gguf", "q4_k_m"),
            self.quantize_cmd(out / "f16.gguf", out / "q8_0.gguf", "q8_0"),
        ]))
        stages: dict[str, object] = {}

        def stage_times(tool: Tool, out: Path, run: harness.Run) -> dict:
            if tool is tools[0]:
                try:
                    stages["seconds"] = json.loads(run.stdout).get("seconds")
                except (ValueError, AttributeError):
                    pass
            return {}

        s.rows = self.measure("release", tools, [t.chat], on_run=stage_times)
        s.relative_to = s.rows[0].tool
        if isinstance(stages.get("seconds"), dict):
            s.notes.append("cvlocal release stages (its own --json, last run): " + ", ".join(
                f"{k} {v:.1f} s" for k, v in stages["seconds"].items() if isinstance(v, (int, float))))
        s.targets = [ratio_target("cvlocal release no slower than the chain (chain time / cvlocal time >= 1)", s.rows[1], s.rows[0], at_least=1)]
        self.drop("release", tools)
        return s

    # -- adapter ----------------------------------------------------------------------------
    def adapter_tools(self) -> list[Tool]:
        t = self.inputs()

        def extract(rank: str) -> Callable[[Path], list[Command]]:
            return lambda out: [(self.cvlocal("extract", t.base, t.chat, "-o", out / "adapter.gguf", "--rank", rank, "--outtype", "f16",
                                              "--json", "--quiet"), {})]

        tools = [self.cvlocal_tool("extract", extract(str(ADAPTER_RANK)), name=f"cvlocal extract --rank {ADAPTER_RANK}"),
                 self.cvlocal_tool("extract", extract("auto"), name="cvlocal extract --rank auto (energy 0.9)")]
        name = f"chain: mergekit-extract-lora --max-rank {ADAPTER_RANK} + llama.cpp convert_lora_to_gguf (f16)"
        try:
            mk = self.peers.mergekit_extract_lora()
            conv = self.peers.llama_convert_lora()
        except Unavailable as err:
            tools.append(Tool(name, None, str(err)))
            return tools
        tools.append(Tool(name, lambda out: [
            ([str(mk), "--model", str(t.chat), "--base-model", str(t.base), "--out-path", str(out / "peft"),
              "--max-rank", str(ADAPTER_RANK), "--embed-lora", "--skip-undecomposable"], {}),
            ([str(conv.python), str(conv.script), str(out / "peft"), "--base", str(t.base), "--outfile", str(out / "adapter.gguf"),
              "--outtype", "f16"], conv.env),
        ]))
        return tools

    def adapter_rates(self, adapter: Path) -> dict[str, float]:
        """Generation rate (tokens/s after the first) of the merged f16 GGUF and of CP f16 + the f16 adapter."""
        from benchmarks.adapter import generation_rate
        from convert import write_gguf
        from cvlocal.llama.adapters import AdapterSpec
        from cvlocal.vector.merge import merge_models

        t = self.inputs()
        work = self.fresh("adapter", "rates")
        cp16 = write_gguf(t.cp, work / "cp-f16.gguf", "f16")
        merged = Path(merge_models(t.cp, work / "merged-f16.gguf", base=t.base, chat=t.chat, ratio=1.0, special_tokens="none",
                                   outtype="f16", quiet=True)["files"][0])
        tokens = self.args.chat_tokens
        rates = {"merged": generation_rate(merged, [], tokens), "adapter": generation_rate(cp16, [AdapterSpec(adapter, 1.0)], tokens)}
        shutil.rmtree(work, ignore_errors=True)
        return rates

    def section_adapter(self) -> Section:
        t = self.inputs()
        s = Section("adapter", f"Adapter: the chat vector as a GGUF LoRA adapter (rank {ADAPTER_RANK} and auto)")
        s.columns = [("file (MB)", "mb"), ("vector energy kept", "energy_kept"), ("median rank", "rank_median")]
        tools = self.adapter_tools()

        def summary(tool: Tool, out: Path, run: harness.Run) -> dict:
            metrics: dict = {"mb": round((out / "adapter.gguf").stat().st_size / MB, 2)}
            if tool.name.startswith("cvlocal"):
                js = json.loads(run.stdout)
                metrics.update(energy_kept=round(js["energy_kept"], 4), rank_median=js["rank_median"])
            return metrics

        s.rows = self.measure("adapter", tools, [t.base, t.chat], on_run=summary)
        cv, auto, chain = s.rows
        s.relative_to = cv.tool
        s.targets = [ratio_target("cvlocal extract at least 2x faster than the mergekit + convert_lora_to_gguf chain", chain, cv, at_least=2),
                     memory_target(f"cvlocal extract --rank {ADAPTER_RANK} peak anonymous memory under 1.5 GB", cv, ADAPTER_ANON_TARGET),
                     memory_target("cvlocal extract --rank auto peak anonymous memory under 1.5 GB", auto, ADAPTER_ANON_TARGET)]
        adapter = self.folder("adapter", cv.tool) / "adapter.gguf"
        if cv.ok and adapter.is_file():
            self.log("adapter: generation rate, merged f16 GGUF against CP f16 + adapter")
            rates = self.adapter_rates(adapter)
            s.rows += [Row("chat: merged f16 GGUF", metrics={"gen_rate": round(rates["merged"], 1)}),
                       Row(f"chat: CP f16 + rank-{ADAPTER_RANK} f16 adapter", metrics={"gen_rate": round(rates["adapter"], 1)})]
            s.columns.append(("gen rate (tok/s)", "gen_rate"))
            cost = 1 - rates["adapter"] / rates["merged"] if rates["merged"] else float("nan")
            s.notes.append(f"Generation rate: greedy, {self.args.chat_tokens} tokens after a fixed prompt, tokens per second after the "
                           f"first, one run each, in the benchmark's own process; the low-rank path costs {100 * cost:.1f}% of the "
                           "merged model's rate.")
        s.notes.append("Extraction rows: one fresh process each (`--outtype f16`), wall time and peak anonymous memory of the "
                       "process (the chain: of its two steps, peak of the larger). The chain runs with `--embed-lora --skip-undecomposable`, "
                       "so that it carries what cvlocal's adapter carries (token_embd as a pair, norms left out). The synthetic chat model is the base plus i.i.d. "
                       "noise, a full-rank vector: the worst case for the energy a low rank keeps. Fidelity (KL / top-1 against "
                       "the exact merge) is in ADAPTER.md (`benchmarks/adapter.py`).")
        self.drop("adapter", tools)
        return s


    # -- importance matrix parity with llama.cpp's tools -----------------------------------------
    def _imatrix_rates(self, s: Section, fig: dict) -> None:
        """Rows: tokens/s of cvlocal imatrix and llama-imatrix, on the tiny parity GGUF and on the size's chat model."""
        from benchmarks import imatrix_parity

        sizes = [("tiny parity model", fig["rates"])]
        if self.size != "tiny":  # big enough that per-call overheads do not dominate
            work = self.fresh("imatrix", "rate")
            f32 = work / "chat-f32.gguf"
            try:
                imatrix_parity.run([sys.executable, "-m", "cvlocal", "convert", str(self.inputs().chat), "-o", str(f32),
                                    "--outtype", "f32", "--quiet"], work / "convert.log")
                sizes.append((f"{self.size} chat model", imatrix_parity.measure_rates(
                    f32, imatrix_parity.DEFAULT_TEXT, ctx=128, chunks=8, threads=self.threads, work=work)))
            except imatrix_parity.ToolFailed as err:
                s.rows.append(Row(f"imatrix rate ({self.size})", "not available", str(err)))
        for label, rates in sizes:
            row = Row(f"imatrix rate, {label}: cvlocal imatrix vs llama-imatrix")
            row.metrics = {"result": imatrix_parity.rate_line(rates)}
            row.runs = [rates]
            s.rows.append(row)
        s.notes.append("Rates: each tool's own computation figure (start-up and model load excluded); cvlocal on the "
                       "GGUF through transformers' loader, torch on CPU; llama-imatrix with the flags above. On the tiny "
                       "model (2 layers, hidden 256) per-call overheads dominate; the larger size (--ctx 128, 8 chunks) is "
                       "the fairer figure.")

    def section_imatrix_kl(self) -> Section:
        """Issue 18's claim: KL against f16 by language for matrices on different languages (imatrix_kl.py).

        The model is the demo recipe trained at hidden 256 / intermediate 768 (every row a multiple of
        256, so the real k-quant/IQ types apply), trained once into the cache (~17 min on 2 cores);
        at ``--size tiny`` the shipped demo CP (hidden 128, llama.cpp's fallback types) instead.
        """
        s = Section("imatrix_kl", "Importance matrices by language: KL divergence against the f16 file")
        s.relative_to = None
        s.columns = [("result", "result")]
        work = self.fresh("imatrix_kl", "kl")
        if self.size == "tiny":
            model = ROOT / "assets/demo/cp"
        else:
            trained = self.cache / "models" / "imatrix-kl-256"
            model = trained / "cp"
            if not (model / "config.json").is_file():
                self.log(f"imatrix_kl: training the demo recipe at hidden 256 into {trained} (~17 min on 2 cores)")
                run = self.execute([([sys.executable, "assets/demo/train.py", "--out", str(trained), "--hidden", "256",
                                             "--intermediate", "768", "--base-steps", "600", "--cp-steps", "400"], {})])
                if run.returncode != 0 or not (model / "config.json").is_file():
                    s.rows.append(Row("imatrix_kl.py", "not available", f"training failed (exit {run.returncode})"))
                    return s
        table = work / "IMATRIX.md"
        self.log(f"imatrix_kl: {model}, q4_k_m/iq3_m/iq2_xs x no/en/zh-Hant+en matrix")
        run = self.execute([([sys.executable, "benchmarks/imatrix_kl.py", "--model", str(model),
                                     "--threads", str(self.threads), "--out", str(table)], {})])
        if run.returncode != 0 or not table.is_file():
            s.rows.append(Row("imatrix_kl.py", "not available", f"exit {run.returncode}"))
            return s
        row = Row("imatrix_kl.py")
        row.metrics = {"result": f"table below ({model.relative_to(ROOT) if model.is_relative_to(ROOT) else model})"}
        s.rows.append(row)
        s.notes.append(table.read_text(encoding="utf-8").strip())
        return s

    def results_dir(self) -> Path:
        """Where RESULTS.md goes: benchmarks/ for the full size, the cache for the smoke sizes, or --out."""
        return self.args.out or (HERE if self.size == "full" else self.cache / "results" / self.size)

    def section_scaling(self) -> Section:
        """Issue 15: time and peak anonymous memory against input bytes, per operation, at three sizes."""
        s = Section("scaling", "Scaling: time and peak anonymous memory against input bytes (one run per point)")
        s.relative_to = None
        s.columns = [("input (GB)", "input_gb"), ("CPU (s)", "cpu_seconds"), ("MB/s in", "mb_per_s"), ("load before", "load")]
        sizes = self.args.scaling_sizes or (scaling.DEFAULT_SIZES if self.size == "full" else scaling.SMOKE_SIZES)
        command = {"merge": "merge", "merge_gguf": "merge", "convert": "convert"}
        ops = [op for op in scaling.OPS if self.has(command[op])]
        machine = harness.describe_machine(self.python) | {"threads": self.threads}
        points = scaling.measure_all(sizes, ops, self.cache, self.work / "scaling", python=self.python, threads=self.threads,
                                     ratio=self.ratio, env=self.env, log=self.log, timeout=self.args.timeout)
        for op in scaling.OPS:
            if op not in ops:
                s.rows.append(Row(op, "not available", f"`cvlocal {command[op]}` does not exist yet"))
        for p in points:
            row = Row(f"{p.op} {p.size}", p.status, p.reason, p.seconds, p.peak_rss, p.peak_anon)
            row.metrics = {"input_gb": round(p.input_bytes / GB, 3), "load": p.load_before, "cpu_seconds": p.cpu_seconds,
                           "mb_per_s": p.input_bytes / p.seconds / MB if p.ok and p.seconds else None}
            row.runs = [dataclasses.asdict(p)]
            s.rows.append(row)
        out = self.results_dir()  # the file keeps the points of sizes not measured this time
        kept = scaling.merge_points(scaling.load(out / "SCALING.json"), points)
        summary = scaling.summarize(points)
        scaling.write(kept, out, machine)
        for op, e in summary.items():
            label = scaling.OPS[op]
            if e["linear"] is None:
                s.targets.append(Target(f"{label}: time linear in input bytes", "not measured (fewer than 3 sizes)", None))
            else:
                key = "marginal_cpu_seconds_per_gb" if e["linear_on"] == "CPU time" else "marginal_seconds_per_gb"
                steps = " then ".join(f"{x:.2f}" for x in e[key])
                s.targets.append(Target(f"{label}: time linear in input bytes ({e['linear_on']}: marginal s/GB of the last "
                                        f"step at most {scaling.LINEAR_TOLERANCE}x the previous)", f"{steps} s/GB ({e['growth']})",
                                        e["linear"]))
            anon = e.get("largest_peak_anon")
            s.targets.append(Target(f"{label}: peak anonymous memory under 1.5 GB at the largest size ({e['largest']})",
                                    f"{anon / MB:,.0f} MB" if anon else "not measured", e["flat"]))
            if e.get("fit"):
                f = e["fit"]
                s.notes.append(f"{label}: time = {f['startup_seconds']:.1f} s + {f['seconds_per_gb']:.2f} s/GB (R² {f['r2']:.4f}).")
        s.notes.append("Sizes: " + "; ".join(scaling.shape_line(z) for z in sizes) + ".")
        s.notes.append(f"Table, fits and plot: {out / 'SCALING.md'}, {out / 'scaling.png'}.")
        return s

    def section_sweep(self) -> Section:
        """Issue 17: a five-point sweep against the same merges and evals run one by one (sweep.py)."""
        from benchmarks import sweep

        s = Section("sweep", "Sweep: five ratios on the demo models, one command against merge + eval by hand")
        s.relative_to = "cvlocal sweep"
        s.columns = [("processes", "processes"), ("numbers equal to cvlocal eval", "numbers")]
        goals = (f"cvlocal sweep at least {sweep.TARGET}x faster than the same work by hand",
                 "every number in sweep.json equal to cvlocal eval's")
        if not self.has("sweep"):
            s.rows.append(Row("cvlocal sweep", "not available", "`cvlocal sweep` does not exist yet"))
            s.targets += [Target(g, "not measured", None) for g in goals]
            return s
        settings = sweep.parse_args(["--limit", str(self.args.eval_limit), "--max-tokens", str(self.args.chat_tokens),
                                     "--threads", str(self.threads), "--timeout", str(self.args.timeout)])
        self.log(f"sweep: ratios {','.join(map(repr, settings.ratios))} on assets/demo, then the same by hand")
        fig = sweep.measure(settings, self.fresh("sweep", "work"))
        mine = Row("cvlocal sweep", seconds=fig["sweep"]["seconds"], peak_rss=fig["sweep"]["peak_rss"],
                   peak_anon=fig["sweep"]["peak_anon"], runs=[{"seconds": fig["sweep"]["seconds"]}])
        mine.metrics = {"processes": 1}
        s.rows.append(mine)
        if "failed" in fig:
            if not fig["sweep"]["ok"]:
                mine.status, mine.reason = "failed", fig["failed"][:300]
            else:
                s.rows.append(Row("by hand: convert|merge + eval per model", "failed", fig["failed"][:300]))
            s.targets += [Target(g, "not measured", None) for g in goals]
            return s
        hand = fig["by_hand"]
        theirs = Row("by hand: convert|merge + eval per model", seconds=hand["seconds"], peak_rss=hand["peak_rss"],
                     peak_anon=hand["peak_anon"], runs=[{"seconds": hand["seconds"], "per_model": hand["per_model"]}])
        theirs.metrics = {"processes": hand["processes"]}
        s.rows.append(theirs)
        numbers = fig["numbers"]
        mine.metrics["numbers"] = f"{numbers['compared'] - len(numbers['differ'])}/{numbers['compared']}"
        mine.runs[0]["work"] = fig["sweep"].get("work")
        s.targets.append(ratio_target(goals[0], theirs, mine, at_least=sweep.TARGET))
        s.targets.append(Target(goals[1], f"{numbers['compared'] - len(numbers['differ'])}/{numbers['compared']} equal"
                                + (f" (first: {numbers['differ'][0]})" if numbers["differ"] else ""),
                                numbers["compared"] > 0 and not numbers["differ"]))
        st = fig["settings"]
        s.notes.append(f"Demo models (assets/demo), ratios {', '.join(f'{r:g}' for r in st['ratios'])} plus the CP and chat "
                       f"references on both sides (7 GGUFs at {st['outtype']}, 7 evaluations), suites {', '.join(st['suites'])}, "
                       f"languages {', '.join(st['langs'])}, --limit {st['limit']}, --max-tokens {st['max_tokens']}, --ctx "
                       f"{st['ctx']}, --parallel {st['parallel']}, {st['threads']} threads; one run each (the sweep first, "
                       "with an empty cache). The sweep's own account: "
                       + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (fig["sweep"].get("work") or {}).items())
                       + ". By hand, seconds per model: "
                       + ", ".join(f"{k} {v}" for k, v in hand["per_model"].items()) + ".")
        return s

    def section_imatrix(self) -> Section:
        """Issue 18: our matrix against llama-imatrix's, our quantized files against llama-quantize's."""
        from benchmarks import imatrix_parity, llama_tools

        s = Section("imatrix", "Importance matrix and quantization parity with llama.cpp's tools")
        s.relative_to = None
        s.columns = [("result", "result")]
        goals = [f"{q} from the same matrix: tensor data byte-identical to llama-quantize's" for q in imatrix_parity.QTYPES]
        goals = ["Pearson >= 0.999 per matrix", "median relative error < 1% per matrix", *goals]
        self.log("imatrix: building llama-imatrix and llama-quantize if needed, then the comparison")
        try:
            fig = imatrix_parity.measure(self.fresh("imatrix", "parity"), threads=self.threads)
        except (imatrix_parity.ToolFailed, llama_tools.BuildFailed) as err:
            s.rows.append(Row("cvlocal imatrix vs llama-imatrix", "not available", str(err)))
            s.targets += [Target(goal, "not measured", None) for goal in goals]
            return s
        sm = imatrix_parity.summary(fig)
        row = Row("cvlocal imatrix vs llama-imatrix")
        row.metrics = {"result": f"{sm['compared']} matrices, Pearson min {sm['pearson_min']:.7f}, median rel. err. max "
                                 f"{sm['median_rel_max']:.2e}, counts equal {sm['counts_equal']}/{sm['compared']}"
                                 + (f", missing {', '.join(sm['missing'])}" if sm["missing"] else "")}
        row.runs = [{"matrices": fig["matrices"], "seconds": fig["seconds"]}]
        s.rows.append(row)
        complete = not sm["missing"] and sm["compared"] > 0
        s.targets.append(Target(goals[0], f"min {sm['pearson_min']:.7f}", complete and sm["pearson_min"] >= 0.999))
        s.targets.append(Target(goals[1], f"max {sm['median_rel_max']:.2e}", complete and sm["median_rel_max"] < 0.01))
        for goal, (qtype, r) in zip(goals[2:], fig["quantize"].items()):
            verdict = imatrix_parity.quantize_verdict(r)
            row = Row(f"{qtype}: cvlocal quantize vs llama-quantize")
            row.metrics = {"result": verdict}
            row.runs = [r]
            s.rows.append(row)
            s.targets.append(Target(goal, verdict, r["tensors_identical"]))
        self._imatrix_rates(s, fig)
        s.notes.append(f"Tiny tests/factory.py `{fig['kind']}` model (hidden 256), f32 GGUF, text `{fig['text']}` "
                       f"({fig['tokens']} tokens), --ctx {fig['ctx']} --chunks {fig['chunks']}; llama-imatrix with "
                       f"`{' '.join(imatrix_parity.LLAMA_IMATRIX_FLAGS)}` (why: benchmarks/imatrix_parity.py).")
        return s


def mergekit_config(t: synthetic.Triple, ratio: float) -> str:
    return (
        "merge_method: task_arithmetic\n"
        f"base_model: {t.base}\n"
        "models:\n"
        f"  - model: {t.cp}\n"
        "    parameters:\n      weight: 1.0\n"
        f"  - model: {t.chat}\n"
        f"    parameters:\n      weight: {ratio!r}\n"
        "parameters:\n  normalize: false\n"
        "dtype: float32\n"
        "out_dtype: bfloat16\n"
    )


def turn_metrics(turns: list[dict]) -> dict:
    """Median generation rate over turns, TTFT of turn 1 and of the last turn, tokens generated."""
    rates = [float(x["gen_rate"]) for x in turns if x.get("gen_rate")]
    return {
        "gen_rate": statistics.median(rates) if rates else None,
        "ttft_1": float(turns[0]["ttft_s"]) if turns else None,
        "ttft_10": float(turns[-1]["ttft_s"]) if turns else None,
        "completion_tokens": sum(int(x.get("completion_tokens") or 0) for x in turns),
        "turns": len(turns),
    }


def count_items(report_dir: Path) -> int | None:
    """Items scored, from the eval report if it says (a list of per-item results or an item count)."""
    report = report_dir / "report.json"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found: list[int] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("items", "n_items", "count") and isinstance(v, int):
                    found.append(v)
                elif k == "items" and isinstance(v, list):
                    found.append(len(v))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return max(found) if found else None


# --------------------------------------------------------------------------- report


def fmt_mb(value: int | None) -> str:
    return "" if value is None else f"{value / MB:,.0f}"


def fmt_num(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render(results: dict) -> str:
    shape = synthetic.SIZES[results["size"]]
    lines = [
        "# cvlocal benchmarks",
        "",
        f"Generated by `benchmarks/run.py --size {results['size']}` on {results['generated_at']}; "
        f"medians of {results['settings']['repeats']} run(s) per figure (\"runs\": fastest to slowest); all tools run one at a "
        "time on the same inputs, taking turns, "
        "page cache warm, dirty pages flushed before each run. Time is wall time; peak RSS and peak anonymous memory "
        "(RssAnon) are summed over the process tree, sampled every 20 ms; MB = 10^6 bytes.",
        "",
        f"Inputs: synthetic LlamaForCausalLM triple `{results['size']}` (hidden {shape.hidden}, intermediate {shape.intermediate}, "
        f"{shape.layers} layers, {shape.heads} heads, {shape.kv_heads} kv heads, vocab {shape.vocab}, bf16, "
        f"{synthetic.parameter_count(shape) / 1e9:.3f} B parameters per model), ratio r = {results['settings']['ratio']}, "
        f"{results['settings']['threads']} threads.",
        "",
    ]
    if results["size"] != "full":
        lines += ["**Smoke run at a reduced size**: start-up (importing torch, transformers, llama.cpp) dominates every "
                  "figure here; the targets are about the full 1.1B size.", ""]
    lines += [
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
    ]
    for k, v in results["machine"].items():
        lines.append(f"| {k} | {v if v is not None else 'n/a'} |")
    missed: list[str] = []
    for name in SECTIONS:
        sec = results["sections"].get(name)
        if not sec:
            continue
        lines += ["", f"## {sec['title']}", "", f"_measured {sec['measured_at']}_", ""]
        extra = [tuple(c) for c in sec.get("columns") or []]
        rel = sec.get("relative_to")
        base_row = next((r for r in sec["rows"] if r["tool"] == rel and r["status"] == "ok"), None) if rel else None
        timed = name not in UNTIMED
        header = ["tool"]
        if timed:
            header += ["time (s)", "runs (s)"] + ([f"time / {rel} time"] if base_row else []) + ["peak RSS (MB)", "peak anon (MB)"]
        header += [h for h, _ in extra] + ["status"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + " --- |" * len(header))
        for r in sec["rows"]:
            cells = [r["tool"]]
            if timed:
                cells.append(fmt_num(r["seconds"]) if r["seconds"] is not None else "")
                times = sorted(run["seconds"] for run in r["runs"])
                cells.append(f"{fmt_num(times[0])} to {fmt_num(times[-1])}" if len(times) > 1 else "")
                if base_row:
                    cells.append(f"{r['seconds'] / base_row['seconds']:.2f}x" if r["seconds"] and base_row["seconds"] else "")
                cells += [fmt_mb(r["peak_rss"]), fmt_mb(r["peak_anon"])]
            cells += [fmt_num(r["metrics"].get(k)) for _, k in extra]
            cells.append(r["status"] + (f": {r['reason']}" if r["reason"] else ""))
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        if sec["targets"]:
            lines += ["", "Targets:", ""]
            for tg in sec["targets"]:
                mark = {True: "met", False: "MISSED", None: "not measured"}[tg["met"]]
                lines.append(f"- **{mark}**: {tg['text']}: {tg['value']}")
                if tg["met"] is False:
                    missed.append(f"{name}: {tg['text']}: {tg['value']}")
        if sec["notes"]:
            lines += [""] + [f"- {n}" for n in sec["notes"]]
    lines += ["", "## Missed targets", ""]
    lines += [f"- {m}" for m in missed] if missed else ["- none"]
    return "\n".join(lines) + "\n"


def write_results(sections: list[Section], bench: Bench, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "RESULTS.json", out_dir / "RESULTS.md"
    previous: dict = {}
    if json_path.is_file():
        try:
            previous = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    kept = previous.get("sections", {}) if previous.get("size") == bench.size else {}
    results = {
        "size": bench.size,
        "generated_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {"repeats": bench.repeats, "ratio": bench.ratio, "threads": bench.threads},
        "machine": harness.describe_machine(bench.python, bench.peers.versions()),
        "sections": {**kept, **{s.name: s.as_dict() for s in sections}},
    }
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render(results), encoding="utf-8")
    return md_path, json_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cvlocal against its peers, side by side (writes RESULTS.md and RESULTS.json).")
    p.add_argument("--size", choices=[z for z in synthetic.SIZES if z not in scaling.ONLY_SCALING], default="full", help="synthetic model size (default full: the 1.1B shape)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    p.add_argument("--ratio", type=float, default=1.0, help="chat-vector ratio r (default 1.0)")
    p.add_argument("--threads", type=int, default=None, help="threads for every tool (default: all cores)")
    p.add_argument("--cache", type=Path, default=None, help="models, peers and work files (default $CVLOCAL_BENCH_CACHE or ~/.cache/cvlocal-bench)")
    p.add_argument("--out", type=Path, default=None, help="folder for RESULTS.md/.json (default: benchmarks/ for full size, the cache otherwise)")
    p.add_argument("--no-install", action="store_true", help="do not install missing peers; report them as not available")
    p.add_argument("--keep", action="store_true", help="keep the tools' outputs in the cache's work folder")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before one command is killed")
    p.add_argument("--chat-tokens", type=int, default=64, help="longest reply per chat turn (default 64)")
    p.add_argument("--eval-limit", type=int, default=2, help="cvlocal eval --limit: items per suite and language (default 2)")
    p.add_argument("--batched-parallel", type=int, default=8, help="sequences at once in the batched section (default 8)")
    p.add_argument("--scaling-sizes", default=None, help="comma-separated sizes of the scaling section (default "
                   f"{','.join(scaling.DEFAULT_SIZES)} at --size full, {','.join(scaling.SMOKE_SIZES)} otherwise)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    args.scaling_sizes = [s.strip() for s in args.scaling_sizes.split(",") if s.strip()] if args.scaling_sizes else None
    if args.scaling_sizes and any(s not in synthetic.SIZES for s in args.scaling_sizes):
        p.error(f"--scaling-sizes: choose from {', '.join(synthetic.SIZES)}")
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def remove_stale_work(folder: Path) -> None:
    """Remove work folders left by runs that were killed (their process is gone)."""
    import psutil

    if not folder.is_dir():
        return
    for child in folder.iterdir():
        pid = child.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(child, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    remove_stale_work(bench.work.parent)
    bench.inputs()
    sections: list[Section] = []
    try:
        for name in SECTIONS:
            if name in args.sections:
                bench.log(f"section {name}")
                sections.append(getattr(bench, f"section_{name}")())
    finally:
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
        if sections:
            out_dir = bench.results_dir()
            md, js = write_results(sections, bench, out_dir)
            bench.log(f"wrote {md} and {js}")
            print(md.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
