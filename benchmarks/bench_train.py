"""Single-process training and evaluation speed of one method on one dataset.

    python benchmarks/bench_train.py --method bm3 --data synthetic:baby [--epochs-measured 5] \
        [--device auto|cpu|cuda] [--warmup 1] [--eval-repeats 5] [train.batch_size=4096 model.n_layers=2 ...]

Builds the run exactly as ``raymmrec.train.run`` does (``raymmrec.train.build``), then times
``Trainer._run_epoch`` (the per-epoch code of ``Trainer.fit``; CUDA is synchronised before each clock
read), and times evaluation in its three parts: ``model.scorer()``, then each split's
``Evaluator.evaluate(score)``. Prints a human-readable report and, last, one JSON line.
Does not import Ray (runs on a GPU machine without it). For lfm2k folders the modalities default
to text + audio_whisper. Exit code 2 when the dataset folder is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from raymmrec.config import RunSpec, load_spec  # noqa: E402
from raymmrec.registry import get_model  # noqa: E402
from raymmrec.train.build import Pieces as Setup  # noqa: E402
from raymmrec.train.build import build, load_data, local_evaluate, resolve_device  # noqa: E402
from raymmrec.train.build import make_trainer as _make_trainer  # noqa: E402
from raymmrec.train.loop import Trainer  # noqa: E402


def build_setup(spec: RunSpec, device: torch.device, data: Any = None) -> Setup:
    return build(spec, device=device, data=data)

LFM2K_MODALITIES = ["text", "audio_whisper"]


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="bm3", help="registered method: bm3, lightgcn, bpr, vbpr")
    p.add_argument("--data", default="synthetic:baby", help="synthetic:baby | synthetic:clothing | ml100k | folder")
    p.add_argument("--modalities", default=None,
                   help="comma-separated modalities (default: all; text,audio_whisper for lfm2k folders)")
    p.add_argument("--warmup", type=int, default=1, help="untimed training epochs first")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=0.01")


def make_spec(a: argparse.Namespace, device: str) -> RunSpec:
    """The run spec of the benchmark; exits with code 2 and a clear message when the data folder is absent."""
    looks_like_path = os.sep in a.data or a.data.startswith(".") or Path(a.data).exists()
    if looks_like_path and "://" not in a.data and not Path(a.data).is_dir():
        print(f"error: dataset folder {a.data} does not exist on this machine (the shared data folder is only "
              "present on the development machine); pass another --data, e.g. synthetic:baby", file=sys.stderr)
        raise SystemExit(2)
    overrides = [f"data.source={a.data}", f"train.device={device}"]
    mods = a.modalities.split(",") if a.modalities else None
    if mods is None and Path(a.data.rstrip("/")).name.startswith("lfm2k"):
        mods = LFM2K_MODALITIES
    try:
        spec = load_spec(method=a.method, overrides=overrides + list(a.overrides))
        get_model(spec.method)
    except (KeyError, ValueError) as e:  # unknown method, bad override
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if mods is not None:
        spec.data.modalities = mods
    return spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def make_trainer(setup: Setup) -> Trainer:
    return _make_trainer(setup, local_evaluate(setup.evaluators), [])


def time_epochs(setup: Setup, warmup: int, measured: int, log: bool = True) -> tuple[list[float], dict[str, float]]:
    """Seconds of each measured ``_run_epoch`` (after ``warmup`` untimed ones) and the last epoch's losses."""
    trainer = make_trainer(setup)
    times, logs = [], {}
    with trainer.heap():  # the allocator settings Trainer.fit trains under (raymmrec.allocator)
        for epoch in range(warmup + measured):
            logs, dt = timed(lambda: trainer._run_epoch(epoch), setup.device)  # noqa: B023 - timed() calls it now
            if log:
                kind = "warm-up" if epoch < warmup else "timed"
                print(f"  epoch {epoch} ({kind}): {dt:.3f}s  loss {logs.get('loss', float('nan')):.4f}", flush=True)
            if epoch >= warmup:
                times.append(dt)
    return times, logs


