"""The Ray path of ``cvlocal sweep`` (issue 17) on a private Ray instance bound to 127.0.0.1.

One Ray instance for the module (start-up takes seconds on a busy machine): 2 CPUs, no dashboard,
loopback only (checked: every socket Ray's processes listen on is a loopback address), stopped in
the teardown. The executor's results are checked against the same work done in this process, the
refusal against a path that the workers do not see as the driver does.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from cvlocal.errors import UsageError  # noqa: E402
from cvlocal.sweep import ray_executor  # noqa: E402
from cvlocal.sweep.ray_executor import RayExecutor, check_workers, describe  # noqa: E402

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- the command line


def sweep_args(family, out: Path) -> list[str]:
    return ["sweep", str(family.cp), "--base", str(family.base), "--chat", str(family.chat), "--ratios", "0.5,1",
            "--suite", "dialogue,toxicity", "--lang", "en", "--limit", "1", "--samples", "2", "--max-tokens", "8",
            "--threads", "1", "--parallel", "1", "--out", str(out), "--quiet"]


def without_host(report: dict) -> dict:
    """sweep.json less what may differ between two runs of one sweep (the report's own rule: timings,
    where it ran, and what this run wrote and loaded, which the test checks apart)."""
    from cvlocal.sweep.report import comparable

    return comparable(report)


def test_sweep_with_ray_and_no_cluster_is_one_line(tiny_family, tmp_path, capfd):
    """--ray connects to an existing cluster and never starts one: none at the address is exit 2, at once.

    First in the file, so that this process is not connected to the module's own Ray instance yet."""
    from cvlocal.cli import main

    if ray.is_initialized():
        ray.shutdown()
    family = tiny_family("llama3")
    started = time.monotonic()
    code = main([*sweep_args(family, tmp_path / "out"), "--ray", "127.0.0.1:1"])  # nothing listens on port 1
    err = capfd.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no Ray cluster reachable at '127.0.0.1:1'" in lines[0] and "ray start --head" in lines[0]
    assert not ray.is_initialized() and time.monotonic() - started < 60
    assert not (tmp_path / "out").exists(), "the refused sweep left files behind"


@pytest.fixture(scope="module")
def local_ray():
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED", "RAY_DEDUP_LOGS")}
    if ray.is_initialized():
        ray.shutdown()
    # Ray's session files (logs, sockets) in a folder of the test's own, short enough for socket paths
    temp = tempfile.mkdtemp(prefix="cvray")
    ray_executor.start_local(num_cpus=2, _temp_dir=temp)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_processes() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True)]


def test_local_ray_listens_on_loopback_only(local_ray):
    ray.get(ray.remote(lambda: 1).remote())  # at least one worker up
    listening = []
    for proc in ray_processes():
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (not c.raddr and c.type == 2):
                listening.append((proc.name(), c.laddr.ip, c.laddr.port))
    assert listening, "found no Ray server socket at all: the check would be vacuous"
    outward = [x for x in listening if not ipaddress.ip_address(x[1].removeprefix("::ffff:")).is_loopback]
    assert not outward, f"Ray listens beyond loopback: {outward}"
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


# ---------------------------------------------------------------- the executor on a stand-in task


@dataclass(frozen=True)
class Square:
    """A picklable stand-in for a PointTask: the executor only needs threads and paths."""

    x: int
    threads: int | None = None
    n_gpu_layers: int = 0
    cache_dir: str = ""
    cp: str | None = None


OTHERS = 3  # tasks 1, 2 and 3


def square(task: Square) -> dict:
    """Task 0 finishes only once the driver has been handed every other task's result (or 60 s pass)."""
    waited = None
    if task.x == 0:
        arrived = lambda: len(list(Path(task.cache_dir).glob("result-arrived-*")))  # noqa: E731
        start = time.monotonic()
        while arrived() < OTHERS and time.monotonic() - start < 60:
            time.sleep(0.05)
        waited = arrived() == OTHERS
    return {"x": task.x, "y": task.x * task.x, "pid": os.getpid(), "threads": task.threads, "waited": waited}


