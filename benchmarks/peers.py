"""The tools cvlocal is measured against, each installed by the benchmark into the cache.

Nothing here is committed or vendored: every peer is fetched from PyPI by its ordinary client
into ``<cache>/venvs`` or ``<cache>/sdist`` the first time it is needed, and reused after that
(a marker file records what was installed).

* mergekit (``mergekit-yaml``), pinned, in its own venv. torch is installed first, pinned to the
  project's CPU build (``torch==2.13.0``), so that pip keeps it instead of pulling a CUDA build.
* llama.cpp's ``convert_hf_to_gguf.py`` from the llama-cpp-python source distribution of the
  version installed in the project's venv (``pip download --no-binary :all: --no-deps``), run
  with its own ``gguf-py`` on ``PYTHONPATH``, in a venv with what its
  ``requirements-convert_hf_to_gguf.txt`` lists, except two lines: its torch pin (the CPU torch
  of the project is installed first instead of a CUDA wheel) and ``gguf`` (the script puts its
  own ``gguf-py`` first on ``sys.path``; gguf-py's own dependencies are installed).
* llama.cpp's quantizer: ``llama_model_quantize`` from the project's llama-cpp-python, the same
  function the ``llama-quantize`` tool calls (the wheel ships no ``llama-quantize`` binary), run
  by ``benchmarks/llama_quantize.py`` in its own process.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"
MERGEKIT = "mergekit==0.1.5"
LLAMA_CPP_PYTHON_FALLBACK = "0.3.36"
GGUF_PY_DEPS = ["tqdm>=4.27", "pyyaml>=5.1", "requests>=2.25"]
INSTALL_TIMEOUT = 3600


class Unavailable(Exception):
    """A peer that could not be set up; the message says why (shown as "not available")."""


@dataclass
class LlamaConvert:
    """How to run llama.cpp's converter."""

    python: Path
    script: Path
    env: dict[str, str]
    version: str

    def command(self, model: Path, out: Path, outtype: str) -> list[str]:
        return [str(self.python), str(self.script), str(model), "--outfile", str(out), "--outtype", outtype]


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip() and "is ignored" not in line][-3:]
        raise Unavailable(f"`{' '.join(cmd[:6])} ...` failed (exit {proc.returncode}): {' | '.join(tail)} (log: {log})")


def _venv(path: Path, packages: list[list[str]], marker_text: str, install: bool, log: Path) -> Path:
    """A venv with ``packages`` installed in the order given; returns its python."""
    python = path / "bin" / "python"
    marker = path / ".cvlocal-bench-installed"
    if marker.is_file() and marker.read_text() == marker_text and python.exists():
        return python
    if not install:
        raise Unavailable(f"not installed in {path} (run without --no-install to install it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(path)], log)
    for group in packages:
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *group], log)
    marker.write_text(marker_text)
    return python


