"""Where sweep points run. :class:`LocalExecutor` runs them in this process, one after the other;
``cvlocal.sweep.ray_executor.RayExecutor`` (the ``cluster`` extra) has the same ``run`` method and
runs each point as a Ray task. The report layer only sees the gathered results, so the output is
the same whichever ran the points."""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from cvlocal.sweep.point import PointTask, run_point

OnResult = Callable[[PointTask, dict[str, Any]], None]


class Executor(Protocol):
    def run(self, tasks: Sequence[PointTask], on_result: OnResult) -> None: ...


class LocalExecutor:
    """Points in this process in the given order; ``on_result`` is called as each one finishes
    (so an interrupt keeps every finished point, and the one in progress resumes from its items)."""

    def run(self, tasks: Sequence[PointTask], on_result: OnResult) -> None:
        for task in tasks:
            on_result(task, run_point(task))
