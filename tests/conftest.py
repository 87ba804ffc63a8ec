"""Shared fixtures: the real-data folder, a local S3 server (moto) and one local Ray cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# One torch (OpenMP) thread in this process and, unless set, in the processes it starts: the tests use
# tiny tensors, and on a 2-core machine where anything else runs (the Ray cluster, a spawned rank) a
# second thread only waits at OpenMP barriers (LightGCN on the tiny data: 20 s for 15 epochs, not 0.5 s).
# Ray Train, Tune and unlearning tasks set their own thread counts (raymmrec.ray).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SECRET = "raymmrec-test-secret-must-never-be-logged"  # the S3 secret key; tests grep output for it
sys.path.insert(0, str(Path(__file__).parent))  # tests/_tiny.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """A test that requests the Ray cluster (directly or through another fixture) must carry the ``ray``
    mark, so that ``-m "not ray"`` (the fast tier, docs/testing.md) leaves it out. Checked before ``-m``
    deselects anything, so a missing mark stops every run, whichever tier it asks for."""
    unmarked = [item.nodeid for item in items
                if "ray_cluster" in item.fixturenames and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError(f"{len(unmarked)} test(s) use the ray_cluster fixture without the ray mark "
                                f"(pytestmark = pytest.mark.ray): {', '.join(unmarked[:5])}")


@pytest.fixture(autouse=True)
def _ray_init_needs_the_ray_mark(request, monkeypatch) -> None:
    """A test without the ``ray`` mark that calls ``ray.init`` in this process (a command, Tune or Serve
    starting a local Ray) fails there, at once, instead of starting Ray in the fast tier. Ray is imported
    first (once per session) where it is installed, so that a test importing it later meets the same
    refusal. Subprocesses are not covered: a test that runs ``ray job submit`` needs the cluster's address,
    so it requests the fixture, which the collection check above sees."""
    if request.node.get_closest_marker("ray") is not None:
        return
    try:
        import ray
    except ImportError:
        return

    def refuse(*args, **kwargs):
        pytest.fail(f"{request.node.nodeid} calls ray.init without the ray mark (pytestmark = pytest.mark.ray)",
                    pytrace=False)

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not present at {SHARED_DATA} (they sit beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gloo_runs(tmp_path_factory):
    """Every multi-process gloo scenario (tests/_ddp.py) run once, in one set of spawned processes.

    Returns ``outcome(*files)``: the folder holding those files, after checking that the
    spawn did not end before them (else the test fails with the spawn's error).
    """
    from _ddp import run_scenarios

    out = tmp_path_factory.mktemp("gloo")
    error = run_scenarios(out)

    def outcome(*files: str) -> Path:
        missing = [f for f in files if not (out / f).exists()]
        assert not missing, f"no {missing} from the spawned processes: {error or 'they wrote nothing'}"
        return out

    return outcome


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback; sets the AWS_* variables for this process and its children."""
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    cleared = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")
    old = {k: os.environ.get(k) for k in (*env, *cleared)}
    for k in cleared:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        wait_port(port)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem()
    name = "raymmrec-test"
    if not fs.exists(name):
        fs.mkdir(name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(request, tmp_path_factory):
    """One local Ray head (``ray start --head`` on loopback) shared by every Ray test.

    Yields the dashboard address that ``ray job submit`` needs. Ray's workers inherit the head's
    environment as it was when the head started, so a Ray test that uses S3 needs the S3 server's AWS_*
    variables (:func:`s3_server`) set before then, whichever Ray test starts the head. The head therefore
    starts after the S3 server when a test of this session requests both, and without it otherwise:
    Ray tests do not depend on moto, and where moto is missing only the tests that request S3 skip.
    """
    pytest.importorskip("ray")
    if any({"ray_cluster", "s3_server"} <= set(item.fixturenames) for item in request.session.items):
        try:
            request.getfixturevalue("s3_server")  # set up first, so torn down after this fixture
        except pytest.skip.Exception:
            pass  # no moto_server: the tests that need S3 skip when they request it
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    gcs, dash = free_port(), free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # every port of the head chosen free: Ray's fixed defaults (e.g. the job agent's 52365) clash with any
    # other Ray on the machine, and a job agent that cannot bind refuses every `ray job submit`
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    start = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", *ports,
             "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={tmp}"]
    out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{out.stdout}\n{out.stderr}")
    import ray

    address = f"127.0.0.1:{gcs}"
    os.environ["RAY_ADDRESS"] = address
    try:
        ray.init(address=address, log_to_driver=False)  # as the commands join a cluster (raymmrec.ray.logs)
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dash}"}
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        stop_cluster(str(tmp), env)


def _cluster_processes(marker: str) -> list[int]:
    """Pids of the processes whose command line names ``marker`` (the head's temp dir), and all their
    descendants (workers, dashboard modules), read from /proc."""
    from raymmrec.ray.local_cluster import cluster_processes

    return cluster_processes(marker)


def stop_cluster(marker: str, env: dict[str, str]) -> None:
    """Stop only this test cluster (``ray stop`` would also kill any other Ray on the machine)."""
    if not Path("/proc/self/cmdline").exists():
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        return
    from raymmrec.ray.local_cluster import stop_processes

    stop_processes(marker)
