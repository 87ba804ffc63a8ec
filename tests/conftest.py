"""Shared fixtures: the real-data folder, a local S3 server (moto) and one local Ray cluster."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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
# Where a process does run more than one torch thread (a lone Ray worker takes the node's two cores), its idle
# threads sleep instead of spinning: under `-n 2` both cores are busy, and a spinning thread takes a core from
# the other test process (a 2-thread LightGCN run on the tiny data beside a busy core: 5.9 CPU-seconds
# spinning, 4.3 sleeping). Set before any Ray cluster or command starts, so that their processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


#: fixtures that start several Ray nodes on this machine (the tests using them need the ``slow`` mark too)
MULTI_NODE_FIXTURES = {"ray_nodes", "ray_autoscaling"}
#: fixtures that start or join a Ray cluster (the tests using them need the ``ray`` mark)
RAY_FIXTURES = {"ray_cluster", *MULTI_NODE_FIXTURES}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """A test that requests a Ray cluster (directly or through another fixture) must carry the ``ray``
    mark, so that ``-m "not ray"`` (the fast tier, docs/testing.md) leaves it out, and one that requests a
    multi-node cluster the ``slow`` mark too. Checked before ``-m`` deselects anything, so a missing mark
    stops every run, whichever tier it asks for."""
    unmarked = [item.nodeid for item in items
                if RAY_FIXTURES & set(item.fixturenames) and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError(f"{len(unmarked)} test(s) use a Ray cluster fixture ({', '.join(sorted(RAY_FIXTURES))}) "
                                f"without the ray mark (pytestmark = pytest.mark.ray): {', '.join(unmarked[:5])}")
    not_slow = [item.nodeid for item in items
                if MULTI_NODE_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None]
    if not_slow:  # starting several nodes alone takes longer than the fast tier allows a test
        raise pytest.UsageError(f"{len(not_slow)} test(s) use a multi-node cluster without the slow mark: "
                                f"{', '.join(not_slow[:5])}")
    groups = {item.nodeid: xdist_group(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: Ray's groups first, the longest first
        slow = collections.Counter(g for g, _ in {(groups[i.nodeid], getattr(i, "originalname", i.name))
                                                  for i in items if i.get_closest_marker("slow") is not None})
        first = {g: n for n, g in reversed(list(enumerate(groups[i.nodeid] for i in items)))}
        items.sort(key=lambda i: (not uses_ray(groups[i.nodeid]), -slow[groups[i.nodeid]],
                                  first[groups[i.nodeid]]))


def xdist_group(item: pytest.Item) -> str:
    """The group of tests that one process runs under ``pytest -n 2`` (pytest-xdist; ``--dist loadgroup``
    in pyproject.toml): a module's Ray tests, which share that process's Ray cluster (:func:`ray_cluster`,
    one per process), the multi-node tests (their clusters come and go with their module), or the rest
    of a module (its fixtures set up once, or twice where a module has Ray tests too). Each process takes the next group when it is done with its
    own: the groups that use Ray first, so that a process can stop its cluster when it moves on to the
    others (:func:`pytest_runtest_setup`), each kind with the most ``slow`` test functions first
    (``--no-loadscope-reorder`` keeps this order), so that no long group starts last."""
    module = item.nodeid.split("::", 1)[0]
    if set(item.fixturenames) & MULTI_NODE_FIXTURES:
        return "ray-nodes"
    if "ray_cluster" in item.fixturenames or item.get_closest_marker("ray") is not None:
        return f"ray:{module}"
    return module


def uses_ray(group: str) -> bool:
    return group.startswith("ray:") or group == "ray-nodes"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under pytest-xdist's load groups, a process that reaches a test outside Ray's groups runs no Ray test
    after it (they come first, :func:`xdist_group`), so its single-node cluster, idle from now on, is
    stopped: at the first such test of another module than its last Ray test, whose module fixtures (a
    Serve deployment) are torn down by then. A Ray test that comes after all the same (pytest's
    ``--ff``, a crashed process's tests handed to this one) fails at once, saying why."""
    if not hasattr(item.config, "workerinput") or item.config.getoption("dist") != "loadgroup":
        return
    module = item.nodeid.split("::", 1)[0]
    if uses_ray(item.get_closest_marker("xdist_group").args[0]):  # set at collection
        if _HEAD.stopped_early:
            pytest.fail("this test process stopped its Ray cluster when it moved on to the tests without Ray, "
                        "and a Ray test came after them: run with the default order (no --ff, --nf, --lf)",
                        pytrace=False)
        _HEAD.last_ray_module = module
    elif _HEAD.last_ray_module is not None and module != _HEAD.last_ray_module:
        _HEAD.stop(early=True)


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


