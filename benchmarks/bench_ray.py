"""Data-parallel Ray Train epochs against single-process epochs, on the same data and global batch size.

    python -m benchmarks.bench_ray --method bm3 --data ../shared/data/lfm2k --num-workers 2 \
        [--cpus-per-worker 0.5] [--epochs 6] [--device cpu|cuda] [--single-epochs 5] [--skip-single] [key=value ...]

(a) single process: ``warmup`` untimed + ``single-epochs`` timed ``Trainer.run_epoch`` calls and
    full evaluations (scorer + valid + test), as ``bench_train epoch`` times them;
(b) ``raymmrec.ray.launch`` (what ``raymmrec train --num-workers N`` calls) with N workers for ``--epochs`` epochs into a fresh temporary storage
    folder under a unique run name; rank 0's per-epoch ``time/train_s`` and ``time/eval_s`` are read
    from ``state.history`` in the run's latest checkpoint (epoch 0 skipped as warm-up).
Prints the medians, the ratios ray/single and, last, one JSON line. Starts its own local Ray
(``address="local"``) unless ``--address`` names a cluster. Exit code 2 when the data folder is missing.

``--commands`` measures what a user waits for instead, from the commands themselves (each one a fresh
process, repeated ``--repeats`` times, one process and Ray alternating):

    python -m benchmarks.bench_ray --commands --method bm3 --data ../shared/data/lfm2k \
        --num-workers 2 --epochs 40 --repeats 3

(c) the time from the command to its first epoch line: ``raymmrec train`` (one process) against
    ``python jobs/train.py --num-workers N`` (starts a local Ray; the loading task, the workers, the
    first epoch);
(d) per epoch: the median time between epoch lines from epoch 5 on, and the epoch lines' own
    ``train_s``, for ``jobs/train.py --num-workers 1`` (the worker gets the machine's cores as its
    threads) against one process on the same machine; and its floor, the one-process command's code
    unchanged in a Ray worker process: in a plain Ray task (in its main thread, and in a thread as Ray
    Train V2 runs a train function) and as a 1-worker Ray Train run's train function (whose prints
    reach the driver in bursts, so only its ``train_s`` is read), each given the machine's cores.
Medians over the repeats; the prepared-input cache is warmed by an untimed first run.

``--node-memory`` measures the whole machine's memory for one command instead (one run of each, one
after the other): the peak of the summed proportional set size (PSS: a page shared by k processes
counts 1/k in each, so the object store's pages count once) of every process the command starts,
the local Ray's own (GCS, raylet with its object store, dashboard) and every Ray worker included,
sampled every 0.25 s (``--sample-every``); one process against ``--num-workers N`` column-sharded workers:

    python -m benchmarks.bench_ray --node-memory --method lightgcn --num-workers 2 --epochs 1 \
        --data synthetic:users=1000000,items=100000,interactions=10000000 \
        train.batch_size=65536 eval.valid_users=20000
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

from benchmarks.bench_train import time_epochs, time_eval
from benchmarks.common import (LFM2K_MODALITIES, ROOT, add_run_arguments, emit, is_lfm2k, local_ray_env, make_spec,
                               node_memory_command, print_environment, process_role, stats, timed)
from raymmrec.ray.local_cluster import marked_tree
from raymmrec.train.build import build, load_data, resolve_device
from raymmrec.train.checkpoint import read_latest


def single_process(spec, warmup: int, epochs: int, eval_repeats: int) -> dict:
    device = resolve_device(spec.train.device)
    data = load_data(spec)
    print(f"{data.summary()}", flush=True)
    setup = build(spec, device=device, data=data)
    print(f"(a) single process on {device}, {torch.get_num_threads()} threads, batch size {spec.train.batch_size}",
          flush=True)
    train, _ = time_epochs(setup, warmup, epochs)
    ev = time_eval(setup, eval_repeats)
    full = [s + v + t for s, v, t in zip(ev["scorer"], ev["valid"], ev["test"])]
    del setup, data
    gc.collect()
    return {"train_s": stats(train), "train_all_s": train, "eval_s": stats(full), "eval_all_s": full}


def latest_history(run_root: str) -> list[dict]:
    """``state.history`` of the run's checkpoint (``<run_root>/ckpt/latest.pt``)."""
    latest = read_latest(run_root)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint under {run_root}")
    return latest["state"]["history"]


