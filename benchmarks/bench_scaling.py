"""Scaling out: whole commands on one process and on Ray workers, column-sharded against data-parallel
workers, and the rates a sharded step is made of.

    python -m benchmarks.bench_scaling slope --data ../shared/data/lfm2k --methods bm3,lightgcn \
        [--modes single,ray-1,ray-2] [--short 10] [--long 40] [--repeats 1] [key=value ...]
    python -m benchmarks.bench_scaling shard [--methods lightgcn,bm3] [--data synthetic:clothing] [--epochs 3]
        [--modes one,columns-2,ddp-2,columns-4] [--repeats 1] [--steps N] [--device cpu|cuda] [key=value ...]
    python -m benchmarks.bench_scaling rates [--data synthetic:clothing] [--device cpu|cuda] [--repeats 7]
        [--size users=1e8,items=1e7,interactions=2e9 [--nodes 16] [--gpus-per-node 8]]

``slope``: for each method and mode it runs the commands users type, as subprocesses, for ``--short``
and ``--long`` epochs (no early stopping, evaluation every epoch): ``python -m raymmrec train --method M
...`` (one process) and the same with ``--num-workers N`` (a fresh local Ray each time). Per mode: the
slope ``(T_long - T_short) / (long - short)`` (seconds per epoch after start-up, evaluation, reporting,
checkpoints and TensorBoard included), the time from the command's start to its first epoch line
(start-up), each command's wall time, and the test metrics at the best validation epoch of the long
run. Ratios are against the one-process run of the same method in the same invocation; wall times are
medians over ``--repeats``. For lfm2k folders the modalities are text + audio_whisper.

``shard``: strong scaling of one training epoch. Each mode runs in fresh processes started here
(``torch.multiprocessing``, gloo): the pieces a Ray Train worker runs (``raymmrec.train.build.build`` and
the core ``Trainer``'s ``run_epoch``), without Ray's start-up. Every process uses one torch thread and is
pinned to one core (``os.sched_setaffinity``): core ``r mod cores`` for rank ``r``, so W = 2 uses both
cores of a two-core machine and W = 4 puts two ranks on each (a simulation: its times are not a
speed-up, its memory and communication are real). Per method and mode:

* ``s/epoch``: the wall-clock slope over epochs 1..N-1 (epoch 0 is a warm-up), median over repeats;
  the ratio against the one-process mode of the same method, measured in this same invocation. With
  ``--steps N`` each epoch trains its first N steps only, and ``s/epoch`` is their time scaled to the
  epoch's steps (for methods whose whole epochs take too long to measure, e.g. CM3 and LIRDRec on a
  loaded machine; ``MB/step`` and ``comm`` are then of those steps);
* ``param+opt MB``: rank 0's parameter and optimizer-state bytes after training (the memory a
  worker must hold besides the graph and features), and its ratio to one process;
* ``peak RSS MB``: the largest peak resident set over the ranks (start-up included; a column-sharded
  worker builds only its blocks of the ID tables), then each rank's peak and its ratio to one process's
  on a line of its own, with ``built``: each rank's peak once ``build`` returned, before training, and
  what building the pieces added to the peak of loading the data;
* ``MB/step``: bytes a rank sends into collectives per training step: the column blocks joined or
  summed and the replicated parameters' averaged gradients (counted by ``raymmrec.shard.Traffic``), or
  DDP's all-reduced gradient (every parameter's);
* ``comm``: for column-sharded modes, the share of a step rank 0 spends inside its collectives
  (waiting for the others included);
* ``repl KB``: of ``MB/step``, the replicated parameters' gradients averaged over the ranks (KB).

``--device cuda``: rank r on GPU r with NCCL (a W-worker mode needs W GPUs). Run it on a quiet machine.

``rates``: the two rates a column-sharded step is made of. SpMM: ``Â @ X`` with the run's normalised
user-item adjacency (CSR) and ``X`` of 1..64 columns, one thread on the CPU (or the GPU): seconds per
call, fitted on 1..32 columns as ``nnz · (a + b · columns)``: ``a`` is the per-edge cost every column
block pays again, ``b`` the cost per edge and column. All-reduce: two gloo processes (one thread each),
payloads of 4 KB .. 64 MB: seconds per call, fitted as ``latency + bytes / bandwidth``. With ``--size
users=1e8,items=1e7,interactions=2e9`` it also prints the sizing table of docs/scaling.md: LightGCN
(64-d, 3 layers, fp32, Adam) on ``--nodes`` x ``--gpus-per-node`` GPUs in two layouts, bytes per GPU,
communication per step and the step time at the rates just measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import (LFM2K, ROOT, check_data, emit_figures, free_port, is_lfm2k, local_ray_env, median,
                               parser_with_modes, peak_rss_mib, print_environment, repeat_seconds, train_command)
from raymmrec.config import load_spec
from raymmrec.dist import DistContext
from raymmrec.shard import Columns
from raymmrec.train.build import build, load_data, make_trainer, prepared_inputs


# ---------------------------------------------------------------------------------------------- slope
def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, seconds until the first 'epoch 0' line, output) of one command."""
    t0 = time.perf_counter()
    first = float("nan")
    lines = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if first != first and "epoch 0:" in line:
            first = time.perf_counter() - t0
    code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"command failed ({code}): {' '.join(cmd)}\n{''.join(lines[-30:])}")
    return wall, first, "".join(lines)


