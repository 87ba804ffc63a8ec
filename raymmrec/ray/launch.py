"""Launch a data-parallel training run with Ray Train (``TorchTrainer``) from a :class:`RunSpec`.

Used by ``jobs/*.py``. Run it as ``python jobs/train_bm3.py`` (starts a local Ray) or on a
cluster as ``ray job submit --working-dir . -- python jobs/train_bm3.py --num-workers 4``.
The run's checkpoints, TensorBoard scalars and results live under ``<storage>/<run_name>``;
rerunning with the same name resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from raymmrec.args import add_run_arguments, spec_from_args
from raymmrec.config import RunSpec, adopt_recorded
from raymmrec.data import resolve_source
from raymmrec.errors import UserError, run_main
from raymmrec.eval.cold import COLD_SPLITS
from raymmrec.ray import storage as st
from raymmrec.ray.logs import DriverLines, worker_failure
from raymmrec.ray.shared import SharedData, share
from raymmrec.train.artifacts import CONFIG, DIVERGED, RESULTS, TB, results_dict, results_table
from raymmrec.files import write_json
from raymmrec.shard import resolve_mode
from raymmrec.train.build import check_same_run, resolved_config, run_notes
from raymmrec.train.loop import TrainingDiverged, TrainState

RAY_CHECKPOINT_EVERY = 5  # default epochs between resumable checkpoints under Ray (best weights: every improvement)


class ClusterError(UserError, RuntimeError):
    """The cluster cannot host the requested workers."""


@dataclass
class ScalingArgs:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # default: fits the cluster (0.5 each for 2 workers on 2 cores)
    max_failures: int = 2
    storage_path: str | None = None  # default: the spec's output_dir (absolute)
    wait_for_resources: bool = False  # on an autoscaling cluster, let Ray scale up instead of failing
    allow_local_paths: bool = False  # multi-node cluster with a shared mount at the same local path


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


def _cluster_check(args: ScalingArgs, cpus_per_worker: float) -> None:
    import ray

    res = ray.cluster_resources()
    need_cpu = args.num_workers * cpus_per_worker
    have_cpu = res.get("CPU", 0.0)
    need_gpu = args.num_workers if args.use_gpu else 0
    have_gpu = res.get("GPU", 0.0)
    problems = []
    if need_cpu > have_cpu:
        problems.append(f"{args.num_workers} workers x {cpus_per_worker:g} CPU = {need_cpu:g} CPU, cluster has {have_cpu:g}")
    if need_gpu > have_gpu:
        problems.append(f"{need_gpu} GPU(s) requested, cluster has {have_gpu:g}")
    if problems and not args.wait_for_resources:
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


def _local_paths_on_cluster(storage: str, spec: RunSpec) -> None:
    """Refuse local storage or data paths once the cluster has more than one node."""
    nodes = _alive_nodes()
    paths = (("storage path", storage), ("data", spec.data.source), ("data.forget", spec.data.forget or ""))
    local = [f"{what} {path!r}" for what, path in paths
             if path and not st.is_remote(path) and (os.path.isabs(path) or os.path.exists(path))]
    if len(nodes) > 1 and local:
        raise ClusterError(f"the cluster has {len(nodes)} nodes but {' and '.join(local)} is a local path that "
                           "other nodes cannot see; use s3:// (or a shared mount with --allow-local-paths)")


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


def launch(spec: RunSpec, args: ScalingArgs, *, progress: bool = True, verbose: bool = False,
           inject_fault: dict[str, Any] | None = None, train_callbacks: list[Any] | None = None,
           data: SharedData | None = None) -> TrainState:
    """Train ``spec`` with Ray Train; returns the best-epoch state reported by rank 0.

    ``train_callbacks`` go to Ray Train's ``RunConfig`` (a Tune trial passes ``TuneReportCallback``).
    ``data``: the dataset already in the object store (a Tune sweep's, :mod:`raymmrec.ray.shared`): it
    is not read again; otherwise one task reads it.
    """
    import ray

    absolute_data_paths(spec)
    config = resolved_config(spec)  # bad methods and options fail here, before Ray starts
    # train.shard=columns with a method that cannot: one line, before Ray starts
    resolve_mode(spec.train.shard, spec.method, spec.objective, args.num_workers)
    if spec.train.checkpoint_every == 0:
        raise ValueError("train.checkpoint_every: expected an integer >= 1 under Ray (metrics reach Ray with "
                         "each checkpoint); 0 (never) applies to single-process runs")
    storage = args.storage_path or spec.output_dir
    if not st.is_remote(storage):  # workers run in their own directories: hand them an absolute path
        storage = os.path.abspath(storage.removeprefix("file://"))
    name = spec.resolved_run_name
    st.check_writable(storage)
    run_root = st.join(storage, name)
    fs, root = st.filesystem(run_root)
    if fs.exists(f"{root}/{CONFIG}"):  # resuming: values from the method's defaults stay as recorded
        spec = adopt_recorded(spec, json.loads(fs.cat_file(f"{root}/{CONFIG}")))
        config = resolved_config(spec)
    check_previous_run(run_root, config)
    say = (lambda msg: print(f"[raymmrec] {msg}", flush=True)) if progress else (lambda msg: None)
    if not ray.is_initialized():  # Ray's own processes' output (noise) reaches us only with --verbose
        ray.init(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING)
    lines = DriverLines()  # our task's and rank 0's lines come on a channel of their own (raymmrec.ray.logs)
    try:
        return _launch_on_ray(spec, args, config, storage, name, run_root, lines, say, progress=progress,
                              verbose=verbose, inject_fault=inject_fault, train_callbacks=train_callbacks,
                              data=data)
    finally:
        lines.close()


def _launch_on_ray(spec: RunSpec, args: ScalingArgs, config: dict[str, Any], storage: str, name: str,
                   run_root: str, lines: DriverLines, say: Any, *, progress: bool, verbose: bool,
                   inject_fault: dict[str, Any] | None, train_callbacks: list[Any] | None,
                   data: SharedData | None) -> TrainState:
    import ray.train
    from ray.train.torch import TorchTrainer

    # The dataset is read and checked and the prepared inputs built once, by a task on the cluster
    # (a bad dataset: its one-line error, before any worker starts); the workers map the arrays from
    # the object store without copying (raymmrec.ray.shared).
    shared = share(spec, lines.queue, data=data)
    say(f"{shared.summary} (checked and prepared on the cluster in {shared.seconds:.1f}s)")
    if not args.allow_local_paths:
        _local_paths_on_cluster(storage, spec)
    cpus = args.cpus_per_worker or default_cpus_per_worker(args.num_workers)
    _cluster_check(args, cpus)
    threads = torch_threads(args.num_workers, cpus)
    storage_path, storage_fs = st.pyarrow_filesystem(storage)
    remote = st.is_remote(storage)
    write_json(st.join(run_root, CONFIG), config)
    fs, root = st.filesystem(run_root)
    if fs.exists(f"{root}/{DIVERGED}"):
        fs.rm(f"{root}/{DIVERGED}")
    every = spec.train.checkpoint_every if spec.train.checkpoint_every is not None else RAY_CHECKPOINT_EVERY
    loop_config: dict[str, Any] = {
        "shard": resolve_mode(spec.train.shard, spec.method, spec.objective, args.num_workers),
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
        scaling_config=ray.train.ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
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
    metrics = result.metrics or {}
    if fs.exists(f"{root}/{DIVERGED}"):
        raise TrainingDiverged(json.loads(fs.cat_file(f"{root}/{DIVERGED}"))["error"])
    state = state_from_metrics(metrics)
    notes = run_notes(spec)
    write_json(st.join(run_root, RESULTS), results_dict(state, notes))
    if progress:
        print(results_table(state, spec.eval.ks, notes), flush=True)
        print(f"[raymmrec] run folder: {run_root}", flush=True)
    return state


def check_previous_run(run_root: str, config: dict[str, Any]) -> None:
    """Refuse a run folder that holds another experiment (resolved configs differ) or a run of the
    single-process path (its ``ckpt/latest.pt`` is not a Ray checkpoint: resuming would restart it)."""
    fs, root = st.filesystem(run_root)
    if fs.exists(f"{root}/ckpt/latest.pt"):
        raise ValueError(f"run folder {run_root} holds a single-process run (ckpt/latest.pt); resume it with "
                         "`raymmrec train` or choose another --run-name")
    if fs.exists(f"{root}/{CONFIG}"):
        check_same_run(json.loads(fs.cat_file(f"{root}/{CONFIG}")), config, f"run folder {run_root}")


def _train_fn():  # noqa: ANN202 - imported lazily so the driver does not need the worker deps
    from raymmrec.ray.train_fn import train_loop_per_worker

    return train_loop_per_worker


def state_from_metrics(m: dict[str, Any]) -> TrainState:
    """Rebuild the best-epoch summary from rank 0's last reported metrics.

    The best epoch's cold-start metrics (``best_cold/...``) become that epoch's one ``history``
    entry, where :func:`~raymmrec.train.artifacts.best_extras` reads them.
    """
    extras = {key.removeprefix("best_"): v for key, v in m.items() if key.split("/")[0] in
              {f"best_{split}" for split in COLD_SPLITS}}
    return TrainState(
        history=[{"epoch": int(m.get("best_epoch", -1)), **extras}] if extras else [],
        epoch=int(m.get("epochs_run", 0)), best_score=float(m.get("best_score", float("nan"))),
        best_epoch=int(m.get("best_epoch", -1)), stopped_early=bool(m.get("stopped_early", False)),
        resumes=list(m.get("resumed_at", [])),
        best_valid={k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("best_valid/")},
        best_test={k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("best_test/")},
    )


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--shard", choices=("auto", "columns", "none"), default=None,
                   help="how workers split the model (train.shard): columns (each holds a block of every "
                        "table's columns), none (data-parallel, each holds everything), auto (columns where "
                        "the method supports it; the default)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPU resource per worker")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    p.add_argument("--storage-path", default=None, help="local folder or s3:// URL for checkpoints and logs")
    p.add_argument("--wait-for-resources", action="store_true",
                   help="don't fail fast when the cluster is too small (autoscaling clusters)")
    p.add_argument("--allow-local-paths", action="store_true",
                   help="allow local storage/data paths on a multi-node cluster (a shared mount on every node)")


def main(default_method: str | None = None, argv: list[str] | None = None) -> int:
    """Entry point of ``jobs/train.py`` (``--method X``) and the ``jobs/train_<method>.py`` scripts."""
    what = default_method or "a registered method (--method)"
    p = argparse.ArgumentParser(description=f"Train {what} with Ray Train (column-sharded or data-parallel workers).")
    add_run_arguments(p, default_method=default_method)
    add_scaling_arguments(p)
    p.add_argument("--smoke-test", action="store_true", help="2 epochs on synthetic:tiny (checks the setup)")
    a = p.parse_args(argv)
    if a.method is None:
        p.error("--method is required (see `raymmrec methods`)")
    if a.device is not None:
        p.error("--device applies to single-process runs (raymmrec train); with Ray use --use-gpu")
    if a.smoke_test:
        a.data = a.data or "synthetic:tiny"
        a.epochs = a.epochs or 2

    if a.shard is not None:
        a.overrides.append(f"train.shard={a.shard}")

    def go() -> int:
        spec = spec_from_args(a)
        scaling = ScalingArgs(a.num_workers, a.use_gpu, a.cpus_per_worker, a.max_failures, a.storage_path,
                              a.wait_for_resources, a.allow_local_paths)
        state = launch(spec, scaling, progress=not a.no_progress, verbose=a.verbose)
        if a.no_progress:  # launch() already printed the table otherwise
            print(results_table(state, spec.eval.ks, run_notes(spec)), flush=True)
        return 0

    return run_main(go, verbose=a.verbose)