class Peers:
    """Sets up peers on demand and remembers why one is unavailable."""

    def __init__(self, cache: Path, *, install: bool = True) -> None:
        self.cache = cache
        self.install = install
        self.log = cache / "peers-install.log"
        self._mergekit: Path | str | None = None
        self._convert: LlamaConvert | str | None = None

    # -- mergekit -------------------------------------------------------------------------
    def mergekit(self) -> Path:
        """Path of ``mergekit-yaml``; raises Unavailable with the reason."""
        if isinstance(self._mergekit, str):
            raise Unavailable(self._mergekit)
        if self._mergekit is None:
            try:
                self.cache.mkdir(parents=True, exist_ok=True)
                python = _venv(self.cache / "venvs" / "mergekit", [[TORCH], [MERGEKIT]], f"{TORCH}\n{MERGEKIT}\n", self.install, self.log)
                self._mergekit = python.parent / "mergekit-yaml"
            except (Unavailable, OSError, subprocess.TimeoutExpired) as err:
                self._mergekit = str(err)
                raise Unavailable(self._mergekit) from None
        return self._mergekit

    def mergekit_extract_lora(self) -> Path:
        """Path of ``mergekit-extract-lora`` (same venv as ``mergekit-yaml``); raises Unavailable with the reason."""
        script = self.mergekit().parent / "mergekit-extract-lora"
        if not script.exists():
            raise Unavailable(f"{script} is missing from the mergekit install")
        return script

    def llama_convert_lora(self) -> LlamaConvert:
        """llama.cpp's ``convert_lora_to_gguf.py``, beside the ``convert_hf_to_gguf.py`` of ``llama_convert``."""
        conv = self.llama_convert()
        script = conv.script.parent / "convert_lora_to_gguf.py"
        archive = self.cache / "sdist" / f"llama_cpp_python-{conv.version}.tar.gz"
        if not script.is_file() and archive.is_file():  # unpacked by an older peers.py that took only the HF converter
            _unpack_converter(archive, archive.parent)
        if not script.is_file():
            raise Unavailable(f"{script} is missing from the llama.cpp sources")
        return LlamaConvert(conv.python, script, conv.env, conv.version)

    # -- llama.cpp converter ------------------------------------------------------------------
    def llama_convert(self) -> LlamaConvert:
        if isinstance(self._convert, str):
            raise Unavailable(self._convert)
        if self._convert is None:
            try:
                self._convert = self._setup_convert()
            except (Unavailable, OSError, subprocess.TimeoutExpired, tarfile.TarError) as err:
                self._convert = str(err)
                raise Unavailable(self._convert) from None
        return self._convert

    def _setup_convert(self) -> LlamaConvert:
        version = llama_cpp_python_version()
        root = self.cache / "sdist" / f"llama_cpp_python-{version}"
        llama = root / "vendor" / "llama.cpp"
        script = llama / "convert_hf_to_gguf.py"
        if not script.is_file():
            if not self.install:
                raise Unavailable(f"llama.cpp's converter is not unpacked in {root} (run without --no-install)")
            download = self.cache / "sdist"
            download.mkdir(parents=True, exist_ok=True)
            archive = download / f"llama_cpp_python-{version}.tar.gz"
            if not archive.is_file():
                _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
                      "-d", str(download), f"llama-cpp-python=={version}"], self.log)
            _unpack_converter(archive, download)
        requirements = converter_requirements(llama / "requirements" / "requirements-convert_hf_to_gguf.txt")
        python = _venv(self.cache / "venvs" / "llamacpp", [[TORCH], requirements + GGUF_PY_DEPS],
                       "\n".join([TORCH, *requirements, *GGUF_PY_DEPS]) + "\n", self.install, self.log)
        env = {"PYTHONPATH": str(llama / "gguf-py")}
        return LlamaConvert(python=python, script=script, env=env, version=version)

    # -- llama.cpp quantizer ------------------------------------------------------------------
    @staticmethod
    def quantize_command(python: str, source: Path, out: Path, qtype: str, threads: int) -> list[str]:
        return [python, str(HERE / "llama_quantize.py"), str(source), str(out), qtype, "--threads", str(threads)]

    def versions(self) -> dict[str, str | None]:
        """What each peer is, for the machine description."""
        info: dict[str, str | None] = {}
        mk = self._mergekit if isinstance(self._mergekit, Path) else None
        info["mergekit"] = MERGEKIT.split("==")[1] if mk else None
        conv = self._convert if isinstance(self._convert, LlamaConvert) else None
        info["llama.cpp convert_hf_to_gguf.py"] = f"from llama-cpp-python {conv.version} sdist" if conv else None
        return info


def llama_cpp_python_version() -> str:
    """The llama-cpp-python version of the project's venv (the converter must match the library)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return LLAMA_CPP_PYTHON_FALLBACK


def _unpack_converter(archive: Path, dest: Path) -> None:
    """Unpack only what the converter needs (script, its package, gguf-py, requirements, licence)."""
    wanted = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "requirements/", "LICENSE")
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(wanted) and (m.isfile() or m.isdir()):
                members.append(m)
        if not members:
            raise Unavailable(f"{archive} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        tar.extractall(dest, members=members, filter="data")


def converter_requirements(path: Path) -> list[str]:
    """The converter's requirement lines (following ``-r``), without index options, torch and gguf."""
    found: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            found += converter_requirements(path.parent / line[2:].strip())
            continue
        if line.startswith("-"):
            continue  # --extra-index-url and the like: PyPI only here
        name = re.split(r"[<>=~!\[; ]", line, maxsplit=1)[0].lower()
        if name in ("torch", "gguf"):
            continue
        found.append(line)
    return found


def main() -> int:
    """Install every peer now (``python benchmarks/peers.py [CACHE]``) and print where they are."""
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.synthetic import default_cache

    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else default_cache()
    peers = Peers(cache)
    report: dict[str, str] = {}
    for name, setup in (("mergekit", peers.mergekit), ("llama.cpp convert", peers.llama_convert)):
        try:
            report[name] = str(setup())
        except Unavailable as err:
            report[name] = f"not available: {err}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
