"""What every benchmark shares: the environment line, timing, medians, the JSON last line, child processes,
a benchmark's run spec and the commands a user types.

The benchmarks are modules of the ``benchmarks`` package, run from the checkout's root::

    python -m benchmarks.bench_train epoch --method bm3 --data synthetic:baby

``-m`` puts the current folder on ``sys.path``, so ``benchmarks`` and ``raymmrec`` both import from the
checkout, installed or not, and no script edits ``sys.path``. Each benchmark prints a report and, as its
last line, one JSON object holding every figure (``... | tail -1 | python -m json.tool``); most print the
environment line first (:func:`environment_line`). torch is imported inside the functions that need it,
so the GPU suite's driver can import this module before it knows whether torch works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the development machine's data and tools, beside the checkout
LFM2K = SHARED / "data" / "lfm2k"
LFM2K_MODALITIES = ["text", "audio_whisper"]  # lfm2k's modalities in every benchmark (as MMRec's run.sh)
NAN = float("nan")


# ------------------------------------------------------------------------------------------ environment
def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device_name(device: Any = "cpu") -> str:
    """``cuda: <GPU> (CUDA x)`` or ``cpu: <model name from /proc/cpuinfo>``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def environment(device: Any = "cpu") -> dict[str, Any]:
    """The machine a figure was measured on: device, torch, Python, torch threads, usable cores, 1-minute load
    average (above the core count, other processes competed for the CPU)."""
    import torch

    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cores": cores(), "load_avg_1m": os.getloadavg()[0]}


def environment_line(env: dict[str, Any]) -> str:
    return (f"{env['device']} | torch {env['torch']} | python {env['python']} | threads {env['threads']} "
            f"| cores {env['cores']} | load {env['load_avg_1m']:.2f}")


def print_environment(device: Any = "cpu") -> dict[str, Any]:
    """Print the environment line (every benchmark's first); returns :func:`environment`."""
    env = environment(device)
    print(environment_line(env), flush=True)
    return env


# ------------------------------------------------------------------------------------- time and memory
def sync(device: Any) -> None:
    """Wait for a CUDA device's queued work (nothing on the CPU)."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any = None) -> tuple[Any, float]:
    """``(fn(), seconds)``; on CUDA the device is synchronised before both clock reads."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def repeat_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Any = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (see :func:`timed`)."""
    for _ in range(warmup):
        timed(fn, device)
    return [timed(fn, device)[1] for _ in range(repeats)]


def median(xs: Any) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else NAN


def stats(xs: list[float]) -> dict[str, float]:
    """Median, min, max and count (empty for no values)."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def peak_rss_mib() -> float:
    """This process's peak resident memory (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(field: str = "VmRSS") -> float:
    """A memory field of ``/proc/self/status`` in MiB: ``VmRSS`` (now) or ``VmHWM`` (peak since the last
    :func:`reset_peak`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Linux: the peak (``VmHWM``) becomes the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


# ----------------------------------------------------------------------------------------------- output
def emit(obj: Any) -> None:
    """The benchmark's last line: every figure as one JSON object."""
    print(json.dumps(obj, default=str), flush=True)


def emit_figures(env: dict[str, Any], figures: dict[str, Any]) -> None:
    """The last line: the environment, the load average now and the figures, as one JSON object."""
    emit({**env, "load_avg_1m_end": os.getloadavg()[0], **figures})


