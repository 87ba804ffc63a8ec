"""A Ray cluster of several nodes on one machine: Ray's autoscaler on its fake node provider, and a way
to stop one local cluster without touching any other Ray on the machine.

``python cluster/local_autoscaling.py up`` (:func:`main`) starts a head with
``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=cluster/local-fake.yaml``: the autoscaler runs
on the head as it does on a cloud, and its provider starts each worker node as a raylet (with its own
object store) on this machine when jobs ask for resources, and stops it after the idle timeout. ``down``
stops exactly the processes of that cluster (:func:`stop_processes`): those whose command line names its
temporary folder or its GCS address, and their descendants (the worker nodes the autoscaler started are
children of its monitor process). ``ray stop`` would stop every Ray on the machine.

Why not ``ray up`` or ``ray.cluster_utils.AutoscalingCluster``: Ray 2.60's wheel lacks the provider's
defaults file (``fake_multi_node/example.yaml``), which both read, and ``ray up`` has no command runner
for this provider (it would start the head over SSH); ``AutoscalingCluster.start`` also runs
``ray stop --force`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]  # the checkout every node of the cluster runs
#: the cluster file the script starts by default
DEFAULT_CONFIG = REPO / "cluster" / "local-fake.yaml"
DEFAULT_TEMP_DIR = "/tmp/raymmrec-local-cluster"
STATE = "local-cluster.json"  # in the temporary folder: the addresses `status` and `down` read
HEAD_TYPE = "ray.head.default"  # the fake provider's head type name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """Every process of the machine (Linux ``/proc``): pid -> (parent pid, command line)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                out[int(d.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
            except (OSError, IndexError, ValueError):
                continue
    return out


def descendants(roots: Iterable[int], procs: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    """``roots`` and every process below them (of ``procs``, default :func:`processes`): pid -> command line."""
    procs = processes() if procs is None else procs
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid: procs[pid][1] for pid in found if pid in procs}


def marked_tree(marker: str, roots: Iterable[int] = (), gcs_port: int | None = None) -> dict[int, str]:
    """The processes whose command line names ``marker`` (a Ray's temporary folder: its daemons, even
    once they left the tree of the command that started them), ``roots``, the processes with an argument
    naming a GCS at ``gcs_port`` (``...:<port>``), and all their descendants: pid -> command line."""
    procs = processes()
    port = None if gcs_port is None else f":{gcs_port}"
    named = {pid for pid, (_, cmd) in procs.items()
             if marker in cmd or (port is not None and any(arg.endswith(port) for arg in cmd.split()))}
    return descendants({*roots, *named}, procs)


def cluster_processes(marker: str, gcs_port: int | None = None) -> list[int]:
    """Pids of the processes whose command line names ``marker`` (a cluster's temporary folder), and
    all their descendants (workers, dashboard modules, the nodes an autoscaler started), from /proc;
    never this process. ``gcs_port``: also those that name the cluster's GCS address, as the Ray client
    server that ``ray start --head`` starts does (and nothing else of it: not the temporary folder, and
    its parent is gone)."""
    return sorted(set(marked_tree(marker, gcs_port=gcs_port)) - {os.getpid()})


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def stop_processes(marker: str, gcs_port: int | None = None) -> int:
    """SIGTERM, then SIGKILL after 3 s, the processes of :func:`cluster_processes`; how many there were.
    A pid is signalled only while it names the process found (same start time): on a busy machine pids
    are reused within seconds, and the new owner is somebody else's."""
    found = {p: _stat(p) for p in cluster_processes(marker, gcs_port)}  # once: killed children would be re-parented
    pids = [p for p, st in found.items() if st is not None]

    def alive() -> list[int]:
        out = []
        for p in pids:
            st = _stat(p)
            if st is not None and st[0] != "Z" and st[1] == found[p][1]:  # not a zombie, not a new process
                out.append(p)
        return out

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + (3 if sig == signal.SIGTERM else 10)
        while alive() and time.time() < deadline:
            time.sleep(0.2)
    return len(pids)


def fake_cluster_config(path: str | Path, port: int, **overrides: Any) -> dict[str, Any]:
    """The cluster file at ``path`` with its provider pointed at a head on ``127.0.0.1:port``
    (the provider's new nodes join that GCS) and the top-level keys in ``overrides`` replaced."""
    config = yaml.safe_load(Path(path).read_text())
    if config.get("provider", {}).get("type") != "fake_multinode":
        raise ValueError(f"{path}: provider.type must be fake_multinode for a cluster on this machine")
    if HEAD_TYPE not in config.get("available_node_types", {}) or config.get("head_node_type") != HEAD_TYPE:
        raise ValueError(f"{path}: the fake provider needs the head type to be named {HEAD_TYPE}")
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    config.update(overrides)
    return config


def start(config: dict[str, Any], temp_dir: str, *, port: int | None = None, dashboard_port: int | None = None,
          update_interval_s: float = 1.0, env: dict[str, str] | None = None) -> dict[str, str]:
    """Start the head of ``config`` (:func:`fake_cluster_config`) with its temporary folder ``temp_dir``;
    returns its GCS address and dashboard URL (also written to ``<temp_dir>/local-cluster.json``).

    Every port of the head is chosen free unless given, so that another Ray on the machine does not
    clash with it. ``update_interval_s``: how often the autoscaler looks at the demand (Ray's default 5 s).

    Every node runs this checkout: Ray starts from its root (a job's ``python jobs/...`` finds the script)
    with the root first on ``PYTHONPATH`` (the workers import this ``raymmrec``, whatever else is
    installed). Not ``ray job submit --working-dir``: the nodes share this machine's folder of runtime
    environments, and one node's agent deletes a package that it no longer uses while another node's
    workers still run in it (trials died at ``import torch``).
    """
    temp_dir = os.path.abspath(temp_dir)
    port = port or int(config["provider"]["gcs_address"].rsplit(":", 1)[1])
    dashboard_port = dashboard_port or free_port()
    os.makedirs(temp_dir, exist_ok=True)
    config_path = os.path.join(temp_dir, "autoscaling-config.yaml")
    Path(config_path).write_text(yaml.safe_dump(config, sort_keys=False))
    head = dict(config["available_node_types"][HEAD_TYPE].get("resources", {}))
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--autoscaling-config={config_path}", f"--temp-dir={temp_dir}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--num-cpus={head.pop('CPU', 0):g}", f"--num-gpus={head.pop('GPU', 0):g}", "--disable-usage-stats"]
    if "object_store_memory" in head:
        cmd.append(f"--object-store-memory={int(head.pop('object_store_memory'))}")
    if head:
        cmd.append(f"--resources={json.dumps(head)}")
    run_env = dict(os.environ if env is None else env, RAY_FAKE_CLUSTER="1", RAY_USAGE_STATS_ENABLED="0",
                   AUTOSCALER_UPDATE_INTERVAL_S=f"{update_interval_s:g}")
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), run_env.get("PYTHONPATH")) if p)
    out = subprocess.run(cmd, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        stop_processes(temp_dir, port)
        raise RuntimeError(f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    state = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}"}
    Path(temp_dir, STATE).write_text(json.dumps(state))
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python cluster/local_autoscaling.py",
        description="A Ray cluster that autoscales on this machine (Ray's fake node provider): up, status, down.")
    p.add_argument("action", choices=["up", "status", "down"])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="cluster file (default: cluster/local-fake.yaml)")
    p.add_argument("--temp-dir", default=DEFAULT_TEMP_DIR,
                   help=f"the cluster's folder: its logs, and what `down` stops (default {DEFAULT_TEMP_DIR})")
    p.add_argument("--port", type=int, default=6379, help="the head's GCS port (default 6379)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard and job API port (default 8265)")
    a = p.parse_args(argv)
    a.temp_dir = os.path.abspath(a.temp_dir)
    state_file = Path(a.temp_dir, STATE)
    if a.action == "down":
        address = json.loads(state_file.read_text())["address"] if state_file.exists() else None
        n = stop_processes(a.temp_dir, int(address.rsplit(":", 1)[1]) if address else None)
        state_file.unlink(missing_ok=True)
        print(f"stopped {n} processes of the cluster in {a.temp_dir}")
        return 0
    if a.action == "status":
        if not state_file.exists():
            print(f"no cluster started from {a.temp_dir}", file=sys.stderr)
            return 1
        address = json.loads(state_file.read_text())["address"]
        return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={address}"]).returncode
    if cluster_processes(a.temp_dir):
        print(f"a cluster already runs from {a.temp_dir}; `down` first, or give another --temp-dir", file=sys.stderr)
        return 1
    state = start(fake_cluster_config(a.config, a.port), a.temp_dir, port=a.port, dashboard_port=a.dashboard_port)
    print(f"head started: GCS {state['address']}, dashboard and job API {state['dashboard']}\n"
          f"  export RAY_ADDRESS={state['dashboard']}\n"
          f"  ray status --address {state['address']}      # nodes, pending demand (or: {p.prog} status)\n"
          f"  {p.prog} down --temp-dir {a.temp_dir}")
    return 0
