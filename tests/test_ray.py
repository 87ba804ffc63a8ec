"""Ray Train layer (``raymmrec train --num-workers N``): 1 worker = one process, 2 workers, artefacts,
fault tolerance, resume, NaN, job submit, S3."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import SECRET
from raymmrec.config import load_spec
from raymmrec.train.trained import load_trained
from raymmrec.train.build import build, local_evaluate
from raymmrec.train.checkpoint import read_checkpoint, read_latest
from raymmrec.train.loop import TrainingDiverged
from raymmrec.train.run import run

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(out: Path, method: str = "bm3", epochs: int = 3, name: str = "r", *extra: str):
    return load_spec(method, overrides=[f"output_dir={out}", f"run_name={name}", "data.source=synthetic:tiny",
                                        f"train.epochs={epochs}", "train.batch_size=64", "train.lr=0.01",
                                        "train.patience=50", *extra])


def workers(**kw):
    from raymmrec.ray.launch import Workers

    base = dict(num_workers=2, cpus_per_worker=0.5, max_failures=2)
    base.update(kw)
    return Workers(**base)


#: the options of tiny_spec, as `raymmrec train` takes them
TINY_OPTIONS = ("--data", "synthetic:tiny", "train.batch_size=64", "train.lr=0.01", "train.patience=50")


#: Ray-internal lines a run must not echo by default (see raymmrec.ray.logs).
NOISE = re.compile(r"PreemptionWatcher|RayDeprecationWarning|PlacementGroupCleaner|Failed to send resource request")


def echoed_until(capfd, needle: str, timeout: float = 120.0) -> str:
    """This process's captured output, read until ``needle`` appears (worker lines reach the driver
    asynchronously); not seeing it within ``timeout`` s fails."""
    text = ""
    deadline = time.monotonic() + timeout
    while needle not in text:
        assert time.monotonic() < deadline, f"{needle!r} never reached the driver's output: {text[-2000:]}"
        out, err = capfd.readouterr()
        text += out + err
        if needle not in text:
            threading.Event().wait(0.1)
    return text


def latest_payload(run_root: Path) -> dict:
    """The run folder's checkpoint, its weights assembled in this process (no process group)."""
    return read_checkpoint(run_root)


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, tmp_path_factory):
    """``raymmrec train --num-workers 2`` as a user types it, on the shared cluster (RAY_ADDRESS)."""
    from raymmrec.train.loop import TrainState

    out = tmp_path_factory.mktemp("ray2")
    cmd = [sys.executable, "-m", "raymmrec", "train", "--method", "lightgcn", "--epochs", "4", "--num-workers", "2",
           "--cpus-per-worker", "0.5", "--output-dir", str(out), "--run-name", "r", "--no-progress", *TINY_OPTIONS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=out,
                          env=dict(os.environ, RAY_ADDRESS=ray_cluster["address"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test " in proc.stdout  # the results table, as in one process
    res = json.loads((out / "r" / "results.json").read_text())
    state = TrainState(epoch=res["epochs_run"], best_epoch=res["best_epoch"], best_valid=res["valid"],
                       best_test=res["test"])
    return tiny_spec(out, "lightgcn", epochs=4), state, out


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_leave_every_artefact(two_worker_run):
    spec, state, out = two_worker_run
    run_root = out / "r"
    payload = latest_payload(run_root)  # train.shard=auto: LightGCN's workers split its columns
    assert payload["shard"] == "columns" and payload["world_size"] == 2
    assert payload["model"]["user_emb.weight"].shape[1] == 64  # assembled, not one worker's block
    tensors = run_root / "ckpt" / payload["tensors"]  # each worker wrote its own blocks; no Ray checkpoint
    assert sorted(p.name for p in tensors.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(run_root.glob("checkpoint_*"))
    assert state.epoch == 4 and 0 <= state.best_epoch < 4
    assert set(state.best_test) >= {"recall@20", "ndcg@20", "map@10", "hit@50"}
    results = json.loads((run_root / "results.json").read_text())
    assert results["test"] == pytest.approx(state.best_test)
    payload = latest_payload(run_root)
    assert payload["state"]["epoch"] == 4 and payload["config"]["method"] == "lightgcn"
    assert payload["world_size"] == 2
    assert json.loads((run_root / "config.json").read_text())["model"]["n_layers"] == 3  # defaults filled
    assert list((run_root / "tb").glob("events.out.tfevents.*")), "rank-0 TensorBoard events missing"


@pytest.mark.ray
@pytest.mark.slow
def test_best_weights_rebuild_the_reported_model(two_worker_run):
    """best.pt is the model behind the reported test metrics: re-evaluating it gives them back."""
    spec, state, out = two_worker_run
    trained = load_trained(out / "r", device="cpu")
    assert trained.epoch == state.best_epoch
    p = build(trained.spec, device=torch.device("cpu"))
    again = local_evaluate(p.evaluators)(trained.model)
    for k, v in state.best_test.items():
        assert again["test"][k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.ray
@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(two_worker_run):
    """The last epoch's metrics were all-reduced over 2 workers; recompute them in one process."""
    spec, state, out = two_worker_run
    payload = latest_payload(out / "r")
    p = build(spec, device=torch.device("cpu"))
    p.model.load_state_dict(payload["model"])
    single = local_evaluate(p.evaluators)(p.model)
    last = payload["state"]["history"][-1]
    for split in ("valid", "test"):
        for k, v in single[split].items():
            assert last[f"{split}/{k}"] == pytest.approx(v, abs=1e-12), f"{split}/{k}"


@pytest.fixture(scope="module")
def one_worker_runs(ray_cluster, tmp_path_factory):
    """BM3 on one Ray Train worker: 2 epochs, then the same name with 4 epochs (a resume: one run,
    two launches); and the same 4 epochs in one process."""
    from raymmrec.ray.launch import launch

    out = tmp_path_factory.mktemp("ray1")
    one = workers(num_workers=1, cpus_per_worker=1)
    first = launch(tiny_spec(out / "b", "bm3", 2), one, progress=False)
    second = launch(tiny_spec(out / "b", "bm3", 4), one, progress=False)
    single = run(tiny_spec(out / "a", "bm3", 4), progress=False)
    return first, second, single, out / "b"


@pytest.mark.ray
@pytest.mark.slow
def test_one_worker_reproduces_the_single_process_run(one_worker_runs):
    """Every epoch's loss and the best metrics: epochs 0-1 from the first launch, 2-3 from its resume."""
    _, ray_one, single, folder = one_worker_runs
    hist = latest_payload(folder / "r")["state"]["history"]
    assert [h["loss"] for h in hist] == [h["loss"] for h in single.history]
    assert ray_one.best_test == single.best_test and ray_one.best_epoch == single.best_epoch


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_share_the_global_batch(ray_cluster, two_worker_run, tmp_path, capsys):
    """Same global batches as one process (pairs reshuffled over workers every epoch): same losses
    up to float summation order, same number of steps, and the same test metrics as the same
    command without --num-workers."""
    from raymmrec.cli import main

    spec, state, out = two_worker_run
    assert main(["train", "--method", "lightgcn", "--epochs", "4", "--output-dir", str(tmp_path), "--run-name", "r",
                 "--no-progress", *TINY_OPTIONS]) == 0
    single = read_latest(tmp_path / "r")["state"]
    hist = latest_payload(out / "r")["state"]["history"]
    assert len(hist) == len(single["history"]) == 4
    for a, b in zip(hist, single["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    one = json.loads((tmp_path / "r" / "results.json").read_text())
    assert state.best_epoch == one["best_epoch"]
    assert state.best_test == pytest.approx(one["test"], rel=1e-4, abs=1e-9)


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_resumes_to_identical_metrics(ray_cluster, tmp_path):
    from raymmrec.ray.launch import launch

    from raymmrec.train.run import run

    # the uninterrupted reference in one process: 2 workers reproduce it exactly (tests above), and a
    # third Ray run here cost 20 s of the suite's budget
    clean = run(tiny_spec(tmp_path / "a", "bm3", 5, "r", "train.checkpoint_every=1"), progress=False)
    marker = tmp_path / "killed-once"
    faulty = launch(tiny_spec(tmp_path / "b", "bm3", 5, "r", "train.checkpoint_every=1"), workers(), progress=False,
                    inject_fault={"rank": 1, "epoch": 3, "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    # rank 1 died at the end of epoch 3, before its checkpoint: the restarted workers resumed once, from the
    # run folder's last committed checkpoint (epoch 2); a restart from scratch would say []
    assert faulty.resumes == [2] and clean.resumes == []
    assert faulty.best_epoch == clean.best_epoch
    for k, v in clean.best_test.items():  # sharded evaluation sums in another order: rounding only
        assert faulty.best_test[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_moves_between_one_process_and_two_workers(ray_cluster, tmp_path):
    """One checkpoint layout: epochs 0-1 in one process, 2-3 on 2 column-sharded Ray workers (each reading
    only its blocks), 4-5 in one process again; the uninterrupted one-process run's epochs, losses, best
    epoch and test metrics."""
    from raymmrec.ray.launch import launch

    clean = run(tiny_spec(tmp_path / "a", "bm3", 6), progress=False)
    run(tiny_spec(tmp_path / "b", "bm3", 2), progress=False)
    on_ray = launch(tiny_spec(tmp_path / "b", "bm3", 4), workers(), progress=False)
    latest = read_latest(tmp_path / "b" / "r")
    assert on_ray.resumes == [2] and latest["shard"] == "columns" and latest["world_size"] == 2
    back = run(tiny_spec(tmp_path / "b", "bm3", 6), progress=False)
    assert back.resumes == [2, 4] and back.epoch == clean.epoch == 6
    assert [int(h["epoch"]) for h in back.history] == list(range(6))
    for a, b in zip(back.history, clean.history):  # the workers sum partial dot products: rounding only
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["epoch"]
    assert back.best_epoch == clean.best_epoch
    for k, v in clean.best_test.items():
        assert back.best_test[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


@pytest.mark.ray
@pytest.mark.slow
def test_same_name_resumes_the_run(one_worker_runs):
    from raymmrec.ray.launch import launch

    first, second, _, folder = one_worker_runs
    assert first.resumes == [] and second.resumes == [2]  # a restart from scratch would say []
    hist = latest_payload(folder / "r")["state"]["history"]
    assert second.epoch == 4 and [int(h["epoch"]) for h in hist] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="method 'bm3' -> 'lightgcn'"):
        launch(tiny_spec(folder, "lightgcn", 4), workers(num_workers=1, cpus_per_worker=1), progress=False)


@pytest.mark.ray
@pytest.mark.slow
def test_nan_loss_stops_every_rank_without_retries(ray_cluster, tmp_path):
    from raymmrec.ray.launch import launch

    spec = tiny_spec(tmp_path, "bpr", 5, "r", "train.lr=1e30", "model.reg_weight=1e30")
    with pytest.raises(TrainingDiverged, match="NaN or infinite at epoch"):
        launch(spec, workers(max_failures=2), progress=False)


@pytest.mark.ray
@pytest.mark.slow
def test_an_error_on_rank_1_ends_the_run_with_one_line_and_its_log(ray_cluster, tmp_path, capfd):
    """Ray's output stays off the driver, yet a rank-1 error reaches the user: one line with the rank,
    the error and where that worker's log (holding the traceback) is."""
    from raymmrec.errors import run_main
    from raymmrec.ray.launch import launch

    spec = tiny_spec(tmp_path, "bpr", 1)  # rank 1 raises at the end of the one epoch, on each try
    fault = {"rank": 1, "epoch": 1, "error": "injected disk full"}
    code = run_main(lambda: launch(spec, workers(max_failures=0), progress=False, inject_fault=fault))
    out, err = capfd.readouterr()
    assert code == 2 and "Traceback" not in out + err, out + err
    assert len(err.splitlines()) == 1, err
    m = re.fullmatch(r"error: rank 1 failed: RuntimeError: injected disk full; log: (\S+) on node \S+ "
                     r"\(`ray logs actor --id \w+ --err`\)\n", err)
    assert m, err
    log = Path(m.group(1))
    assert log.is_file() and "injected disk full" in log.read_text()


def test_a_dead_worker_is_named_before_the_ranks_that_failed_with_it():
    """A rank without a log location died (no error from our code); its peers' collective errors follow."""
    from raymmrec.ray.logs import WHERE, worker_failure

    collateral = RuntimeError("gloo: Connection reset by peer")
    setattr(collateral, WHERE, "/logs/worker-0.err on node n")
    died = Exception("A worker health check failed.\nWorker info: ...")
    died.health_check_failure = type("ActorDied", (Exception,), {"actor_id": "ab12"})()
    group = type("WorkerGroupError", (Exception,), {})("Training failed")
    group.worker_failures = {0: collateral, 1: died}
    assert str(worker_failure(group)) == ("rank 1 failed: Exception: A worker health check failed. (also failed: "
                                          "rank 0); log: `ray logs actor --id ab12 --err`")
    group.worker_failures = {2: collateral, 3: RuntimeError("x")}
    setattr(group.worker_failures[3], WHERE, "/logs/worker-3.err on node n")
    assert str(worker_failure(group)).startswith("rank 2 failed: RuntimeError: gloo: Connection reset by peer (also "
                                                 "failed: rank 3); log: /logs/worker-0.err")


#: run a command's main() with ray.init replaced by a failure: nothing may start Ray
NO_RAY_INIT = ("import sys, runpy, ray\n"
               "def refuse(*a, **k): raise SystemExit('ray.init was called')\n"
               "ray.init = refuse\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_module('raymmrec', run_name='__main__') if sys.argv[0] == '-m' else "
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.parametrize("argv, needle", [
    (["jobs/train_bm3.py", "--smoke-test", "model.dropout=2", "model.nope=1"], "nope"),
    (["-m", "train", "--smoke-test", "--num-workers", "2", "--cpus-per-worker", "0"], "error: --cpus-per-worker: "),
    (["-m", "train", "--smoke-test", "--num-workers", "2", "--device", "cuda:1"], "error: train.device (--device): "),
])
def test_bad_options_fail_on_the_driver_before_ray_starts(tmp_path, argv, needle):
    """A bad option of `raymmrec train --num-workers N` (or of jobs/train_bm3.py) is one line, and Ray never starts."""
    if argv[0] == "-m":  # python -m raymmrec train ...
        argv = ["-m", *argv[1:]]
    else:
        argv = [str(ROOT / argv[0]), *argv[1:]]
    cmd = [sys.executable, "-c", NO_RAY_INIT, *argv, "--output-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.ray
def test_too_many_workers_fails_fast(ray_cluster, tmp_path):
    from raymmrec.ray.launch import ClusterError, launch

    with pytest.raises(ClusterError, match="cannot place.*64 workers"):
        launch(tiny_spec(tmp_path), workers(num_workers=64, cpus_per_worker=1), progress=False)


@pytest.mark.ray
def test_missing_dataset_and_unreachable_storage_fail_fast(ray_cluster, tmp_path):  # the loading task is a Ray task
    from raymmrec.data import DataError
    from raymmrec.ray.launch import launch
    from raymmrec.ray.storage import StorageError

    spec = tiny_spec(tmp_path)
    spec.data.source = str(tmp_path / "no-such-dataset")
    with pytest.raises(DataError, match="no-such-dataset"):
        launch(spec, workers(), progress=False)
    bad = tmp_path / "malformed"
    bad.mkdir()
    (bad / "x.inter").write_text("userID\titemID\tx_label\n0\tseven\t0\n")
    spec.data.source = str(bad)  # read by the loading task: its own one-line error, no worker started
    with pytest.raises(DataError, match=r"x.inter.*itemID") as e:
        launch(spec, workers(), progress=False)
    assert "\n" not in str(e.value) and read_latest(tmp_path / "r") is None
    with pytest.raises(StorageError, match="storage path '.*file-that-is-a-file/sub' is not writable"):
        bad = tmp_path / "file-that-is-a-file"
        bad.write_text("x")
        launch(tiny_spec(bad / "sub"), workers(), progress=False)


@pytest.mark.slow
def test_unreachable_s3_endpoint_fails_fast(monkeypatch, tmp_path):
    from raymmrec.ray.storage import StorageError, check_writable

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StorageError, match="s3://nowhere/runs"):
        check_writable("s3://nowhere/runs", timeout_s=10)


@pytest.mark.ray
@pytest.mark.slow
def test_s3_dataset_and_checkpoints(ray_cluster, s3_bucket, tmp_path, capfd):
    import s3fs

    from raymmrec.data import load_dataset
    from raymmrec.data.io import write_columnar
    from raymmrec.ray.launch import launch

    url = f"s3://{s3_bucket}/datasets/tiny"
    write_columnar(load_dataset("synthetic:tiny"), url)
    spec = tiny_spec(tmp_path, "bm3", epochs=2, name="s3run")
    spec.data.source = url
    spec.output_dir = f"s3://{s3_bucket}/runs"
    state = launch(spec, workers(), progress=False)
    assert state.epoch == 2
    fs = s3fs.S3FileSystem()
    files = fs.find(f"{s3_bucket}/runs/s3run")
    assert any(f.endswith("/ckpt/latest.pt") for f in files), files
    assert sum(f.endswith(".distcp") for f in files) == 2, files  # each worker's blocks, written to S3
    assert read_latest(f"s3://{s3_bucket}/runs/s3run")["state"]["epoch"] == 2
    assert any("/tb/events.out.tfevents" in f for f in files), files
    assert json.loads(fs.cat(f"{s3_bucket}/runs/s3run/results.json"))["epochs_run"] == 2
    trained = load_trained(f"s3://{s3_bucket}/runs/s3run", device="cpu")  # best.pt + config.json from S3
    assert trained.epoch == state.best_epoch and trained.spec.data.source == url
    text = echoed_until(capfd, "worker(s) on cpu")  # worker logs did reach this process's output
    assert SECRET not in text, "the S3 secret key appeared in the logs"
    assert not NOISE.search(text), NOISE.search(text)  # Ray's internal noise stays out (raymmrec.ray.logs)
    for name in files:
        if name.endswith(".json"):
            assert SECRET not in fs.cat(name).decode(), name


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit(ray_cluster, tmp_path):
    cmd = ["ray", "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps({"excludes": ["runs", ".git", "*.egg-info"]}),
           "--", sys.executable, "jobs/train_bm3.py", "--smoke-test", "--num-workers", "2",
           "--cpus-per-worker", "0.5", "--output-dir", str(tmp_path), "--run-name", "job", "--no-progress"]
    for _ in range(5):  # a busy head's job agent may not be up yet: Ray's answer is "try again later"
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        if "No available agent to submit job" not in out.stdout + out.stderr:
            break
        threading.Event().wait(2.0)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert re.search(r"Job 'raysubmit_\w+' succeeded", text), text[-3000:]
    assert not NOISE.search(text), NOISE.search(text)
    results = json.loads((tmp_path / "job" / "results.json").read_text())
    assert results["epochs_run"] == 2 and "recall@20" in results["test"]
    assert read_latest(tmp_path / "job")["state"]["epoch"] == 2  # the run folder's own checkpoint


def test_local_paths_refused_on_a_multi_node_cluster(monkeypatch, tmp_path):
    import ray

    from raymmrec.ray.launch import ClusterError, _local_paths_on_cluster

    spec = tiny_spec(tmp_path)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    with pytest.raises(ClusterError, match="2 nodes but storage path .* is a local path"):
        _local_paths_on_cluster(str(tmp_path), spec)
    _local_paths_on_cluster("s3://bucket/runs", spec)  # remote storage, built-in data: fine
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    _local_paths_on_cluster(str(tmp_path), spec)  # one node: local paths are fine
    _local_paths_on_cluster(str(tmp_path), spec, {"CPU": 2.0, "GPU": 0.0})  # ... where the workers fit
    # an autoscaling cluster scaled to zero: its head cannot hold the workers, which will run on new nodes
    with pytest.raises(ClusterError, match=r"the workers need 4 CPU \(it has 2\), more than the cluster's one node "
                                           r"holds, so they will run on nodes an autoscaler adds, which cannot see "
                                           r"storage path .* \(a local path\); use s3://"):
        _local_paths_on_cluster(str(tmp_path), spec, {"CPU": 4.0, "GPU": 0.0})
    _local_paths_on_cluster("s3://bucket/runs", spec, {"CPU": 4.0})  # remote storage: fine anywhere


def test_tensorboard_for_remote_storage_is_copied_there_and_leaves_no_local_folder(tmp_path):
    """Rank 0 writes TensorBoard to a temporary folder when the run folder is remote; it is copied to the run
    folder and removed at the end of training (every S3 run left one behind on the worker's machine)."""
    from raymmrec.ray.train_fn import SyncedTensorBoard
    from raymmrec.train.loop import TrainState

    staging, remote = tmp_path / "staging", tmp_path / "run" / "tb"  # a local folder stands in for S3
    remote.mkdir(parents=True)
    tb = SyncedTensorBoard(str(staging), f"file://{remote}", temporary=True)
    state = TrainState()
    tb.on_fit_start(None, state)
    tb.on_epoch_end(None, state, {"epoch": 0, "loss": 1.0})
    tb.on_fit_end(None, state)
    assert len(list(remote.glob("events.out.tfevents.*"))) == 1
    assert not staging.exists()


@pytest.mark.ray
@pytest.mark.slow
def test_stateful_methods_on_two_workers_match_one_process(ray_cluster, tmp_path):
    """LIRDRec (PWC state rewritten before every epoch, cold-start items) and NBPO (a flip model
    owned by the objective, attached to the model) give the single-process losses with 2 Ray
    Train workers. CM3's gathered uniformity terms are checked the same way in tests/test_cm3.py."""
    from raymmrec.ray.launch import launch

    for method in ("lirdrec", "nbpo"):
        extra = ("data.cold_items=0.2",) if method == "lirdrec" else ()
        single = run(tiny_spec(tmp_path / f"{method}-1", method, 3, "r", *extra), progress=False)
        two = launch(tiny_spec(tmp_path / f"{method}-2", method, 3, "r", *extra), workers(), progress=False)
        hist = latest_payload(tmp_path / f"{method}-2" / "r")["state"]["history"]
        assert len(hist) == len(single.history) == 3
        for a, b in zip(hist, single.history):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), method
            for k in (k for k in b if k.startswith(("model/fusion/", "loss/gamma_pos"))):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (method, k)
        assert two.best_test == pytest.approx(single.best_test, rel=1e-4)
        if extra:  # cold-start items evaluated on the sharded path too
            assert hist[-1]["cold/recall@20"] == pytest.approx(single.history[-1]["cold/recall@20"], rel=1e-4)


class _ListQueue:
    """Stands in for the driver's ray.util.queue.Queue; ``gone`` makes every put fail."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.gone = False

    def put_nowait(self, item: tuple[str, str]) -> None:
        if self.gone:
            raise ConnectionError("the queue's actor died")
        self.items.append(item)


def test_our_lines_reach_the_driver_queue_whole_and_fall_back_when_it_is_gone(capfd):
    from raymmrec.ray.logs import lines_to_driver, worker_stdout

    q = _ListQueue()
    with lines_to_driver(q):
        print("epoch 0: loss=1.0", file=worker_stdout)
        worker_stdout.write("epoch 1: ")
        worker_stdout.write("loss=0.5\n")
        print("plain print")
        sys.stderr.write("\rbar 10%\rbar 50%\rbar 100%\n")  # a progress bar's redraws: its last state
        sys.stderr.write("unfinished")
    assert q.items[:3] == [("stdout", "epoch 0: loss=1.0"), ("stdout", "epoch 1: loss=0.5"), ("stdout", "plain print")]
    assert q.items[3:] == [("stderr", "bar 100%"), ("stderr", "unfinished")]
    assert capfd.readouterr() == ("", "")  # nothing went to this process's own streams
    print("after", file=worker_stdout)  # outside: the process's own stdout
    assert capfd.readouterr().out == "after\n"
    with lines_to_driver(q, redirect=False):  # a Train worker: only our explicit lines (Ray logs to sys.stderr)
        print("ray's own", file=sys.stderr)
        print("epoch 2: loss=0.4", file=worker_stdout)
    assert q.items[-1] == ("stdout", "epoch 2: loss=0.4") and capfd.readouterr().err == "ray's own\n"
    q.gone = True
    with lines_to_driver(q):
        print("the driver has gone", file=worker_stdout)
    assert capfd.readouterr().out == "the driver has gone\n"


@pytest.mark.ray
def test_driver_prints_the_lines_a_task_sends_and_not_ray_s_own(ray_cluster, capfd):
    import ray

    from raymmrec.ray.logs import DriverLines, lines_to_driver

    def task(q):
        import warnings

        print("raw print without a queue")  # Ray's echo is off (log_to_driver=False): not shown
        with lines_to_driver(q), warnings.catch_warnings():
            warnings.simplefilter("always")
            print("line from the task")
            warnings.warn("dropped 2 duplicate rows", UserWarning, stacklevel=1)
        return 1

    with DriverLines() as lines:
        assert ray.get(ray.remote(num_cpus=0)(task).remote(lines.queue)) == 1
    out, err = capfd.readouterr()
    assert out.splitlines() == ["line from the task"]  # not the raw print
    assert "UserWarning: dropped 2 duplicate rows" in err


# -- one data route: read once per job, shared by the workers of a node ------------------------------

def tiny_folder(path: Path) -> Path:
    """synthetic:tiny written as an MMRec folder (a source that a worker could read again)."""
    from raymmrec.data import load_dataset, write_mmrec

    write_mmrec(load_dataset("synthetic:tiny"), str(path))
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_workers_never_read_the_dataset_the_loading_task_read(ray_cluster, tmp_path, monkeypatch):
    """The folder is moved away as soon as the driver's loading task has read it: two workers still
    train (from the object store), and the result is one process's on the same data."""
    import raymmrec.ray.launch as rl

    folder = tiny_folder(tmp_path / "ds")
    from _tiny import move_after_loading

    move_after_loading(monkeypatch, rl, folder, tmp_path / "gone")
    spec = tiny_spec(tmp_path / "ray", "lightgcn", 2, "r", f"data.source={folder}")
    state = rl.launch(spec, workers(), progress=False)
    assert not folder.exists() and state.epoch == 2
    (tmp_path / "gone").rename(folder)
    single = run(tiny_spec(tmp_path / "one", "lightgcn", 2, "r", f"data.source={folder}"), progress=False)
    assert state.best_test == pytest.approx(single.best_test, abs=1e-6)


@pytest.mark.ray
def test_workers_of_a_node_map_one_copy_of_the_arrays(ray_cluster, tmp_path):
    """Two worker processes build BM3 from the shared dataset: the pairs, the frozen features and
    the normalised graph are the object store's read-only memory (the same shared file in both), not
    copies; the trained feature tables are the model's own."""
    import ray

    from raymmrec.ray.launch import absolute_data_paths
    from raymmrec.ray.shared import share

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    # above Ray's 100 KiB inline limit (smaller objects travel inside the task's reply, copied): 240 KB of pairs
    spec = tiny_spec(tmp_path, "bm3", 1, "r", "data.source=synthetic:users=1000,items=300,interactions=30000,dims=text:64")
    absolute_data_paths(spec)
    shared = share(spec)

    @ray.remote(num_cpus=0)
    class Worker:
        def build(self, shared, spec_dict):  # noqa: ANN001
            from raymmrec.config import spec_from_dict
            from raymmrec.ray.shared import fetch
            from raymmrec.train.build import build

            def _mapping(address: int) -> str:
                """The /proc/self/maps entry (device, inode, path) that holds ``address`` in this process."""
                for line in open("/proc/self/maps").read().splitlines():
                    parts = line.split(maxsplit=5)
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    if lo <= address < hi:
                        return " ".join(parts[3:5] + parts[5:])
                raise AssertionError(f"address {address:#x} is not mapped")

            data, prepared = fetch(shared)
            p = build(spec_from_dict(spec_dict), device=torch.device("cpu"), data=data, prepared=prepared)
            adj = p.graph.prepared["adj"]
            frozen = {"users": (p.graph.train_users, data.train.users),
                      "items": (p.graph.train_items, data.train.items),
                      "text": (p.graph.features["text"], data.features["text"]),
                      "adj.values": (adj.values(), None), "adj.col": (adj.col_indices(), None)}
            out = {"pid": os.getpid(), "shared_file": _mapping(data.train.users.ctypes.data)}
            for name, (t, a) in frozen.items():
                out[name] = {"map": _mapping(t.data_ptr()), "same_memory": a is None or t.data_ptr() == a.ctypes.data,
                             "read_only": a is None or not a.flags.writeable}
            out["trained_feat"] = _mapping(p.model.feat["text"].data_ptr())
            return out

    a, b = Worker.remote(), Worker.remote()
    got = ray.get([w.build.remote(shared, spec.to_dict()) for w in (a, b)], timeout=120)
    assert got[0]["pid"] != got[1]["pid"]
    shm = got[0]["shared_file"]
    assert got[1]["shared_file"] == shm and not shm.startswith("00:00 0 ")  # one file, not anonymous memory
    for g in got:
        for name in ("users", "items", "text", "adj.values", "adj.col"):
            assert g[name] == {"map": shm, "same_memory": True, "read_only": True}, (name, g[name])
        assert g["trained_feat"] != shm  # BM3 trains its feature tables: a copy of its own
