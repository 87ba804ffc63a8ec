"""Data-parallel Ray Train epochs against single-process epochs, on the same data and global batch size.

    python benchmarks/bench_ray.py --method bm3 --data /work/shared/data/lfm2k --num-workers 2 \
        [--cpus-per-worker 0.5] [--epochs 6] [--device cpu|cuda] [--single-epochs 5] [--skip-single] [key=value ...]

(a) single process: ``warmup`` untimed + ``single-epochs`` timed ``Trainer._run_epoch`` calls and
    full evaluations (scorer + valid + test), as in ``bench_train.py``;
(b) ``raymmrec.ray.launch`` (what ``raymmrec train --num-workers N`` calls) with N workers for ``--epochs`` epochs into a fresh temporary storage
    folder under a unique run name; rank 0's per-epoch ``time/train_s`` and ``time/eval_s`` are read
    from ``state.history`` in the run's latest checkpoint (epoch 0 skipped as warm-up).
Prints the medians, the ratios ray/single and, last, one JSON line. Starts its own local Ray
(``address="local"``) unless ``--address`` names a cluster. Exit code 2 when the data folder is missing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train beside this file

from bench_train import (add_common_arguments, environment, make_spec, stats, time_epochs,  # noqa: E402
                         time_eval, timed)

import torch  # noqa: E402

from raymmrec.train.checkpoint import read_latest  # noqa: E402
from bench_train import build_setup  # noqa: E402
from raymmrec.train.build import load_data, resolve_device  # noqa: E402


def single_process(spec, warmup: int, epochs: int, eval_repeats: int) -> dict:
    device = resolve_device(spec.train.device)
    data = load_data(spec)
    print(f"{data.summary()}", flush=True)
    setup = build_setup(spec, device, data=data)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
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
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 0 is warm-up and not counted)")
    spec = make_spec(a, a.device)
    env = environment(resolve_device(spec.train.device))
    print(f"{env['device']} | torch {env['torch']} | threads {env['threads']} | cores {env['cores']} "
          f"| load {env['load_avg_1m']:.2f}", flush=True)
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
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
