"""Sweep points as Ray tasks on a Ray cluster (the ``cluster`` extra: ``pip install 'cvlocal[cluster]'``).

:class:`RayExecutor` has the same ``run(tasks, on_result)`` as the local executor: each point is
one Ray task (``run_point`` on a worker) with the resources it uses declared (``num_cpus`` = the
point's threads, ``num_gpus`` = 1 when it offloads layers), the results are gathered in the driver
as they finish (``ray.wait``) and handed to ``on_result`` there, so the cache, ``sweep.json`` and
the reports are written by the same code as a local run. Ray does all the scheduling: there is no
pool, queue or RPC of our own here.

Where it connects (``--ray [ADDRESS]``):

* ``--ray`` alone is ``auto``: the cluster this machine belongs to (``RAY_ADDRESS``, or the one
  ``ray start`` made here); none is an error, never a silent start of a new cluster;
* ``--ray HOST:PORT`` or ``--ray ray://HOST:10001``: that cluster;
* ``--ray local``: a private Ray instance on this machine for this sweep only, bound to the loopback
  interface, stopped at the end (what the user asked for, so it is started).

The filesystem: a worker reads the models by the driver's paths and writes its point into the
sweep's cache folder, so every node must see the same files at the same paths (a shared
filesystem, or the same copies). Before any point runs, one small probe task per node compares what
the node sees (every input file's size and modification time, and a token file written into the
cache folder, both ways) with what the driver sees, and a node that differs stops the sweep with one
line naming the path and the fix. Shipping inputs through Ray's object store is not done.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from cvlocal.errors import UsageError, WorkError

if TYPE_CHECKING:
    from cvlocal.sweep.point import PointTask

OnResult = Callable[[Any, dict[str, Any]], None]
INPUT_FIELDS = ("cp", "base", "chat", "suites_dir", "demo_assets")  # single paths in a PointTask
INPUT_LISTS = ("vectors",)  # tuples of paths
SHARED_FIX = ("Put the models and --out on a filesystem every Ray node mounts at the same path "
              "(NFS or the like, or identical copies there) and run the sweep from there.")
EXTRA_FIX = "Install the cluster extra: pip install 'cvlocal[cluster]'."
LOCAL = "local"


# --------------------------------------------------------------------------- Ray itself


def import_ray() -> Any:
    """``ray``, or one line saying how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the Ray package, which is not installed", fix=EXTRA_FIX) from None
    return ray


def quiet_local_env() -> None:
    """Environment that keeps a Ray instance started here on the loopback interface and offline.

    Ray binds its servers to the node's IP; on Linux it resolves "127.0.0.1" to the machine's
    outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine mode), in
    which case the node IP is loopback and every server binds there. Usage statistics are off (no
    network). Must be set before ``import ray`` in this process (Ray reads it at import).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def start_local(num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Start a private Ray instance on this machine, loopback only, no dashboard, quiet."""
    quiet_local_env()
    ray = import_ray()
    try:  # already imported before the environment was set: the constant it read at import
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):
        pass
    import logging

    return ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                    log_to_driver=False, logging_level=logging.ERROR, configure_logging=True, **kwargs)


CONNECT_FIX = ("Start one (`ray start --head` on the head node, `ray start --address HEAD:6379` on the others) and "
               "pass --ray HEAD:6379, or --ray local for a private Ray instance on this machine.")


