"""A method's paper grid through Ray Tune against the same configurations one after another in one process.

    python -m benchmarks.bench_tune --method bm3 --data ../shared/data/lfm2k --max-concurrent 2 \
        [--output-dir runs/bench-tune] [--name NAME] [--skip-sequential] [section.key=value ...]

Both arms train every grid point to its early stop (the same seeds, the same data object). The
sequential arm uses this process with all cores; the sweep arm runs ``raymmrec.ray.tune.sweep`` on a
local Ray with ``--max-concurrent`` trials sharing the cores. Prints both wall times, their ratio,
each arm's winner (selected on validation) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import emit_figures, print_environment
from raymmrec.config import load_spec
from raymmrec.search import apply_point, grid_points, search_space
from raymmrec.train.build import load_data
from raymmrec.train.run import run


def sequential(spec, points):  # noqa: ANN001, ANN201
    """Every point trained in turn in this process; (wall seconds, rows)."""
    data = load_data(spec)
    torch.set_num_threads(os.cpu_count() or 1)
    out = tempfile.mkdtemp(prefix="bench-tune-seq-")
    rows, t0 = [], time.perf_counter()
    for i, point in enumerate(points):
        s = apply_point(spec, point)
        s.output_dir, s.run_name = out, f"point{i}"
        t1 = time.perf_counter()
        state = run(s, progress=False, data=data)
        metric = spec.eval.valid_metric
        rows.append({"point": point, "valid": state.best_valid.get(metric), "test": state.best_test.get(metric),
                     "test_ndcg@20": state.best_test.get("ndcg@20"), "valid_ndcg@20": state.best_valid.get("ndcg@20"),
                     "epochs": state.epoch, "seconds": round(time.perf_counter() - t1, 1)})
        print(f"  sequential {i + 1}/{len(points)} {point}: valid {rows[-1]['valid']:.4f} test {rows[-1]['test']:.4f} "
              f"({state.epoch} epochs, {rows[-1]['seconds']}s)", flush=True)
    return time.perf_counter() - t0, rows


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="bm3")
    p.add_argument("--data", required=True)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--output-dir", default="runs/bench-tune", help="parent of the sweep folder (local or s3://)")
    p.add_argument("--name", default=None, help="sweep folder (default: a fresh one per invocation)")
    p.add_argument("--skip-sequential", action="store_true")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda: where the trials train")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="with GPUs: a trial's share of one (default 1)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    if not os.path.exists(a.data) and "://" not in a.data and not a.data.startswith(("synthetic", "ml100k")):
        print(f"dataset {a.data} not found", file=sys.stderr)
        return 2
    source = os.path.abspath(a.data) if os.path.exists(a.data) else a.data  # names and URLs as given
    spec = load_spec(method=a.method, overrides=[*a.overrides, f"data.source={source}", f"train.device={a.device}"])
    points = grid_points(search_space(a.method, "paper"))
    env = print_environment()
    print(f"{a.method} paper grid: {len(points)} points on {a.data}", flush=True)
    seq_s, seq_rows = (None, [])
    if not a.skip_sequential:
        seq_s, seq_rows = sequential(spec, points)
        print(f"sequential: {seq_s / 60:.1f} min", flush=True)
    from raymmrec.ray.tune import SweepArgs, sweep

    name = a.name or f"{a.method}-{Path(a.data).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec.output_dir = a.output_dir
    res = sweep(spec, SweepArgs(grid="paper", max_concurrent=a.max_concurrent, name=name, gpus_per_trial=a.gpus_per_trial))
    best_seq = max(seq_rows, key=lambda r: (r["valid"], r["valid_ndcg@20"])) if seq_rows else None
    print(f"\nsweep ({a.max_concurrent} concurrent): {res.wall_s / 60:.1f} min"
          + (f"; sequential: {seq_s / 60:.1f} min; speed-up {seq_s / res.wall_s:.2f}x" if seq_s else ""))
    b = res.best
    print(f"sweep winner {b['trial']}: valid recall@20 {b['valid recall@20']:.4f} ndcg@20 {b['valid ndcg@20']:.4f}; "
          f"test recall@20 {b['test recall@20']:.4f} ndcg@20 {b['test ndcg@20']:.4f}")
    if best_seq:
        print(f"sequential winner {best_seq['point']}: valid {best_seq['valid']:.4f}, test recall@20 {best_seq['test']:.4f}")
    emit_figures(env, {"method": a.method, "data": a.data, "points": len(points), "sweep_wall_s": round(res.wall_s, 1),
                       "sequential_wall_s": None if seq_s is None else round(seq_s, 1),
                       "speedup": None if seq_s is None else round(seq_s / res.wall_s, 3),
                       "sweep_best": b, "sequential_best": best_seq, "sweep_root": res.root})
    return 0


if __name__ == "__main__":
    sys.exit(main())