def test_executor_runs_each_task_as_a_ray_task(local_ray, tmp_path):
    tasks = [Square(i, cache_dir=str(tmp_path / "cache"), cp=str(tmp_path)) for i in range(OTHERS + 1)]
    got: list[tuple[Square, dict]] = []

    def on_result(task: Square, result: dict) -> None:
        got.append((task, result))
        (tmp_path / "cache" / f"result-arrived-{task.x}").touch()

    RayExecutor(threads=1, function=square).run(tasks, on_result)
    assert sorted(r["y"] for _, r in got) == [0, 1, 4, 9]
    assert all(r["x"] == t.x for t, r in got), "a result was handed to on_result with another task"
    assert {r["pid"] for _, r in got}.isdisjoint({os.getpid()}), "the tasks ran in the driver, not on Ray workers"
    assert all(r["threads"] == 1 for _, r in got)
    first = next(r for t, r in got if t.x == 0)
    assert first["waited"], "results were gathered in submission order, not as they finished"
    assert got[-1][0].x == 0
    assert ray.is_initialized(), "the executor closed a connection it did not open"
    assert not list((tmp_path / "cache").glob(".ray-probe-*")), "the probe left files in the cache"
    assert RayExecutor().prepare(Square(0, threads=None)).threads == 1


def test_declared_resources():
    assert ray_executor.resources(Square(0, threads=3)) == {"num_cpus": 3.0}
    assert ray_executor.resources(Square(0, threads=2, n_gpu_layers=99)) == {"num_cpus": 2.0, "num_gpus": 1.0}


def test_a_point_that_needs_more_cpus_than_a_node_has_is_not_silently_run(local_ray, tmp_path):
    refs = ray.remote(square).options(**ray_executor.resources(Square(0, threads=3))).remote(Square(0))
    ready, _ = ray.wait([refs], timeout=3)
    assert not ready, "Ray ran a 3-CPU task on a 2-CPU instance: the declared resources are not applied"
    ray.cancel(refs)


# ---------------------------------------------------------------- what the workers see


def test_check_accepts_what_the_workers_see(local_ray, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 1000)
    assert check_workers([str(model)], str(tmp_path / "cache")) == 1


def test_check_refuses_an_input_the_workers_do_not_see(local_ray, tmp_path, capsys):
    model = tmp_path / "only-on-the-driver"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 1000)
    driver_view = {str(model): describe(str(model))}
    (model / "model.safetensors").unlink()
    model.rmdir()  # the driver saw it; the worker will not
    with pytest.raises(UsageError) as err:
        check_workers([str(model)], str(tmp_path / "cache"), driver_view=driver_view)
    line = str(err.value)
    assert str(model) in line and "cannot see" in line and "every Ray node mounts" in line
    assert "\n" not in line


def test_check_refuses_a_different_copy(local_ray, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"x" * 1000)
    driver_view = {str(model): describe(str(model))}
    weights.write_bytes(b"y" * 999)  # the worker's copy differs
    with pytest.raises(UsageError) as err:
        check_workers([str(model)], str(tmp_path / "cache"), driver_view=driver_view)
    assert str(weights) in str(err.value) and "different file" in str(err.value)


def test_check_refuses_a_cache_the_workers_do_not_share(local_ray, tmp_path):
    answer = ray_executor.probe([], str(tmp_path / "elsewhere"), ".ray-probe-x", "token")
    problem = ray_executor.compare({}, answer, str(tmp_path / "cache"), "10.0.0.2 (node-b)")
    assert problem and problem.startswith(str(tmp_path / "cache")) and "does not see the sweep's cache" in problem


# ---------------------------------------------------------------- a real sweep through Ray

def test_a_sweep_through_ray_writes_the_same_sweep_json_as_a_local_run(local_ray, tiny_family, tmp_path):
    import json
    import subprocess
    import sys

    from cvlocal.cli import main

    family = tiny_family("llama3")
    assert main(sweep_args(family, tmp_path / "local")) == 0
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-m", "cvlocal", *sweep_args(family, tmp_path / "ray"), "--ray", address],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    local = json.loads((tmp_path / "local" / "sweep.json").read_text(encoding="utf-8"))
    remote = json.loads((tmp_path / "ray" / "sweep.json").read_text(encoding="utf-8"))
    assert remote["host"]["executor"] == "ray" and local["host"]["executor"] == "local"
    assert [p["label"] for p in remote["points"]] == ["CP", "chat", "r=0.5", "r=1"]
    assert remote["work"]["points_run"] == 4 and remote["work"]["model_loads"] == 4
    assert without_host(remote) == without_host(local)