def slope(a: argparse.Namespace) -> dict[str, Any]:
    env = local_ray_env()  # a fresh local Ray per command
    extra = ["train.patience=100000", *a.overrides]
    if is_lfm2k(a.data):
        extra.append("data.modalities=[text,audio_whisper]")
    print(f"data {a.data} | {a.short} vs {a.long} epochs", flush=True)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="raymmrec-scaling-") as out:
        for method in a.methods.split(","):
            results[method] = {}
            for mode in a.modes.split(","):
                walls: dict[int, list[float]] = {a.short: [], a.long: []}
                firsts: list[float] = []
                metrics = {}
                for _ in range(a.repeats):
                    for epochs in (a.short, a.long):
                        name = f"{method}-{mode}-{epochs}-{uuid.uuid4().hex[:6]}"
                        cmd = train_command(method, a.data, epochs, out, name, extra,
                                            None if mode == "single" else int(mode.split("-")[1]))
                        wall, first, _ = timed_run(cmd, env)
                        walls[epochs].append(wall)
                        firsts.append(first)
                        if epochs == a.long:
                            metrics = json.loads((Path(out) / name / "results.json").read_text())["test"]
                        print(f"  {method:9s} {mode:6s} {epochs:3d} epochs: {wall:6.1f}s wall, first epoch after "
                              f"{first:5.1f}s", flush=True)
                short, long = statistics.median(walls[a.short]), statistics.median(walls[a.long])
                results[method][mode] = {
                    "slope_s_per_epoch": (long - short) / (a.long - a.short),
                    "startup_s": statistics.median(firsts), "wall_short_s": walls[a.short],
                    "wall_long_s": walls[a.long], "test": metrics,
                }
    print(f"\n{'method':9s} {'mode':6s} {'s/epoch':>8s} {'x single':>8s} {'start-up':>8s} "
          f"{'R@20':>7s} {'N@20':>7s}")
    for method, modes in results.items():
        base = modes.get("single", {}).get("slope_s_per_epoch")
        for mode, r in modes.items():
            ratio = r["slope_s_per_epoch"] / base if base else float("nan")
            r["ratio_vs_single"] = ratio
            print(f"{method:9s} {mode:6s} {r['slope_s_per_epoch']:8.3f} {ratio:8.2f} {r['startup_s']:8.1f} "
                  f"{r['test'].get('recall@20', float('nan')):7.4f} {r['test'].get('ndcg@20', float('nan')):7.4f}")
    print(f"load average (1 min) at end {os.getloadavg()[0]:.2f}")
    return {"data": a.data, "short": a.short, "long": a.long, "repeats": a.repeats, "results": results}


