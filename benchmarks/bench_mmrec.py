"""raymmrec against MMRec's own code (the reference implementation), same data, same settings, whole commands.

    python -m benchmarks.bench_mmrec --methods bm3,lightgcn,vbpr,bpr --data lfm2k,dbbook \
        [--short 5] [--long 25] [--repeats 1] [--mmrec ../shared/tools/mmrec-baseline] \
        [--keep-work DIR] [--no-warmup] [--busy 0.25] [--retries 3] [--device cpu|cuda] [section.key=value ...]

For each method and dataset it runs, as subprocesses, ``python main.py -m M -d D`` in a work copy of MMRec
(``--mmrec``: the folder with run.sh and src/) and ``python -m raymmrec train --method m ...``, each for
``--short`` and ``--long`` epochs (no early stop, evaluation of valid and test every epoch), interleaved
(MMRec short, raymmrec short, MMRec long, raymmrec long) so that machine noise hits both alike. MMRec's
model yaml is rewritten so that every grid holds exactly raymmrec's default (or ``model.*`` override);
``train.batch_size`` and ``train.lr`` overrides go to both sides, other overrides to raymmrec only.

Reported per side: the slope ``(T_long - T_short) / (long - short)`` (seconds per epoch after start-up,
everything included), the median training and evaluation seconds of the long run's epochs (epoch 0
skipped; MMRec's evaluation time covers the valid split only, raymmrec's the scorer + valid + test), the
peak RSS of the process, the test Recall@20 / NDCG@20 of the long run, and the CPU that other processes
used meanwhile (in cores; above ``--busy``, the command is run again once the machine is quiet, at most
``--retries`` times). Data folders (``--data``: names under ../shared/data or paths) are copied into a
temporary work folder laid out as MMRec's run.sh does (text in the text slot, a second modality, e.g.
Whisper audio for lfm2k, in the image slot). Prints a table and, last, one JSON line. Exit code 2 when a
data folder or the MMRec folder is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import (NAN, ROOT, SHARED, emit_figures, median, print_environment, synthetic_folder,
                               train_command)
from raymmrec.config import validate_options
from raymmrec.registry import get_model

MMREC_NAMES = {"bm3": "BM3", "lightgcn": "LightGCN", "vbpr": "VBPR", "bpr": "BPR"}
SHARED_TRAIN_KEYS = {"train.batch_size": "train_batch_size", "train.lr": "learning_rate"}


@dataclasses.dataclass
class Run:
    wall_s: float
    peak_rss_mb: float
    other_cores: float  # CPU seconds of other processes during the run, per wall second
    output: str


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (Linux /proc/stat; nan elsewhere)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return NAN
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def timed_run_rss(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> Run:
    """Run ``cmd``; reaps the child with os.wait4 to get its own peak RSS and CPU time."""
    busy0, t0 = busy_cpu_s(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"command failed ({code}): {' '.join(cmd)}\n{''.join(output.splitlines(True)[-30:])}")
    other = (busy_cpu_s() - busy0 - usage.ru_utime - usage.ru_stime) / wall
    return Run(wall, usage.ru_maxrss / 1024, max(other, 0.0), output)  # ru_maxrss: KiB on Linux


def code_state() -> str:
    """The raymmrec code measured: git commit (+ "-dirty") and a digest of raymmrec/**/*.py as they are now."""
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted((ROOT / "raymmrec").rglob("*.py"))))
    return f"{git.stdout.strip() or 'no git'} sources {digest.hexdigest()[:12]}"


def resolve_data(name: str, work: Path) -> Path:
    """A data folder: a path, a name under ../shared/data, or ``synthetic:NAME`` written once into
    ``work`` in MMRec's layout (``raymmrec.data.io.write_mmrec``) so that both sides read the same files."""
    if name.startswith("synthetic:"):
        return synthetic_folder(name, work)
    path = Path(name)
    return path if path.exists() or os.sep in name else SHARED / "data" / name


