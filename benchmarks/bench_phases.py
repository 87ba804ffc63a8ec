"""Every phase of a one-process training run at one size, timed, with and without the large-block heap.

    python benchmarks/bench_phases.py [--data synthetic:users=1000000,items=100000,interactions=10000000]
                                      [--method lightgcn] [--batch 65536] [--steps 4] [--eval-users 20000]
                                      [--settings default,threshold] [--repeats 1]

Each (setting, repeat) runs in a fresh subprocess (so its peak memory is its own) that generates the data,
builds the graph and the model, runs ``--steps`` training steps of ``--batch`` and ranks ``--eval-users``
users of validation and test (the time scaled to every user). It prints wall and CPU seconds per phase,
the median step, the estimated epoch and full evaluation, and the peak RSS. ``--settings`` are values of
``RAYMMREC_MALLOC_TUNING`` (``raymmrec.allocator``): ``default`` (tables over glibc's mmap ceiling keep
their step buffers in the heap), ``threshold`` (the thresholds only: such tables are mapped afresh every
step) and ``0`` (no tuning). Settings are interleaved within a repeat, so drift in the machine's load hits
all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

LARGEST = "synthetic:users=1000000,items=100000,interactions=10000000"


def child(data: str, method: str, batch: int, steps: int, eval_users: int) -> dict[str, Any]:
    import torch

    from raymmrec.config import load_spec
    from raymmrec.eval.evaluator import joint_metric_sums
    from raymmrec.prepared import prepare
    from raymmrec.train.build import batch_fn, build, check_spec, load_data

    phases: dict[str, dict[str, float]] = {}

    def clock(name: str, fn):  # noqa: ANN001, ANN202
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        phases[name] = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                        "peak_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        return out

    spec = load_spec(method, None, [f"data.source={data}", f"train.batch_size={batch}", "train.epochs=1"])
    data_ = clock("generate", lambda: load_data(spec))
    cls, cfg, _ = check_spec(spec)
    prepared = clock("graph", lambda: prepare(data_, cls.prepared_inputs(cfg), cache_dir=None))
    p = clock("setup", lambda: build(spec, data=data_, prepared=prepared, release_features=True))
    del prepared
    it = iter(batch_fn(p)(0))
    model = p.model
    model.train()

    def step() -> None:
        b = next(it)
        p.optimizer.zero_grad(set_to_none=True)
        out = p.objective(model(b), b, p.ctx)
        out.total.backward()
        p.optimizer.step()

    for s in range(steps):
        clock(f"step {s}", step)
    evs = list(p.evaluators.values())
    every = torch.unique(torch.cat([e.users for e in evs])).numel()
    if eval_users:
        for e in evs:
            e.sample_users(eval_users, 0)
    ranked = torch.unique(torch.cat([e.users for e in evs])).numel()
    model.eval()
    with torch.no_grad():
        clock("evaluate", lambda: joint_metric_sums(evs, model.scorer()))
    step_names = [k for k in phases if k.startswith("step ")]
    per_step = statistics.median(phases[k]["wall_s"] for k in step_names[1:] or step_names)
    n_steps = math.ceil(len(data_.train) / batch)
    return {"phases": phases, "step_s": per_step, "steps_per_epoch": n_steps, "epoch_s_est": per_step * n_steps,
            "eval_s_est": phases["evaluate"]["wall_s"] * every / ranked, "users_ranked": ranked,
            "users_all": every, "threads": torch.get_num_threads(),
            "peak_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=LARGEST)
    ap.add_argument("--method", default="lightgcn")
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=4, help="training steps timed (the first is a warm-up)")
    ap.add_argument("--eval-users", type=int, default=20000, help="users ranked per split (0: all)")
    ap.add_argument("--settings", default="default,threshold", help="RAYMMREC_MALLOC_TUNING values")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps: at least 2 (the first is a warm-up)")
    if a.child:
        print(json.dumps(child(a.data, a.method, a.batch, a.steps, a.eval_users)), flush=True)
        return 0
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in ("default", "threshold", "0")]
    if bad:
        ap.error(f"--settings: unknown {bad[0]!r}; expected default, threshold or 0")
    print(f"{a.method} on {a.data}; batch {a.batch}; {a.steps} steps; {a.eval_users or 'all'} users ranked; "
          f"cores {os.cpu_count()}; load {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for r in range(a.repeats):
        for s in settings:
            env = dict(os.environ)
            env.pop("RAYMMREC_MALLOC_TUNING", None)
            if s != "default":
                env["RAYMMREC_MALLOC_TUNING"] = s
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--data", a.data, "--method", a.method,
                   "--batch", str(a.batch), "--steps", str(a.steps), "--eval-users", str(a.eval_users)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                print(f"{s} (repeat {r}): FAILED exit {proc.returncode}: {tail[0]}", flush=True)
                continue
            out = json.loads(lines[-1])
            runs[s].append(out)
            ph = out["phases"]
            print(f"{s} (repeat {r}): generate {ph['generate']['wall_s']:.1f}s  graph {ph['graph']['wall_s']:.1f}s  "
                  f"setup {ph['setup']['wall_s']:.1f}s  step {out['step_s']:.2f}s  evaluate {out['users_ranked']:,} "
                  f"users {ph['evaluate']['wall_s']:.1f}s  peak {out['peak_GiB']:.2f} GiB", flush=True)
    print(f"\n{'setting':<10}{'step s':>9}{'epoch s (est)':>15}{'full eval s (est)':>19}{'peak GiB':>10}{'runs':>6}")
    med: dict[str, dict[str, float]] = {}
    for s, rs in runs.items():
        if not rs:
            continue
        med[s] = {k: statistics.median(r[k] for r in rs) for k in ("step_s", "epoch_s_est", "eval_s_est", "peak_GiB")}
        m = med[s]
        print(f"{s:<10}{m['step_s']:>9.2f}{m['epoch_s_est']:>15.0f}{m['eval_s_est']:>19.0f}{m['peak_GiB']:>10.2f}"
              f"{len(rs):>6}")
    if "default" in med and len(med) > 1:
        for s in med:
            if s != "default":
                print(f"default against {s}: step {med[s]['step_s'] / med['default']['step_s']:.2f}x faster, "
                      f"peak {med['default']['peak_GiB'] / med[s]['peak_GiB']:.2f}x")
    print(json.dumps({"medians": med, "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
