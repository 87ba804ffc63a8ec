"""The item-item kNN graph (CM3, LIRDRec) built in item blocks as Ray tasks.

:func:`raymmrec.graph.build.knn_graph` cuts the similarity matrix into row blocks of ``block_size``
items and hands them to a :data:`~raymmrec.graph.build.BlockMap`. :class:`RayBlockMap` is one that
puts the features (and the norms, and the excluded ids) in the object store once, then runs the
blocks as tasks: each task reads the features zero-copy from the object store, computes the top-k
neighbours of its rows with the core's :func:`~raymmrec.graph.build.knn_block`, and returns only their
ids (``rows x k`` integers). The driver assembles the same CSR matrix as the one-process build.

* Same graph: every block is the same span of rows as in the one-process build and goes through
  the same function, so it is the same matrix product and the same tie-breaking
  (:func:`~raymmrec.eval.metrics.topk_ordered`: higher similarity, then lower item id).
* Memory: a task holds one ``block_size x n_items`` float32 similarity block at a time (plus the
  features, shared in the object store); the driver holds the ``n_items x k`` neighbour ids.
  No process ever builds an ``n_items x n_items`` matrix.

The launcher's loading task (:func:`raymmrec.ray.launch._load_and_prepare`) passes a
:class:`RayBlockMap` to :func:`raymmrec.prepared.prepare`; below :data:`MIN_ITEMS` items, or with
no Ray, the blocks run in the calling process (a task's start costs more than a small graph).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from raymmrec.graph.build import local_blocks

#: Fewer items than this: the blocks run in the calling process (about a second of work at 20k items).
MIN_ITEMS = 20_000


def _to_wire(a: Any) -> Any:
    """A tensor as a numpy array (read back zero-copy from the object store); anything else as is."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def _from_wire(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        with warnings.catch_warnings():  # the object store's arrays are read-only; the blocks only read them
            warnings.filterwarnings("ignore", message=".*not writable.*")
            return torch.from_numpy(a)
    return a


def run_blocks(fn: Callable[..., torch.Tensor], spans: list[tuple[int, int]], threads: int,
               *shared: Any) -> list[np.ndarray]:
    """(Ray task) ``fn(*shared, start, stop)`` for each span, in order, with ``threads`` torch threads."""
    torch.set_num_threads(max(1, threads))
    args = tuple(_from_wire(a) for a in shared)
    return [fn(*args, start, stop).numpy() for start, stop in spans]


@dataclass
class RayBlockMap:
    """A :data:`~raymmrec.graph.build.BlockMap` that runs the blocks as Ray tasks.

    Args:
        num_cpus: each task's CPU resource (and its torch threads).
        blocks_per_task: consecutive blocks one task computes, one after another.
        min_items: below this many items, run here (default :data:`MIN_ITEMS`).
        log: called with one line per build (tasks, seconds).
    """

    num_cpus: float = 1.0
    blocks_per_task: int = 1
    min_items: int | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.num_cpus <= 0:
            raise ValueError(f"num_cpus must be > 0, got {self.num_cpus}")
        if self.blocks_per_task < 1:
            raise ValueError(f"blocks_per_task must be >= 1, got {self.blocks_per_task}")

    def __call__(self, fn: Callable[..., torch.Tensor], shared: tuple,
                 spans: list[tuple[int, int]]) -> list[torch.Tensor]:
        import ray

        n = spans[-1][1] if spans else 0
        floor = MIN_ITEMS if self.min_items is None else self.min_items
        if n < floor or len(spans) < 2 or not ray.is_initialized():
            return local_blocks(fn, shared, spans)
        t0 = time.perf_counter()
        refs = [ray.put(_to_wire(a)) if isinstance(a, torch.Tensor) else a for a in shared]
        task = ray.remote(num_cpus=self.num_cpus)(run_blocks).options(scheduling_strategy="DEFAULT")
        threads = max(1, int(self.num_cpus))
        groups = [spans[i:i + self.blocks_per_task] for i in range(0, len(spans), self.blocks_per_task)]
        outs = ray.get([task.remote(fn, g, threads, *refs) for g in groups])
        blocks = [torch.from_numpy(np.array(b)) for out in outs for b in out]
        del refs, outs
        if self.log:
            self.log(f"item-item graph: {n} items, {len(spans)} blocks as {len(groups)} Ray tasks "
                     f"(num_cpus={self.num_cpus}) in {time.perf_counter() - t0:.1f}s")
        return blocks
