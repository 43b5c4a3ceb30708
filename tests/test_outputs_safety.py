"""Issue 12, outputs: no command destroys an input or a path it did not create; faults give one line.

Independent truths used here: the inputs' bytes (sha256) before and after, the kernel's own file
size limit (``RLIMIT_FSIZE`` with SIGXFSZ ignored, so writes fail with EFBIG as on a full disk), a
real SIGKILL sent from this process to a running merge, and the live thread list.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cvlocal.outputs.atomic import partial_path
from cvlocal.outputs.overlap import overlap
from tests.merge_helpers import ROOT, assert_one_line_error, cli, cli_proc

def _digest(path: Path) -> str:
    """sha256 over every file under ``path`` (names and bytes), to prove an input is untouched."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".partial-" in p.name or p.name.startswith(".cvlocal-merge-")]


@pytest.fixture
def fam_copy(tiny_family, tmp_path):
    """The llama2 family copied into this test's folder (tests here try to destroy it)."""
    fam = tiny_family("llama2")
    root = tmp_path / "models"
    root.mkdir()
    for name in ("base", "chat", "cp"):
        shutil.copytree(getattr(fam, name), root / name)
    return root


def _merge_args(root: Path, out: Path, *extra: object) -> list[object]:
    return ["merge", root / "cp", "--base", root / "base", "--chat", root / "chat", "-o", out, *extra]


