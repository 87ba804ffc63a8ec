"""Features and the graphs built from them: feature extraction throughput, graph build times, the item-item
kNN graph of a dataset, and the item-item graph at scale in one process against item blocks as Ray tasks.

    python -m benchmarks.bench_features extract [--texts 256] [--images 96] [--actors 2] [--repeats 3] [--batch-size 32]
    python -m benchmarks.bench_features graphs [--repeats 5] [--warmup 1] [--device auto|cpu|cuda] [--only NAME ...]
    python -m benchmarks.bench_features item-knn [--data synthetic:clothing] [--repeats 3] [--k 10]
    python -m benchmarks.bench_features item-blocks [--items 100000] [--dims text:384,image:512] [--k 10]
        [--block-size 1024] [--repeats 3] [--workers 2] [--modes local,ray] [--rss-blocks 256,1024,4096]

``extract``: text items/s and images/s (224 x 224), one process against Ray Data actors. Texts are the
first ``--texts`` items of ../shared/data/lfm2k/item_text.tsv when it is there (Last.fm tag lists, long: most
hit MiniLM's 256-token cap), else generated sentences; images are generated JPEGs. One process:
:func:`raymmrec.features.extract` with the model loaded beforehand (torch uses every core); Ray:
:func:`raymmrec.ray.features.extract_ray` on a local Ray with ``--actors`` encoder actors, each with an
equal share of the cores (one torch thread per core), started afresh for every run: its items/s count
everything (actors starting, models loading); ``start-up`` is the time until the first batch came back.
Medians of ``--repeats`` runs.

``graphs``: build time of the sparse graphs the models use (``raymmrec.graph``), on random data of fixed
shapes (fixed seeds): ``adjacency-unit`` (``normalized_adjacency``, 20,000 users, 7,000 items, 300,000
edges: the shape ``tests/test_graph.py::test_adjacency_large`` checks; that test once asserted < 1 s),
``adjacency-clothing`` (the shape of ``synthetic:clothing``: 39,387 x 23,033, 278,677 edges), ``knn-unit``
(``knn_graph`` of 5,000 x 256 features, k = 10, block_size = 512: the shape of
``tests/test_graph.py::test_knn_large_in_blocks``; that test once asserted < 10 s) and ``knn-baby-text``
(7,050 x 384 features, k = 10: the text modality of ``synthetic:baby``). Each case runs ``--warmup``
untimed times, then ``--repeats`` timed times (CUDA synchronised before each clock read); median / min /
max seconds per case. Imports only ``raymmrec.graph`` (no Ray, no training code).

``item-knn``: a dataset's item-item multimodal kNN graph (the ``item_knn`` builder, CM3's defaults), each
build in a fresh subprocess: seconds, the process's peak RSS while building (the features included;
Linux's ``/proc/self/clear_refs`` resets the peak once the data is loaded) and that peak above the RSS of
the loaded data.

``item-blocks``: the item-item kNN graph (CM3, LIRDRec) at scale. ``local``:
:func:`raymmrec.graph.mixed_knn_graph` in this process (torch's default threads); ``ray``: the same call
with :class:`raymmrec.ray.item_graph.RayBlockMap` (tasks with ``num_cpus=1``) on a local Ray started here
with ``--workers`` CPUs, so at most that many blocks run at once. The modes alternate (local, ray, local,
ray, ...) so that a shared machine's load falls on both alike; each run prints its line as it ends, and
the summary gives medians. Every Ray graph is compared with the first one-process graph (``same graph:
True`` means identical CSR indices and values). Memory: peak RSS (``VmHWM``, reset before each build) of
this process, and for ``ray`` the largest of the workers' peaks (measured around each block; it
includes the features each worker maps from the object store). ``--rss-blocks``: for each block size,
the one-process peak over the first two blocks only (a partial build, for the peak's growth with the
block size; the rest of a build repeats the same work). Features: ``--items`` x each modality's width,
float32, clustered Gaussian (fixed seed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import (LFM2K, check_data, emit, emit_figures, module_command, parser_with_modes,
                               print_environment, repeat_seconds, reset_peak, run_json, status_mib, timed)

MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------- extract
def make_texts(n: int, folder: Path, lfm2k_text: Path = LFM2K / "item_text.tsv") -> tuple[str, str]:
    """A catalogue of ``n`` texts in ``folder``: lfm2k's first items when ``lfm2k_text`` exists, else generated."""
    import pandas as pd

    path = folder / "items.tsv"
    if lfm2k_text.exists():
        frame = pd.read_csv(lfm2k_text, sep="\t", dtype=str, keep_default_na=False, quoting=3).head(n)
        source = f"first {len(frame)} items of {lfm2k_text.name} (lfm2k)"
    else:
        rng = np.random.default_rng(0)
        words = ["red", "blue", "light", "warm", "wool", "cotton", "shoe", "hat", "scarf", "coat", "running", "classic", "modern", "soft"]
        frame = pd.DataFrame({"itemID": [str(i) for i in range(n)],
                              "text": [" ".join(rng.choice(words, 60)) for _ in range(n)]})
        source = f"{n} generated 60-word texts"
    frame[["itemID", "text"]].to_csv(path, sep="\t", index=False)
    return str(path), source


