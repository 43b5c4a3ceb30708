"""glibc malloc settings for a process that streams chunk-sized buffers between threads.

The streaming commands allocate and free buffers of 16 MB and up (torch tensors, through malloc)
from a reader, a compute and a writer thread. glibc's defaults suit them badly in two ways:

* every thread gets its own arena and keeps freed memory in it, so each arena ends up holding
  its own few chunks (more peak memory);
* the mmap and trim thresholds move with the allocations, so chunk-sized blocks keep going back
  to the kernel and coming back as fresh pages that must be faulted in and zeroed (system time).

One arena, a fixed 64 MB mmap threshold (chunks come from the heap and are reused) and a 128 MB
trim threshold (at most that much free memory is kept) fix both. Measured on a 1.1B merge
(2 cores): minor page faults 547 K -> about 150 K and wall time 7.3 -> 5.6-6.0 s against glibc's
defaults; peak anonymous memory of the one-pass merge to GGUF went from 1,019 MB (default
arenas) to about 900 MB. A C library without ``mallopt`` is left alone.
"""
from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 64 << 20  # larger than a chunk: chunks are recycled inside the heap
TRIM_THRESHOLD_BYTES = 128 << 20  # free memory the heap may keep before giving it back


def tune_malloc() -> None:
    """One arena and fixed mmap/trim thresholds, before any worker thread starts (no-op off glibc)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 1)
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