def last_json(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object (a benchmark's figures)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON line in the output")


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def parser_with_modes(module: str, doc: str) -> tuple[argparse.ArgumentParser, Any]:
    """The parser of ``python -m benchmarks.<module> <mode> ...`` (the docstring's first paragraph its
    description, the rest its epilog) and the subparsers action each mode is added to (``dest="what"``)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1])
    return p, p.add_subparsers(dest="what", required=True)


# ------------------------------------------------------------------------------------------- processes
def module_command(module: str, *args: str) -> list[str]:
    """``python -m benchmarks.<module> args...`` with this interpreter (run it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", f"benchmarks.{module}", *args]


def run_json(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    """Run a measuring child; its last JSON line, or ``{"error": ..., "detail": <its last lines>}``."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(cwd))
    try:
        if proc.returncode == 0:
            return last_json(proc.stdout)
    except ValueError:
        pass
    detail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
    return {"error": f"exit {proc.returncode}: {detail.splitlines()[-1] if detail else 'no output'}", "detail": detail}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_ray_env() -> dict[str, str]:
    """This environment for commands that each start a Ray of their own: no ``RAY_ADDRESS``, auth and usage
    statistics off unless set, and this checkout first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ------------------------------------------------------------------------------------------------- runs
def is_lfm2k(data: str) -> bool:
    return Path(str(data).rstrip("/")).name.startswith("lfm2k")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """``--method``, ``--data``, ``--modalities``, ``--warmup`` and ``section.key=value`` overrides."""
    p.add_argument("--method", default="bm3", help="registered method: bm3, lightgcn, bpr, vbpr")
    p.add_argument("--data", default="synthetic:baby", help="synthetic:baby | synthetic:clothing | ml100k | folder")
    p.add_argument("--modalities", default=None,
                   help="comma-separated modalities (default: all; text,audio_whisper for lfm2k folders)")
    p.add_argument("--warmup", type=int, default=1, help="untimed training epochs first")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=0.01")


def check_data(data: str) -> None:
    """Exit with code 2 and one line when ``data`` looks like a folder that is not on this machine."""
    looks_like_path = os.sep in data or data.startswith(".") or Path(data).exists()
    if looks_like_path and "://" not in data and not Path(data).is_dir():
        print(f"error: dataset folder {data} does not exist on this machine (the shared data folder is only "
              "present on the development machine); pass another --data, e.g. synthetic:baby", file=sys.stderr)
        raise SystemExit(2)


def make_spec(a: argparse.Namespace, device: str) -> Any:
    """The run spec of ``--method`` on ``--data`` with the overrides (lfm2k: text + Whisper audio unless
    ``--modalities``); exits with code 2 and one line for a missing folder, method or bad override."""
    from raymmrec.config import load_spec
    from raymmrec.registry import get_model

    check_data(a.data)
    mods = a.modalities.split(",") if a.modalities else (LFM2K_MODALITIES if is_lfm2k(a.data) else None)
    try:
        spec = load_spec(method=a.method, overrides=[f"data.source={a.data}", f"train.device={device}",
                                                     *a.overrides])
        get_model(spec.method)
    except (KeyError, ValueError) as e:  # unknown method, bad override
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if mods is not None:
        spec.data.modalities = list(mods)
    return spec


def train_command(method: str, data: str, epochs: int, out: str, name: str, extra: list[str],
                  workers: int | None = None) -> list[str]:
    """The ``raymmrec train`` command a user types (``--num-workers`` when ``workers``: a local Ray)."""
    cmd = [sys.executable, "-m", "raymmrec", "train", "--method", method, "--data", data, "--epochs", str(epochs),
           "--run-name", name, "--output-dir", out, *extra]
    return cmd if workers is None else [*cmd, "--num-workers", str(workers)]


def synthetic_folder(name: str, base: Path) -> Path:
    """``synthetic:<preset>`` written once under ``base/datasets`` as an MMRec folder
    (:func:`raymmrec.data.io.write_mmrec`), whole or not at all, so that several commands and MMRec read the
    same files and the generator runs once."""
    from raymmrec.data import load_dataset
    from raymmrec.data.io import write_mmrec

    folder = base / "datasets" / name.replace(":", "_")
    if not next(folder.glob("*.inter"), None):
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_mmrec(load_dataset(name), str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


# ------------------------------------------------------------------------------------ a command's memory
def pss_rss_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in KiB, from one read of its ``smaps_rollup``; (0, 0) once it is gone."""
    got = {"Pss:": 0, "Rss:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in got:
                got[key] = int(line.split()[1])
    except OSError:
        pass
    return got["Pss:"], got["Rss:"]


def process_role(cmd: str) -> str:
    words = cmd.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]  # a Ray worker, named by what it runs (ray::RayTrainWorker, ray::_load, ray::IDLE)
    name = os.path.basename(words[0])
    if name.startswith("python") and len(words) > 1:
        name = next((os.path.basename(w) for w in words[1:] if not w.startswith("-")), name)
    return name


def node_memory_command(cmd: list[str], env: dict[str, str], every: float = 0.25) -> dict:
    """Run ``cmd`` (its Ray's temp folder under a fresh ``RAY_TMPDIR``); the peak of its processes'
    summed PSS, sampled every ``every`` seconds, and each role's share at that moment. A sample reads
    every process's ``smaps_rollup``, which costs time in proportion to its memory: for long runs of
    large processes sample less often."""
    import threading

    from raymmrec.ray.local_cluster import marked_tree

    marker = tempfile.mkdtemp(prefix="rayb")  # short: Ray's socket paths must stay under 108 bytes
    env = {**env, "RAY_TMPDIR": marker}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    peak = {"kib": 0, "roles": {}, "n": 0}
    each: dict[int, tuple[str, int, int]] = {}  # pid -> (role, peak PSS KiB, peak RSS KiB)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            roles: dict[str, int] = {}
            for pid, c in marked_tree(marker, {proc.pid}).items():
                role, (pss, rss) = process_role(c), pss_rss_kib(pid)
                roles[role] = roles.get(role, 0) + pss
                old = each.get(pid, (role, 0, 0))
                named = old[0] if role in ("?", "ray::IDLE") else role  # what it ran, not its idle or exiting name
                each[pid] = (named, max(old[1], pss), max(old[2], rss))
            total = sum(roles.values())
            if total > peak["kib"]:
                peak.update(kib=total, roles=roles, n=len(roles))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0, tail = time.perf_counter(), []
    for line in proc.stdout:  # type: ignore[union-attr]
        tail = (tail + [line.rstrip()])[-20:]
    rc = proc.wait()
    done.set()
    t.join()
    shutil.rmtree(marker, ignore_errors=True)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}):\n" + "\n".join(tail))
    top = sorted(each.values(), key=lambda x: -x[1])[:4]
    return {"largest_processes": [{"role": r, "peak_pss_gib": round(p / 2**20, 3), "peak_rss_gib": round(q / 2**20, 3)}
                                  for r, p, q in top],
            "peak_gib": peak["kib"] / 2**20, "roles_gib": {k: round(v / 2**20, 3) for k, v in sorted(
        peak["roles"].items(), key=lambda kv: -kv[1])}, "wall_s": time.perf_counter() - t0, "tail": tail}
