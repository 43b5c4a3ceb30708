"""The I/O floor of a merge: read three models and write one model's bytes, nothing else.

``python io_floor.py CP BASE CHAT OUT_DIR`` reads every weight file of the three folders in
lock-step, 16 MB at a time (as a streaming merge reads a tensor from each), and writes the CP's
bytes to ``OUT_DIR``. Reading and writing overlap (a reader thread and the writing main thread,
handing over a small ring of reused buffers), as they do in a pipelined merge; a sequential
floor would be one that an overlapped merge can beat. No parsing, no arithmetic: no merge that
reads its inputs and writes its output through the file system can be faster on the same
machine, so a merge's time divided by this one is its overhead.
"""
from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path

BLOCK = 16 << 20
RING = 4


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 4:
        print("usage: io_floor.py CP BASE CHAT OUT_DIR", file=sys.stderr)
        return 2
    cp, base, chat, out = (Path(a) for a in args)
    out.mkdir(parents=True, exist_ok=False)
    free: queue.Queue = queue.Queue()
    for _ in range(RING):
        free.put([memoryview(bytearray(BLOCK)) for _ in range(3)])
    filled: queue.Queue = queue.Queue()
    files = list(zip(weight_files(cp), weight_files(base), weight_files(chat)))

    def reader() -> None:
        for index, group in enumerate(files):
            handles = [open(f, "rb", buffering=0) for f in group]
            try:
                while True:
                    views = free.get()
                    n = handles[0].readinto(views[0])
                    handles[1].readinto(views[1])
                    handles[2].readinto(views[2])
                    filled.put((index, views, n))
                    if not n:
                        break
            finally:
                for h in handles:
                    h.close()
        filled.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    outputs: dict[int, object] = {}
    while (item := filled.get()) is not None:
        index, views, n = item
        if index not in outputs:
            outputs[index] = open(out / files[index][0].name, "wb", buffering=0)
        if n:
            outputs[index].write(views[0][:n])  # type: ignore[attr-defined]
        else:
            outputs.pop(index).close()  # type: ignore[attr-defined]
        free.put(views)
    thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
