"""Per-epoch cost of a run in one process, on 1 Ray worker and on 2 Ray workers, from whole commands.

    python benchmarks/bench_scaling.py --data ../shared/data/lfm2k --methods bm3,lightgcn \
        [--short 10] [--long 40] [--repeats 1] [key=value ...]

For each method and each mode it runs the real commands users type, as subprocesses, for ``--short``
and ``--long`` epochs (no early stopping, evaluation every epoch):

* one process:  ``python -m raymmrec train --method M ...``
* Ray, N workers: ``python -m raymmrec train --method M --num-workers N ...`` (a fresh local Ray each time)

and reports, per mode: the slope ``(T_long - T_short) / (long - short)`` (seconds per epoch after
start-up, evaluation included), the time from the command's start to its first epoch line
(start-up), the wall time of each command, and the test metrics at the best validation epoch of the
long run. Ratios are against the one-process run of the same method measured in the same script.
Prints a table and, last, one JSON line. Exit code 2 when the data folder is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(mode: str, method: str, data: str, epochs: int, out: str, name: str, extra: list[str]) -> list[str]:
    common = ["--method", method, "--data", data, "--epochs", str(epochs), "--run-name", name]
    cmd = [sys.executable, "-m", "raymmrec", "train", *common, "--output-dir", out, *extra]
    return cmd if mode == "single" else [*cmd, "--num-workers", mode.split("-")[1]]


def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, seconds until the first 'epoch 0' line, output) of one command."""
    t0 = time.perf_counter()
    first = float("nan")
    lines = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfm2k"))
    p.add_argument("--methods", default="bm3,lightgcn")
    p.add_argument("--modes", default="single,ray-1,ray-2")
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=40)
    p.add_argument("--repeats", type=int, default=1, help="runs of each command; medians are reported")
    p.add_argument("overrides", nargs="*", help="config overrides passed to every command")
    a = p.parse_args()
    if not os.path.exists(a.data) and "://" not in a.data:
        print(f"error: data folder {a.data} not found", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    extra = ["train.patience=100000", *a.overrides]
    if Path(a.data).name.startswith("lfm2k"):
        extra.append("data.modalities=[text,audio_whisper]")
    print(f"cpu cores {os.cpu_count()} | load {os.getloadavg()[0]:.2f} | data {a.data} | {a.short} vs {a.long} epochs",
          flush=True)
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
                        wall, first, _ = timed_run(command(mode, method, a.data, epochs, out, name, extra), env)
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
    print(json.dumps({"data": a.data, "short": a.short, "long": a.long, "repeats": a.repeats, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
