"""Ray Tune sweeps: outputs, selection on validation, resume after a killed driver, reproduce, Train trials."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from raymmrec.config import load_spec
from raymmrec.search import Grid

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.source=synthetic:tiny", "train.batch_size=64", "train.lr=0.01", "train.patience=50"]
SPACE = {"model.n_layers": Grid((1, 2)), "model.reg_weight": Grid((0.1, 0.01))}


def trial_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "params.json").exists())


@pytest.fixture(scope="module")
def bm3_sweep(ray_cluster, tmp_path_factory):
    from raymmrec.ray.tune import SweepArgs, sweep

    out = tmp_path_factory.mktemp("sweep")
    spec = load_spec("bm3", overrides=[*TINY, "train.epochs=3", f"output_dir={out}"])
    res = sweep(spec, SweepArgs(max_concurrent=2, name="s", progress=False), space=SPACE)
    return spec, res, out / "s"


@pytest.mark.ray
@pytest.mark.slow
def test_every_trial_leaves_a_run_folder_named_by_its_config(bm3_sweep):
    _, res, root = bm3_sweep
    dirs = trial_dirs(root)
    assert len(dirs) == 4 and len(res.rows) == 4
    for d in dirs:
        assert {"config.json", "best.pt", "results.json", "tb"} <= {p.name for p in d.iterdir()}, d
        cfg = json.loads((d / "config.json").read_text())
        assert f"n_layers={cfg['model']['n_layers']}" in d.name and "reg_weight=" in d.name


@pytest.mark.ray
@pytest.mark.slow
def test_winner_is_the_best_validation_trial_and_its_files_are_written(bm3_sweep):
    spec, res, root = bm3_sweep
    from_runs = {d.name: json.loads((d / "results.json").read_text()) for d in trial_dirs(root)}
    best_valid = max(r["valid"]["recall@20"] for r in from_runs.values())
    assert res.best["valid recall@20"] == pytest.approx(best_valid)
    assert res.best["test recall@20"] == pytest.approx(from_runs[res.best["dir"]]["test"]["recall@20"])
    assert "valid recall@20" in res.selected_by
    with open(root / "trials.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[0]["trial"] == res.best["trial"] and table[0]["dir"] == res.best["dir"]
    assert "selected by valid recall@20" in (root / "trials.md").read_text()
    for png in ("metric_vs_params.png", "learning_curves.png"):
        assert (root / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["best"]["dir"] == res.best["dir"]


@pytest.mark.ray
@pytest.mark.slow
def test_best_config_trains_to_the_winning_trial(bm3_sweep, tmp_path):
    from raymmrec.train.run import run

    _, res, root = bm3_sweep
    spec = load_spec(yaml_path=root / "best_config.yaml", overrides=[f"output_dir={tmp_path}"])
    assert spec.model["n_layers"] == res.best["n_layers"] and spec.model["reg_weight"] == res.best["reg_weight"]
    torch.set_num_threads(1)  # as the trial ran
    state = run(spec, progress=False)
    assert state.best_valid["recall@20"] == pytest.approx(res.best["valid recall@20"], abs=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_best_weights_are_the_winners(bm3_sweep):
    from raymmrec.recommend import evaluate
    from raymmrec.train.trained import load_trained

    _, res, root = bm3_sweep
    trained = load_trained(str(root / "best"))
    test = evaluate(trained, [20])["test"]
    assert test["recall@20"] == pytest.approx(res.best["test recall@20"], abs=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_selection_on_test_is_labelled_everywhere(ray_cluster, tmp_path):
    from raymmrec.ray.tune import SweepArgs, sweep

    spec = load_spec("bpr", overrides=[*TINY, "train.epochs=2", f"output_dir={tmp_path}"])
    res = sweep(spec, SweepArgs(select="test", name="t", progress=False),
                space={"model.reg_weight": Grid((0.1, 1e-4))})
    root = tmp_path / "t"
    assert res.best["test recall@20"] == max(r["test recall@20"] for r in res.rows)
    for name in ("trials.md", "summary.json", "best_config.yaml"):
        assert "selected on TEST" in (root / name).read_text(), name


def test_restored_progress_callback_takes_this_runs_settings_and_clock(capsys):
    """Tune.restore runs the first run's pickled progress callback; Tune's setup() hook refreshes it."""
    import cloudpickle

    from raymmrec.ray.tune import _Progress

    first = _Progress(7, "valid/recall@20", "valid recall@20", False)
    first.t0 -= 3600.0  # the first run started an hour ago
    restored = cloudpickle.loads(cloudpickle.dumps(first))
    _Progress(7, "test/recall@20", "test recall@20 [test selection]", True)  # this run's callback
    restored.setup(stop=None, num_samples=7, total_num_samples=7)
    assert (restored.key, restored.label, restored.enabled) == ("test/recall@20", "test recall@20 [test selection]", True)
    restored._say([])
    assert capsys.readouterr().out == "[sweep      0s] 0/7 done, 0 running, 7 pending\n"


def ray_cluster_idle(timeout: float) -> None:
    """Wait until the cluster has every CPU free again (a killed driver's actors reaped); failing after ``timeout`` s."""
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        assert time.monotonic() < deadline, f"the cluster still holds CPUs after {timeout}s: {ray.available_resources()}"
        threading.Event().wait(0.2)


def _tune_cmd(out: Path) -> list[str]:
    # two trials at a time: trials cost their actor's start, not their epochs (8 here)
    return [sys.executable, "-m", "raymmrec", "tune", "--method", "bpr", "--max-concurrent", "2",
            "--output-dir", str(out), "--name", "k", "--epochs", "8", *TINY]


@pytest.mark.ray
@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_cluster, tmp_path):
    root = tmp_path / "k"
    proc = subprocess.Popen(_tune_cmd(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    finished: dict[Path, int] = {}
    while time.time() < deadline and proc.poll() is None:
        done = list(root.glob("*/results.json")) if root.exists() else []
        if len(done) >= 3:
            finished = {p: p.stat().st_mtime_ns for p in done}
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait(timeout=60)
    ray_cluster_idle(timeout=120)  # Ray reaps the killed driver's trial actors before the rerun starts
    assert finished, "the sweep ended before three trials had finished: " + proc.stdout.read().decode()[-2000:]
    t_rerun = time.monotonic()
    out = subprocess.run(_tune_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=400)
    t_rerun = time.monotonic() - t_rerun
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "restoring sweep" in out.stdout
    # the restored sweep's progress lines: on this run's clock (the first run's callback, refreshed by setup)
    clock = [float(m) for m in re.findall(r"^\[sweep +(\d+)s\] \d+/7 done", out.stdout, re.M)]
    assert clock and clock[-1] <= t_rerun, out.stdout[-3000:]
    runs = sorted(d for d in root.iterdir() if (d / "config.json").exists() and d.name != "best")
    assert len(runs) == 7, [d.name for d in runs]  # bpr's paper grid: no trial started twice from scratch
    assert len({"_".join(d.name.split("_")[:2]) for d in trial_dirs(root)}) == 7  # seven Tune trial ids
    assert all((d / "results.json").exists() for d in runs)
    for p, mtime in finished.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.parent.name} ran again after the restore"
    with open(root / "trials.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(r["dir"] for r in table) == [d.name for d in runs]
    assert all(r["status"] == "finished" for r in table), [(r["dir"], r["status"], r["epochs_run"]) for r in table]


@pytest.mark.ray
@pytest.mark.slow
def test_reproduce_writes_the_comparison_table_and_resumes(ray_cluster, tmp_path):
    from raymmrec.ray.reproduce import reproduce
    from raymmrec.ray.tune import SweepArgs

    args = SweepArgs(grid="wide", samples=1, scheduler="fifo", progress=False)  # one trial per method
    root = str(tmp_path / "rep")
    summary = reproduce(["bpr", "lightgcn"], ["synthetic:tiny"], [*TINY[1:], "train.epochs=2"], args, root)
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "| bpr |" in table and "| lightgcn |" in table and table.count("**") >= 2 * 4  # one bold cell per column at least (ties mark both)
    assert set(summary["results"]["synthetic-tiny"]) == {"bpr", "lightgcn"}
    for m in ("bpr", "lightgcn"):
        assert load_spec(yaml_path=tmp_path / "rep" / "configs" / f"synthetic-tiny-{m}.yaml").method == m
    assert (tmp_path / "rep" / "table.tex").exists() and (tmp_path / "rep" / "table.csv").exists()
    before = {d: len(trial_dirs(tmp_path / "rep" / f"synthetic-tiny-{d}")) for d in ("bpr", "lightgcn")}
    again = reproduce(["bpr", "lightgcn"], ["synthetic:tiny"], [*TINY[1:], "train.epochs=2"], args, root)
    assert again["results"] == summary["results"]
    assert before == {d: len(trial_dirs(tmp_path / "rep" / f"synthetic-tiny-{d}")) for d in ("bpr", "lightgcn")}


@pytest.mark.ray
@pytest.mark.slow
def test_trials_with_several_workers_run_ray_train(ray_cluster, tmp_path, monkeypatch, capfd):
    """Two trials of two Ray Train workers each, on a dataset folder that is moved away as soon as the
    sweep has read it: the sweep reads and checks it once (its line printed once), and every trial's
    workers map its arrays from the object store."""
    import raymmrec.ray.tune as rt
    from raymmrec.data import load_dataset, write_mmrec
    from raymmrec.ray.tune import SweepArgs, sweep

    folder = tmp_path / "ds"
    write_mmrec(load_dataset("synthetic:tiny"), str(folder))
    from _tiny import move_after_loading

    move_after_loading(monkeypatch, rt, folder, tmp_path / "gone")
    spec = load_spec("lightgcn", overrides=[*TINY, "train.epochs=2", "train.checkpoint_every=1",
                                            f"output_dir={tmp_path}", f"data.source={folder}"])
    res = sweep(spec, SweepArgs(workers_per_trial=2, cpus_per_trial=0.5, name="w"),
                space={"model.reg_weight": Grid((0.1, 0.01))})
    assert not folder.exists()
    assert capfd.readouterr().out.count("synthetic_tiny: 40 users") == 1  # the loading line, once
    dirs = trial_dirs(tmp_path / "w")
    assert len(dirs) == 2
    from raymmrec.train.checkpoint import read_latest

    for d in dirs:
        latest = read_latest(d)  # the trial's checkpoint, in its run folder
        assert latest is not None, "no checkpoint in the trial folder"
        assert latest["shard"] == "columns" and latest["world_size"] == 2  # train.shard=auto: the workers split columns
        assert json.loads((d / "results.json").read_text())["epochs_run"] == 2
    best = json.loads((tmp_path / "w" / res.best["dir"] / "results.json").read_text())
    assert res.best["test recall@20"] == pytest.approx(best["test"]["recall@20"])


def test_tune_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raymmrec", "tune", "--method", "nope", "--output-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: method") and "Traceback" not in out.stderr


def test_sweep_folder_from_before_a_new_option_still_restores(tmp_path):
    """A sweep recorded before an option existed (so without it) is the same sweep; a changed value is not."""
    from raymmrec.errors import UserError
    from raymmrec.ray.tune import SWEEP_JSON, _check_same_sweep

    base = {k: v for k, v in load_spec("bpr", overrides=["train.epochs=3"]).to_dict().items()
            if k not in ("output_dir", "run_name")}
    identity = {"base": base, "space": {}, "samples": 1}
    older = json.loads(json.dumps(identity))
    del older["base"]["train"]["optimizer"], older["base"]["objective_options"]  # options added later
    (tmp_path / SWEEP_JSON).write_text(json.dumps(older))
    _check_same_sweep(str(tmp_path), identity)
    older["base"]["train"]["epochs"] = 4
    (tmp_path / SWEEP_JSON).write_text(json.dumps(older))
    with pytest.raises(UserError, match="differs in base"):
        _check_same_sweep(str(tmp_path), identity)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_on_s3_storage(ray_cluster, s3_bucket, tmp_path):
    import s3fs

    from raymmrec.ray.tune import SweepArgs, sweep

    url = f"s3://{s3_bucket}/sweeps"
    spec = load_spec("bpr", overrides=[*TINY, "train.epochs=2", f"output_dir={url}"])
    res = sweep(spec, SweepArgs(name="s3", progress=False),
                space={"model.reg_weight": Grid((0.1, 1e-4))})
    fs = s3fs.S3FileSystem()
    root = f"{s3_bucket}/sweeps/s3"
    for name in ("trials.csv", "trials.md", "best_config.yaml", "summary.json", "best/best.pt",
                 "plots/metric_vs_params.png", f"{res.best['dir']}/results.json", f"{res.best['dir']}/best.pt"):
        assert fs.exists(f"{root}/{name}"), name
    assert res.root == f"{url}/s3"
    from raymmrec.train.trained import load_trained

    assert load_trained(f"{url}/s3/best").spec.model["reg_weight"] == res.best["reg_weight"]


@pytest.mark.ray
@pytest.mark.slow
def test_wide_space_uses_asha_and_stops_weak_trials(ray_cluster, tmp_path):
    from raymmrec.ray.tune import SweepArgs, sweep

    # ASHA's one rung is at epoch 10 (grace period min(10, epochs)); 11 epochs: a trial it lets through runs one more
    spec = load_spec("lightgcn", overrides=[*TINY, "train.epochs=11", f"output_dir={tmp_path}"])
    # four trials, one at a time: ASHA decides each at the rung from the trials before it (the fourth stops)
    res = sweep(spec, SweepArgs(grid="wide", samples=4, max_concurrent=1, name="a", progress=False))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["scheduler"] == "asha" and summary["trials"] == 4
    stopped = [r for r in res.rows if r["status"] == "stopped (ASHA)"]
    # one trial at a time: every trial after the first that is below the rung's top third at epoch 10 stops
    assert stopped and all(r["epochs_run"] == 10 for r in stopped), res.rows
    assert all(r["epochs_run"] == 11 for r in res.rows if r["status"] == "finished"), res.rows


@pytest.mark.ray
@pytest.mark.slow
def test_tune_job_under_ray_job_submit(ray_cluster, tmp_path):
    cmd = ["ray", "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps({"excludes": ["runs", ".git", "*.egg-info"]}),
           "--", sys.executable, "jobs/tune.py", "--method", "bpr", "--grid", "wide", "--samples", "2",
           "--scheduler", "fifo", "--output-dir", str(tmp_path), "--name", "job", "--epochs", "2", *TINY]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "winner (valid recall@20)" in out.stdout
    with open(tmp_path / "job" / "trials.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2  # --samples 2
    assert (tmp_path / "job" / "best" / "best.pt").exists()


def test_a_space_over_data_options_is_refused_before_ray(tmp_path):
    """A sweep reads one dataset for all its trials: data options cannot be searched (one line, no Ray)."""
    from raymmrec.config import ConfigError
    from raymmrec.ray.tune import SweepArgs, sweep

    spec = load_spec("lightgcn", overrides=[*TINY, f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.kcore: a sweep reads its dataset once"):
        sweep(spec, SweepArgs(name="d", progress=False), space={"data.kcore": Grid((2, 3))})
    assert not (tmp_path / "d").exists()