# ---------------------------------------------------------------------------------------------- shard
def spec_for(method: str, data: str, epochs: int, out: str, extra: list[str]):  # noqa: ANN201
    return load_spec(method=method, overrides=[f"data.source={data}", f"train.epochs={epochs}", "train.device=cpu",
                                               f"output_dir={out}", "run_name=bench", *extra])


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters and of the optimizer's per-parameter state on this rank."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    for st in optimizer.state.values():
        n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    return n


class TimedColumns(Columns):
    """:class:`Columns` whose replicated parameters' averaged gradients add their bytes to ``traffic.replicated``."""

    def average_(self, t):  # noqa: ANN001, ANN201
        self.traffic.replicated = getattr(self.traffic, "replicated", 0) + t.numel() * t.element_size()
        return super().average_(t)


def time_collectives(traffic) -> None:  # noqa: ANN001
    """From now on, every collective this process makes through ``torch.distributed`` (the column operators',
    in the forward and in the backward, and the replicated gradients' average) adds its wall time to
    ``traffic.seconds``."""
    traffic.seconds = 0.0

    def timing(real):  # noqa: ANN001, ANN202
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                traffic.seconds += time.perf_counter() - t0
        return timed

    for name in ("all_reduce", "all_gather", "broadcast"):
        setattr(dist, name, timing(getattr(dist, name)))