def reachable(address: str, timeout: float = 5.0) -> None:
    """A plain ``HOST:PORT`` must accept a TCP connection, checked before Ray's own connect, which
    retries for a minute or more and logs every attempt; other forms are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit() or address in ("auto", LOCAL):
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as err:
        raise UsageError(f"no Ray cluster reachable at {address!r} ({err.strerror or err})", fix=CONNECT_FIX) from None


def connect(address: str | None) -> bool:
    """Connect this process to Ray; True if this call made the connection (so ``run`` closes it).

    An existing connection (a program or test that called ``ray.init`` itself) is used as it is.
    """
    if address == LOCAL:
        ray = import_ray()
        if ray.is_initialized():
            return False
        start_local()
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = import_ray()
    if ray.is_initialized():
        return False
    import logging

    target = address or "auto"
    reachable(os.environ.get("RAY_ADDRESS", "") if target == "auto" else target)
    try:
        ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"no Ray cluster reachable at {target!r} ({first})", fix=CONNECT_FIX) from None
    return True


# --------------------------------------------------------------------------- what a node sees


def task_inputs(task: Any) -> list[str]:
    """The paths a point reads (files or folders), as the task names them."""
    paths: list[str] = []
    for name in INPUT_FIELDS:
        value = getattr(task, name, None)
        if value:
            paths.append(str(value))
    for name in INPUT_LISTS:
        paths.extend(str(v) for v in getattr(task, name, ()) or ())
    return paths


def describe(path: str) -> dict[str, Any]:
    """What this machine sees at ``path``: every file under it with its size and mtime (ns).

    Size and modification time, not a hash: the probe has to be cheap on 16 GB models, and a
    copy or a mount of the same files keeps both (``cp -p``, ``rsync -a``, NFS).
    """
    p = Path(path)
    if not p.exists():
        return {"missing": True}
    if p.is_file():
        st = p.stat()
        return {"files": {"": [st.st_size, st.st_mtime_ns]}}
    files: dict[str, list[int]] = {}
    for root, dirs, names in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in names:
            if n.startswith("."):
                continue
            f = Path(root) / n
            try:
                st = f.stat()
            except OSError:
                continue
            files[str(f.relative_to(p))] = [st.st_size, st.st_mtime_ns]
    return {"files": files}


def probe(paths: Sequence[str], cache_dir: str, token_name: str, token: str) -> dict[str, Any]:
    """Run on a node: describe the inputs, read the driver's token in the cache folder, answer with our own."""
    seen = {path: describe(path) for path in paths}
    token_file = Path(cache_dir) / token_name
    try:
        ok = token_file.read_text(encoding="utf-8") == token
    except OSError:
        ok = False
    wrote = False
    if ok:
        try:
            (Path(cache_dir) / f"{token_name}.{socket.gethostname()}.{os.getpid()}").write_text(token, encoding="utf-8")
            wrote = True
        except OSError:
            pass
    return {"host": socket.gethostname(), "inputs": seen, "cache_readable": ok, "cache_writable": wrote,
            "answer": f"{token_name}.{socket.gethostname()}.{os.getpid()}"}