def make_images(n: int, folder: Path) -> str:
    """A folder of ``n`` generated 224 x 224 JPEGs in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = folder / "imgs"
    out.mkdir()
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    for i in range(n):
        f = rng.uniform(1, 8, 3)
        arr = np.stack([np.sin(f[c] * (xx + yy * c) * np.pi) for c in range(3)], axis=-1)
        arr = ((arr + 1) * 127.5 + rng.normal(0, 10, arr.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(out / f"{i}.jpg", quality=90)
    return str(out)


def local_rate(catalog: str, out: str, modality: str, encoder: Any, batch_size: int) -> float:
    """Items per second of :func:`raymmrec.features.extract` in this process, the model loaded beforehand."""
    from raymmrec.features import extract

    m = extract(catalog, out, modality, encoder=encoder, batch_size=batch_size, progress=False)
    return m["runs"][-1]["items_per_s"]


def bench(catalog: str, modality: str, encoder, a: argparse.Namespace, work: Path) -> dict[str, float]:  # noqa: ANN001
    from raymmrec.ray.features import extract_ray

    local, wall, startup = [], [], []
    for r in range(a.repeats):
        local.append(local_rate(catalog, str(work / f"local-{modality}-{r}"), modality, encoder, a.batch_size))
    cpus = max(1, os.cpu_count() or 1)
    for r in range(a.repeats):
        m = extract_ray(catalog, str(work / f"ray-{modality}-{r}"), modality, actors=a.actors,
                        batch_size=a.batch_size, cpus_per_actor=cpus / a.actors,
                        threads_per_actor=max(1, cpus // a.actors), progress=False)
        run = m["runs"][-1]
        wall.append(run["items_per_s"])
        startup.append(run["first_batch_seconds"])
    return {"one_process": statistics.median(local), "ray_wall": statistics.median(wall),
            "ray_startup_s": statistics.median(startup)}


def extract(a: argparse.Namespace) -> dict[str, Any]:
    import logging

    import ray
    import torch

    from raymmrec.features import ImageEncoder, TextEncoder

    ray.init(address="local", num_cpus=os.cpu_count(), logging_level=logging.WARNING, log_to_driver=False)
    results: dict[str, object] = {"cpus": os.cpu_count(), "torch_threads_one_process": torch.get_num_threads(),
                                  "actors": a.actors, "batch_size": a.batch_size, "repeats": a.repeats}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        work = Path(tmp)
        texts, source = make_texts(a.texts, work)
        images = make_images(a.images, work)
        results["texts"], results["images"] = source, f"{a.images} generated 224x224 JPEGs"
        results["text_items_per_s"] = bench(texts, "text", TextEncoder(device="cpu").load(), a, work)
        results["images_per_s"] = bench(images, "image", ImageEncoder(device="cpu").load(), a, work)
    ray.shutdown()
    print(f"texts: {results['texts']}; images: {results['images']}; {results['cpus']} CPUs, "
          f"medians of {a.repeats}")
    print(f"{'':14s}{'one process':>14s}{f'Ray {a.actors} actors':>16s}{'Ray start-up (s)':>18s}")
    for key, name in (("text_items_per_s", "text items/s"), ("images_per_s", "images/s")):
        r = results[key]
        print(f"{name:14s}{r['one_process']:14.1f}{r['ray_wall']:16.1f}{r['ray_startup_s']:18.1f}")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {results['cpus']} CPUs (other jobs slow every figure)")
    results["load_average"] = round(load, 1)
    return results


# ---------------------------------------------------------------------------------------------- graphs
def adjacency_case(n_users: int, n_items: int, n_edges: int, device: torch.device) -> Callable[[], Any]:
    from raymmrec.graph import normalized_adjacency

    rng = np.random.default_rng(1)
    users, items = rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges)
    return lambda: normalized_adjacency(n_users, n_items, users, items, device=device)


def knn_case(n_items: int, dim: int, k: int, block_size: int, device: torch.device) -> Callable[[], Any]:
    from raymmrec.graph import knn_graph

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


def graphs(a: argparse.Namespace) -> dict[str, Any]:
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {a.device} but CUDA is not available here", file=sys.stderr)
        raise SystemExit(2)
    env = print_environment(device)
    results: dict[str, Any] = {}
    for name in a.only or list(CASES):
        title, make = CASES[name]
        build = make(device)
        times = repeat_seconds(build, a.repeats, a.warmup, device)
        med = statistics.median(times)
        results[name] = {"what": title, "median_s": med, "min_s": min(times), "max_s": max(times), "all_s": times}
        print(f"{name:<19} {title}: median {med:.3f}s  min {min(times):.3f}s  max {max(times):.3f}s  "
              f"(n={len(times)})", flush=True)
    return {**env, "warmup": a.warmup, "repeats": a.repeats, "cases": results}


# -------------------------------------------------------------------------------------------- item-knn
def item_knn_child(data_name: str, k: int) -> dict[str, Any]:
    """In a fresh process: the item-item graph of ``data_name`` (``item_knn``, uncached), seconds and peak RSS
    while building (reset once the data is loaded)."""
    from raymmrec.data import load_dataset
    from raymmrec.prepared import get_builder

    data = load_dataset(data_name)
    loaded = status_mib("VmRSS")
    reset_peak()
    g, dt = timed(lambda: get_builder("item_knn").fn(data, k=k, non_text_weight=0.1))
    return {"seconds": dt, "peak_rss_mib": status_mib("VmHWM"), "loaded_rss_mib": loaded,
            "nnz": int(g.values().numel()), "items": data.n_items,
            "dims": {m: int(x.shape[1]) for m, x in data.features.items()}}


def item_knn(a: argparse.Namespace) -> dict[str, Any]:
    if a.child:
        return item_knn_child(a.data, a.k)
    from raymmrec.data import load_dataset

    data = a.data
    load_dataset(data)  # builds the dataset's cache, untimed
    runs = []
    for _ in range(a.repeats):
        r = run_json(module_command("bench_features", "item-knn", "--child", "--data", data, "--k", str(a.k)))
        if "error" in r:
            raise RuntimeError(f"item-knn child: {r['error']}\n{r['detail']}")
        runs.append(r)
    res = {"what": "item-knn", "data": data, "k": a.k, "runs": runs,
           "seconds_median": statistics.median(r["seconds"] for r in runs),
           "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
           "above_loaded_mib_max": max(r["peak_rss_mib"] - r["loaded_rss_mib"] for r in runs)}
    r0 = runs[0]
    print(f"item-item graph of {data}: {r0['items']:,} items, modalities {r0['dims']}, k={a.k}: "
          f"{res['seconds_median']:.1f}s (median of {a.repeats}); peak RSS while building {res['peak_rss_mib_max']:.0f} MiB, "
          f"{res['above_loaded_mib_max']:.0f} MiB above the loaded data ({r0['loaded_rss_mib']:.0f} MiB)")
    return res


# ----------------------------------------------------------------------------------------- item-blocks
def kib(field: str) -> int:
    return int(status_mib(field) * 1024)


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
        before = kib("VmRSS")
        reset_peak()
        out = self.fn(*args)
        path = Path(self.folder) / str(os.getpid())
        old = [int(v) for v in path.read_text().split()] if path.exists() else [0, 0]
        path.write_text(" ".join(map(str, max(old, [kib("VmHWM"), before]))))
        return out


def measured(inner: Callable, folder: str) -> Callable:
    return lambda fn, shared, spans: inner(PeakFile(fn, folder), shared, spans)


def first_blocks(count: int) -> Callable:
    """A block map that computes only the first ``count`` blocks (zeros elsewhere): for peak memory only."""

    from raymmrec.graph.build import local_blocks

    def run(fn, shared, spans):  # noqa: ANN001, ANN202
        done = local_blocks(fn, shared, spans[:count])
        k = done[0].shape[1]
        return done + [torch.zeros(stop - start, k, dtype=torch.int64) for start, stop in spans[count:]]

    return run


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (torch.equal(a.crow_indices(), b.crow_indices()) and torch.equal(a.col_indices(), b.col_indices())
            and torch.equal(a.values(), b.values()))


def item_blocks(a: argparse.Namespace) -> dict[str, Any]:
    from raymmrec.graph import mixed_knn_graph, modality_weights

    dims = {m: int(d) for m, d in (p.split(":") for p in a.dims.split(","))}
    modes = [m for m in a.modes.split(",") if m]
    feats = features(a.items, dims)
    weights = modality_weights(list(dims))
    feat_mib = sum(x.nbytes for x in feats.values()) / MIB
    print(f"{a.items} items, dims {dims} ({feat_mib:.0f} MiB float32), k={a.k}, weights {weights}, "
          f"block_size={a.block_size}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}", flush=True)

    for bs in [int(b) for b in a.rss_blocks.split(",") if b]:
        before = kib("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        mixed_knn_graph(feats, weights, k=a.k, block_size=bs, map_blocks=first_blocks(2))
        peak = kib("VmHWM")
        print(f"rss-blocks block_size={bs}: peak {peak / 1024:.0f} MiB, {(peak - before) / 1024:.0f} MiB above the "
              f"{before / 1024:.0f} MiB before (one block's similarities: {bs * a.items * 4 / MIB:.0f} MiB), "
              f"2 blocks per modality in {time.perf_counter() - t0:.1f}s", flush=True)

    ray_map, folder = None, tempfile.mkdtemp(prefix="bench_item_graph_")
    if "ray" in modes:
        import ray

        from raymmrec.ray.item_graph import RayBlockMap

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
        ray_map = RayBlockMap(num_cpus=1, min_items=0)
        # warm-up: the workers start and import torch (not timed)
        small = {m: x[:4 * 64] for m, x in feats.items()}
        mixed_knn_graph(small, weights, k=a.k, block_size=64, map_blocks=ray_map)

    times: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, list[float]] = {m: [] for m in modes}
    worker_peaks: list[float] = []
    reference, checks = None, []
    for rep in range(a.repeats):
        for mode in modes:
            before = kib("VmRSS")
            for f in Path(folder).iterdir():
                f.unlink()
            reset_peak()
            t0 = time.perf_counter()
            mapper = None if mode == "local" else measured(ray_map, folder)
            g = mixed_knn_graph(feats, weights, k=a.k, block_size=a.block_size, map_blocks=mapper)
            dt = time.perf_counter() - t0
            peak = kib("VmHWM")
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

    summary = {"items": a.items, "dims": dims, "k": a.k, "block_size": a.block_size,
               "repeats": a.repeats, "workers": a.workers}
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
    return summary


# ------------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p, sub = parser_with_modes("bench_features", __doc__)
    e = sub.add_parser("extract", help="text and image feature extraction: one process against Ray Data actors")
    e.add_argument("--texts", type=int, default=256)
    e.add_argument("--images", type=int, default=96)
    e.add_argument("--actors", type=int, default=2)
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--batch-size", type=int, default=32)
    g = sub.add_parser("graphs", help="normalized_adjacency and knn_graph build times at fixed shapes")
    g.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    g.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--only", nargs="+", choices=sorted(CASES), help="run only these cases")
    k = sub.add_parser("item-knn", help="a dataset's item-item kNN graph: seconds and peak memory, fresh processes")
    k.add_argument("--data", default="synthetic:clothing")
    k.add_argument("--repeats", type=int, default=3, help="builds, each in a fresh process")
    k.add_argument("--k", type=int, default=10, help="neighbours per item")
    k.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    b = sub.add_parser("item-blocks", help="the item-item graph at scale: one process against blocks as Ray tasks")
    b.add_argument("--items", type=int, default=100_000)
    b.add_argument("--dims", default="text:384,image:512")
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--block-size", type=int, default=1024)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--modes", default="local,ray")
    b.add_argument("--rss-blocks", default="", help="block sizes for the partial-build peak (e.g. 256,1024,4096)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.what == "item-knn":
        check_data(a.data)
    child = getattr(a, "child", False)
    env = {} if child or a.what == "graphs" else print_environment()  # graphs: with the device it runs on
    res = {"extract": extract, "graphs": graphs, "item-knn": item_knn, "item-blocks": item_blocks}[a.what](a)
    if child:
        emit(res)
    else:
        emit_figures(env, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
