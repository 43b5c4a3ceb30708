"""Progress reporting for the streaming loop: bytes written, tensors done, rate and ETA."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from cvlocal.ui import byte_progress


@contextmanager
def tensor_progress(description: str, total_bytes: int, total_tensors: int, quiet: bool) -> Iterator[Callable[[int, bool], None]]:
    """Yield ``advance(nbytes, tensor_done)``; the bar shows bytes, rate, ETA and tensors done."""
    with byte_progress(quiet) as progress:
        task = progress.add_task(description, total=total_bytes, detail=f"0/{total_tensors} tensors")
        done = 0

        def advance(nbytes: int, tensor_done: bool) -> None:
            nonlocal done
            if tensor_done:
                done += 1
            progress.update(task, advance=nbytes, detail=f"{done}/{total_tensors} tensors")

        yield advance
