"""Build time of the sparse graphs the models use (``raymmrec.graph``), on random data of fixed shapes.

    python benchmarks/bench_graph.py [--repeats 5] [--warmup 1] [--device auto|cpu|cuda] [--only NAME ...]

Cases (random ids / features, fixed seeds):

* ``adjacency-unit``: ``normalized_adjacency`` with 20,000 users, 7,000 items, 300,000 edges (the shape
  ``tests/test_graph.py::test_adjacency_large`` checks; that test once asserted < 1 s);
* ``adjacency-clothing``: the same with the shape of ``synthetic:clothing`` (39,387 × 23,033, 278,677 edges);
* ``knn-unit``: ``knn_graph`` of 5,000 × 256 features, k = 10, block_size = 512 (the shape of
  ``tests/test_graph.py::test_knn_large_in_blocks``; that test once asserted < 10 s);
* ``knn-baby-text``: ``knn_graph`` of 7,050 × 384 features, k = 10 (the text modality of ``synthetic:baby``).

Each case runs ``--warmup`` untimed times, then ``--repeats`` timed times (CUDA synchronised before each clock
read); prints median / min / max seconds per case and, last, one JSON line. Imports only ``raymmrec.graph``
(no Ray, no training code), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raymmrec.graph import knn_graph, normalized_adjacency  # noqa: E402


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn()``, CUDA synchronised before both clock reads."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def machine(device: torch.device) -> str:
    """One line: CPU or GPU, torch, python, torch threads, usable cores, 1-minute load average."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    if device.type == "cpu" and Path("/proc/cpuinfo").exists():
        name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), name)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{device.type}: {name} | torch {torch.__version__} | python {platform.python_version()} | "
            f"threads {torch.get_num_threads()} | cores {cores} | load {os.getloadavg()[0]:.2f}")


def adjacency_case(n_users: int, n_items: int, n_edges: int, device: torch.device) -> Callable[[], Any]:
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges)
    return lambda: normalized_adjacency(n_users, n_items, users, items, device=device)


def knn_case(n_items: int, dim: int, k: int, block_size: int, device: torch.device) -> Callable[[], Any]:
    x = torch.randn(n_items, dim, generator=torch.Generator().manual_seed(0)).to(device)
    return lambda: knn_graph(x, k=k, block_size=block_size)


CASES: dict[str, tuple[str, Callable[[torch.device], Callable[[], Any]]]] = {
    "adjacency-unit": ("normalized_adjacency 20,000 users x 7,000 items, 300,000 edges",
                       lambda d: adjacency_case(20_000, 7_000, 300_000, d)),
    "adjacency-clothing": ("normalized_adjacency 39,387 users x 23,033 items, 278,677 edges",
                           lambda d: adjacency_case(39_387, 23_033, 278_677, d)),
    "knn-unit": ("knn_graph 5,000 x 256, k=10, block_size=512", lambda d: knn_case(5_000, 256, 10, 512, d)),
    "knn-baby-text": ("knn_graph 7,050 x 384, k=10, block_size=1024", lambda d: knn_case(7_050, 384, 10, 1024, d)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--only", nargs="+", choices=sorted(CASES), help="run only these cases")
    a = p.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {a.device} but CUDA is not available here", file=sys.stderr)
        return 2
    env = machine(device)
    print(env, flush=True)
    results: dict[str, Any] = {}
    for name in a.only or list(CASES):
        title, make = CASES[name]
        build = make(device)
        times = [seconds(build, device) for _ in range(a.warmup + a.repeats)][a.warmup:]
        med = statistics.median(times)
        results[name] = {"what": title, "median_s": med, "min_s": min(times), "max_s": max(times), "all_s": times}
        print(f"{name:<19} {title}: median {med:.3f}s  min {min(times):.3f}s  max {max(times):.3f}s  "
              f"(n={len(times)})", flush=True)
    print(json.dumps({"machine": env, "load_avg_1m_end": os.getloadavg()[0], "warmup": a.warmup,
                      "repeats": a.repeats, "cases": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
