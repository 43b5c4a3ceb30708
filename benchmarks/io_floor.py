"""The I/O floor of a merge: read three models and write one model's bytes, nothing else.

``python io_floor.py CP BASE CHAT OUT_DIR`` reads every weight file of the three folders in
lock-step, 16 MB at a time (as a streaming merge reads a tensor from each), and writes the CP's
bytes to ``OUT_DIR``. No parsing, no arithmetic: no merge that reads its inputs and writes its
output through the file system can be faster on the same machine, so a merge's time divided by
this one is its overhead.
"""
from __future__ import annotations

import sys
from pathlib import Path

BLOCK = 16 << 20


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 4:
        print("usage: io_floor.py CP BASE CHAT OUT_DIR", file=sys.stderr)
        return 2
    cp, base, chat, out = (Path(a) for a in args)
    out.mkdir(parents=True, exist_ok=False)
    buffers = [bytearray(BLOCK) for _ in range(3)]
    views = [memoryview(b) for b in buffers]
    for cp_file, base_file, chat_file in zip(weight_files(cp), weight_files(base), weight_files(chat)):
        with open(cp_file, "rb", buffering=0) as fc, open(base_file, "rb", buffering=0) as fb, \
                open(chat_file, "rb", buffering=0) as fh, open(out / cp_file.name, "wb", buffering=0) as fo:
            while True:
                n = fc.readinto(views[0])
                fb.readinto(views[1])
                fh.readinto(views[2])
                if not n:
                    break
                fo.write(views[0][:n])
    return 0


if __name__ == "__main__":
    sys.exit(main())
