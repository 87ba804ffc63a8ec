"""Keep a training step's freed memory in the process heap while training runs (glibc only).

A training step frees and re-allocates the same few megabyte-sized buffers (gradients of the
feature tables, propagated tables) every step. glibc serves blocks that large with ``mmap`` and
returns them with ``munmap``, so every step pays page faults to touch fresh pages again: for BM3 on
lfm2k, zero-filling one 2.9 MB gradient took 1.2 ms against 0.2 ms for a reused block. Raising
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps those blocks in the heap, where the next step
reuses them: 10 to 15 % off a BM3 epoch on CPU, with the same peak memory.

Tables larger than the 32 MiB ceiling (a million users' 64-d embeddings are 256 MB) still go to ``mmap``
whatever the threshold: then every block is served from the heap (``M_MMAP_MAX`` = 0). LightGCN at a
million users: a step of batch 65536 went from 4.85 to 3.11 s (two threads), the peak from 3.9 to
6.1 GiB (``python -m benchmarks.bench_growth phases``; docs/benchmarks.md).

The settings are process-wide, so they hold only inside :func:`training_heap`, which the training
loop enters around its epochs on CPU (:meth:`raymmrec.train.loop.Trainer.fit`). A process that only
loads and scores a model (``recommend``, ``evaluate``, a Serve replica, an unlearning task outside
its gold retraining) never changes them: held in one that scored a 400k-user LightGCN, they kept
836 MiB resident over its baseline after scoring and 710 MiB after it freed the model, against 255
and 157 MiB without (``bench_growth phases --serving``; docs/benchmarks.md). On leaving, glibc's starting
values come back and free heap memory is returned (``malloc_trim``); glibc cannot switch its dynamic
mmap threshold back on, so the process keeps those starting values. A no-op outside glibc;
``RAYMMREC_MALLOC_TUNING=0`` turns it off, ``RAYMMREC_MALLOC_TUNING=threshold`` keeps the thresholds
but not the large blocks.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap (the most glibc accepts on 64-bit)
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it is returned
# the same once the heap serves blocks of any size: 0, free memory at the top of the heap goes back at
# once. Measured at 1M users (bench_growth phases, two invocations): a step 1.56x faster than without
# large blocks with 0 here, 1.35x with 1 GiB kept. (mallopt takes a C int: 4 GiB would wrap to 0.)
LARGE_TRIM_THRESHOLD = 0
# glibc's own starting values (malloc.c: DEFAULT_MMAP_THRESHOLD_MIN, DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX),
# each with the GLIBC_TUNABLES name and the environment variable that set it at start-up
DEFAULTS = {
    M_MMAP_MAX: ("glibc.malloc.mmap_max", "MALLOC_MMAP_MAX_", 65536),
    M_MMAP_THRESHOLD: ("glibc.malloc.mmap_threshold", "MALLOC_MMAP_THRESHOLD_", 128 << 10),
    M_TRIM_THRESHOLD: ("glibc.malloc.trim_threshold", "MALLOC_TRIM_THRESHOLD_", 128 << 10),
}
SETTINGS = ("0", "1", "threshold")  # values of RAYMMREC_MALLOC_TUNING (unset: 1)

_libc: Any = None
_lock = threading.Lock()
_depth = 0  # training_heap contexts open in this process
_on = False  # the thresholds are in effect
_large = False  # every block is served from the heap (M_MMAP_MAX = 0)


def check_setting() -> str:
    """``RAYMMREC_MALLOC_TUNING``'s value, or a one-line error naming it (runs check it before they load data)."""
    value = os.environ.get("RAYMMREC_MALLOC_TUNING", "1")
    if value not in SETTINGS:
        raise ValueError(f"RAYMMREC_MALLOC_TUNING={value!r}: expected one of {', '.join(SETTINGS)}")
    return value



def _glibc() -> Any:
    """glibc, or None (tuning off, not Linux, or not glibc)."""
    global _libc
    if check_setting() == "0" or not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            libc = ctypes.CDLL(None)
            libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
            return None
        _libc = libc
    return _libc


def startup_value(param: int) -> int:
    """The value glibc started this process with: its default, or what GLIBC_TUNABLES or MALLOC_*_ set."""
    tunable, alias, default = DEFAULTS[param]
    given = dict(kv.split("=", 1) for kv in os.environ.get("GLIBC_TUNABLES", "").split(":") if "=" in kv)
    for value in (given.get(tunable), os.environ.get(alias)):
        try:
            return int(value, 0)
        except (TypeError, ValueError):
            continue
    return default


@contextmanager
def training_heap(largest_bytes: int = 0) -> Iterator[bool]:
    """Freed step buffers stay in the heap inside this block; glibc's starting values again after it.

    ``largest_bytes`` is the largest table's size: over the 32 MiB mmap ceiling, blocks of any size
    come from the heap too (at the price of a higher peak). Yields True when settings are in effect.
    Nested blocks share the settings; the outermost one restores them and trims the heap.
    """
    global _depth, _on, _large
    libc = _glibc()
    if libc is None:
        yield False
        return
    large = largest_bytes >= MMAP_THRESHOLD and check_setting() != "threshold"
    with _lock:
        if _depth == 0:
            _on = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        if large and _on and not _large:
            _large = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, LARGE_TRIM_THRESHOLD))
        _depth += 1
        on = _on
    try:
        yield on
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for param in DEFAULTS:
                    libc.mallopt(param, startup_value(param))
                _on = _large = False
                libc.malloc_trim(0)  # free pages anywhere in the heap go back to the kernel
