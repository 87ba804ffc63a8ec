"""Every phase of a one-process training run at one size, timed, with and without the large-block heap.

    python benchmarks/bench_phases.py [--data synthetic:users=1000000,items=100000,interactions=10000000]
                                      [--method lightgcn] [--batch 65536] [--steps 4] [--eval-users 20000]
                                      [--settings default,threshold] [--repeats 1]
    python benchmarks/bench_phases.py --serving [--data ...] [--eval-users 20000] [--settings held,default]

Each (setting, repeat) runs in a fresh subprocess (so its peak memory is its own) that generates the data,
builds the graph and the model, runs ``--steps`` training steps of ``--batch`` and ranks ``--eval-users``
users of validation and test (the time scaled to every user). It prints wall and CPU seconds per phase,
the median step, the estimated epoch and full evaluation, and the peak RSS. ``--settings`` are values of
``RAYMMREC_MALLOC_TUNING`` (``raymmrec.allocator``): ``default`` (tables over glibc's mmap ceiling keep
their step buffers in the heap), ``threshold`` (the thresholds only: such tables are mapped afresh every
step) and ``0`` (no tuning). The steps and the evaluation run inside the training loop's allocator block
(``raymmrec.allocator.training_heap``), as in ``Trainer.fit``. Settings are interleaved within a repeat, so
drift in the machine's load hits all of them.

``--serving`` measures what a long-lived process that only loads and scores a model (``recommend``,
``evaluate``, a Serve replica) keeps of its memory. Each setting runs in a fresh subprocess that builds
the model (default data: a 400k-user table, 98 MiB, over glibc's 32 MiB mmap ceiling), ranks ``--eval-users``
users of validation and test, keeps one small reply (a 64 KiB tensor, allocated last), frees the rest
and prints its resident memory (RSS) at each point against its baseline before loading (taken after a
warm-up on ``synthetic:tiny`` has imported what loading and scoring need). Settings:
``held`` (the training settings entered before loading and kept, as ``build()`` left them before they
became the training loop's) and ``default`` (no change: what such a process does now).
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
SERVING = "synthetic:users=400000,items=20000,interactions=1600000"  # a 400000 x 64 table: 97.7 MiB


def child(data: str, method: str, batch: int, steps: int, eval_users: int) -> dict[str, Any]:
    import torch

    from raymmrec.allocator import training_heap
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
    # clock() calls the lambda before the `del` below, which pyflakes reads as leaving the name undefined
    p = clock("setup", lambda: build(spec, data=data_, prepared=prepared, release_features=True))  # noqa: F821
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

    # what Trainer.fit enters around its epochs on CPU (tables over the mmap ceiling: blocks from the heap)
    with training_heap(max(q.numel() * q.element_size() for q in model.parameters())):
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


def rss_mib() -> float:
    """This process's resident memory now (not its peak)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def serving_child(data: str, method: str, eval_users: int, setting: str) -> dict[str, Any]:
    import gc

    import torch

    from raymmrec.allocator import training_heap
    from raymmrec.config import load_spec
    from raymmrec.eval.evaluator import joint_metric_sums
    from raymmrec.train.build import build

    spec = load_spec(method, None, [f"data.source={data}", "train.device=cpu"])
    warm = build(load_spec(method, None, ["data.source=synthetic:tiny", "train.device=cpu"]))
    joint_metric_sums(list(warm.evaluators.values()), warm.model.scorer())
    del warm  # the modules that loading and scoring import belong to the baseline
    gc.collect()
    held = []  # the settings as build() used to leave them: thresholds before loading, large blocks after
    if setting == "held":
        held.append(training_heap(0))
        held[-1].__enter__()
    base = rss_mib()
    t0 = time.perf_counter()
    p = build(spec, release_features=True)
    largest = max(q.numel() * q.element_size() for q in p.model.parameters())
    if setting == "held":
        held.append(training_heap(largest))
        held[-1].__enter__()
    loaded = rss_mib()
    evs = list(p.evaluators.values())
    if eval_users:
        for e in evs:
            e.sample_users(eval_users, 0)
    p.model.eval()
    with torch.no_grad():
        metrics = joint_metric_sums(evs, p.model.scorer())
    scored = rss_mib()
    reply = torch.zeros(16384)  # 64 KiB allocated after the work and kept, as a long-lived process would
    del p, evs, metrics
    gc.collect()
    freed = rss_mib()
    return {"setting": setting, "largest_MiB": largest / 2**20, "base_MiB": base, "loaded_MiB": loaded,
            "scored_MiB": scored, "freed_MiB": freed, "kept_MiB": freed - base, "seconds": time.perf_counter() - t0,
            "reply": reply.numel(), "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def serving(a: argparse.Namespace, settings: list[str]) -> int:
    data = a.data if a.data != LARGEST else SERVING
    print(f"serving-like process: {a.method} on {data}; {a.eval_users or 'all'} users ranked per split; "
          f"cores {os.cpu_count()}; load {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for r in range(a.repeats):
        for s in settings:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--serving", "--settings", s,
                   "--data", data, "--method", a.method, "--eval-users", str(a.eval_users)]
            env = {k: v for k, v in os.environ.items() if k != "RAYMMREC_MALLOC_TUNING"}
            out = run_child(cmd, env, f"{s} (repeat {r})")
            if out is not None:
                runs[s].append(out)
    print(f"\n{'setting':<10}{'largest table MiB':>19}{'loaded':>9}{'scored':>9}{'freed':>9}{'peak':>9}"
          f"{'runs':>6}   (MiB of RSS over the baseline before loading)")
    med: dict[str, dict[str, float]] = {}
    for s, rs in runs.items():
        if not rs:
            continue
        med[s] = {k: statistics.median(r[k] - (r["base_MiB"] if k.endswith("ed_MiB") or k == "peak_MiB" else 0)
                                       for r in rs)
                  for k in ("largest_MiB", "loaded_MiB", "scored_MiB", "freed_MiB", "peak_MiB")}
        m = med[s]
        print(f"{s:<10}{m['largest_MiB']:>19.1f}{m['loaded_MiB']:>9.0f}{m['scored_MiB']:>9.0f}{m['freed_MiB']:>9.0f}"
              f"{m['peak_MiB']:>9.0f}{len(rs):>6}")
    print(json.dumps({"medians": med, "runs": runs}))
    return 0


def run_child(cmd: list[str], env: dict[str, str], label: str) -> dict[str, Any] | None:
    """Run one measuring child; its last JSON line, or None (the failure printed under ``label``)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"{label}: FAILED exit {proc.returncode}: {tail[0]}", flush=True)
        return None
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=LARGEST)
    ap.add_argument("--method", default="lightgcn")
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=4, help="training steps timed (the first is a warm-up)")
    ap.add_argument("--eval-users", type=int, default=20000, help="users ranked per split (0: all)")
    ap.add_argument("--settings", default=None,
                    help="RAYMMREC_MALLOC_TUNING values (default: default,threshold); with --serving held,default")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--serving", action="store_true",
                    help="the memory a process that only loads and scores a model gives back")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps: at least 2 (the first is a warm-up)")
    known = ("held", "default") if a.serving else ("default", "threshold", "0")
    settings = [s.strip() for s in (a.settings or ",".join(known[:2])).split(",") if s.strip()]
    bad = [s for s in settings if s not in known]
    if bad:
        ap.error(f"--settings: unknown {bad[0]!r}; expected {', '.join(known)}")
    if a.child:
        out = (serving_child(a.data, a.method, a.eval_users, settings[0]) if a.serving
               else child(a.data, a.method, a.batch, a.steps, a.eval_users))
        print(json.dumps(out), flush=True)
        return 0
    if a.serving:
        return serving(a, settings)
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
            out = run_child(cmd, env, f"{s} (repeat {r})")
            if out is None:
                continue
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
