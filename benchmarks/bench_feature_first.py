"""CM3 and LIRDRec against BM3 (or any methods against the first one): epoch speed, item-item graph cost, quality runs.

    python benchmarks/bench_feature_first.py speed   --data ../shared/data/lfm2k [--epochs 5] [--methods bm3,cm3,lirdrec]
    python benchmarks/bench_feature_first.py speed   --methods bpr,bpo,nbpo train.num_negatives=3   # NBPO's throughput
    python benchmarks/bench_feature_first.py graph   [--data synthetic:clothing] [--k 10]
    python benchmarks/bench_feature_first.py quality --data synthetic:small --methods lightgcn,cm3,lirdrec [--seeds 0,1,2]
    python benchmarks/bench_feature_first.py quality --data ../shared/data/lfm2k --methods cm3,lirdrec data.cold_items=0.1

* ``speed``: builds each method's run exactly as ``raymmrec train`` does and times, in this one
  process, ``--epochs`` training epochs after one warm-up (``Trainer._run_epoch``) and one full
  evaluation (scorer + valid + test). Per method: median epoch seconds (training, evaluation, both)
  and the ratio to the first method of ``--methods`` (BM3 by default). The methods are timed in
  rounds (one epoch of each in turn), so a burst of load on this shared machine hits all of them.
  ``--floor`` adds, per method, the FLOPs of the dense matrix products of one training epoch (as
  torch's profiler counts them; the sparse graph products are left out) and the seconds they need at
  this machine's best measured float32 product rate: a lower bound on the epoch that no
  implementation of the same computation beats on this machine.
* ``graph``: the item-item multimodal kNN graph (``item_knn`` builder, CM3's defaults) in a fresh
  subprocess: seconds, the process's peak RSS while building (the features included; Linux's
  ``/proc/self/clear_refs`` resets the peak once the data is loaded) and that peak above the RSS
  of the loaded data.
* ``quality``: trains each method with its defaults to early stopping (``raymmrec.train.run.run``,
  in temporary folders) for each seed and prints the test (and, with ``data.cold_items``, the
  cold-start and content-kNN) Recall@20 / NDCG@20 at the best validation epoch, with the time each took.

For lfm2k folders the modalities are text + audio_whisper. Prints a report and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_train import LFM2K_MODALITIES, environment, make_trainer, timed  # noqa: E402
from raymmrec.config import load_spec  # noqa: E402
from raymmrec.train.build import build, load_data, local_evaluate  # noqa: E402


def spec_for(method: str, data: str, overrides: list[str]):  # noqa: ANN201
    spec = load_spec(method=method, overrides=[f"data.source={data}", "train.device=cpu", *overrides])
    if Path(data.rstrip("/")).name.startswith("lfm2k") and not any(o.startswith("data.modalities") for o in overrides):
        spec.data.modalities = list(LFM2K_MODALITIES)
    return spec


def speed(a: argparse.Namespace) -> dict:
    methods = a.methods.split(",")
    setups, trainers = {}, {}
    data = None
    train = {m: [] for m in methods}
    evals = {m: [] for m in methods}
    with contextlib.ExitStack() as heaps:
        for m in methods:
            spec = spec_for(m, a.data, a.overrides)
            data = data or load_data(spec)
            setups[m] = build(spec, data=data)
            trainers[m] = make_trainer(setups[m])
            heaps.enter_context(trainers[m].heap())  # the allocator settings Trainer.fit trains under
            trainers[m]._run_epoch(0)  # warm-up
        for r in range(a.epochs):
            for m in methods:
                train[m].append(timed(lambda: trainers[m]._run_epoch(r + 1),  # noqa: B023 - timed() calls it now
                                      torch.device("cpu"))[1])
                evals[m].append(timed(lambda: local_evaluate(setups[m].evaluators)(setups[m].model),  # noqa: B023
                                      torch.device("cpu"))[1])
            print(f"  round {r}: " + "  ".join(f"{m} {train[m][-1]:.2f}+{evals[m][-1]:.2f}s" for m in methods),
                  flush=True)
    base = methods[0]
    out = {}
    for m in methods:
        both = [t + e for t, e in zip(train[m], evals[m])]
        out[m] = {"train_s": statistics.median(train[m]), "eval_s": statistics.median(evals[m]),
                  "epoch_s": statistics.median(both)}
    for m in methods:
        out[m]["ratio_to_" + base] = out[m]["epoch_s"] / out[base]["epoch_s"]
        print(f"{m:>10}: train {out[m]['train_s']:.3f}s + eval {out[m]['eval_s']:.3f}s = {out[m]['epoch_s']:.3f}s "
              f"per epoch (median of {a.epochs}); {out[m]['ratio_to_' + base]:.2f}x {base}")
    if a.floor:
        rate = gemm_rate()
        print(f"  floor: this machine's dense float32 matrix products run at {rate / 1e9:.0f} GFLOP/s "
              f"(best of repeated 1425 x 1792 x 256 products)")
        for m in methods:
            flops = dense_flops(trainers[m], a.epochs + 1)
            out[m].update(dense_gflop_per_epoch=flops / 1e9, dense_floor_s=flops / rate)
            print(f"{m:>10}: {flops / 1e9:.1f} GFLOP of dense matrix products per training epoch: "
                  f"{flops / rate:.3f}s at that rate, {flops / rate / out[base]['epoch_s']:.2f}x a whole {base} epoch")
    return {"what": "speed", "data": a.data, "methods": out, "epochs": a.epochs}


def gemm_rate(repeats: int = 30) -> float:
    """FLOP/s of the fastest of ``repeats`` float32 products of an encoder layer's shape."""
    x, w = torch.randn(1425, 1792), torch.randn(1792, 256)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t0)
    return 2 * 1425 * 1792 * 256 / best