def modalities(folder: Path) -> list[str]:
    """The modalities both sides use: text + Whisper audio for lfm2k (as run.sh), else every *_feat.npy."""
    if folder.name.startswith("lfm2k"):
        return ["text", "audio_whisper"]
    return sorted(p.name[: -len("_feat.npy")] for p in folder.glob("*_feat.npy"))


def prepare_work(mmrec: Path, work: Path, folder: Path, mods: list[str]) -> None:
    """Lay out ``folder`` as MMRec dataset ``folder.name`` in ``work`` (as run.sh does for lfm2k) and its yaml."""
    if not (work / "src").exists():
        shutil.copytree(mmrec / "src", work / "src")
        subprocess.run(["chmod", "-R", "u+w", str(work / "src")], check=True)  # the shared copy is read-only
    others = [m for m in mods if m != "text"]
    if len(others) > 1:
        raise ValueError(f"{folder}: MMRec has a text and an image slot, not room for {mods}")
    target = work / "data" / folder.name
    target.mkdir(parents=True, exist_ok=True)
    inter = next(folder.glob("*.inter"))
    shutil.copyfile(inter, target / inter.name)
    for slot, mod in (("text", "text" if "text" in mods else None), ("image", others[0] if others else None)):
        (target / f"{slot}_feat.npy").unlink(missing_ok=True)  # a kept work folder may hold an older layout
        if mod:
            shutil.copyfile(folder / f"{mod}_feat.npy", target / f"{slot}_feat.npy")
    # modelled on MMRec's lfm2k.yaml; a vision_feature_file that does not exist leaves v_feat None (text only)
    dataset_yaml = yaml.safe_load((mmrec / "src" / "configs" / "dataset" / "lfm2k.yaml").read_text())
    dataset_yaml.update(inter_file_name=inter.name, vision_feature_file="image_feat.npy",
                        text_feature_file="text_feat.npy")
    (work / "src" / "configs" / "dataset" / f"{folder.name}.yaml").write_text(yaml.safe_dump(dataset_yaml))


def configure_mmrec(mmrec: Path, work: Path, model: str, settings: dict[str, Any], train: dict[str, Any],
                    epochs: int) -> None:
    """One grid point (``settings``) in the model yaml; epochs, no early stop and ``train`` keys in overall.yaml."""
    original = yaml.safe_load((mmrec / "src" / "configs" / "model" / f"{model}.yaml").read_text())
    grid = set(original.get("hyper_parameters", []))
    out = {**original, **{k: [v] if k in grid else v for k, v in settings.items()}}
    wide = [k for k in grid if isinstance(out.get(k), list) and len(out[k]) != 1]
    if wide:
        raise ValueError(f"MMRec's {model}.yaml grid {wide} has no raymmrec default to pin it to")
    (work / "src" / "configs" / "model" / f"{model}.yaml").write_text(yaml.safe_dump(out))
    overall = work / "src" / "configs" / "overall.yaml"
    text = overall.read_text()
    for key, value in {"epochs": epochs, "stopping_step": 1_000_000, **train}.items():
        text, n = re.subn(rf"(?m)^{key}:.*$", f"{key}: {value}", text)
        if n != 1:
            raise ValueError(f"{overall}: expected one '{key}:' line, found {n}")
    overall.write_text(text)


def mmrec_figures(output: str) -> tuple[list[float], list[float], dict[str, float]]:
    """Per-epoch training and (valid-only) evaluation seconds, and the final test metrics of an MMRec log."""
    train = [float(s) for s in re.findall(r"epoch \d+ training \[time: ([\d.]+)s", output)]
    valid = [float(s) for s in re.findall(r"epoch \d+ evaluating \[time: ([\d.]+)s", output)]
    finals = re.findall(r"test result: (\S.*)$", output, flags=re.MULTILINE)
    test = {k: float(v) for k, v in re.findall(r"(\w+@\d+): ([\d.]+)", finals[-1])} if finals else {}
    return train, valid, test