def ray_run(spec, a: argparse.Namespace) -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from raymmrec.ray.launch import Workers, launch

    storage = tempfile.mkdtemp(prefix="raymmrec-bench-ray-", dir=a.storage_dir)
    spec.run_name = f"bench-{spec.method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    spec.output_dir = storage
    spec.train.epochs, spec.train.patience, spec.train.eval_every, spec.train.checkpoint_every = a.epochs, a.epochs + 1, 1, 1
    if not ray.is_initialized():
        t0 = time.perf_counter()
        ray.init(address=a.address or "local", include_dashboard=False, log_to_driver=not a.quiet_workers)
        print(f"ray {ray.__version__} started/connected in {time.perf_counter() - t0:.1f}s; "
              f"cluster {ray.cluster_resources().get('CPU', 0):g} CPU, {ray.cluster_resources().get('GPU', 0):g} GPU",
              flush=True)
    workers = Workers(num_workers=a.num_workers, cpus_per_worker=a.cpus_per_worker, max_failures=0)
    print(f"(b) ray: {a.num_workers} workers, cpus/worker {a.cpus_per_worker or 'default'}, "
          f"device {spec.train.device}, {a.epochs} epochs, run {spec.run_name} in {storage}", flush=True)
    try:
        _, wall = timed(lambda: launch(spec, workers, progress=not a.quiet_workers), torch.device("cpu"))
        history = latest_history(os.path.join(storage, spec.run_name))
    finally:
        if not a.keep:
            shutil.rmtree(storage, ignore_errors=True)
    rows = [h for h in history if int(h["epoch"]) >= 1]  # epoch 0 is warm-up
    train = [h["time/train_s"] for h in rows]
    evals = [h["time/eval_s"] for h in rows if "time/eval_s" in h]
    for h in history:
        print(f"  ray epoch {int(h['epoch'])}: train {h['time/train_s']:.3f}s  eval {h.get('time/eval_s', float('nan')):.3f}s"
              f"  loss {h.get('loss', float('nan')):.4f}", flush=True)
    return {"train_s": stats(train), "train_all_s": train, "eval_s": stats(evals), "eval_all_s": evals,
            "launch_wall_s": wall, "epoch0_train_s": history[0]["time/train_s"] if history else None}


EPOCH_LINE = re.compile(r"(?:^|\s)epoch (\d+): loss=\S+ train_s=([0-9.]+)")  # after a Ray worker's prefix too


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_by_role(root: int, marker: str) -> dict[int, tuple[str, float]]:
    return {pid: (process_role(cmd), _cpu_s(pid)) for pid, cmd in marked_tree(marker, {root}).items()}


def timed_command(cmd: list[str], env: dict[str, str], cpu_from: int | None = None) -> dict:
    """Run ``cmd``; the seconds from its start to each epoch line and the lines' ``train_s``.

    ``cpu_from``: also the cores each role of the command's processes used (CPU seconds per second of
    wall clock) from that epoch line to the last one (the command's Ray under a fresh ``RAY_TMPDIR``).
    """
    marker = tempfile.mkdtemp(prefix="rayb")  # short: Ray's socket paths must stay under 108 bytes
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "RAY_TMPDIR": marker}, cwd=str(ROOT))
    at, train_s, tail, snaps = [], [], [], []
    for line in proc.stdout:  # type: ignore[union-attr]
        m = EPOCH_LINE.search(line.strip())
        if m:
            at.append(time.perf_counter() - t0)
            train_s.append(float(m.group(2)))
            if cpu_from is not None and int(m.group(1)) >= cpu_from:
                snaps.append((at[-1], _cpu_by_role(proc.pid, marker)))
                snaps = [snaps[0], snaps[-1]]
        tail = (tail + [line.rstrip()])[-20:]
    shutil.rmtree(marker, ignore_errors=True)
    if proc.wait() != 0 or not at:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    out = {"first_epoch_s": at[0], "at": at, "train_s": train_s, "wall_s": time.perf_counter() - t0}
    if len(snaps) == 2 and snaps[1][0] > snaps[0][0]:
        (ta, a_), (tb, b) = snaps
        cores: dict[str, float] = {}
        for pid, (role, cpu) in b.items():
            cores[role] = cores.get(role, 0.0) + (cpu - a_.get(pid, (role, 0.0))[1]) / (tb - ta)
        out["cores"] = dict(sorted(cores.items(), key=lambda kv: -kv[1]))
    return out


