"""Shared helpers of the merge tests: run the real CLI, load outputs with safetensors' own loader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI in this process (no interpreter start-up per call); same result type as ``cli_proc``."""
    import contextlib
    import io

    from cvlocal.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    proc = subprocess.CompletedProcess(["cvlocal", *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"cvlocal {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def cli_proc(*args: object, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cvlocal`` in a fresh process, as a user would; returns the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "cvlocal", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cvlocal {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a HF folder through the safetensors library (not our reader)."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for name in files:
        out.update(load_file(str(folder / name)))
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, a single line on stderr, no traceback, and the expected words in it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def leftovers(parent: Path, name: str) -> list[Path]:
    """Anything at or beside the output path that the run left behind (partial names included)."""
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-")]
