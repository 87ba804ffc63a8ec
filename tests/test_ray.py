"""Ray Train layer: 2 workers, sharded evaluation, fault tolerance, resume, job submit, S3, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SECRET
from raymmrec.config import load_spec
from raymmrec.train.checkpoint import load_checkpoint
from raymmrec.train.run import build_setup, local_evaluate

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(out: Path, method: str = "bm3", epochs: int = 3, name: str = "r"):
    return load_spec(method, overrides=[f"output_dir={out}", f"run_name={name}", "data.source=synthetic:tiny",
                                        f"train.epochs={epochs}", "train.batch_size=64", "train.lr=0.01",
                                        "train.patience=50"])


def scaling(**kw):
    from raymmrec.ray.launch import ScalingArgs

    base = dict(num_workers=2, cpus_per_worker=0.5, max_failures=2)
    base.update(kw)
    return ScalingArgs(**base)


def latest_payload(run_root: Path) -> dict:
    ckpts = sorted(run_root.glob("checkpoint_*/latest.pt"), key=lambda p: p.stat().st_mtime)
    assert ckpts, f"no checkpoint under {run_root}"
    return load_checkpoint(ckpts[-1])


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, tmp_path_factory):
    from raymmrec.ray.launch import launch

    out = tmp_path_factory.mktemp("ray2")
    spec = tiny_spec(out, "lightgcn", epochs=4)
    state = launch(spec, scaling(), progress=False)
    return spec, state, out


def test_two_workers_report_checkpoint_and_tensorboard(two_worker_run):
    spec, state, out = two_worker_run
    run_root = out / "r"
    assert state.epoch == 4 and 0 <= state.best_epoch < 4
    assert set(state.best_test) >= {"recall@20", "ndcg@20", "map@10", "hit@50"}
    results = json.loads((run_root / "results.json").read_text())
    assert results["test"] == pytest.approx(state.best_test)
    payload = latest_payload(run_root)
    assert payload["state"]["epoch"] == 4 and payload["config"]["method"] == "lightgcn"
    assert list((run_root / "tb").glob("events.out.tfevents.*")), "rank-0 TensorBoard events missing"


def test_sharded_evaluation_equals_single_process(two_worker_run):
    """The last epoch's metrics were all-reduced over 2 workers; recompute them in one process."""
    spec, state, out = two_worker_run
    payload = latest_payload(out / "r")
    setup = build_setup(spec, torch.device("cpu"))
    setup.model.load_state_dict(payload["model"])
    single = local_evaluate(setup.evaluators)(setup.model)
    last = payload["state"]["history"][-1]
    for split in ("valid", "test"):
        for k, v in single[split].items():
            assert last[f"{split}/{k}"] == pytest.approx(v, abs=1e-12), f"{split}/{k}"