# The floor of a Ray Train run's start-up: a local Ray, a Train controller and N workers that print an
# epoch line as their first act (torch imported, the process group set up), and nothing of raymmrec.
BARE_TRAIN = """
import sys, time
import ray
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

def fn():
    import torch.distributed as dist
    if dist.get_rank() == 0:
        print("epoch 0: loss=0 train_s=0", flush=True)

ray.init(address="local", log_to_driver=True)
TorchTrainer(fn, scaling_config=ScalingConfig(num_workers=int(sys.argv[1]), resources_per_worker={"CPU": 0.5})).fit()
"""


# The floor of a Ray worker's epoch: the one-process command's own code (``raymmrec train``, unchanged) run
# inside a plain Ray task on a local Ray, given the machine's cores, as a Ray Train worker is; with
# ``thread`` it runs in a thread beside the task's main thread, as Ray Train V2 runs a train function.
BARE_TASK = """
import os, sys, threading
import ray

@ray.remote(num_cpus=os.cpu_count())
def run(argv, in_thread):
    from raymmrec.cli import main
    if not in_thread:
        return main(argv)
    out = []
    t = threading.Thread(target=lambda: out.append(main(argv)))
    t.start()
    t.join()
    return out[0]

ray.init(address="local", log_to_driver=True)
sys.exit(ray.get(run.remote(sys.argv[2:], sys.argv[1] == "thread")))
"""


# The same command as a Ray Train V2 worker's train function: one worker given the machine's cores,
# running ``raymmrec train`` unchanged (one process's code, nothing of raymmrec's Ray route).
BARE_TRAIN_FN = """
import os, sys
import ray
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

def fn(config):
    from raymmrec.cli import main
    main(config["argv"])

ray.init(address="local", log_to_driver=True)
TorchTrainer(fn, train_loop_config={"argv": sys.argv[1:]},
             scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": os.cpu_count()})).fit()
"""


