"""The two rates a column-sharded step is made of: sparse propagation and collectives.

    python benchmarks/bench_rates.py [--data synthetic:clothing] [--device cpu|cuda] [--repeats 7]

* SpMM: ``Â @ X`` with the run's normalised user-item adjacency (CSR) and ``X`` of 1..64 columns, one
  thread on the CPU (or the GPU): seconds per call, fitted on 1..32 columns as ``nnz · (a + b · columns)``:
  ``a`` is the per-edge cost every column block pays again, ``b`` the cost per edge and column;
* all-reduce: two gloo processes (one thread each), payloads of 4 KB .. 64 MB: seconds per call, fitted
  as ``latency + bytes / bandwidth``.

With ``--size users=1e8,items=1e7,interactions=2e9`` it also prints the sizing table of docs/scaling.md:
LightGCN (64-d, 3 layers, fp32, Adam) on ``--nodes`` x ``--gpus-per-node`` GPUs in two layouts, bytes per
GPU, communication per step and the step time at the rates just measured. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from raymmrec.config import load_spec  # noqa: E402
from raymmrec.train.build import load_data, prepared_inputs  # noqa: E402

SIZES = [2**12, 2**16, 2**20, 2**22, 2**24, 2**26]


def timed(fn, repeats: int, sync=lambda: None) -> float:  # noqa: ANN001
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def spmm_rates(data: str, device: str, repeats: int) -> dict:
    torch.set_num_threads(1)
    spec = load_spec("lightgcn", overrides=[f"data.source={data}", f"output_dir={tempfile.gettempdir()}"])
    adj = prepared_inputs(spec, load_data(spec))["adj"].to(device)
    nnz = adj.values().numel()
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    rows = {}
    for d in (1, 2, 4, 8, 16, 32, 64):
        x = torch.randn(adj.shape[0], d, device=device)
        rows[d] = timed(lambda: torch.sparse.mm(adj, x), repeats, sync)  # noqa: B023 - timed() calls it now
    # fitted on 1..32 columns, the blocks a worker holds in the sizing's layouts (64 columns of a large
    # graph fall out of the CPU's caches and cost more per column: printed, not fitted)
    cols = np.array([c for c in sorted(rows) if c <= 32], dtype=float)
    secs = np.array([rows[int(c)] for c in cols])
    b, a = np.polyfit(cols, secs / nnz, 1)  # seconds per nnz = a + b * columns
    return {"nnz": nnz, "nodes": adj.shape[0], "seconds": {int(k): v for k, v in rows.items()},
            "per_edge_ns": a * 1e9, "per_edge_column_ns": b * 1e9}


def _allreduce_worker(rank: int, port: int, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % len(os.sched_getaffinity(0))]})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    res = {}
    for n in SIZES:
        t = torch.ones(n // 4)
        res[n] = timed(lambda: dist.all_reduce(t), repeats)  # noqa: B023 - timed() calls it now
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def allreduce_rates(repeats: int) -> dict:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ar.json")
        mp.start_processes(_allreduce_worker, args=(port, repeats, out), nprocs=2, join=True, start_method="spawn")
        res = {int(k): v for k, v in json.loads(Path(out).read_text()).items()}
    sizes = np.array(sorted(res), dtype=float)
    secs = np.array([res[int(s)] for s in sizes])
    inv_bw, latency = np.polyfit(sizes, secs, 1)
    return {"seconds": res, "latency_us": latency * 1e6, "bandwidth_gb_s": 1 / inv_bw / 1e9}


def sizing(rates: dict, users: float, items: float, interactions: float, nodes: int, gpus: int, d: int = 64,
           layers: int = 3, batch: float = 2**20) -> list[tuple[str, str, str]]:
    """Rows (quantity, columns-only layout, 2-D layout) for LightGCN at the given size.

    columns only: W = min(d, nodes * gpus) ranks, each with every row of d / W columns and the whole graph;
    2-D: the graph's rows split over the nodes, the columns over a node's GPUs; each layer all-gathers
    the previous layer's rows of the GPU's columns from the other nodes.
    """
    gb = 1e9
    n = users + items
    nnz = 2 * interactions  # the symmetric user-item adjacency
    w = min(d, nodes * gpus)
    a, b = rates["spmm"]["per_edge_ns"] * 1e-9, rates["spmm"]["per_edge_column_ns"] * 1e-9
    lat, bw = rates["allreduce"]["latency_us"] * 1e-6, rates["allreduce"]["bandwidth_gb_s"] * gb
    c1, c2 = d / w, d / gpus
    graph1 = nnz * 8 + (n + 1) * 8  # int32 column + fp32 value per non-zero, int64 row pointers
    graph2 = graph1 / nodes
    tables1, tables2 = n * c1 * 4 * 3, n / nodes * c2 * 4 * 3  # weights + Adam's two moments
    act1, act2 = n * c1 * 4 * (layers + 1), n / nodes * c2 * 4 * (layers + 1) + n * c2 * 4
    scores = batch * 2 * 4  # B x (1 + 1) partial scores, fp32
    gather2 = 2 * layers * (n * c2 * 4) * (nodes - 1) / nodes  # rows of the GPU's columns from the other nodes
    spmm1 = 2 * layers * nnz * (a + b * c1)
    spmm2 = 2 * layers * nnz / nodes * (a + b * c2)
    comm1 = lat + scores / bw
    comm2 = lat + scores / bw + 2 * layers * lat + gather2 / bw
    steps = interactions / batch
    return [
        ("GPUs used", f"{w} (one column each)" if c1 == 1 else f"{w}", f"{nodes * gpus} ({nodes} row blocks x {gpus} column blocks)"),
        ("columns per GPU", f"{c1:g}", f"{c2:g}"),
        ("ID tables + Adam per GPU", f"{tables1 / gb:.2f} GB", f"{tables2 / gb:.2f} GB"),
        ("graph per GPU (CSR, int32 columns)", f"{graph1 / gb:.1f} GB", f"{graph2 / gb:.1f} GB"),
        ("propagation buffers per GPU", f"{act1 / gb:.2f} GB", f"{act2 / gb:.2f} GB"),
        ("communication per step per GPU", f"{scores / 2**20:.0f} MB (partial scores)",
         f"{(scores + gather2) / gb:.1f} GB (scores + layer rows)"),
        ("SpMM time per step (measured rates)", f"{spmm1:.1f} s", f"{spmm2:.1f} s"),
        ("communication time per step (measured rates)", f"{comm1:.2f} s", f"{comm2:.1f} s"),
        (f"steps per epoch (batch {batch:.0f})", f"{steps:.0f}", f"{steps:.0f}"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synthetic:clothing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", default=None, help="users=1e8,items=1e7,interactions=2e9: print the sizing table")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    a = ap.parse_args()
    sp = spmm_rates(a.data, a.device, a.repeats)
    print(f"SpMM on {a.device} ({a.data}: {sp['nodes']} nodes, {sp['nnz']} non-zeros)")
    for d, s in sp["seconds"].items():
        print(f"  {d:>3} columns: {1e3 * s:8.2f} ms  ({1e9 * s / sp['nnz'] / d:.2f} ns per non-zero and column)")
    print(f"  fit: {sp['per_edge_ns']:.2f} ns per non-zero + {sp['per_edge_column_ns']:.2f} ns per non-zero and column")
    ar = allreduce_rates(a.repeats)
    print("all-reduce, 2 gloo processes on this machine")
    for n, s in ar["seconds"].items():
        print(f"  {n / 2**20:9.3f} MB: {1e3 * s:8.2f} ms")
    print(f"  fit: latency {ar['latency_us']:.0f} us, bandwidth {ar['bandwidth_gb_s']:.2f} GB/s")
    out = {"spmm": sp, "allreduce": ar, "device": a.device, "data": a.data}
    if a.size:
        size = {k: float(v) for k, v in (kv.split("=") for kv in a.size.split(","))}
        rows = sizing(out, size["users"], size["items"], size["interactions"], a.nodes, a.gpus_per_node)
        print(f"\nLightGCN, {a.size}, 64-d, 3 layers, on {a.nodes} x {a.gpus_per_node} GPUs "
              f"(times at the {a.device} rates above)")
        print("| | columns only | rows x columns (2-D) |\n|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} |")
        out["sizing"] = rows
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