def raymmrec_figures(run_dir: Path) -> tuple[list[float], list[float], dict[str, float]]:
    """Per-epoch ``time/train_s`` and ``time/eval_s`` (checkpoint history) and the test metrics of results.json."""
    state = torch.load(run_dir / "ckpt" / "latest.pt", map_location="cpu", weights_only=True)["state"]
    hist = sorted(state["history"], key=lambda h: h["epoch"])
    test = json.loads((run_dir / "results.json").read_text())["test"]
    return [h["time/train_s"] for h in hist], [h.get("time/eval_s", NAN) for h in hist], test


@dataclasses.dataclass
class Job:
    """What one method on one dataset needs to run either side."""

    mmrec: Path
    work: Path
    folder: Path
    method: str
    settings: dict[str, Any]  # the model's options (raymmrec defaults and model.* overrides)
    train: dict[str, Any]  # MMRec overall.yaml keys from train.* overrides
    extra: list[str]  # raymmrec overrides
    env: dict[str, str]
    busy: float  # a command during which other processes used more cores than this is run again ...
    retries: int  # ... at most this many times, once the machine is quiet


def wait_quiet(limit: float, window_s: float = 15.0, max_wait_s: float = 900.0) -> None:
    """Return once the machine has used under ``limit`` cores over ``window_s``, or after ``max_wait_s``."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        before = busy_cpu_s()
        time.sleep(window_s)
        if not (busy_cpu_s() - before) / window_s > limit:
            return


def run_side(job: Job, side: str, epochs: int) -> tuple[Run, list[float], list[float], dict[str, float]]:
    """One command of ``side``, run again (up to ``job.retries`` times) while other processes load the machine."""
    out = run_once(job, side, epochs)
    for _ in range(job.retries):
        if not out[0].other_cores > job.busy:
            break
        print(f"    ({side} {epochs} epochs: {out[0].wall_s:.1f}s while other processes used {out[0].other_cores:.2f} "
              "cores; again once the machine is quiet)", flush=True)
        wait_quiet(job.busy)
        out = run_once(job, side, epochs)
    return out


def side_command(job: Job, side: str, epochs: int) -> tuple[list[str], Path, str]:
    """The command of ``side`` ("mmrec": MMRec's yaml rewritten for ``epochs`` first; "raymmrec"), the folder it
    runs in and (raymmrec) its run name."""
    if side == "mmrec":
        name = MMREC_NAMES[job.method]
        configure_mmrec(job.mmrec, job.work, name, job.settings, job.train, epochs)
        return [sys.executable, "main.py", "-m", name, "-d", job.folder.name], job.work / "src", ""
    run_name = f"{job.method}-{job.folder.name}-{epochs}-{uuid.uuid4().hex[:6]}"
    cmd = train_command(job.method, str(job.folder), epochs, str(job.work / "runs"), run_name, job.extra)
    return cmd, ROOT, run_name


def side_figures(job: Job, side: str, output: str, run_name: str) -> tuple[list[float], list[float], dict[str, float]]:
    """Per-epoch train and eval seconds and the test metrics of a finished command of ``side`` (its run
    folder removed)."""
    if side == "mmrec":
        return mmrec_figures(output)
    figures = raymmrec_figures(job.work / "runs" / run_name)
    shutil.rmtree(job.work / "runs" / run_name, ignore_errors=True)
    return figures


def run_once(job: Job, side: str, epochs: int) -> tuple[Run, list[float], list[float], dict[str, float]]:
    """One command of ``side`` ("mmrec" or "raymmrec"): the run, per-epoch train and eval seconds, test metrics."""
    cmd, cwd, run_name = side_command(job, side, epochs)
    run = timed_run_rss(cmd, job.env, cwd)
    train, evals, test = side_figures(job, side, run.output, run_name)
    if len(train) != epochs:
        raise RuntimeError(f"{side} {job.method} on {job.folder.name} ran {len(train)} epochs, expected {epochs}")
    return run, train, evals, test


def measure(job: Job, short: int, long: int, repeats: int, warmup: bool) -> dict[str, Any]:
    """Both sides, interleaved (MMRec short, raymmrec short, MMRec long, raymmrec long) ``repeats`` times."""
    if warmup:  # fills the page cache (and raymmrec's prepared-input cache) for both, untimed
        run_once(job, "mmrec", 1)
        run_once(job, "raymmrec", 1)
    sides = {s: {"walls": {short: [], long: []}, "rss": [], "other": [], "train": [], "eval": [], "test": {}}
             for s in ("mmrec", "raymmrec")}
    for _ in range(repeats):
        for epochs in (short, long):
            for side, s in sides.items():
                run, train, evals, test = run_side(job, side, epochs)
                s["walls"][epochs].append(run.wall_s)
                s["other"].append(run.other_cores)
                if epochs == long:
                    s["rss"].append(run.peak_rss_mb)
                    s["train"] += train[1:]
                    s["eval"] += evals[1:]
                    s["test"] = test
                print(f"  {job.method:8s} {job.folder.name:8s} {side:8s} {epochs:3d} epochs: {run.wall_s:6.1f}s wall, "
                      f"peak RSS {run.peak_rss_mb:5.0f} MB, other processes {run.other_cores:.2f} cores", flush=True)
    out: dict[str, Any] = {"settings": job.settings}
    for side, s in sides.items():
        t_short, t_long = median(s["walls"][short]), median(s["walls"][long])
        slope = (t_long - t_short) / (long - short)
        out[side] = {
            "slope_s_per_epoch": slope, "fixed_s": t_long - long * slope,
            "wall_short_s": s["walls"][short], "wall_long_s": s["walls"][long],
            "train_s_per_epoch": median(s["train"]), "eval_s_per_epoch": median(s["eval"]),
            "eval_covers": "valid" if side == "mmrec" else "scorer+valid+test",
            "peak_rss_mb": median(s["rss"]), "other_processes_cores": s["other"], "test": s["test"],
        }
    out["ratio_mmrec_over_raymmrec"] = out["mmrec"]["slope_s_per_epoch"] / out["raymmrec"]["slope_s_per_epoch"]
    return out


def print_table(results: dict[str, dict[str, dict[str, Any]]], busy: float) -> None:
    print("\ns/epoch: wall-clock slope; train/eval: median seconds per epoch of the long run (epoch 0 skipped), "
          "MMRec eval = valid only,\nraymmrec eval = scorer + valid + test; ratio = MMRec / raymmrec slope "
          f"(> 1: raymmrec faster); R@20, N@20: test, long run; ! = other processes used > {busy} cores meanwhile")
    print(f"{'':17s} | {'s/epoch':^15s} {'':6s} | {'train/eval s':^23s} | {'peak RSS MB':^11s} | "
          f"{'R@20':^13s} | {'N@20':^13s}")
    print(f"{'method':8s} {'data':8s} | {'MMRec':>7s} {'ours':>7s} {'ratio':>6s} | {'MMRec':>11s} {'ours':>11s} | "
          f"{'MMRec':>5s} {'ours':>5s} | {'MMRec':>6s} {'ours':>6s} | {'MMRec':>6s} {'ours':>6s}")
    for method, by_data in results.items():
        for data, r in by_data.items():
            m, o = r["mmrec"], r["raymmrec"]
            tr_ev = [f"{x['train_s_per_epoch']:5.2f}/{x['eval_s_per_epoch']:<5.2f}" for x in (m, o)]
            r20 = [f"{x['test'].get('recall@20', NAN):6.4f}" for x in (m, o)]
            n20 = [f"{x['test'].get('ndcg@20', NAN):6.4f}" for x in (m, o)]
            print(f"{method:8s} {data:8s} | {m['slope_s_per_epoch']:7.3f} {o['slope_s_per_epoch']:7.3f} "
                  f"{r['ratio_mmrec_over_raymmrec']:6.2f} | {tr_ev[0]} {tr_ev[1]} | {m['peak_rss_mb']:5.0f} "
                  f"{o['peak_rss_mb']:5.0f} | {r20[0]} {r20[1]} | {n20[0]} {n20[1]}"
                  + (" !" if max(m["other_processes_cores"] + o["other_processes_cores"]) > busy else ""))


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_mmrec", description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="bm3,lightgcn,vbpr,bpr")
    p.add_argument("--data", default="lfm2k,dbbook", help="names under ../shared/data, or paths")
    p.add_argument("--short", type=int, default=5)
    p.add_argument("--long", type=int, default=25)
    p.add_argument("--repeats", type=int, default=1, help="runs of each command; medians are reported")
    p.add_argument("--mmrec", default=str(SHARED / "tools" / "mmrec-baseline"))
    p.add_argument("--keep-work", help="work folder to use and keep (default: a temporary one, removed)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed 1-epoch run of each side first")
    p.add_argument("--busy", type=float, default=0.25, help="run a command again when other processes used more "
                   "cores than this meanwhile (once they use less)")
    p.add_argument("--retries", type=int, default=3, help="at most this many times per command")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: MMRec with use_gpu True, raymmrec with train.device=cuda")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for raymmrec (see above)")
    a = p.parse_args()
    if a.device == "cuda":
        a.overrides = ["train.device=cuda", *a.overrides]
    mmrec = Path(a.mmrec)
    if not (mmrec / "src" / "main.py").is_file():
        print(f"error: MMRec folder {mmrec} not found (expected {mmrec}/src/main.py)", file=sys.stderr)
        return 2
    work = Path(a.keep_work or tempfile.mkdtemp(prefix="raymmrec-vs-mmrec-"))
    folders = [resolve_data(d, work) for d in a.data.split(",")]
    for folder in folders:
        if not next(folder.glob("*.inter"), None):
            print(f"error: data folder {folder} not found (or without a .inter file)", file=sys.stderr)
            if not a.keep_work:
                shutil.rmtree(work, ignore_errors=True)
            return 2
    model_over = dict(o.split("=", 1) for o in a.overrides if o.startswith("model."))
    train = {SHARED_TRAIN_KEYS[k]: v for k, v in (o.split("=", 1) for o in a.overrides) if k in SHARED_TRAIN_KEYS}
    train["use_gpu"] = a.device == "cuda"  # MMRec's overall.yaml switch (gpu_id 0)
    only_ours = [o for o in a.overrides if not o.startswith("model.") and o.split("=")[0] not in SHARED_TRAIN_KEYS]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = code_state()
    machine = print_environment()
    print(f"raymmrec {code} | {a.short} vs {a.long} epochs, {a.repeats} repeat(s) | MMRec {mmrec}", flush=True)
    print(f"both: Adam, lr {train.get('learning_rate', 0.001)}, batch {train.get('train_batch_size', 2048)}, seed 999, "
          "valid + test at all items every epoch, no early stop; no rating filter (MMRec reads no rating column)")
    if only_ours:
        print(f"raymmrec only: {' '.join(only_ours)}")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for folder in folders:
            mods = modalities(folder)
            prepare_work(mmrec, work, folder, mods)
            print(f"data {folder}: modalities {mods} (MMRec: {'text' if 'text' in mods else '-'} as text, "
                  f"{next((m for m in mods if m != 'text'), '-')} as image)", flush=True)
            extra = ["train.patience=100000", f"data.modalities=[{','.join(mods)}]", *a.overrides]
            for method in a.methods.split(","):
                options = validate_options(get_model(method).config_cls, {k[6:]: v for k, v in model_over.items()})
                settings = dataclasses.asdict(options)
                print(f"{method} ({MMREC_NAMES[method]}): " + " ".join(f"{k}={v}" for k, v in settings.items()),
                      flush=True)
                job = Job(mmrec, work, folder, method, settings, train, extra, env, a.busy, a.retries)
                results.setdefault(method, {})[folder.name] = measure(job, a.short, a.long, a.repeats, not a.no_warmup)
    finally:
        if not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results, a.busy)
    print(f"load average (1 min) at end {os.getloadavg()[0]:.2f}")
    if code_state() != code:
        print(f"warning: raymmrec's sources changed during the benchmark ({code} -> {code_state()}); measure again")
    emit_figures(machine, {"data": [str(f) for f in folders], "short": a.short, "long": a.long, "repeats": a.repeats,
                           "mmrec": str(mmrec), "raymmrec": code, "overrides": a.overrides, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
