"""Run a command and measure what a person waiting for it pays: wall time and memory.

Memory is sampled from ``/proc`` while the command runs, summed over its whole process tree:

* peak RSS: resident memory, including pages of files the tool maps (safetensors loaders mmap
  their inputs, so RSS can count a model that costs no real memory); the kernel's own high-water
  mark of each process (``VmHWM``) is folded in, so a single-process tool's peak is exact;
* peak anonymous memory: ``RssAnon`` (heap, tensors, copies) summed over the tree: the memory
  the tool really takes from the machine, and the figure the targets are about.

Sampling every ~20 ms can miss a spike shorter than that; the tree itself is re-read every
500 ms (scanning ``/proc`` costs milliseconds on a busy machine, reading one ``status`` file
costs microseconds). Before each run the page cache is made warm for the inputs (read once)
and dirty pages of the previous run are flushed (``sync``), so every tool starts from the same
state and no tool pays for another's write-back.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import psutil

SAMPLE_SECONDS = 0.02
TREE_SECONDS = 0.5


@dataclass
class Run:
    """One measured run of a command (or of a chain of commands)."""

    seconds: float
    peak_rss: int
    peak_anon: int
    returncode: int
    stdout: str = ""
    stderr_tail: str = ""
    steps: list["Run"] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _status(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, VmHWM) of one process in bytes; zeros once it has gone."""
    rss = anon = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"RssAnon:"):
                    anon = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, anon, hwm


class TreeSampler(threading.Thread):
    """Samples the memory of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_anon = 0
        self.peak_hwm = 0
        self._halt = threading.Event()

    def _tree(self) -> list[int]:
        try:
            root = psutil.Process(self.pid)
            return [self.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.Error:
            return [self.pid]

    def run(self) -> None:
        pids = self._tree()
        last_tree = time.monotonic()
        while not self._halt.is_set():
            total_rss = total_anon = 0
            for pid in pids:
                rss, anon, hwm = _status(pid)
                total_rss += rss
                total_anon += anon
                self.peak_hwm = max(self.peak_hwm, hwm)
            self.peak_rss = max(self.peak_rss, total_rss)
            self.peak_anon = max(self.peak_anon, total_anon)
            if time.monotonic() - last_tree > TREE_SECONDS:
                pids = self._tree()
                last_tree = time.monotonic()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_command(
    cmd: Sequence[str | os.PathLike],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
    interval: float = SAMPLE_SECONDS,
    keep_stdout: bool = False,
) -> Run:
    """Run ``cmd`` to completion, sampling its process tree; stdout/stderr go to temporary files."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, env=full_env, cwd=cwd,
                                stdin=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
            err.write(f"\n(killed after {timeout:.0f} s)".encode())
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            seconds = time.perf_counter() - t0
            sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace") if keep_stdout else ""
        stderr = err.read().decode("utf-8", "replace")
    return Run(seconds=seconds, peak_rss=max(sampler.peak_rss, sampler.peak_hwm), peak_anon=sampler.peak_anon,
               returncode=returncode, stdout=stdout, stderr_tail=_tail(stderr))


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def chain(runs: Iterable[Run]) -> Run:
    """A sequence of steps as one figure: times add up, memory is the largest step's."""
    steps = list(runs)
    failed = next((r for r in steps if not r.ok), None)
    return Run(
        seconds=sum(r.seconds for r in steps),
        peak_rss=max((r.peak_rss for r in steps), default=0),
        peak_anon=max((r.peak_anon for r in steps), default=0),
        returncode=failed.returncode if failed else 0,
        stdout=steps[-1].stdout if steps else "",
        stderr_tail=failed.stderr_tail if failed else "",
        steps=steps,
    )


@dataclass
class Figure:
    """The median of repeated runs of one tool in one section."""

    seconds: float
    peak_rss: int
    peak_anon: int
    runs: list[Run]

    @classmethod
    def of(cls, runs: list[Run]) -> "Figure":
        return cls(
            seconds=statistics.median(r.seconds for r in runs),
            peak_rss=int(statistics.median(r.peak_rss for r in runs)),
            peak_anon=int(statistics.median(r.peak_anon for r in runs)),
            runs=runs,
        )


# --------------------------------------------------------------------------- page cache


def files_under(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            found.append(p)
    return found


def warm(paths: Iterable[Path], block: int = 16 << 20) -> int:
    """Read every file under ``paths`` once so the runs that follow find them in the page cache."""
    total = 0
    buf = bytearray(block)
    view = memoryview(buf)
    for f in files_under(paths):
        with open(f, "rb", buffering=0) as handle:
            while True:
                n = handle.readinto(view)
                if not n:
                    break
                total += n
    return total


def settle() -> None:
    """Flush dirty pages left by the previous run so that its write-back does not slow the next."""
    os.sync()


def size_of(paths: Iterable[Path]) -> int:
    return sum(f.stat().st_size for f in files_under(paths))


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(python: str | os.PathLike, distribution: str) -> str | None:
    """The version of a distribution installed for another interpreter (a peer's venv)."""
    code = f"import importlib.metadata as m\ntry: print(m.version({distribution!r}))\nexcept Exception: pass"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout.strip() or None


def describe_machine(python: str | os.PathLike, extra: Mapping[str, str | None] | None = None) -> dict[str, object]:
    """What the figures were measured on: CPU, cores, memory, OS and the versions that matter."""
    vm = psutil.virtual_memory()
    info: dict[str, object] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(vm.total / 2**30, 1),
        "ram_available_gib_at_start": round(vm.available / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for dist in ("torch", "transformers", "safetensors", "llama_cpp_python", "gguf"):
        info[dist] = _version(python, dist)
    if extra:
        info.update(extra)
    return info