def compare(driver: dict[str, dict], node: dict[str, Any], cache_dir: str, where: str) -> str | None:
    """The first difference between the driver's view and a node's, as the one-line problem; None if none."""
    for path, mine in driver.items():
        theirs = node["inputs"].get(path, {"missing": True})
        if theirs.get("missing"):
            return f"{path}: the Ray node {where} cannot see this input"
        for rel, stat in mine["files"].items():
            other = theirs["files"].get(rel)
            name = str(Path(path) / rel) if rel else path
            if other is None:
                return f"{name}: the Ray node {where} cannot see this file"
            if list(other) != list(stat):
                return (f"{name}: the Ray node {where} sees a different file (size {other[0]}, mtime {other[1]} "
                        f"against the driver's {stat[0]}, {stat[1]})")
    if not node["cache_readable"]:
        return f"{cache_dir}: the Ray node {where} does not see the sweep's cache folder (the --out folder)"
    if not node["cache_writable"]:
        return f"{cache_dir}: the Ray node {where} cannot write into the sweep's cache folder"
    return None


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def check_workers(paths: Iterable[str], cache_dir: str, driver_view: dict[str, dict] | None = None) -> int:
    """Refuse (``UsageError``) unless every Ray node with CPUs sees ``paths`` and ``cache_dir`` as the driver does.

    One probe task per node, pinned there. ``driver_view`` (default: what this process sees now)
    is what the nodes must match. Returns the number of nodes checked.
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = list(dict.fromkeys(paths))
    if driver_view is None:
        driver_view = {p: describe(p) for p in paths}
    for path, view in driver_view.items():
        if view.get("missing"):
            raise UsageError("input not found", path, "check the path")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    token_name, token = f".ray-probe-{secrets.token_hex(8)}", secrets.token_hex(16)
    token_file = cache / token_name
    token_file.write_text(token, encoding="utf-8")
    remote = ray.remote(num_cpus=0, max_retries=0)(probe)
    nodes = alive_nodes(ray)
    try:
        refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(paths, str(cache), token_name, token) for n in nodes]
        answers = ray.get(refs)
        for node, answer in zip(nodes, answers):
            where = f"{node.get('NodeManagerAddress', '?')} ({answer['host']})"
            problem = compare(driver_view, answer, str(cache), where)
            if problem is None and not (cache / answer["answer"]).is_file():
                problem = (f"{cache}: the Ray node {where} writes into another folder at this path (the driver "
                           "does not see what it wrote)")
            if problem:
                path, _, what = problem.partition(": ")
                raise UsageError(what, path, SHARED_FIX)
    finally:
        for f in cache.glob(f"{token_name}*"):
            f.unlink(missing_ok=True)
    return len(nodes)


# --------------------------------------------------------------------------- the executor


def resources(task: Any) -> dict[str, float]:
    """What one point uses: its threads as CPUs, one GPU when it offloads layers."""
    res: dict[str, float] = {"num_cpus": float(getattr(task, "threads", None) or 1)}
    if getattr(task, "n_gpu_layers", 0):
        res["num_gpus"] = 1.0
    return res


def _default_function() -> Callable[[Any], dict[str, Any]]:
    from cvlocal.sweep.point import run_point

    return run_point


class RayExecutor:
    """Run sweep points as Ray tasks; same ``run(tasks, on_result)`` as ``LocalExecutor``.

    ``address``: None or ``"auto"`` (an existing cluster), ``HOST:PORT``, ``ray://HOST:PORT``, or
    ``"local"`` (a private instance on this machine). ``threads``: CPUs per point for tasks that do
    not set theirs (without it a point would take every core of its node while Ray counts one).
    ``function``: what runs a task (default ``run_point``; a test may pass another picklable one).
    ``check``: probe the nodes' view of the inputs and the cache first (default on).
    """

    def __init__(self, address: str | None = None, *, threads: int = 1,
                 function: Callable[[Any], dict[str, Any]] | None = None, check: bool = True) -> None:
        self.address = address
        self.threads = max(1, int(threads))
        self.function = function
        self.check = check
        self.nodes_checked = 0
        self._connected = False
        self._owned = False

    def open(self) -> None:
        """Connect now (the command calls it before it writes anything, so no cluster means no files)."""
        if not self._connected:
            self._owned = connect(self.address)
            self._connected = True

    def close(self) -> None:
        """Disconnect if ``open`` made the connection (a local instance of ``--ray local`` stops)."""
        if self._connected and self._owned:
            import_ray().shutdown()
        self._connected = self._owned = False

    def prepare(self, task: Any) -> Any:
        """The task as a worker runs it: its thread count fixed, so the declared CPUs are what it uses."""
        if dataclasses.is_dataclass(task) and hasattr(task, "threads") and getattr(task, "threads") is None:
            return dataclasses.replace(task, threads=self.threads)
        return task

    def run(self, tasks: Sequence["PointTask"], on_result: OnResult) -> None:
        self.open()
        ray = import_ray()
        try:
            if not tasks:
                return
            prepared = [self.prepare(t) for t in tasks]
            if self.check:
                caches = list(dict.fromkeys(str(getattr(t, "cache_dir", "")) for t in prepared if getattr(t, "cache_dir", "")))
                paths = [p for t in prepared for p in task_inputs(t)]
                for cache in caches or [None]:
                    if cache is not None:
                        self.nodes_checked = check_workers(paths, cache)
            self._gather(ray, tasks, prepared, on_result)
        finally:
            self.close()

    def _gather(self, ray: Any, tasks: Sequence[Any], prepared: Sequence[Any], on_result: OnResult) -> None:
        """Submit every point, then hand each result to ``on_result`` in this process as it finishes."""
        remote = ray.remote(max_retries=1)(self.function or _default_function())
        pending: dict[Any, Any] = {}
        for original, task in zip(tasks, prepared):
            pending[remote.options(**resources(task)).remote(task)] = original
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                task = pending.pop(ref)
                on_result(task, self._result(ray, ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise

    @staticmethod
    def _result(ray: Any, ref: Any) -> dict[str, Any]:
        """The point's result; a point's own error is raised here as itself (bad input stays one line)."""
        from ray.exceptions import RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise WorkError(f"a sweep point failed on a Ray worker: {str(err).strip().splitlines()[-1]}") from None