def test_killed_worker_resumes_to_identical_metrics(ray_cluster, tmp_path):
    from raymmrec.ray.launch import launch

    clean = launch(tiny_spec(tmp_path / "a", epochs=5), scaling(), progress=False)
    marker = tmp_path / "killed-once"
    faulty = launch(tiny_spec(tmp_path / "b", epochs=5), scaling(), progress=False,
                    inject_fault={"rank": 1, "epoch": 3, "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    assert faulty.best_epoch == clean.best_epoch
    for k, v in clean.best_test.items():
        assert round(faulty.best_test[k], 4) == round(v, 4), k


def test_same_name_resumes_the_run(ray_cluster, tmp_path):
    from raymmrec.ray.launch import launch

    launch(tiny_spec(tmp_path, "bpr", epochs=2), scaling(num_workers=1, cpus_per_worker=1), progress=False)
    second = launch(tiny_spec(tmp_path, "bpr", epochs=4), scaling(num_workers=1, cpus_per_worker=1),
                    progress=False)
    payload = latest_payload(tmp_path / "r")
    hist = payload["state"]["history"]
    assert second.epoch == 4 and [int(h["epoch"]) for h in hist] == [0, 1, 2, 3]
    t0 = time.time()
    with pytest.raises(ValueError, match="different method"):
        launch(tiny_spec(tmp_path, "lightgcn", epochs=4), scaling(num_workers=1, cpus_per_worker=1), progress=False)
    assert time.time() - t0 < 30


def test_too_many_workers_fails_fast(ray_cluster, tmp_path):
    from raymmrec.ray.launch import ClusterError, launch

    t0 = time.time()
    with pytest.raises(ClusterError, match="cannot place.*64 workers"):
        launch(tiny_spec(tmp_path), scaling(num_workers=64, cpus_per_worker=1), progress=False)
    assert time.time() - t0 < 30


def test_missing_dataset_and_unreachable_storage_fail_fast(tmp_path):
    from raymmrec.data import DataError
    from raymmrec.ray.launch import launch
    from raymmrec.ray.storage import StorageError

    spec = tiny_spec(tmp_path)
    spec.data.source = str(tmp_path / "no-such-dataset")
    with pytest.raises(DataError, match="no-such-dataset"):
        launch(spec, scaling(), progress=False)
    t0 = time.time()
    with pytest.raises(StorageError, match="storage path '.*file-that-is-a-file/sub' is not writable"):
        bad = tmp_path / "file-that-is-a-file"
        bad.write_text("x")
        launch(tiny_spec(tmp_path), scaling(storage_path=str(bad) + "/sub"), progress=False)
    assert time.time() - t0 < 30


def test_unreachable_s3_endpoint_fails_fast(monkeypatch, tmp_path):
    from raymmrec.ray.storage import StorageError, check_writable

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    t0 = time.time()
    with pytest.raises(StorageError, match="s3://nowhere/runs"):
        check_writable("s3://nowhere/runs", timeout_s=10)
    assert time.time() - t0 < 15


def test_s3_dataset_and_checkpoints(ray_cluster, s3_bucket, tmp_path, capfd):
    import s3fs

    from raymmrec.data import load_dataset
    from raymmrec.data.io import write_columnar
    from raymmrec.ray.launch import launch

    url = f"s3://{s3_bucket}/datasets/tiny"
    write_columnar(load_dataset("synthetic:tiny"), url)
    spec = tiny_spec(tmp_path, "bm3", epochs=2, name="s3run")
    spec.data.source = url
    state = launch(spec, scaling(storage_path=f"s3://{s3_bucket}/runs"), progress=False)
    assert state.epoch == 2
    fs = s3fs.S3FileSystem()
    files = fs.find(f"{s3_bucket}/runs/s3run")
    assert any(f.endswith("latest.pt") for f in files), files
    assert any("/tb/events.out.tfevents" in f for f in files), files
    assert json.loads(fs.cat(f"{s3_bucket}/runs/s3run/results.json"))["epochs_run"] == 2
    time.sleep(2)  # let worker logs reach the driver
    out, err = capfd.readouterr()
    assert "worker(s) on cpu" in out + err  # worker logs did reach this process's output
    assert SECRET not in out + err, "the S3 secret key appeared in the logs"
    for name in files:
        if name.endswith(".json"):
            assert SECRET not in fs.cat(name).decode(), name


def test_ray_job_submit(ray_cluster, tmp_path):
    cmd = ["ray", "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps({"excludes": ["runs", ".git", "*.egg-info"]}),
           "--", sys.executable, "jobs/train_bm3.py", "--smoke-test", "--num-workers", "2",
           "--cpus-per-worker", "0.5", "--storage-path", str(tmp_path), "--run-name", "job", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert re.search(r"Job 'raysubmit_\w+' succeeded", text), text[-3000:]
    results = json.loads((tmp_path / "job" / "results.json").read_text())
    assert results["epochs_run"] == 2 and "recall@20" in results["test"]
    assert list((tmp_path / "job").glob("checkpoint_*/latest.pt"))
