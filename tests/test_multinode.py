"""Several Ray nodes on one machine (the ``ray_nodes`` fixture: a 0-CPU head and two 1-CPU worker nodes,
each with its own raylet and object store): two Train workers on two nodes writing to S3 give the
one-process run's metrics and files in the bucket, a node lost after a checkpoint costs nothing but time,
local paths are refused across nodes unless allowed, and a Serve app with a replica on each node keeps
answering while one node goes. The tests of ``ray_nodes`` share one cluster and one training run."""

from __future__ import annotations

import _thread
import json
import re
import threading
import time

import pytest

from raymmrec.config import load_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 4
TINY = ("--data", "synthetic:tiny", "train.batch_size=64", "train.lr=0.01", "train.patience=50")
#: `raymmrec train` with 2 column-sharded LightGCN workers of 1 CPU each: one per worker node
TWO_WORKERS = ["train", "--method", "lightgcn", "--epochs", str(EPOCHS), "--num-workers", "2", "--cpus-per-worker", "1",
               "--run-name", "r", "--no-progress", *TINY]


def tiny_spec(out, *extra: str):
    """The spec of TWO_WORKERS (its options as overrides)."""
    return load_spec("lightgcn", overrides=[f"output_dir={out}", "run_name=r", "data.source=synthetic:tiny",
                                            f"train.epochs={EPOCHS}", "train.batch_size=64", "train.lr=0.01",
                                            "train.patience=50", *extra])


def train_workers() -> dict[str, tuple[str, str]]:
    """Every Ray Train worker actor the cluster has known, alive or dead: {actor id: (node id, state)},
    from Ray's state API (the head's dashboard)."""
    from ray.util.state import list_actors

    return {a.actor_id: (a.node_id, a.state)
            for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=10_000, raise_on_missing_output=False)}


def assert_same_run(run_root, reference) -> None:
    """The run folder's (a path or URL) epochs run, best epoch, every test metric (within 1e-6) and every
    epoch's loss are those of ``reference``, the one-process run. (The losses catch what the metrics of 40
    users do not: a worker's columns scaled by 1.01 left every metric as it was.)"""
    from raymmrec.files import join, read_bytes
    from raymmrec.train.checkpoint import read_latest

    results = json.loads(read_bytes(join(str(run_root), "results.json")))
    history = read_latest(run_root)["state"]["history"]
    assert [int(h["epoch"]) for h in history] == list(range(EPOCHS))
    for a, b in zip(history, reference.history):  # the workers sum partial dot products: rounding only
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["epoch"]
    assert results["epochs_run"] == reference.epoch == EPOCHS
    assert results["best_epoch"] == reference.best_epoch
    assert set(results["test"]) == set(reference.best_test)
    for k, v in reference.best_test.items():
        assert results["test"][k] == pytest.approx(v, abs=1e-6), k


def worker_nodes_alive() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)