@contextlib.contextmanager
def ray_temp_dir(name: str):
    """A short, new folder under the system's temporary folder for one test cluster's files, removed after it.
    Ray's socket paths under it must stay within 107 bytes, and pytest's own temporary folders (one level
    deeper under pytest-xdist) leave too little room for them."""
    path = tempfile.mkdtemp(prefix=f"raymmrec-{name}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


def s3_first(request, cluster: str) -> None:
    """Start :func:`s3_server` now where a test of this session requests both it and the fixture
    ``cluster``: a cluster's workers inherit its nodes' environment as it was when they started, so the
    S3 server's AWS_* variables must be set before then (and the server, set up first, is torn down
    after the cluster). Without ``moto_server`` nothing happens here: the tests that need S3 skip when
    they request it."""
    if any({cluster, "s3_server"} <= set(item.fixturenames) for item in request.session.items):
        try:
            request.getfixturevalue("s3_server")
        except pytest.skip.Exception:
            pass


@pytest.fixture(scope="session")
def ray_cluster(request):
    """One local Ray head (``ray start --head`` on loopback) shared by every Ray test of this process (under
    ``pytest -n 2`` each test process has its own).

    Yields the dashboard address that ``ray job submit`` needs. Ray's workers inherit the head's
    environment as it was when the head started, so a Ray test that uses S3 needs the S3 server's AWS_*
    variables (:func:`s3_server`) set before then, whichever Ray test starts the head. The head therefore
    starts after the S3 server when a test of this session requests both, and without it otherwise:
    Ray tests do not depend on moto, and where moto is missing only the tests that request S3 skip.
    """
    pytest.importorskip("ray")
    s3_first(request, "ray_cluster")
    try:
        yield _HEAD.start()
    finally:
        _HEAD.stop()


class _SingleNodeHead:
    """The cluster of :func:`ray_cluster`, with this process's driver connected to it; :meth:`stop` may come
    before the session's end (:func:`pytest_runtest_setup`), and a second call does nothing."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self.stopped_early = False
        self.last_ray_module: str | None = None  # of the last Ray test this process ran

    def start(self) -> dict[str, str]:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        self._stack = stack = contextlib.ExitStack()
        tmp = stack.enter_context(ray_temp_dir("ray"))
        gcs, dash = free_port(), free_port()
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        # every port of the head chosen free: Ray's fixed defaults (e.g. the job agent's 52365) clash with any
        # other Ray on the machine, and a job agent that cannot bind refuses every `ray job submit`
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        start = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", *ports,
                 "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={tmp}"]
        stack.callback(stop_cluster, tmp, env, gcs)  # also after a start that failed half-way
        out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{out.stdout}\n{out.stderr}")
        address = f"127.0.0.1:{gcs}"
        os.environ["RAY_ADDRESS"] = address
        stack.callback(os.environ.pop, "RAY_ADDRESS", None)
        stack.callback(ray.shutdown)
        ray.init(address=address, log_to_driver=False)  # as the commands join a cluster (raymmrec.ray.logs)
        return {"address": address, "dashboard": f"http://127.0.0.1:{dash}"}

    def stop(self, early: bool = False) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self.stopped_early = early
            stack.close()


_HEAD = _SingleNodeHead()


@contextlib.contextmanager
def driver_connected_to(address: str):
    """This process's Ray driver connected to ``address`` (and ``RAY_ADDRESS`` naming it, for commands run
    from here) for the ``with`` block; then connected back to the cluster it was connected to before, if any.

    One process holds one Ray connection, and the single-node :func:`ray_cluster` fixture connects for the
    whole session, so a fixture of another cluster takes the connection over and gives it back. Nothing a
    test of the other cluster holds outlives this: module fixtures are torn down before the next module's.
    """
    import ray

    before = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    env_before = os.environ.get("RAY_ADDRESS")
    ray.shutdown()
    os.environ["RAY_ADDRESS"] = address
    try:
        ray.init(address=address, log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        if env_before is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = env_before
        if before is not None:
            ray.init(address=before, log_to_driver=False)


def _head_ports() -> dict[str, int]:
    """Every port of a head chosen free: Ray's fixed defaults (8265, the job agent's 52365) clash with any
    other Ray on the machine."""
    return {"gcs_server_port": free_port(), "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(),
            "runtime_env_agent_port": free_port(), "metrics_export_port": free_port()}


@pytest.fixture(scope="module")
def ray_nodes(request):
    """Three Ray nodes on this machine, each with its own raylet and object store: a head with no CPU
    (the driver's tasks, which hold none, run there) and two worker nodes of 1 CPU, so that two 1-CPU
    Train workers land on two nodes. ``ray.cluster_utils.Cluster``, as Ray's own tests kill nodes with it.

    Yields the ``Cluster``: ``remove_node`` takes a node away (its processes killed), ``add_node(num_cpus=1)``
    gives one back. A test that removes a node adds one back, so the next test finds two worker nodes.

    Module-scoped, for the tests of one module (tests/test_multinode.py); a session-wide one would hold 3
    raylets through every other test. While it lives, this process's driver is connected to it
    (:func:`driver_connected_to`): the multi-node tests call ``launch`` and the state API here, as a user's
    driver would, and find :func:`ray_cluster`'s connection restored after them. Stopped by its own
    processes (:func:`stop_cluster`), never ``ray stop``. Started after the S3 server where a test of the
    session uses both (:func:`s3_first`).
    """
    pytest.importorskip("ray")
    s3_first(request, "ray_nodes")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with ray_temp_dir("nodes") as tmp:
        # shutdown_at_exit=False: no exit hooks of Ray's in this process (they replace pytest's SIGTERM handler,
        # and fail in a thread other than the main one, where the node-loss test adds a node); the finally
        # below stops every process of the cluster
        cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
            "num_cpus": 0, "temp_dir": str(tmp), "include_dashboard": True,  # the dashboard serves the state API
            "dashboard_host": "127.0.0.1", **_head_ports()})
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            with driver_connected_to(cluster.address):
                yield cluster
        finally:
            try:
                cluster.shutdown()
            finally:
                stop_cluster(str(tmp), dict(os.environ))


@pytest.fixture
def ray_autoscaling():
    """cluster/local-fake.yaml started as ``python cluster/local_autoscaling.py up`` starts it (Ray's autoscaler
    on its fake node provider: a 0-CPU head, 1-CPU worker nodes from 0 to 3), with every port free and
    nodes released after 15 idle seconds instead of the file's 30 (not 6: with 6 s, on this busy machine,
    the autoscaler released a node that a trial was being placed on, and Tune had to retry the trial).
    Yields ``{"address", "dashboard"}``.

    Function-scoped: the one test that uses it comes first in tests/test_multinode.py, so that this cluster
    is gone before :func:`ray_nodes` starts. This process's driver is connected to it meanwhile
    (:func:`driver_connected_to`), as :func:`ray_nodes` explains. Stopped by its own processes (the worker
    nodes are children of its autoscaler), never ``ray stop``.
    """
    pytest.importorskip("ray")
    from raymmrec.ray.local_cluster import DEFAULT_CONFIG, fake_cluster_config, start

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with ray_temp_dir("as") as tmp:
        port = free_port()
        try:
            state = start(fake_cluster_config(DEFAULT_CONFIG, port, idle_timeout_minutes=0.25), str(tmp), port=port)
            with driver_connected_to(state["address"]):
                yield state
        finally:
            stop_cluster(str(tmp), dict(os.environ), port)


def stop_cluster(marker: str, env: dict[str, str], gcs_port: int | None = None) -> None:
    """Stop only this test cluster (``ray stop`` would also kill any other Ray on the machine): the
    processes naming its temporary folder ``marker`` or, for a head that ``ray start`` started, its GCS
    port (its Ray client server names nothing else)."""
    if not Path("/proc/self/cmdline").exists():
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        return
    from raymmrec.ray.local_cluster import stop_processes

    stop_processes(marker, gcs_port)