def time_eval(setup: Setup, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of ``scorer()`` and of each split's ``evaluate`` per repeat (after ``warmup`` untimed rounds)."""
    out: dict[str, list[float]] = {"scorer": [], **{s: [] for s in setup.evaluators}}
    for r in range(warmup + repeats):
        score, dt = timed(setup.model.scorer, setup.device)
        parts = {"scorer": dt}
        for split, ev in setup.evaluators.items():
            parts[split] = timed(lambda: ev.evaluate(score), setup.device)[1]  # noqa: B023 - timed() calls it now
        if r >= warmup:
            for k, v in parts.items():
                out[k].append(v)
    return out


def time_joint_eval(setup: Setup, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of one evaluation as a run does it (``local_evaluate``: scorer, then every split ranked
    in one pass)."""
    evaluate = local_evaluate(setup.evaluators)
    return [dt for r, dt in enumerate(timed(lambda: evaluate(setup.model), setup.device)[1]
                                      for _ in range(warmup + repeats)) if r >= warmup]


def time_bare_ranking(setup: Setup, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of the hardware floor of one evaluation: the scoring tables' product for every user
    evaluated (valid and test together) and one top-Kmax over all items, with nothing else."""
    users = torch.unique(torch.cat([ev.users for ev in setup.evaluators.values()])).to(setup.device)
    kmax = max(ev.kmax for ev in setup.evaluators.values())
    with torch.no_grad():
        u, i = (t.detach() for t in setup.model.scoring_embeddings())
        item_t = i.t().contiguous()
        out = []
        for r in range(warmup + repeats):
            dt = timed(lambda: torch.topk(u[users] @ item_t, kmax, dim=1), setup.device)[1]
            if r >= warmup:
                out.append(dt)
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def peak_memory(device: torch.device) -> dict[str, float]:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    mem = {"peak_rss_mib": rss_kib / 1024}
    if device.type == "cuda":
        mem["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return mem


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def environment(device: torch.device) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cores": cores, "load_avg_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--epochs-measured", type=int, default=5, help="timed training epochs")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--eval-repeats", type=int, default=5, help="timed full evaluations (after one untimed)")
    a = p.parse_args(argv)
    spec = make_spec(a, a.device)
    try:
        device = resolve_device(spec.train.device)
    except RuntimeError as e:  # e.g. --device cuda on a machine without CUDA
        print(f"error: {e}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | python {env['python']} | threads {env['threads']} "
          f"| cores {env['cores']} | load {env['load_avg_1m']:.2f}", flush=True)
    data, load_s = timed(lambda: load_data(spec), torch.device("cpu"))
    print(f"{data.summary()} (loaded in {load_s:.1f}s)", flush=True)
    setup, setup_s = timed(lambda: build_setup(spec, device, data=data), device)
    n_params = sum(x.numel() for x in setup.model.parameters())
    print(f"method {spec.method} on {device}; batch size {spec.train.batch_size}; {n_params:,} parameters; "
          f"setup {setup_s:.1f}s", flush=True)
    train_times, logs = time_epochs(setup, a.warmup, a.epochs_measured)
    ev = time_eval(setup, a.eval_repeats)
    both = [v + t for v, t in zip(ev["valid"], ev["test"])]
    full = [s + b for s, b in zip(ev["scorer"], both)]
    joint = time_joint_eval(setup, a.eval_repeats)
    bare = time_bare_ranking(setup, a.eval_repeats)
    res = {
        "method": spec.method, "data": a.data, "summary": data.summary(), **env, "batch_size": spec.train.batch_size,
        "overrides": list(a.overrides), "warmup": a.warmup, "load_s": load_s, "setup_s": setup_s,
        "train_epoch_s": stats(train_times), "train_epoch_all_s": train_times, "last_loss": logs.get("loss"),
        "scorer_s": stats(ev["scorer"]), "eval_valid_s": stats(ev["valid"]), "eval_test_s": stats(ev["test"]),
        "eval_both_s": stats(both), "eval_full_s": stats(full), "eval_run_s": stats(joint),
        "bare_rank_s": stats(bare), "eval_run_vs_bare": statistics.median(joint) / statistics.median(bare),
        **peak_memory(device),
        "load_avg_1m_end": os.getloadavg()[0],
    }
    tr = res["train_epoch_s"]
    print(f"train epoch: median {tr['median']:.3f}s  min {tr['min']:.3f}s  max {tr['max']:.3f}s  (n={tr['n']})")
    print(f"eval: scorer {res['scorer_s']['median']:.3f}s | valid {res['eval_valid_s']['median']:.3f}s | "
          f"test {res['eval_test_s']['median']:.3f}s | valid+test {res['eval_both_s']['median']:.3f}s | "
          f"scorer+valid+test {res['eval_full_s']['median']:.3f}s  (medians of {a.eval_repeats})")
    print(f"evaluation as a run does it (scorer, valid and test ranked together) {res['eval_run_s']['median']:.4f}s; "
          f"bare product + top-{max(ev.kmax for ev in setup.evaluators.values())} for the same users "
          f"{res['bare_rank_s']['median']:.4f}s: {res['eval_run_vs_bare']:.2f}x the bare floor")
    mem = f"peak RSS {res['peak_rss_mib']:.0f} MiB"
    if "cuda_max_allocated_mib" in res:
        mem += f"; CUDA max allocated {res['cuda_max_allocated_mib']:.0f} MiB"
    print(f"{mem}; load average (1 min) {env['load_avg_1m']:.2f} at start, {res['load_avg_1m_end']:.2f} at end",
          flush=True)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