def test_a_sweep_on_a_cluster_scaled_to_zero_gets_nodes_and_gives_them_back(ray_autoscaling, tmp_path, capsys):
    """cluster/local-fake.yaml from zero worker nodes: a 2-worker run with a local output path is refused at
    once (its workers would run on nodes yet to come); a sweep of 4 one-CPU trials makes the autoscaler add
    1-CPU nodes (at most the file's 3) for the 2 trials at a time that Tune asks for (--max-concurrent 2,
    which Tune used to ignore: it asked for all 4 at once); every trial ends with what its configuration
    gives in one process; the nodes are released once idle. First in this module: ray_autoscaling is gone
    before ray_nodes starts."""
    from raymmrec.cli import main
    from raymmrec.ray.tune import SweepArgs, sweep
    from raymmrec.search import Grid, apply_point
    from raymmrec.train.run import run

    assert worker_nodes_alive() == 0  # the head only, which has no CPU
    capsys.readouterr()
    code = main([*TWO_WORKERS, "--wait-for-resources", "--output-dir", str(tmp_path / "train")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "so they will run on nodes an autoscaler adds" in err[0], err
    assert worker_nodes_alive() == 0  # refused before asking for any

    seen = {"max": 0, "trials": 0}

    def count_nodes() -> None:
        from ray.util.state import list_placement_groups

        while "ended" not in seen:
            try:
                n = worker_nodes_alive()
                if n and "first" not in seen:
                    seen["first"] = time.monotonic() - t0
                seen["max"] = max(seen["max"], n)
                if not n:  # before any node is up (no trial can have ended): what Tune asks for at once, a
                    # placement group per trial it means to run, pending (and the autoscaler's demand)
                    asked = list_placement_groups(filters=[("state", "!=", "REMOVED")])
                    seen["trials"] = max(seen["trials"], len(asked))
            except Exception as e:  # noqa: BLE001 - a slow state API answer: try again, count it
                seen["misses"] = [*seen.get("misses", []), repr(e)[:200]]
            time.sleep(0.5)

    spec = tiny_spec(tmp_path / "sweeps", "train.epochs=3")
    space = {"model.n_layers": Grid((1, 2)), "model.reg_weight": Grid((0.1, 0.01))}
    counter = threading.Thread(target=count_nodes, daemon=True)
    t0 = time.monotonic()
    counter.start()
    try:
        res = sweep(spec, SweepArgs(max_concurrent=2, cpus_per_trial=1, name="s", progress=False), space=space)
    finally:
        seen["ended"] = time.monotonic() - t0
        counter.join(timeout=10)
    # nodes added for the trials, no more than the file allows (Ray's autoscaler may start one more than the
    # 2 pending trials ask for while the first ones are still starting: it releases it when idle)
    print(f"[multinode] {seen}")
    assert 1 <= seen["max"] <= 3 and seen["trials"] == 2, seen
    assert len(res.rows) == 4 and all(r["status"] == "finished" for r in res.rows), res.rows
    trials = [p for p in (tmp_path / "sweeps" / "s").iterdir() if p.name != "best" and (p / "params.json").exists()]
    assert len(trials) == 4, trials
    for d in trials:
        trial = json.loads((d / "results.json").read_text())
        config = json.loads((d / "config.json").read_text())
        point = {"model.n_layers": config["model"]["n_layers"], "model.reg_weight": config["model"]["reg_weight"]}
        one = run(apply_point(tiny_spec(tmp_path / "one" / d.name, "train.epochs=3"), point), progress=False)
        assert trial["epochs_run"] == one.epoch and trial["best_epoch"] == one.best_epoch, d.name
        for k, v in one.best_test.items():
            assert trial["test"][k] == pytest.approx(v, abs=1e-6), (d.name, k)
    while worker_nodes_alive():  # idle timeout 15 s; the autoscaler looks every second
        assert time.monotonic() - t0 - seen["ended"] < 120, "the idle nodes were never released"
        time.sleep(0.5)
    print(f"[multinode] sweep {seen['ended']:.1f}s; first node alive {seen.get('first', -1):.1f}s after the sweep "
          f"started, {seen['max']} at most; all released {time.monotonic() - t0 - seen['ended']:.1f}s after it ended")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same spec trained in this process (the reference)."""
    from raymmrec.train.run import run

    return run(tiny_spec(tmp_path_factory.mktemp("one")), progress=False)


@pytest.fixture(scope="module")
def two_node_run(ray_nodes, s3_bucket):
    """``raymmrec train --num-workers 2 --cpus-per-worker 1 --output-dir s3://...`` on the three nodes (the
    moto server, started before the nodes, is their S3); (exit code, results.json, the run's workers, the
    run's URL)."""
    from raymmrec.cli import main
    from raymmrec.files import read_bytes

    out = f"s3://{s3_bucket}/multinode"
    before = train_workers()
    code = main([*TWO_WORKERS, "--output-dir", out])
    workers = {a: node for a, (node, _) in train_workers().items() if a not in before}
    results = json.loads(read_bytes(f"{out}/r/results.json")) if code == 0 else None
    return code, results, workers, f"{out}/r"


def test_two_workers_on_two_nodes_end_with_the_one_process_metrics(ray_nodes, two_node_run, one_process):
    from raymmrec.train.checkpoint import read_latest

    code, results, workers, run_root = two_node_run
    assert code == 0
    worker_nodes = {n.node_id for n in ray_nodes.worker_nodes}
    assert len(workers) == 2 and set(workers.values()) == worker_nodes, (workers, worker_nodes)  # one per node
    latest = read_latest(run_root)
    assert latest["shard"] == "columns" and latest["world_size"] == 2
    assert_same_run(run_root, one_process)


def test_an_s3_output_path_holds_the_files_both_nodes_wrote(two_node_run, s3_bucket):
    """two_node_run's folder is in the bucket: the checkpoint with each worker's blocks (one written from
    each node), the best weights and config a later `recommend` or `serve` loads, the results, TensorBoard's
    events."""
    import s3fs

    code, results, workers, run_root = two_node_run
    assert code == 0 and results["epochs_run"] == EPOCHS
    files = [f.removeprefix(f"{s3_bucket}/multinode/r/") for f in s3fs.S3FileSystem().find(run_root)]
    assert {"config.json", "best.pt", "results.json", "ckpt/latest.pt"} <= set(files), files
    assert sum(f.endswith(".distcp") for f in files) == 2, files  # rank 0's and rank 1's blocks
    assert any(f.startswith("tb/") and "events.out.tfevents" in f for f in files), files


def test_local_output_path_is_refused_on_several_nodes_unless_allowed(ray_nodes, two_node_run, tmp_path, capsys):
    """The command of two_node_run with a local output path: one line, before any worker starts. With an
    s3:// path (two_node_run) it ran to the end; with --allow-local-paths, a local one does (the node-loss
    test below)."""
    from raymmrec.cli import main

    before = train_workers()
    capsys.readouterr()
    code = main([*TWO_WORKERS, "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.fullmatch(rf"error: the cluster has 3 nodes but storage path '{tmp_path}' is a local path that other "
                        r"nodes cannot see; use s3:// \(or a shared mount with --allow-local-paths\)", err[0]), err
    assert train_workers() == before  # refused before any worker started
    assert two_node_run[0] == 0 and two_node_run[1]["epochs_run"] == EPOCHS


def test_a_node_lost_after_a_checkpoint_is_replaced_and_the_run_ends_as_if_uninterrupted(ray_nodes, one_process,
                                                                                           tmp_path):
    """Rank 1 pauses at the end of epoch 3 (after epoch 2's checkpoint) and writes its node id; its node is
    removed there (raylet, object store, every process killed) and an empty one added, as an autoscaler
    replaces a lost node. Ray Train restarts both workers from the checkpoint: the one-process run's
    epochs, best epoch and test metrics."""
    from ray.util.state import list_actors

    from raymmrec.ray.launch import Workers, launch

    marker = tmp_path / "paused"
    seen: dict = {}

    def take_the_node_away() -> None:
        try:
            deadline = time.monotonic() + 300
            while not marker.exists():
                if time.monotonic() > deadline or "ended" in seen:
                    seen["error"] = "rank 1 never paused"
                    return
                time.sleep(0.1)
            node = next(n for n in ray_nodes.worker_nodes if n.node_id == marker.read_text())
            seen["removed"] = node.node_id
            t0 = time.monotonic()
            ray_nodes.remove_node(node, allow_graceful=False)
            seen["added"] = ray_nodes.add_node(num_cpus=1).node_id
            while "ended" not in seen:  # until the restarted workers are alive (for the recovery time)
                alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                if len(alive) == 2 and seen["removed"] not in {a.node_id for a in alive}:
                    seen["recovered_s"] = time.monotonic() - t0
                    return
                time.sleep(0.5)
        except Exception as e:  # noqa: BLE001 - reported by the test
            seen["error"] = repr(e)
            if "removed" in seen:  # the run would wait for a second node forever: stop it (and the session)
                _thread.interrupt_main()

    before = train_workers()
    remover = threading.Thread(target=take_the_node_away, daemon=True)
    remover.start()
    t_start = time.monotonic()
    try:
        state = launch(tiny_spec(tmp_path / "runs", "train.checkpoint_every=1"),
                       Workers(num_workers=2, cpus_per_worker=1, max_failures=2, allow_local_paths=True),
                       progress=False, inject_fault={"rank": 1, "epoch": 3, "marker": str(marker), "pause": 120})
    finally:
        seen["ended"] = time.monotonic() - t_start
        remover.join(timeout=60)
    assert "error" not in seen, seen
    print(f"[multinode] run {seen['ended']:.1f}s; the restarted workers alive {seen.get('recovered_s', -1):.1f}s "
          "after the node was removed")
    assert state.resumes == [2]  # from epoch 2's checkpoint; a restart from scratch would say []
    groups = {a: node for a, (node, _) in train_workers().items() if a not in before}
    assert len(groups) == 4, groups  # two workers, then two again
    assert seen["removed"] in groups.values() and seen["added"] in groups.values()
    assert json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["resumed_at"] == [2]
    assert_same_run(tmp_path / "runs" / "r", one_process)
    assert len(ray_nodes.worker_nodes) == 2  # for the next test


APP = "multinode"
#: requests sent until Ray declares the lost replica dead may fail (Serve cannot route away before);
#: from this long after that on, every request gets a 200
RECOVERED_S = 5.0


def replica_nodes() -> dict[str, str]:
    """The app's live Serve replicas: {actor id: node id}, from Ray's state API."""
    from ray.util.state import list_actors

    return {a.actor_id: a.node_id for a in list_actors(filters=[("class_name", "=", f"ServeReplica:{APP}:recommend"),
                                                                 ("state", "=", "ALIVE")], raise_on_missing_output=False)}


def wait_for(what: str, check, deadline_s: float = 180):
    """Poll ``check()`` until it returns something true; that value (fails after ``deadline_s``)."""
    end = time.monotonic() + deadline_s
    while not (got := check()):
        assert time.monotonic() < end, f"{what}: not after {deadline_s:.0f}s"
        time.sleep(0.2)
    return got


class Client(threading.Thread):
    """One client asking ``url`` for recommendations, one request after another (at most ``most``, each
    with a 60 s timeout), until stopped: each request's (start, end, status or error)."""

    def __init__(self, url: str, most: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.url, self.most = url, most
        self.log: list[tuple[float, float, object]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import urllib.error
        import urllib.request

        for n in range(self.most):
            if self.stop.is_set():
                return
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}/recommend?user={n % 40}&k=5", timeout=60) as r:
                    r.read()
                    got: object = r.status
            except urllib.error.HTTPError as e:
                got = e.code
            except Exception as e:  # noqa: BLE001 - a reset connection, a timeout: a failed request
                got = type(e).__name__
            self.log.append((t0, time.monotonic(), got))

    def answered_since(self, t: float) -> int:
        """Requests sent after ``t`` that got a 200."""
        return sum(1 for t0, _, got in list(self.log) if t0 >= t and got == 200)


def test_two_replicas_on_two_nodes_keep_answering_while_one_node_goes(ray_nodes, two_node_run):
    """``raymmrec serve`` of two_node_run's S3 folder with 2 replicas of 1 CPU: one on each worker node.
    One client sends requests one after another; a replica's node is removed (raylet, object store, its
    proxy and replica killed). Requests may fail only until the GCS declares the node dead and Serve its
    replica (measured: 0 or 1 of them, the one in flight on that node), and every request sent from
    RECOVERED_S after that on gets a 200. A node
    added back gets the replacement replica, which loads the app's data from its holder."""
    import ray
    from ray import serve
    from ray.util.state import list_actors

    from conftest import free_port
    from raymmrec.ray.serve import deploy

    assert two_node_run[0] == 0
    t_deploy = time.monotonic()
    info = deploy(two_node_run[3], app=APP, port=free_port(), replicas=2, cpus=1)
    client = Client(info["url"])
    try:
        placed = replica_nodes()
        worker_nodes = {n.node_id for n in ray_nodes.worker_nodes}
        assert len(placed) == 2 and set(placed.values()) == worker_nodes, (placed, worker_nodes)  # one per node
        client.start()
        t_start = time.monotonic()
        wait_for("20 answers before the removal", lambda: client.answered_since(t_start) >= 20)
        holders = [a.node_id for a in list_actors(filters=[("class_name", "=", "ServedData"), ("state", "=", "ALIVE")])]
        assert holders == [ray_nodes.head_node.node_id], holders  # the app's data survive a worker node
        lost_replica, lost_node = sorted(placed.items())[0]
        node = next(n for n in ray_nodes.worker_nodes if n.node_id == lost_node)
        t_removed = time.monotonic()
        ray_nodes.remove_node(node, allow_graceful=False)
        node_dead = wait_for("the GCS declares the node dead", lambda: any(
            n["NodeID"] == lost_node and not n["Alive"] for n in ray.nodes()) and time.monotonic()) - t_removed
        replica_dead = wait_for("the lost replica is dead", lambda: lost_replica not in replica_nodes()
                                and time.monotonic()) - t_removed
        t_events = time.monotonic()
        wait_for("50 answers after both", lambda: client.answered_since(t_events) >= 50)
        client.stop.set()
        client.join(timeout=120)
        log = list(client.log)
        failed = [(t0 - t_removed, t1 - t_removed, got) for t0, t1, got in log if got != 200]
        back = max([t1 for _, t1, _ in failed] + [0.0])  # every request sent after this got a 200
        slowest = max(t1 - t0 for t0, t1, _ in log if t1 >= t_removed)
        sent = sum(1 for t0, _, _ in log if t0 >= t_removed)
        print(f"[multinode] serve: {len(failed)} of {sent} requests failed after the node was removed {failed}; "
              f"every request a 200 from {back:.1f}s on; slowest {slowest:.2f}s; node declared dead at "
              f"{node_dead:.1f}s, the replica at {replica_dead:.1f}s")
        # Serve routes away from the lost replica once Ray declares it dead: a request sent before then may
        # fail, one sent RECOVERED_S after it may not (the count is reported above)
        late = [f for f in failed if f[0] > replica_dead + RECOVERED_S]
        assert not late, (late, failed)
        assert all(got == 200 for t0, _, got in log if t0 < t_removed)  # none failed before
        # the lost replica's replacement on a node added back: the app has two nodes again
        added = ray_nodes.add_node(num_cpus=1).node_id
        wait_for("two replicas running again", lambda: serve.status().applications[APP].deployments[
            "recommend"].replica_states == {"RUNNING": 2}, 300)
        again = replica_nodes()
        assert set(again.values()) == (worker_nodes - {lost_node}) | {added}, again
        print(f"[multinode] serve: deployed in {t_removed - t_deploy:.1f}s (to the removal), replacement running "
              f"{time.monotonic() - t_removed:.1f}s after the removal")
    finally:
        client.stop.set()
        serve.shutdown()  # its replicas' CPUs free for the next test; no Serve client left for another cluster
    assert len(ray_nodes.worker_nodes) == 2