def worker(rank: int, world: int, port: int, mode: str, method: str, data: str, epochs: int, extra: list[str],
           out: str, device_name: str = "cpu", steps: int = 0) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[rank % len(cores)]})
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if device_name == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    spec = spec_for(method, data, epochs, os.path.dirname(out), extra)
    columns = mode == "columns" and world > 1
    ctx = DistContext(columns=TimedColumns(rank, world)) if columns else DistContext(rank, world)
    if columns:
        time_collectives(ctx.columns.traffic)
    data = load_data(spec)
    loaded = peak_rss_mib()
    p = build(spec, data=data, ctx=ctx, device=device, release_features=True)
    del data
    built = peak_rss_mib()
    model = p.model
    if mode == "ddp" and world > 1:
        model = torch.nn.parallel.DistributedDataParallel(p.model, gradient_as_bucket_view=True)
    trainer = make_trainer(p, lambda m: {}, [], model=model)
    per_epoch = -(-p.graph.train_users.numel() // spec.train.batch_size)
    if steps:  # the epoch's first steps only; their time is scaled to the whole epoch below
        batches = trainer.batches
        trainer.batches = lambda epoch: itertools.islice(batches(epoch), steps)
    scale = per_epoch / min(steps, per_epoch) if steps else 1.0
    times = []
    with trainer.heap():  # the allocator settings Trainer.fit trains under (raymmrec.allocator)
        for epoch in range(epochs):
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            trainer.run_epoch(epoch)  # the per-epoch code of Trainer.fit, without evaluation
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * scale)
    n_steps = (min(steps, per_epoch) if steps else per_epoch) * epochs
    traffic = ctx.columns.traffic if columns else None
    result = {
        "rank": rank, "epoch_s": times, "steps": n_steps,
        "state_bytes": state_bytes(p.model, p.optimizer),
        "peak_rss_mb": peak_rss_mib(),
        "built_rss_mb": built, "build_added_mb": built - loaded,
        "bytes_per_step": (traffic.bytes / n_steps if traffic is not None else
                           (sum(q.numel() * q.element_size() for q in p.model.parameters()) if mode == "ddp" and world > 1
                            else 0)),
        "comm_share": (scale * getattr(traffic, "seconds", 0.0) / sum(times)) if traffic is not None else None,
        "replicated_bytes_per_step": getattr(traffic, "replicated", 0) / n_steps,
    }
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def run_mode(mode: str, method: str, data: str, epochs: int, extra: list[str], device: str = "cpu",
             steps: int = 0) -> dict[str, Any]:
    """One mode (``one``, ``columns-W``, ``ddp-W``) in W fresh processes: seconds per epoch, memory, traffic."""
    kind, world = (mode.split("-")[0], int(mode.split("-")[1])) if "-" in mode else (mode, 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers (one torch thread each)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r")
        mp.start_processes(worker, args=(world, free_port(), kind, method, data, epochs, extra, out, device, steps), nprocs=world,
                           join=True, start_method="spawn")
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    slope = [max(r["epoch_s"][e] for r in ranks) for e in range(1, epochs)] or [ranks[0]["epoch_s"][0]]
    return {"mode": mode, "s_per_epoch": statistics.median(slope), "epoch_s": [r["epoch_s"] for r in ranks],
            "state_mb": ranks[0]["state_bytes"] / 2**20, "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
            "rank_peak_rss_mb": [r["peak_rss_mb"] for r in ranks],
            "rank_built_rss_mb": [r["built_rss_mb"] for r in ranks],
            "rank_build_added_mb": [r["build_added_mb"] for r in ranks],
            "mb_per_step": ranks[0]["bytes_per_step"] / 2**20, "comm_share": ranks[0]["comm_share"],
            "repl_kb_per_step": ranks[0]["replicated_bytes_per_step"] / 2**10}


def shard(a: argparse.Namespace) -> dict[str, Any]:
    if a.epochs < 2:
        raise SystemExit("--epochs: at least 2 (the first is a warm-up)")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.device == "cuda":
        gpus = torch.cuda.device_count()
        need = max(int(m.split("-")[1]) if "-" in m else 1 for m in modes)
        if need > gpus:
            raise SystemExit(f"--modes {a.modes}: {need} workers need {need} GPUs (one each, NCCL); this machine has {gpus}")
    print(f"data {a.data}; {a.epochs} epochs per mode (first one a warm-up); repeats {a.repeats}"
          + (f"; the first {a.steps} steps of each epoch, scaled to the epoch" if a.steps else ""), flush=True)
    report: dict[str, Any] = {}
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        # the prepared inputs (graph) once, in the cache, before the workers start
        prepared_inputs(spec_for(method, a.data, 1, tempfile.gettempdir(), a.overrides),
                        load_data(spec_for(method, a.data, 1, tempfile.gettempdir(), a.overrides)))
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(a.repeats):  # modes interleaved, so drift in the machine's load hits all of them
            for mode in modes:
                r = run_mode(mode, method, a.data, a.epochs, a.overrides, a.device, a.steps)
                rows[mode].append(r)
                print(f"  {method} {mode}: {r['s_per_epoch']:.2f} s/epoch", flush=True)
        med = {m: {k: statistics.median(r[k] for r in rs) if isinstance(rs[0][k], (int, float)) else rs[0][k]
                   for k in ("s_per_epoch", "state_mb", "peak_rss_mb", "mb_per_step", "comm_share", "repl_kb_per_step")}
               for m, rs in rows.items()}
        base = med.get("one")
        print(f"\n{method} on {a.data}")
        print(f"{'mode':<12}{'s/epoch':>9}{'speed-up':>10}{'param+opt MB':>14}{'vs one':>8}{'peak RSS MB':>13}"
              f"{'MB/step':>9}{'comm':>7}{'repl KB':>9}")
        for m, r in med.items():
            speed = f"{base['s_per_epoch'] / r['s_per_epoch']:.2f}x" if base else "-"
            mem = f"{r['state_mb'] / base['state_mb']:.2f}" if base else "-"
            comm = f"{100 * r['comm_share']:.0f}%" if r["comm_share"] is not None else "-"
            print(f"{m:<12}{r['s_per_epoch']:>9.2f}{speed:>10}{r['state_mb']:>14.1f}{mem:>8}{r['peak_rss_mb']:>13.0f}"
                  f"{r['mb_per_step']:>9.2f}{comm:>7}{r['repl_kb_per_step']:>9.1f}")
        print("peak RSS of each rank (MB; median over repeats), against one process's; built: once build returned, "
              "and what building added to the peak of loading the data")
        one_peak = base["peak_rss_mb"] if base else None
        for m, rs in rows.items():
            def per_rank(key: str, rs: list = rs) -> list[float]:  # this iteration's rows, bound here
                return [statistics.median(r[key][k] for r in rs) for k in range(len(rs[0][key]))]

            peaks, built, added = per_rank("rank_peak_rss_mb"), per_rank("rank_built_rss_mb"), per_rank("rank_build_added_mb")
            ratio = " ".join(f"{q / one_peak:.2f}" for q in peaks) if one_peak else "-"
            print(f"  {m:<12} peak {' '.join(f'{q:.0f}' for q in peaks)} (x one: {ratio}); built "
                  f"{' '.join(f'{q:.0f}' for q in built)}; build added {' '.join(f'{q:.0f}' for q in added)}")
            med[m]["rank_peak_rss_mb"] = peaks
            med[m]["rank_built_rss_mb"] = built
            med[m]["rank_build_added_mb"] = added
        report[method] = {"median": med, "runs": rows}
    return {"data": a.data, "epochs": a.epochs, "steps": a.steps, "methods": report}


# ---------------------------------------------------------------------------------------------- rates
SIZES = [2**12, 2**16, 2**20, 2**22, 2**24, 2**26]


def spmm_rates(data: str, device: str, repeats: int) -> dict:
    torch.set_num_threads(1)
    spec = load_spec("lightgcn", overrides=[f"data.source={data}", f"output_dir={tempfile.gettempdir()}"])
    adj = prepared_inputs(spec, load_data(spec))["adj"].to(device)
    nnz = adj.values().numel()
    rows = {}
    for d in (1, 2, 4, 8, 16, 32, 64):
        x = torch.randn(adj.shape[0], d, device=device)
        rows[d] = median(repeat_seconds(lambda: torch.sparse.mm(adj, x), repeats, device=device))  # noqa: B023
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
        res[n] = median(repeat_seconds(lambda: dist.all_reduce(t), repeats))  # noqa: B023 - called now
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def allreduce_rates(repeats: int) -> dict:
    port = free_port()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned processes
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


def rates(a: argparse.Namespace) -> dict[str, Any]:
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
    return out


# ------------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p, sub = parser_with_modes("bench_scaling", __doc__)
    s = sub.add_parser("slope", help="whole commands: one process against Ray workers, seconds per epoch and start-up")
    s.add_argument("--data", default=str(LFM2K))
    s.add_argument("--methods", default="bm3,lightgcn")
    s.add_argument("--modes", default="single,ray-1,ray-2")
    s.add_argument("--short", type=int, default=10)
    s.add_argument("--long", type=int, default=40)
    s.add_argument("--repeats", type=int, default=1, help="runs of each command; medians are reported")
    h = sub.add_parser("shard", help="one epoch: one process, column-sharded and data-parallel workers")
    h.add_argument("--methods", default="lightgcn,bm3")
    h.add_argument("--data", default="synthetic:clothing")
    h.add_argument("--epochs", type=int, default=3, help="epochs per mode (the first is a warm-up)")
    h.add_argument("--modes", default="one,columns-2,ddp-2,columns-4")
    h.add_argument("--repeats", type=int, default=1, help="runs of every mode (medians reported)")
    h.add_argument("--steps", type=int, default=0,
                   help="time the first N steps of each epoch only, scaled to the epoch's steps (0: whole epochs)")
    h.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: rank r on GPU r with NCCL (a W-worker mode needs W GPUs)")
    r = sub.add_parser("rates", help="SpMM and all-reduce rates; --size: the sizing table")
    r.add_argument("--data", default="synthetic:clothing")
    r.add_argument("--device", default="cpu")
    r.add_argument("--repeats", type=int, default=7)
    r.add_argument("--size", default=None, help="users=1e8,items=1e7,interactions=2e9: print the sizing table")
    r.add_argument("--nodes", type=int, default=16)
    r.add_argument("--gpus-per-node", type=int, default=8)
    for q in (s, h):
        q.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.what == "slope":
        check_data(a.data)
    env = print_environment()
    res = {"slope": slope, "shard": shard, "rates": rates}[a.what](a)
    emit_figures(env, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