def dense_flops(trainer, epoch: int) -> float:  # noqa: ANN001
    """FLOPs of the dense matrix products (forward and backward) of one training epoch, as the
    profiler counts them; products with a sparse operand (the graph propagation) are left out."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        trainer._run_epoch(epoch)
    total = 0.0
    for e in prof.events():
        parent = e.cpu_parent
        sparse = any("sparse" in (q.name if q else "") for q in (parent, parent.cpu_parent if parent else None))
        if e.name in ("aten::mm", "aten::addmm", "aten::bmm") and e.flops and not sparse:
            total += e.flops
    return total


_GRAPH_CHILD = r"""
import json, sys, time
from pathlib import Path
from raymmrec.data import load_dataset
from raymmrec.prepared import _BUILDERS

def status(key):  # kB figures of /proc/self/status
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key))
    return int(line.split()[1]) / 1024

data = load_dataset(sys.argv[1])
loaded = status("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
t0 = time.perf_counter()
g = _BUILDERS["item_knn"].fn(data, k=int(sys.argv[2]), non_text_weight=0.1)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_rss_mib": status("VmHWM:"), "loaded_rss_mib": loaded,
                  "nnz": int(g.values().numel()), "items": data.n_items,
                  "dims": {m: int(x.shape[1]) for m, x in data.features.items()}}))
"""


def graph(a: argparse.Namespace) -> dict:
    data = a.data
    subprocess.run([sys.executable, "-c", "import sys; from raymmrec.data import load_dataset; load_dataset(sys.argv[1])",
                    data], check=True)  # builds the dataset's cache, untimed
    runs = []
    for _ in range(a.repeats):
        out = subprocess.run([sys.executable, "-c", _GRAPH_CHILD, data, str(a.k)], check=True,
                             capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    res = {"what": "graph", "data": data, "k": a.k, "runs": runs,
           "seconds_median": statistics.median(r["seconds"] for r in runs),
           "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
           "above_loaded_mib_max": max(r["peak_rss_mib"] - r["loaded_rss_mib"] for r in runs)}
    r0 = runs[0]
    print(f"item-item graph of {data}: {r0['items']:,} items, modalities {r0['dims']}, k={a.k}: "
          f"{res['seconds_median']:.1f}s (median of {a.repeats}); peak RSS while building {res['peak_rss_mib_max']:.0f} MiB, "
          f"{res['above_loaded_mib_max']:.0f} MiB above the loaded data ({r0['loaded_rss_mib']:.0f} MiB)")
    return res


def quality(a: argparse.Namespace) -> dict:
    from raymmrec.train.run import run

    rows = []
    for m in a.methods.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                spec = spec_for(m, a.data, [*a.overrides, f"output_dir={tmp}", "run_name=r", f"train.seed={seed}"])
                t0 = time.perf_counter()
                state = run(spec, progress=False)
                wall = time.perf_counter() - t0
                results = json.loads((Path(tmp) / "r" / "results.json").read_text())
            row = {"method": m, "seed": seed, "best_epoch": state.best_epoch, "epochs": state.epoch, "wall_s": wall,
                   "valid_recall@20": state.best_valid.get("recall@20"),
                   "test_recall@20": state.best_test.get("recall@20"), "test_ndcg@20": state.best_test.get("ndcg@20")}
            for split in ("cold", "cold_knn"):
                if isinstance(results.get(split), dict):
                    row[f"{split}_recall@20"] = results[split].get("recall@20")
                    row[f"{split}_ndcg@20"] = results[split].get("ndcg@20")
            rows.append(row)
            extra = "".join(f"  {k} {v:.4f}" for k, v in row.items() if k.startswith("cold") and v is not None)
            print(f"{m:>10} seed {seed}: test R@20 {row['test_recall@20']:.4f} N@20 {row['test_ndcg@20']:.4f} "
                  f"(valid {row['valid_recall@20']:.4f}, best epoch {state.best_epoch} of {state.epoch}, "
                  f"{wall:.0f}s){extra}", flush=True)
    return {"what": "quality", "data": a.data, "overrides": a.overrides, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "graph", "quality"])
    p.add_argument("--data", default=None,
                   help="default: ../shared/data/lfm2k (speed, quality), synthetic:clothing (graph)")
    p.add_argument("--methods", default="bm3,cm3,lirdrec")
    p.add_argument("--epochs", type=int, default=5, help="speed: timed rounds")
    p.add_argument("--floor", action="store_true",
                   help="speed: also count each method's dense matrix-product FLOPs per epoch and their time "
                        "at this machine's measured product rate (a lower bound on the epoch)")
    p.add_argument("--repeats", type=int, default=3, help="graph: builds, each in a fresh process")
    p.add_argument("--k", type=int, default=10, help="graph: neighbours per item")
    p.add_argument("--seeds", default="0", help="quality: comma-separated seeds")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_intermixed_args(argv)
    a.data = a.data or ("synthetic:clothing" if a.what == "graph" else "../shared/data/lfm2k")
    if "://" not in a.data and not a.data.startswith("synthetic") and a.data != "ml100k" and not Path(a.data).is_dir():
        print(f"error: dataset folder {a.data} does not exist on this machine", file=sys.stderr)
        return 2
    env = environment(torch.device("cpu"))
    print(f"{env['device']} | torch {env['torch']} | threads {env['threads']} | load {env['load_avg_1m']:.2f}", flush=True)
    res = {"speed": speed, "graph": graph, "quality": quality}[a.what](a)
    print(json.dumps({**res, **env, "load_avg_1m_end": __import__("os").getloadavg()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
