"""Train a :class:`RunSpec` with Ray Train workers (``TorchTrainer``): ``raymmrec train --num-workers N``.

The command line (:mod:`raymmrec.cli`, and ``jobs/*.py`` through it) parses the options and calls
:func:`launch`; it starts a local Ray, or joins the cluster named by ``--address`` / ``RAY_ADDRESS``
(``ray job submit`` sets it). The run folder is ``<output_dir>/<run_name>`` (local or ``s3://``), with
the same life as a one-process run (:mod:`raymmrec.train.lifecycle`); rerunning with the same name
resumes from the latest checkpoint (``ckpt/``: the layout of a run in one
process too, so either resumes the other, with any number of workers).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from raymmrec.config import ConfigError, RunSpec
from raymmrec.data import resolve_source
from raymmrec.errors import UserError
from raymmrec.ray import storage as st
from raymmrec.ray.logs import DriverLines, worker_failure
from raymmrec.ray.shared import SharedData, share
from raymmrec.train.artifacts import DIVERGED, TB
from raymmrec.shard import resolve_mode
from raymmrec.files import location
from raymmrec.train.build import resolved_config, run_notes
from raymmrec.train.lifecycle import RunFolder, finish, open_run, write_config
from raymmrec.train.checkpoint import read_latest
from raymmrec.train.loop import TrainingDiverged, TrainState

RAY_CHECKPOINT_EVERY = 5  # default epochs between resumable checkpoints under Ray (best weights: every improvement)


class ClusterError(UserError, RuntimeError):
    """The cluster cannot host the requested workers."""


#: ``train.device`` values that mean something for a worker: cuda is one GPU per worker, auto one per
#: worker where the cluster has them (else the CPU)
RAY_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Workers:
    """How a run is spread over Ray Train workers (``raymmrec train --num-workers N`` and its options).

    The device (``train.device``) and the run folder's parent (``output_dir``, local or ``s3://``)
    are the spec's, as in one process.
    """

    num_workers: int = 1
    cpus_per_worker: float | None = None  # default: fits the cluster (0.5 each for 2 workers on 2 cores)
    max_failures: int = 2  # worker failures to recover from (-1: any number)
    wait_for_resources: bool = False  # on an autoscaling cluster, let Ray scale up instead of failing
    allow_local_paths: bool = False  # multi-node cluster with a shared mount at the same local path
    address: str | None = None  # the cluster to join (None: RAY_ADDRESS, else a local Ray)

    def check(self) -> None:
        """One line per bad value, naming its option; before Ray starts."""
        if self.num_workers < 1:
            raise ConfigError(f"--num-workers: expected an integer >= 1, got {self.num_workers}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ConfigError(f"--cpus-per-worker: expected a number > 0, got {self.cpus_per_worker:g}")
        if self.max_failures < -1:
            raise ConfigError(f"--max-failures: expected an integer >= 0 (or -1: any number), got {self.max_failures}")


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def torch_threads(num_workers: int, cpus_per_worker: float) -> int:
    """Torch threads per worker: the node's cores shared by its workers on a one-node cluster.

    Ray sets OMP_NUM_THREADS to the worker's CPU resource, which on a small machine leaves cores
    idle: the CPU resource is kept low only so that the loading task and the controller can be scheduled.
    """
    nodes = _alive_nodes()
    if len(nodes) == 1:
        return max(1, int(nodes[0]["Resources"].get("CPU", 1)) // num_workers)
    return max(1, int(cpus_per_worker))


def _cluster_check(workers: Workers, use_gpu: bool, cpus_per_worker: float) -> None:
    import ray

    res = ray.cluster_resources()
    need_cpu = workers.num_workers * cpus_per_worker
    have_cpu = res.get("CPU", 0.0)
    need_gpu = workers.num_workers if use_gpu else 0
    have_gpu = res.get("GPU", 0.0)
    problems = []
    if need_cpu > have_cpu:
        problems.append(f"{workers.num_workers} workers x {cpus_per_worker:g} CPU = {need_cpu:g} CPU, cluster has {have_cpu:g}")
    if need_gpu > have_gpu:
        problems.append(f"{need_gpu} GPU(s) requested (--device cuda: one per worker), cluster has {have_gpu:g}")
    if problems and not workers.wait_for_resources:
        raise ClusterError(
            "the cluster cannot place the requested workers: " + "; ".join(problems)
            + ". Use fewer workers, --cpus-per-worker, or --wait-for-resources on an autoscaling cluster."
        )


def default_cpus_per_worker(num_workers: int) -> float:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    # Leave headroom for the loading task and the controller: 2 workers on 2 cores get 0.5 each.
    share = (cpus / 2) / num_workers if cpus <= 2 else (cpus - 1) / num_workers
    return float(min(4.0, max(0.25, math.floor(share * 4) / 4)))


def _local_paths_on_cluster(storage: str, spec: RunSpec, need: dict[str, float] | None = None) -> None:
    """Refuse local storage or data paths once the workers may run on another node: the cluster has more
    than one node, or its one node cannot hold the workers' resources ``need`` (e.g. ``{"CPU": 2}``), so
    that they will run on nodes an autoscaler adds (a cluster scaled to zero has only its head)."""
    nodes = _alive_nodes()
    paths = (("storage path", storage), ("data", spec.data.source), ("data.forget", spec.data.forget or ""))
    local = [f"{what} {path!r}" for what, path in paths
             if path and not st.is_remote(path) and (os.path.isabs(path) or os.path.exists(path))]
    if not local:
        return
    fix = "use s3:// (or a shared mount with --allow-local-paths)"
    if len(nodes) > 1:
        raise ClusterError(f"the cluster has {len(nodes)} nodes but {' and '.join(local)} is a local path that "
                           f"other nodes cannot see; {fix}")
    has = nodes[0]["Resources"] if nodes else {}
    short = {k: v for k, v in (need or {}).items() if v and has.get(k, 0.0) < v}
    if short:
        wants = ", ".join(f"{v:g} {k} (it has {has.get(k, 0.0):g})" for k, v in short.items())
        raise ClusterError(f"the workers need {wants}, more than the cluster's one node holds, so they will run on "
                           f"nodes an autoscaler adds, which cannot see {' and '.join(local)} (a local path); {fix}")


def absolute_data_paths(spec: RunSpec) -> None:
    """Make ``spec``'s local data paths absolute (in place): Ray tasks and Train workers run in other
    directories, where a relative path names nothing.

    ``data.source``: a dataset name found on ``$RAYMMREC_DATA_PATH`` becomes its path; a local path
    that exists becomes absolute (a built-in name such as ``synthetic:tiny`` stays). ``data.forget``
    (always a file): a local path, plain or ``file://``, becomes an absolute plain path. URLs stay.
    """
    d = spec.data
    d.source = resolve_source(d.source)
    if not st.is_remote(d.source) and os.path.exists(d.source):
        d.source = os.path.abspath(d.source)
    if d.forget and not st.is_remote(d.forget):
        d.forget = os.path.abspath(os.path.expanduser(d.forget.removeprefix("file://")))


def launch(spec: RunSpec, workers: Workers, *, progress: bool = True, verbose: bool = False,
           inject_fault: dict[str, Any] | None = None, train_callbacks: list[Any] | None = None,
           data: SharedData | None = None) -> TrainState:
    """Train ``spec`` with Ray Train workers; returns the best-epoch state reported by rank 0.

    The options, the run folder and the storage are checked here, before Ray starts (each a one-line
    error); the dataset is checked by a task on the cluster before any worker starts.
    ``train_callbacks`` go to Ray Train's ``RunConfig`` (a Tune trial passes ``TuneReportCallback``).
    ``data``: the dataset already in the object store (a Tune sweep's, :mod:`raymmrec.ray.shared`): it
    is not read again; otherwise one task reads it.
    """
    import ray

    workers.check()
    absolute_data_paths(spec)
    resolved_config(spec)  # bad methods and options fail here, before the storage is touched
    if spec.train.device not in RAY_DEVICES:
        raise ConfigError(f"train.device (--device): expected auto, cpu or cuda with Ray workers (cuda: one "
                          f"GPU per worker), got {spec.train.device!r}")
    # train.shard=columns with a method that cannot: one line, before Ray starts
    resolve_mode(spec.train.shard, spec.method, spec.objective, workers.num_workers)
    if spec.train.checkpoint_every == 0:
        raise ValueError("train.checkpoint_every: expected an integer >= 1 under Ray (metrics reach Ray with "
                         "each checkpoint); 0 (never) applies to single-process runs")
    st.check_writable(location(spec.output_dir))  # an unreachable or read-only storage: within seconds
    folder = open_run(spec)  # resuming: the recorded config adopted; another experiment's folder refused
    say = (lambda msg: print(f"[raymmrec] {msg}", flush=True)) if progress else (lambda msg: None)
    if not ray.is_initialized():  # Ray's own processes' output (noise) reaches us only with --verbose
        ray.init(address=workers.address, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    lines = DriverLines()  # our task's and rank 0's lines come on a channel of their own (raymmrec.ray.logs)
    try:
        return _launch_on_ray(folder, workers, lines, say, progress=progress, verbose=verbose,
                              inject_fault=inject_fault, train_callbacks=train_callbacks, data=data)
    finally:
        lines.close()


def use_gpus(device: str, num_workers: int) -> bool:
    """Whether each worker gets a GPU: ``cuda`` yes, ``cpu`` no, ``auto`` where the cluster has one per worker."""
    import ray

    if device == "auto":
        return ray.cluster_resources().get("GPU", 0.0) >= num_workers
    return device == "cuda"


def _launch_on_ray(folder: RunFolder, workers: Workers, lines: DriverLines, say: Any, *, progress: bool,
                   verbose: bool, inject_fault: dict[str, Any] | None, train_callbacks: list[Any] | None,
                   data: SharedData | None) -> TrainState:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    spec, storage, run_root = folder.spec, folder.parent, folder.root
    name = spec.resolved_run_name
    # The dataset is read and checked and the prepared inputs built once, by a task on the cluster
    # (a bad dataset: its one-line error, before any worker starts); the workers map the arrays from
    # the object store without copying (raymmrec.ray.shared).
    use_gpu = use_gpus(spec.train.device, workers.num_workers)
    cpus = workers.cpus_per_worker or default_cpus_per_worker(workers.num_workers)
    _cluster_check(workers, use_gpu, cpus)  # both before the dataset is read: refused within a second
    if not workers.allow_local_paths:  # (past _cluster_check, workers that do not fit wait for an autoscaler)
        _local_paths_on_cluster(storage, spec, {"CPU": workers.num_workers * cpus,
                                                "GPU": float(workers.num_workers) if use_gpu else 0.0})
    shared = share(spec, lines.queue, data=data)
    say(f"{shared.summary} (checked and prepared on the cluster in {shared.seconds:.1f}s)")
    threads = torch_threads(workers.num_workers, cpus)
    storage_path, storage_fs = st.pyarrow_filesystem(storage)
    remote = st.is_remote(storage)
    write_config(folder)
    fs, root = st.filesystem(run_root)
    if fs.exists(f"{root}/{DIVERGED}"):
        fs.rm(f"{root}/{DIVERGED}")
    every = spec.train.checkpoint_every if spec.train.checkpoint_every is not None else RAY_CHECKPOINT_EVERY
    loop_config: dict[str, Any] = {
        "shard": resolve_mode(spec.train.shard, spec.method, spec.objective, workers.num_workers),
        "spec": spec.to_dict(),
        "progress": progress,
        "verbose": verbose,
        "lines": lines.queue,  # rank 0's lines to this driver (raymmrec.ray.logs)
        "data": shared,  # the dataset's and the prepared inputs' arrays in the object store
        "run_root": run_root,
        "checkpoint_every": every,
        "threads": threads,
        "tb_local_dir": None if remote else os.path.join(storage_path, name, TB),
        "tb_remote_dir": st.join(run_root, TB) if remote else None,
    }
    if inject_fault:
        loop_config["inject_fault"] = inject_fault
    trainer = TorchTrainer(
        _train_fn(),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers.num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=workers.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=train_callbacks,
        ),
    )
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    except ray.train.WorkerGroupError as e:  # a worker raised: one line (rank, error, its log), not Ray's tracebacks
        lines.close()
        raise worker_failure(e) from e
    lines.close()  # the workers' last lines before the results
    if fs.exists(f"{root}/{DIVERGED}"):
        raise TrainingDiverged(json.loads(fs.cat_file(f"{root}/{DIVERGED}"))["error"])
    latest = read_latest(run_root)  # the last checkpoint's loop state: every run ends with one
    state = TrainState.from_dict(latest["state"]) if latest is not None else TrainState()
    finish(folder, state, run_notes(spec), show=progress)
    say(f"run folder: {run_root}")
    return state


def _train_fn():  # noqa: ANN202 - imported lazily so the driver does not need the worker deps
    from raymmrec.ray.train_fn import train_loop_per_worker

    return train_loop_per_worker