# ---- the output-path policy: is, lies inside, contains; by path, symlink and inode ----------------
def test_overlap_by_path_symlink_and_hard_link(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "w.bin"
    weights.write_bytes(b"x")
    os.link(weights, tmp_path / "hard.bin")
    (tmp_path / "link").symlink_to(folder)
    assert overlap(folder, folder) == "is"
    assert overlap(tmp_path / "link", folder) == "is"
    assert overlap(tmp_path / "hard.bin", weights) == "is"
    assert overlap(tmp_path / "link" / "new.gguf", folder) == "lies inside"
    assert overlap(tmp_path, folder) == "contains"
    assert overlap(tmp_path / "other.gguf", folder) is None
    assert overlap(tmp_path / "model2", folder) is None  # a shared prefix is not a parent


@pytest.mark.parametrize("where", ["is the cp", "inside the cp", "holds the cp", "symlink to the cp"])
def test_merge_force_never_replaces_an_input(fam_copy, tmp_path, where):
    cp = fam_copy / "cp"
    out = {"is the cp": cp, "inside the cp": cp / "merged", "holds the cp": fam_copy, "symlink to the cp": tmp_path / "alias"}[where]
    if where == "symlink to the cp":
        out.symlink_to(cp)
    before = _digest(fam_copy)
    proc = cli(*_merge_args(fam_copy, out, "--force", "--quiet"), check=False)
    assert_one_line_error(proc, "input", "--force or not")
    assert _digest(fam_copy) == before


def test_one_pass_merge_into_a_file_inside_the_cp_is_refused(fam_copy):
    out = fam_copy / "cp" / "model.gguf"
    before = _digest(fam_copy)
    proc = cli(*_merge_args(fam_copy, out, "--force", "--quiet"), check=False)
    assert_one_line_error(proc, "lies inside the input")
    assert _digest(fam_copy) == before and not out.exists()


def test_extract_force_onto_the_chat_model_is_refused(fam_copy):
    before = _digest(fam_copy)
    proc = cli("extract", fam_copy / "base", fam_copy / "chat", "-o", fam_copy / "chat", "--force", "--quiet", check=False)
    assert_one_line_error(proc, "is the input")
    assert _digest(fam_copy) == before


def test_convert_into_the_model_folder_and_onto_a_hard_link_are_refused(fam_copy, tmp_path):
    model = fam_copy / "cp"
    before = _digest(fam_copy)
    proc = cli("convert", model, "-o", model / "x.gguf", "--quiet", check=False)
    assert_one_line_error(proc, "lies inside the input")
    os.link(model / "model.safetensors", tmp_path / "linked.gguf")
    proc = cli("convert", model, "-o", tmp_path / "linked.gguf", "--force", "--quiet", check=False)
    assert_one_line_error(proc, "is", "a file of the input")
    assert _digest(fam_copy) == before


def test_quantize_onto_a_hard_link_of_its_input_is_refused(tiny_gguf, tmp_path):
    src = tmp_path / "in.gguf"
    shutil.copyfile(tiny_gguf("llama2", "f16"), src)
    os.link(src, tmp_path / "same.gguf")
    before = _digest(src)
    proc = cli("quantize", src, "-o", tmp_path / "same.gguf", "--type", "q8_0", "--force", "--quiet", check=False)
    assert_one_line_error(proc, "is the input")
    assert _digest(src) == before


def test_release_into_the_folder_holding_its_source_is_refused(tiny_gguf, tmp_path):
    folder = tmp_path / "rel"
    folder.mkdir()
    src = folder / "model-F16.gguf"
    shutil.copyfile(tiny_gguf("llama2", "f16"), src)
    before = _digest(folder)
    proc = cli("release", src, "-o", folder, "--types", "q8_0", "--force", "--quiet", check=False)
    assert_one_line_error(proc, "contains the input")
    assert _digest(folder) == before


def test_release_force_never_writes_into_a_folder_that_is_not_a_release(tiny_gguf, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    proc = cli("release", tiny_gguf("llama2", "f16"), "-o", folder, "--types", "q8_0", "--force", "--quiet", check=False)
    assert_one_line_error(proc, "not a release folder")
    assert [p.name for p in folder.iterdir()] == ["README.md"] and (folder / "README.md").read_text() == "my notes\n"


def test_demo_force_onto_its_assets_is_refused(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(ROOT / "assets" / "demo", assets)
    before = _digest(assets)
    proc = cli("demo", "--assets", assets, "--out", assets, "--force", "--quiet", check=False)
    assert_one_line_error(proc, "is the input")
    assert _digest(assets) == before


# ---- --force replaces only what the command recognises as its own output --------------------------
def test_force_never_removes_a_folder_of_other_things(fam_copy, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    for out in (mine, tmp_path / "photos.gguf"):
        if out.suffix:
            out.mkdir()
            (out / "keep.txt").write_text("keep")
        proc = cli(*_merge_args(fam_copy, out, "--force", "--quiet"), check=False)
        assert proc.returncode == 2 and "--force or not" in proc.stderr, proc.stderr
    assert (mine / "cat.jpg").read_bytes() == b"\xff\xd8 not really"
    assert (tmp_path / "photos.gguf" / "keep.txt").read_text() == "keep"


def test_force_replaces_the_commands_own_previous_output(fam_copy, tmp_path):
    out = tmp_path / "vec"
    cli("extract", fam_copy / "base", fam_copy / "chat", "-o", out, "--quiet")
    first = (out / "chat_vector.json").stat().st_mtime_ns
    cli("extract", fam_copy / "base", fam_copy / "chat", "-o", out, "--quiet", "--force")
    assert (out / "chat_vector.json").stat().st_mtime_ns != first
    merged = tmp_path / "merged"
    cli("merge", fam_copy / "cp", "--vector", out, "-o", merged, "--quiet")
    cli("merge", fam_copy / "cp", "--vector", out, "-o", merged, "--quiet", "--force")
    assert (merged / "cvlocal_recipe.json").is_file() and not _partials(tmp_path)


# ---- early validation: options before any input is opened ----------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["merge", "MISSING", "--base", "MISSING", "--chat", "MISSING", "-o", "OUT/x.gguf", "--outtype", "q9_z"], "unknown output type"),
    (["merge", "MISSING", "--base", "MISSING", "--chat", "MISSING", "-o", "OUT/x.gguf", "--threads", "0"], "--threads 0"),
    (["convert", "MISSING", "-o", "OUT/x.gguf", "--threads", "-2"], "--threads -2"),
    (["quantize", "MISSING.gguf", "-o", "OUT/x.gguf", "--type", "q9_z"], "unknown output type"),
])
def test_options_are_checked_before_inputs(tmp_path, argv, needle):
    args = [a.replace("MISSING", str(tmp_path / "missing")).replace("OUT", str(tmp_path)) for a in argv]
    assert_one_line_error(cli(*args, "--quiet", check=False), needle)


def test_one_pass_merge_errors_name_the_users_file_not_a_temporary_folder(fam_copy, tmp_path):
    # the converter (not the merge) refuses this config key: the error comes from the side folder
    config = fam_copy / "cp" / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps_"'))
    proc = cli(*_merge_args(fam_copy, tmp_path / "x.gguf", "--quiet"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert str(fam_copy / "cp") in proc.stderr and ".partial-" not in proc.stderr and "cvlocal-merge" not in proc.stderr
    assert not _partials(tmp_path) and not (tmp_path / "x.gguf").exists()


# ---- faults: a full disk through RLIMIT_FSIZE ------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run_limited(args: list[object], limit: int = 1_500_000) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cvlocal", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, preexec_fn=_file_size_limit(limit), timeout=300)


def _assert_disk_fault(proc: subprocess.CompletedProcess, out: Path) -> None:
    # The converter's tokenizer warning may come first (warnings show even with --quiet).
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == lines[0] == f"cvlocal: error: {out}: File too large"
    assert not out.exists() and not _partials(out.parent), list(out.parent.iterdir())


def test_one_pass_merge_on_a_full_disk_stops_every_thread_and_says_one_line(fam_copy, tmp_path):
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    for _ in range(3):  # the abort (exit 134, "terminate called without an active exception") was intermittent
        _assert_disk_fault(_run_limited(_merge_args(fam_copy, out, "--quiet")), out)


@pytest.mark.parametrize("command", ["merge-hf", "merge-q8_0", "extract", "convert"])
def test_full_disk_is_one_line_for_every_writer(fam_copy, tmp_path, command):
    out = tmp_path / "out" / ("o.gguf" if command in ("merge-q8_0", "convert") else "o")
    out.parent.mkdir()
    args = {
        "merge-hf": _merge_args(fam_copy, out, "--quiet"),
        "merge-q8_0": _merge_args(fam_copy, out, "--outtype", "q8_0", "--quiet"),
        "extract": ["extract", fam_copy / "base", fam_copy / "chat", "-o", out, "--quiet"],
        "convert": ["convert", fam_copy / "cp", "-o", out, "--outtype", "f32", "--quiet"],
    }[command]
    _assert_disk_fault(_run_limited(args, limit=400_000 if command == "merge-q8_0" else 1_500_000), out)


def test_llama_cpp_quantizer_past_a_file_size_limit_is_one_line(tiny_gguf, tmp_path):
    out = tmp_path / "out" / "q.gguf"
    out.parent.mkdir()
    _assert_disk_fault(_run_limited(["quantize", tiny_gguf("llama2", "f16"), "-o", out, "--type", "q4_k_m", "--quiet"], limit=200_000), out)


def test_a_failing_consumer_leaves_no_merge_thread_running(fam_copy, tmp_path, monkeypatch):
    """The GGUF writer fails mid-stream: every pipeline thread is joined before the error arrives."""
    from convert import gguf_stream
    from cvlocal.vector.merge import merge_models

    calls = {"n": 0}
    original = gguf_stream.StreamingWriter.write_tensor

    def failing(self, name, pieces):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return original(self, name, pieces)

    monkeypatch.setattr(gguf_stream.StreamingWriter, "write_tensor", failing)
    with pytest.raises(OSError) as caught:  # the traceback (and its frames) stays alive here
        merge_models(fam_copy / "cp", tmp_path / "m.gguf", base=fam_copy / "base", chat=fam_copy / "chat", quiet=True)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("cvlocal-")]
    assert alive == [], alive
    assert caught.value.errno == 28 and caught.value.filename == str(tmp_path / "m.gguf")  # the user's file
    assert not _partials(tmp_path)


# ---- SIGKILL leaves partials; the next run removes the stale ones and says so ----------------------
_SLOW_MERGE = textwrap.dedent("""
    # Pause in the main thread mid-stream (signals are handled there): in the compute step of a
    # merge to a folder, in the GGUF writer of a one-pass merge.
    import sys, threading, time
    from convert import gguf_stream
    from cvlocal.vector import merge
    calls = []
    def pausing(original):
        def run(*args):
            if threading.current_thread() is threading.main_thread():
                calls.append(1)
                if len(calls) == 4:
                    print("ready", flush=True)
                    time.sleep(120)
            return original(*args)
        return run
    merge.MergeComputer.compute = pausing(merge.MergeComputer.compute)
    gguf_stream.StreamingWriter.write_tensor = pausing(gguf_stream.StreamingWriter.write_tensor)
    from cvlocal.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _signal_a_running_merge(fam_copy: Path, out: Path, signum: int) -> int:
    """Start a merge that pauses mid-stream, send it ``signum`` from here, return its exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MERGE, *map(str, _merge_args(fam_copy, out, "--quiet"))],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        os.kill(proc.pid, signum)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("name", ["merged", "m.gguf"])
def test_sigterm_stops_a_merge_and_leaves_nothing(fam_copy, tmp_path, name):
    out = tmp_path / "out" / name
    out.parent.mkdir()
    assert _signal_a_running_merge(fam_copy, out, signal.SIGTERM) == 143
    assert not out.exists() and not _partials(out.parent)


@pytest.mark.parametrize("name", ["merged", "m.gguf"])
def test_partials_of_a_killed_merge_are_removed_by_the_next_run(fam_copy, tmp_path, name):
    out = tmp_path / "out" / name
    out.parent.mkdir()
    assert _signal_a_running_merge(fam_copy, out, signal.SIGKILL) == -signal.SIGKILL
    stale = _partials(out.parent)
    assert stale and not out.exists()
    live = partial_path(out)  # a partial of a process that still runs (this one) must be left alone
    live.write_bytes(b"another run is writing this")
    done = cli_proc(*_merge_args(fam_copy, out, "--quiet"))
    assert out.exists()
    for path in stale:
        assert not path.exists() and str(path) in done.stderr and "removed" in done.stderr
    assert _partials(out.parent) == [live]


# ---- faults: a real full tmpfs (ENOSPC) and a real read-only mount (EROFS) ------------------------
def _in_private_mount(mount_options: str, command: list[object], folder: Path) -> subprocess.CompletedProcess:
    """Run ``python -m cvlocal COMMAND`` with a fresh tmpfs on ``folder`` (a private mount namespace);
    ``ls -A`` of the folder afterwards goes to stdout (the mount vanishes with the namespace)."""
    cli_line = " ".join(f"'{a}'" for a in [sys.executable, "-m", "cvlocal", *map(str, command)])
    script = f"mount -t tmpfs -o {mount_options} tmpfs '{folder}' && {{ {cli_line}; rc=$?; ls -A '{folder}'; exit $rc; }}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _private_mounts_work(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{tmp_path}'"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("command, options, meaning", [
    ("merge", "size=600k", "No space left on device"),
    ("merge", "ro,size=1m", "Read-only file system"),
    ("quantize", "size=300k", "No space left on device"),  # inside llama.cpp's quantizer
])
def test_full_and_read_only_filesystems_are_one_line(fam_copy, tiny_gguf, tmp_path, command, options, meaning):
    folder = tmp_path / "mnt"
    folder.mkdir()
    if not _private_mounts_work(folder):
        pytest.skip("no private mount namespace here (unshare -rm)")
    out = folder / "m.gguf"
    args = (_merge_args(fam_copy, out, "--quiet") if command == "merge"
            else ["quantize", tiny_gguf("llama2", "f16"), "-o", out, "--type", "q4_k_m", "--quiet"])
    proc = _in_private_mount(options, args, folder)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors == [f"cvlocal: error: {out}: {meaning}"], proc.stderr[-2000:]
    assert proc.stdout.strip() == ""  # nothing at the output path, no partial, no side folder
