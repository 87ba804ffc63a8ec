"""Strong scaling of one training epoch: one process, column-sharded workers and data-parallel workers.

    python benchmarks/bench_shard.py [--methods lightgcn,bm3] [--data synthetic:clothing] [--epochs 3]
        [--modes one,columns-2,ddp-2,columns-4] [--repeats 1] [--device cpu|cuda] [key=value ...]

Each mode runs in fresh processes started here (``torch.multiprocessing``, gloo): the same pieces a Ray
Train worker runs (``raymmrec.train.build.build`` and the core ``Trainer``), without Ray's start-up.
Every process uses one torch thread and is pinned to one core (``os.sched_setaffinity``): core ``r mod
cores`` for rank ``r``, so W = 2 uses both cores of a two-core machine and W = 4 puts two ranks on each
(a simulation: its times are not a speed-up, its memory and communication are real).

Per method and mode it prints:

* ``s/epoch``: the wall-clock slope over epochs 1..N-1 (epoch 0 is a warm-up), median over repeats;
  the ratio against the one-process mode of the same method, measured in this same invocation;
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

The last line is one JSON object with every figure. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from raymmrec.config import load_spec  # noqa: E402
from raymmrec.dist import DistContext  # noqa: E402
from raymmrec.shard import Columns  # noqa: E402
from raymmrec.train.build import build, load_data, make_trainer, prepared_inputs  # noqa: E402


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
    """:class:`Columns` whose collectives also add their wall time to ``traffic.seconds`` (and the replicated
    parameters' averaged gradients their bytes to ``traffic.replicated``)."""

    def reduce(self, t):  # noqa: ANN001, ANN201
        t0 = time.perf_counter()
        out = super().reduce(t)
        self.traffic.seconds = getattr(self.traffic, "seconds", 0.0) + time.perf_counter() - t0
        return out

    def gather(self, t, full, dim=-1, parts=1):  # noqa: ANN001, ANN201
        t0 = time.perf_counter()
        out = super().gather(t, full, dim, parts)
        self.traffic.seconds = getattr(self.traffic, "seconds", 0.0) + time.perf_counter() - t0
        return out

    def average_(self, t):  # noqa: ANN001, ANN201
        self.traffic.replicated = getattr(self.traffic, "replicated", 0) + t.numel() * t.element_size()
        t0 = time.perf_counter()
        out = super().average_(t)
        self.traffic.seconds = getattr(self.traffic, "seconds", 0.0) + time.perf_counter() - t0
        return out


def worker(rank: int, world: int, port: int, mode: str, method: str, data: str, epochs: int, extra: list[str],
           out: str, device_name: str = "cpu") -> None:
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
    data = load_data(spec)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    p = build(spec, data=data, ctx=ctx, device=device, release_features=True)
    del data
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = p.model
    if mode == "ddp" and world > 1:
        model = torch.nn.parallel.DistributedDataParallel(p.model, gradient_as_bucket_view=True)
    trainer = make_trainer(p, lambda m: {}, [], model=model)
    times = []
    with trainer.heap():  # the allocator settings Trainer.fit trains under (raymmrec.allocator)
        for epoch in range(epochs):
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            trainer._run_epoch(epoch)  # the per-epoch code of Trainer.fit, without evaluation
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    n_steps = -(-p.graph.train_users.numel() // spec.train.batch_size) * epochs
    traffic = ctx.columns.traffic if columns else None
    result = {
        "rank": rank, "epoch_s": times, "steps": n_steps,
        "state_bytes": state_bytes(p.model, p.optimizer),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "built_rss_mb": built, "build_added_mb": built - loaded,
        "bytes_per_step": (traffic.bytes / n_steps if traffic is not None else
                           (sum(q.numel() * q.element_size() for q in p.model.parameters()) if mode == "ddp" and world > 1
                            else 0)),
        "comm_share": (getattr(traffic, "seconds", 0.0) / sum(times)) if traffic is not None else None,
        "replicated_bytes_per_step": getattr(traffic, "replicated", 0) / n_steps,
    }
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(mode: str, method: str, data: str, epochs: int, extra: list[str], device: str = "cpu") -> dict[str, Any]:
    kind, world = (mode.split("-")[0], int(mode.split("-")[1])) if "-" in mode else (mode, 1)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r")
        mp.start_processes(worker, args=(world, free_port(), kind, method, data, epochs, extra, out, device), nprocs=world,
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="lightgcn,bm3")
    ap.add_argument("--data", default="synthetic:clothing")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per mode (the first is a warm-up)")
    ap.add_argument("--modes", default="one,columns-2,ddp-2,columns-4")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every mode (medians reported)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: rank r on GPU r with NCCL (a W-worker mode needs W GPUs)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = ap.parse_args()
    if a.epochs < 2:
        ap.error("--epochs: at least 2 (the first is a warm-up)")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.device == "cuda":
        gpus = torch.cuda.device_count()
        need = max(int(m.split("-")[1]) if "-" in m else 1 for m in modes)
        if need > gpus:
            ap.error(f"--modes {a.modes}: {need} workers need {need} GPUs (one each, NCCL); this machine has {gpus}")
    print(f"cores: {len(os.sched_getaffinity(0))}; torch {torch.__version__}; data {a.data}; "
          f"{a.epochs} epochs per mode (first one a warm-up); repeats {a.repeats}", flush=True)
    report: dict[str, Any] = {}
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        # the prepared inputs (graph) once, in the cache, before the workers start
        prepared_inputs(spec_for(method, a.data, 1, tempfile.gettempdir(), a.overrides),
                        load_data(spec_for(method, a.data, 1, tempfile.gettempdir(), a.overrides)))
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(a.repeats):  # modes interleaved, so drift in the machine's load hits all of them
            for mode in modes:
                r = run_mode(mode, method, a.data, a.epochs, a.overrides, a.device)
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
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