def commands(a: argparse.Namespace) -> dict:
    """(c) and (d) of the module docstring, from the commands' own output."""
    import statistics

    env = local_ray_env()  # a local Ray per command
    out = tempfile.mkdtemp(prefix="raymmrec-bench-cmd-", dir=a.storage_dir)
    mods = a.modalities.split(",") if a.modalities else (LFM2K_MODALITIES if is_lfm2k(a.data) else None)
    data = str(Path(a.data).resolve()) if Path(a.data).exists() else a.data  # a Ray Train worker's cwd differs
    common = ["--method", a.method, "--data", data, "--epochs", str(a.epochs), "--output-dir", out,
              "train.patience=1000", "train.eval_every=1", *([f"data.modalities=[{','.join(mods)}]"] if mods else []),
              *a.overrides]
    single = [sys.executable, "-m", "raymmrec", "train", *common, "--device", "cpu"]
    ray_cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), *common]

    def name() -> list[str]:
        return ["--run-name", f"bench-{uuid.uuid4().hex[:8]}"]

    def epochs_after(r: dict, first: int = 5) -> list[float]:
        return [b - a_ for a_, b in zip(r["at"][first - 1:], r["at"][first:])]

    try:
        print("warm-up (untimed): one process builds the prepared inputs' cache", flush=True)
        timed_command(single + name() + ["--epochs", "1"], env)
        task = [sys.executable, "-c", BARE_TASK]
        single_args = single[single.index("train"):]
        cmds = {"single": single, f"ray{a.num_workers}": ray_cmd + ["--num-workers", str(a.num_workers)],
                "ray1": ray_cmd + ["--num-workers", "1"],  # one key when --num-workers is 1
                "task": task + ["main", *single_args], "task-thread": task + ["thread", *single_args],
                "train-fn": [sys.executable, "-c", BARE_TRAIN_FN, *single_args]}
        runs: dict[str, list[dict]] = {key: [] for key in cmds}
        floor: list[float] = []
        for i in range(a.repeats):
            for key, cmd in cmds.items():
                r = timed_command(cmd + name(), env, cpu_from=5)
                runs[key].append(r)
                cores = ", ".join(f"{k} {v:.2f}" for k, v in r.get("cores", {}).items() if v >= 0.01)
                print(f"  {key} #{i}: first epoch line after {r['first_epoch_s']:.1f}s; epochs 5+ median "
                      f"{statistics.median(epochs_after(r)):.3f}s between lines, train_s median "
                      f"{statistics.median(r['train_s'][5:]):.3f}s; whole command {r['wall_s']:.1f}s; "
                      f"cores used from epoch 5 on: {cores}", flush=True)
            bare = timed_command([sys.executable, "-c", BARE_TRAIN, str(a.num_workers)], env)
            floor.append(bare["first_epoch_s"])
            print(f"  bare Ray Train #{i} ({a.num_workers} workers, no raymmrec): first line after "
                  f"{floor[-1]:.1f}s", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res = {"bare_ray_train_first_line_s": statistics.median(floor)}
    for key, rs in runs.items():
        res[key] = {"first_epoch_s": statistics.median(r["first_epoch_s"] for r in rs),
                    "epoch_s": statistics.median(statistics.median(epochs_after(r)) for r in rs),
                    "train_s": statistics.median(statistics.median(r["train_s"][5:]) for r in rs),
                    "cores": {role: statistics.median(r.get("cores", {}).get(role, 0.0) for r in rs)
                              for role in {k for r in rs for k in r.get("cores", {})}}}
    s1, rn, r1 = res["single"], res[f"ray{a.num_workers}"], res.get("ray1", res[f"ray{a.num_workers}"])
    print(f"(c) first epoch line: one process {s1['first_epoch_s']:.1f}s, Ray with {a.num_workers} workers "
          f"{rn['first_epoch_s']:.1f}s (+{rn['first_epoch_s'] - s1['first_epoch_s']:.1f}s; target +10s); a bare Ray "
          f"Train run's first line (the floor, no raymmrec) {res['bare_ray_train_first_line_s']:.1f}s")
    others = sum(v for k, v in r1["cores"].items() if k != "ray::RayTrainWorker")
    print(f"    from epoch 5 on, the 1-worker run's processes other than its worker used {others:.2f} of the "
          f"machine's {os.cpu_count()} cores (the worker {r1['cores'].get('ray::RayTrainWorker', 0.0):.2f}); "
          f"one process used {sum(s1['cores'].values()):.2f}")
    print(f"(d) per epoch (median between epoch lines, epochs 5+): one process {s1['epoch_s']:.3f}s, one Ray worker "
          f"{r1['epoch_s']:.3f}s ({r1['epoch_s'] / s1['epoch_s']:.2f}x; target 1.1x); train_s {s1['train_s']:.3f}s "
          f"against {r1['train_s']:.3f}s ({r1['train_s'] / s1['train_s']:.2f}x)")
    for key, what in (("task", "in a plain Ray task"), ("task-thread", "in a plain Ray task, in a thread"),
                      ("train-fn", "as a Ray Train worker's train function")):
        t = res[key]
        # a Ray Train worker's own prints reach the driver in bursts: only its train_s is a per-epoch figure
        gap = "" if key == "train-fn" else f"{t['epoch_s']:.3f}s between epoch lines ({t['epoch_s'] / s1['epoch_s']:.2f}x), "
        print(f"    the floor, the one-process command {what}: {gap}train_s {t['train_s']:.3f}s "
              f"({t['train_s'] / s1['train_s']:.2f}x); cores: "
              + ", ".join(f"{k} {v:.2f}" for k, v in t["cores"].items() if v >= 0.01))
    return res


def node_memory(a: argparse.Namespace) -> dict:
    """One process against ``--num-workers`` column-sharded Ray workers: the peak memory of everything
    each command runs on the machine."""
    env = local_ray_env()  # a local Ray per command
    out = tempfile.mkdtemp(prefix="raymmrec-bench-mem-", dir=a.storage_dir)
    common = ["--method", a.method, "--data", a.data, "--epochs", str(a.epochs), "--output-dir", out,
              "--no-progress", *a.overrides]
    cmds = {"one process": [sys.executable, "-m", "raymmrec", "train", *common, "--device", "cpu"],
            f"{a.num_workers} column-sharded Ray workers": [sys.executable, "-m", "raymmrec", "train", *common,
                                                            "--num-workers", str(a.num_workers), "--shard", "columns"]}
    if a.only:  # one of the two (memory, unlike time, can be compared across invocations)
        cmds = {k: v for k, v in cmds.items() if k.startswith("one") == (a.only == "one")}
    res = {}
    try:
        for i, (key, cmd) in enumerate(cmds.items()):
            r = node_memory_command(cmd + ["--run-name", f"mem-{i}"], env, every=a.sample_every)
            last = latest_history(os.path.join(out, f"mem-{i}"))[-1]  # the run's own clock: its last epoch
            r["epoch"] = {k: last[k] for k in ("epoch", "time/train_s", "time/eval_s", "loss", "valid/recall@20", "test/recall@20") if k in last}
            res[key] = r
            roles = ", ".join(f"{k} {v:.2f}" for k, v in r["roles_gib"].items() if v >= 0.05)
            big = "; ".join(f"{x['role']} PSS {x['peak_pss_gib']:.2f} / RSS {x['peak_rss_gib']:.2f}"
                            for x in r["largest_processes"][:3])
            epoch = ", ".join(f"{k} {v:.4g}" for k, v in r["epoch"].items())
            print(f"  {key}: peak {r['peak_gib']:.2f} GiB for the whole machine ({roles}); "
                  f"command {r['wall_s']:.0f}s (last epoch: {epoch}); largest processes' own peaks (GiB): {big}",
                  flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if len(res) < 2:
        return {"runs": res}
    one, ray_ = (r["peak_gib"] for r in res.values())
    print(f"(e) whole-machine peak: one process {one:.2f} GiB, {a.num_workers} Ray workers {ray_:.2f} GiB "
          f"({ray_ / one:.2f}x; target 1.15x)", flush=True)
    return {"runs": res, "ratio": ray_ / one}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPU resource per worker (default: launch's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: one GPU per Ray worker and the single-process run on cuda (default cpu)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the Ray run (epoch 0 is not counted)")
    p.add_argument("--single-epochs", type=int, default=5, help="timed single-process epochs")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed single-process full evaluations")
    p.add_argument("--skip-single", action="store_true", help="only the Ray run")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start a local one)")
    p.add_argument("--storage-dir", default=None, help="parent of the temporary storage folder (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the Ray run's storage folder")
    p.add_argument("--quiet-workers", action="store_true", help="no worker logs or progress lines")
    p.add_argument("--commands", action="store_true",
                   help="time the commands themselves: first epoch line, time between epoch lines (see above)")
    p.add_argument("--repeats", type=int, default=3, help="--commands: runs of each command (medians)")
    p.add_argument("--sample-every", type=float, default=0.25,
                   help="--node-memory: seconds between memory samples (each costs CPU; 1-2 s for long runs)")
    p.add_argument("--only", choices=("one", "ray"), default=None, help="--node-memory: run only one of the two")
    p.add_argument("--node-memory", action="store_true",
                   help="the whole machine's peak memory: one process against column-sharded Ray workers (see above)")
    a = p.parse_args(argv)
    if a.node_memory:
        res = node_memory(a)
        emit({"method": a.method, "data": a.data, "num_workers": a.num_workers, "epochs": a.epochs,
              "overrides": a.overrides, **res})
        return 0
    if a.commands:
        if a.epochs < 8:
            p.error("--commands needs --epochs >= 8 (epochs 5 on are timed)")
        res = commands(a)
        emit({"method": a.method, "data": a.data, "num_workers": a.num_workers, "epochs": a.epochs,
              "repeats": a.repeats, "load_avg_1m_end": os.getloadavg()[0], **res})
        return 0
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 0 is warm-up and not counted)")
    spec = make_spec(a, a.device)
    env = print_environment(resolve_device(spec.train.device))
    single = None if a.skip_single else single_process(spec, a.warmup, a.single_epochs, a.eval_repeats)
    ray_res = ray_run(spec, a)
    res = {"method": spec.method, "data": a.data, "num_workers": a.num_workers, "cpus_per_worker": a.cpus_per_worker,
           "device": a.device, "batch_size": spec.train.batch_size, "overrides": list(a.overrides), **env,
           "load_avg_1m_end": os.getloadavg()[0], "single": single, "ray": ray_res}
    if single:
        print(f"single: train epoch median {single['train_s']['median']:.3f}s "
              f"(min {single['train_s']['min']:.3f}, max {single['train_s']['max']:.3f}); "
              f"eval median {single['eval_s']['median']:.3f}s")
    rt, re_ = ray_res["train_s"], ray_res["eval_s"]
    print(f"ray x{a.num_workers}: train epoch median {rt['median']:.3f}s (min {rt['min']:.3f}, max {rt['max']:.3f}, "
          f"n={rt['n']}); eval median {re_['median']:.3f}s; whole launch {ray_res['launch_wall_s']:.1f}s")
    if single:
        res["ratio_train"] = rt["median"] / single["train_s"]["median"]
        res["ratio_eval"] = re_["median"] / single["eval_s"]["median"]
        print(f"ratio ray/single: train {res['ratio_train']:.2f}x, eval {res['ratio_eval']:.2f}x "
              "(<1 means Ray is faster)")
    emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
