"""The item-item kNN graph (CM3, LIRDRec) at scale: one process vs item blocks as Ray tasks.

    python benchmarks/bench_item_graph.py [--items 100000] [--dims text:384,image:512] [--k 10]
        [--block-size 1024] [--repeats 3] [--workers 2] [--modes local,ray] [--rss-blocks 256,1024,4096]

* ``local``: :func:`raymmrec.graph.mixed_knn_graph` in this process (torch's default threads);
* ``ray``: the same call with :class:`raymmrec.ray.item_graph.RayBlockMap` (tasks with ``num_cpus=1``) on a
  local Ray started here with ``--workers`` CPUs, so at most that many blocks run at once.

The modes alternate (local, ray, local, ray, ...) so that a shared machine's load falls on both alike; each
run prints its line as it ends, and the summary gives medians. Every Ray graph is compared with the first
one-process graph (``same graph: True`` means identical CSR indices and values).

Memory: peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each build) of this process, and
for ``ray`` the largest of the workers' peaks (measured around each block; it includes the features each
worker maps from the object store). ``--rss-blocks``: for each block size, the one-process peak over the
first two blocks only (a partial build, for the peak's growth with the block size; the rest of a build
repeats the same work).

Features: ``--items`` x each modality's width, float32, clustered Gaussian (fixed seed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raymmrec.graph import mixed_knn_graph, modality_weights  # noqa: E402
from raymmrec.graph.build import local_blocks  # noqa: E402

MIB = 1024 * 1024


def rss_kib(field: str = "VmHWM") -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def features(items: int, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Clustered float32 features: 1,000 centres per modality plus noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for m, d in dims.items():
        centres = rng.standard_normal((1000, d), dtype=np.float32)
        x = centres[rng.integers(0, 1000, items)]
        x += 0.5 * rng.standard_normal((items, d), dtype=np.float32)
        out[m] = x
    return out


class PeakFile:
    """(Picklable) runs a block function and records the worker's peak RSS around it in ``folder/<pid>``."""

    def __init__(self, fn: Callable[..., torch.Tensor], folder: str) -> None:
        self.fn, self.folder = fn, folder

    def __call__(self, *args: Any) -> torch.Tensor:
        before = rss_kib("VmRSS")
        reset_peak()
        out = self.fn(*args)
        path = Path(self.folder) / str(os.getpid())
        old = [int(v) for v in path.read_text().split()] if path.exists() else [0, 0]
        path.write_text(" ".join(map(str, max(old, [rss_kib(), before]))))
        return out


def measured(inner: Callable, folder: str) -> Callable:
    return lambda fn, shared, spans: inner(PeakFile(fn, folder), shared, spans)


def first_blocks(count: int) -> Callable:
    """A block map that computes only the first ``count`` blocks (zeros elsewhere): for peak memory only."""

    def run(fn, shared, spans):
        done = local_blocks(fn, shared, spans[:count])
        k = done[0].shape[1]
        return done + [torch.zeros(stop - start, k, dtype=torch.int64) for start, stop in spans[count:]]

    return run


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (torch.equal(a.crow_indices(), b.crow_indices()) and torch.equal(a.col_indices(), b.col_indices())
            and torch.equal(a.values(), b.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dims", default="text:384,image:512")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", default="local,ray")
    ap.add_argument("--rss-blocks", default="", help="block sizes for the partial-build peak (e.g. 256,1024,4096)")
    args = ap.parse_args()
    dims = {m: int(d) for m, d in (p.split(":") for p in args.dims.split(","))}
    modes = [m for m in args.modes.split(",") if m]
    feats = features(args.items, dims)
    weights = modality_weights(list(dims))
    feat_mib = sum(x.nbytes for x in feats.values()) / MIB
    print(f"{args.items} items, dims {dims} ({feat_mib:.0f} MiB float32), k={args.k}, weights {weights}, "
          f"block_size={args.block_size}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}", flush=True)

    for bs in [int(b) for b in args.rss_blocks.split(",") if b]:
        before = rss_kib("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        mixed_knn_graph(feats, weights, k=args.k, block_size=bs, map_blocks=first_blocks(2))
        peak = rss_kib()
        print(f"rss-blocks block_size={bs}: peak {peak / 1024:.0f} MiB, {(peak - before) / 1024:.0f} MiB above the "
              f"{before / 1024:.0f} MiB before (one block's similarities: {bs * args.items * 4 / MIB:.0f} MiB), "
              f"2 blocks per modality in {time.perf_counter() - t0:.1f}s", flush=True)

    ray_map, folder = None, tempfile.mkdtemp(prefix="bench_item_graph_")
    if "ray" in modes:
        import ray

        from raymmrec.ray.item_graph import RayBlockMap

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        ray_map = RayBlockMap(num_cpus=1, min_items=0)
        # warm-up: the workers start and import torch (not timed)
        small = {m: x[:4 * 64] for m, x in feats.items()}
        mixed_knn_graph(small, weights, k=args.k, block_size=64, map_blocks=ray_map)

    times: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, list[float]] = {m: [] for m in modes}
    worker_peaks: list[float] = []
    reference, checks = None, []
    for rep in range(args.repeats):
        for mode in modes:
            before = rss_kib("VmRSS")
            for f in Path(folder).iterdir():
                f.unlink()
            reset_peak()
            t0 = time.perf_counter()
            mapper = None if mode == "local" else measured(ray_map, folder)
            g = mixed_knn_graph(feats, weights, k=args.k, block_size=args.block_size, map_blocks=mapper)
            dt = time.perf_counter() - t0
            peak = rss_kib()
            times[mode].append(dt)
            peaks[mode].append(peak / 1024)
            extra = ""
            if mode == "ray":
                w = [[int(v) / 1024 for v in f.read_text().split()] for f in Path(folder).iterdir()]
                top, base = max(w)
                worker_peaks.append(top)
                extra = (f", {len(w)} worker processes, largest worker peak {top:.0f} MiB "
                         f"({top - base:.0f} MiB above its {base:.0f} MiB before that block)")
            if mode == "local" and reference is None:
                reference = g
            elif mode == "ray" and reference is not None:
                checks.append(same(g, reference))
                extra += f", same graph: {checks[-1]}"
            print(f"run {rep + 1} {mode}: {dt:.1f}s, this process peak {peak / 1024:.0f} MiB "
                  f"({(peak - before) / 1024:.0f} MiB above the {before / 1024:.0f} MiB before){extra}", flush=True)
            del g

    summary = {"items": args.items, "dims": dims, "k": args.k, "block_size": args.block_size,
               "repeats": args.repeats, "workers": args.workers}
    for mode in modes:
        summary[mode] = {"median_s": statistics.median(times[mode]), "runs_s": times[mode],
                         "peak_mib_median": statistics.median(peaks[mode])}
        line = (f"{mode:5s}: median {statistics.median(times[mode]):.1f}s over {len(times[mode])} "
                f"(min {min(times[mode]):.1f}, max {max(times[mode]):.1f}); this process peak median "
                f"{statistics.median(peaks[mode]):.0f} MiB")
        if mode == "ray":
            summary[mode]["worker_peak_mib_median"] = statistics.median(worker_peaks)
            summary[mode]["same_graph"] = all(checks) if checks else None
            line += (f"; largest worker peak median {statistics.median(worker_peaks):.0f} MiB; "
                     f"same graph as one process: {all(checks) if checks else 'not checked'}")
        print(line)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
