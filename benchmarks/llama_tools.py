"""Build llama.cpp's own tools once: ``llama-imatrix`` and ``llama-quantize`` for the parity
benchmark, ``llama-server`` as the batched server's upper reference.

The llama-cpp-python wheel ships the library but not llama.cpp's command-line tools, and issue 18
asks for a comparison with exactly those tools. They are built from the sdist the Makefile already
unpacks (the same llama.cpp source as the library cvlocal calls), with the Makefile's non-native
CPU flags plus ``-DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF``, into the git-ignored
``.build/llama-tools``; only the targets asked for are built. The server is configured without its
web UI (``-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF``: the prebuilt one is a download). This
is benchmark set-up, never CI: it takes five minutes or more on two cores. A second call finds the
binaries and returns at once.

    .venv/bin/python benchmarks/llama_tools.py [--jobs 2] [--server]
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_VERSION = "0.3.36"
SOURCE = ROOT / ".build" / "sdist" / f"llama_cpp_python-{LLAMA_VERSION}" / "vendor" / "llama.cpp"
TOOLS = ROOT / ".build" / "llama-tools"
TARGETS = ("llama-imatrix", "llama-quantize")
SERVER = "llama-server"


class BuildFailed(RuntimeError):
    """The tools could not be built: the message names the log or the missing source."""


def makefile_cmake_args() -> list[str]:
    """LLAMA_CMAKE_ARGS as make itself expands it (so ``LLAMA_CMAKE_ARGS=...`` in the environment wins, as in make)."""
    rule = "print-llama-cmake-args: ; @echo $(LLAMA_CMAKE_ARGS)"
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), f"--eval={rule}", "print-llama-cmake-args"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildFailed(f"{ROOT / 'Makefile'}: make could not print LLAMA_CMAKE_ARGS ({proc.stderr.strip()[:120]})")
    return shlex.split(proc.stdout)


def binary(name: str) -> Path:
    return TOOLS / "build" / "bin" / name


def build(jobs: int = 2, log=sys.stderr, targets: tuple[str, ...] = TARGETS) -> dict[str, Path]:
    """Configure and build ``targets`` (those not built yet); their paths."""
    if all(binary(t).is_file() for t in targets):
        return {t: binary(t) for t in targets}
    if not (SOURCE / "CMakeLists.txt").is_file():
        raise BuildFailed(f"{SOURCE}: llama.cpp source not unpacked; run `make setup` first")
    TOOLS.mkdir(parents=True, exist_ok=True)
    configure = [
        "cmake", "-S", str(SOURCE), "-B", str(TOOLS / "build"), "-DCMAKE_BUILD_TYPE=Release",
        *makefile_cmake_args(), "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    ]
    compile_ = ["cmake", "--build", str(TOOLS / "build"), "--target", *targets, f"-j{jobs}"]
    for cmd, name in ((configure, "configure.log"), (compile_, "build.log")):
        print("+ " + shlex.join(cmd), file=log)
        with open(TOOLS / name, "w", encoding="utf-8") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                raise BuildFailed(f"{TOOLS / name}: the llama.cpp tools did not build (exit {rc}); read the log")
    return {t: binary(t) for t in targets}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--server", action="store_true", help="also llama-server")
    args = p.parse_args(argv)
    try:
        tools = build(args.jobs, targets=TARGETS + ((SERVER,) if args.server else ()))
    except BuildFailed as err:
        print(err, file=sys.stderr)
        return 1
    for name, path in tools.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
