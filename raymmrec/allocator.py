"""Keep freed memory in the process heap instead of handing it back to the kernel (glibc only).

A training step frees and re-allocates the same few megabyte-sized buffers (gradients of the
feature tables, propagated tables) every step. glibc serves blocks that large with ``mmap`` and
returns them with ``munmap``, so every step pays page faults to touch fresh pages again: for BM3 on
lfm2k, zero-filling one 2.9 MB gradient took 1.2 ms against 0.2 ms for a reused block. Raising
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps those blocks in the heap, where the next step
reuses them: 10 to 15 % off a BM3 epoch on CPU, with the same peak memory.

Tables larger than the 32 MiB ceiling (a million users' 64-d embeddings are 256 MB) still go to ``mmap``
whatever the threshold: :func:`keep_large_blocks` then serves every block from the heap
(``M_MMAP_MAX`` = 0). LightGCN at a million users: a step of batch 65536 went from 4.85 to 3.11 s (two
threads), the peak from 3.9 to 6.1 GiB (``benchmarks/bench_phases.py``; docs/growth.md).

It is process-wide, idempotent, and a no-op outside glibc; ``RAYMMREC_MALLOC_TUNING=0`` turns it off,
``RAYMMREC_MALLOC_TUNING=threshold`` keeps the thresholds but not :func:`keep_large_blocks`.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap (the most glibc accepts on 64-bit)
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it is returned
# the same once the heap serves blocks of any size: 0, free memory at the top of the heap goes back at
# once. Measured at 1M users (bench_phases.py, two invocations): a step 1.56x faster than without
# keep_large_blocks with 0 here, 1.35x with 1 GiB kept. (mallopt takes a C int: 4 GiB would wrap to 0.)
LARGE_TRIM_THRESHOLD = 0

_mallopt = None

_done: bool | None = None
_large: bool | None = None


def _libc_mallopt():
    """glibc's ``mallopt``, or None (tuning off, not Linux, or not glibc)."""
    global _mallopt
    if os.environ.get("RAYMMREC_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    if _mallopt is None:
        try:
            fn = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
            return None
        fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _mallopt = fn
    return _mallopt


def tune_allocator() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    mallopt = _libc_mallopt()
    if mallopt is None:
        return _done
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done


def keep_large_blocks(largest_bytes: int) -> bool:
    """Serve blocks of any size from the heap once a table of ``largest_bytes`` is over the mmap ceiling.

    Below the ceiling it does nothing (``tune_allocator`` already keeps those blocks). Above it, every
    step would map and fault in its gradients and propagated tables afresh; the price of keeping them
    is a higher peak (freed blocks wait in the heap for reuse). True when the setting is in effect.
    """
    global _large
    if _large:
        return True
    if largest_bytes < MMAP_THRESHOLD or os.environ.get("RAYMMREC_MALLOC_TUNING") == "threshold" or not tune_allocator():
        return False
    mallopt = _libc_mallopt()
    _large = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGE_TRIM_THRESHOLD))
    return _large
