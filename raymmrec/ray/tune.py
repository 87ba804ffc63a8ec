"""Hyperparameter sweeps with Ray Tune: a method's search space, trials across the cluster, a
winner selected on validation, and what a user reads afterwards.

``sweep(spec, SweepArgs(grid="paper"))`` runs the method's space (``raymmrec.search``) through a
``ray.tune.Tuner`` over a *function* trainable (the current API; no ``Tuner(trainer)``):

* a trial with one worker trains in its Tune actor with the core runner
  (:func:`raymmrec.train.run.run`), reporting every epoch with ``ray.tune.report``;
* a trial with several workers builds a ``TorchTrainer`` (:func:`raymmrec.ray.launch.launch`) whose
  rank-0 reports reach Tune through ``TuneReportCallback``.

Either way the trial's run folder is ``<output_dir>/<sweep>/<trial>/`` (``--output-dir``: local or ``s3://``) and holds what a training run
leaves (``config.json``, ``best.pt``, ``results.json``, ``tb/``), so ``raymmrec evaluate --run`` works
on any trial. The sweep folder gets ``trials.csv`` / ``trials.md`` (every trial), ``best_config.yaml``
(accepted by ``raymmrec train --config``), ``best/`` (the winner's weights), ``plots/*.png`` and
``summary.json``. Rerunning the same command restores the sweep (``Tuner.restore``): finished trials
are kept; unfinished ones resume from their run folder's checkpoint on local or shared storage, and
start again on s3 (a one-process trial trains in its actor's folder and uploads its run at the end).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from raymmrec.config import ConfigError, RunSpec, spec_from_dict
from raymmrec.errors import UserError
from raymmrec.eval.cold import COLD_SPLITS
from raymmrec.ray import storage as st
from raymmrec.ray.launch import absolute_data_paths, torch_threads
from raymmrec.ray.shared import SharedData, fetch, share
from raymmrec.search import (Choice, Grid, IntRange, LogUniform, Space, Uniform, apply_point, check_space,
                             grid_size, is_grid, search_space, short_name)
from raymmrec.train.artifacts import BEST, CONFIG, RESULTS, report_metrics
from raymmrec.files import read_bytes, write_bytes, write_json
from raymmrec.train.loop import TrainState

__all__ = ["SweepArgs", "SweepResult", "sweep", "trials_table"]

SUMMARY, TRIALS_CSV, TRIALS_MD, BEST_YAML, SWEEP_JSON = (
    "summary.json", "trials.csv", "trials.md", "best_config.yaml", "sweep.json")
TEST_SELECTION_LABEL = "selected on TEST (MMRec's protocol: leaks the test split into model selection)"


class SweepInterrupted(UserError, RuntimeError):
    """The sweep stopped before every trial ended; rerunning the same command resumes it."""


@dataclass
class SweepArgs:
    grid: str = "paper"  # paper (the authors' grid) | wide (random space)
    samples: int | None = None  # paper: repetitions of the grid (1); wide: number of trials (16)
    max_concurrent: int | None = None  # trials at once (default: what the cluster's CPUs or GPUs allow)
    cpus_per_trial: float | None = None  # default: the cluster's CPUs shared by the concurrent trials
    gpus_per_trial: float | None = None  # with the device cuda: a trial's share of a GPU (default 1)
    workers_per_trial: int = 1  # > 1: each trial is a Ray Train run (column-sharded unless train.shard says otherwise)
    scheduler: str | None = None  # asha | fifo (default: asha for wide, fifo for paper)
    select: str = "valid"  # valid | test (MMRec's protocol, labelled as such everywhere)
    name: str | None = None  # sweep folder name (default: sweep-<method>-<data>-<grid>)
    top_curves: int = 5  # learning curves plotted for the best N trials
    progress: bool = True


@dataclass
class SweepResult:
    root: str  # the sweep folder (local path or URL)
    best: dict[str, Any]  # the winner's row of the trials table
    rows: list[dict[str, Any]]  # every trial
    wall_s: float
    selected_by: str


def _tune_domain(dom: Any) -> Any:
    from ray import tune

    if isinstance(dom, Grid):
        return tune.grid_search(list(dom.values))
    if isinstance(dom, Choice):
        return tune.choice(list(dom.values))
    if isinstance(dom, Uniform):
        return tune.uniform(dom.low, dom.high)
    if isinstance(dom, LogUniform):
        return tune.loguniform(dom.low, dom.high)
    if isinstance(dom, IntRange):
        return tune.randint(dom.low, dom.high + 1)
    raise TypeError(f"unknown search domain {dom!r}")


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_label(config: dict[str, Any]) -> str:
    """``n_layers=1,dropout=0.3,reg_weight=0.1``: what a trial's name says about its config."""
    return ",".join(f"{short_name(k)}={_fmt(v)}" for k, v in sorted(config.items()))


def run_folder_name(trial_id: str, config: dict[str, Any]) -> str:
    """A trial's folder: its id and config. The run folder always has this name; Tune's own files
    go there too, except after a restore of a trial that had started but was not yet recorded in
    Tune's experiment state, which Tune logs to a suffixed copy while the run resumes here."""
    return f"{trial_id}_{trial_label(config)}"[:120].replace("/", "_")


def _trial_dirname(trial: Any) -> str:
    return run_folder_name(trial.trial_id, trial.config)


def _metric_key(select: str, metric: str) -> str:
    return f"best_{select}/{metric}"


def _one_process_trial(config: dict[str, Any], base: dict[str, Any], data: SharedData, threads: int,
                       run_root: str) -> None:
    """(Tune trial) train one configuration in this actor; the run folder is ``<run_root>/<trial dir>``.

    ``data``: the sweep's dataset in the object store, mapped here without copying."""
    import ray
    import torch
    from ray import tune

    from raymmrec.train.callbacks import ReportCallback
    from raymmrec.train.run import run

    trial_name = run_folder_name(tune.get_context().get_trial_id(), config)
    spec = apply_point(spec_from_dict(base), config)
    remote = st.is_remote(run_root)
    if remote:  # train in the actor's working directory; upload the run folder at the end
        spec.output_dir = os.path.abspath("raymmrec-runs")
    else:
        spec.output_dir = run_root
    spec.run_name = trial_name
    if not ray.get_gpu_ids():  # a trial given no GPU must not take one that another trial holds
        spec.train.device = "cpu"
    torch.set_num_threads(threads)

    if _report_finished(st.join(run_root, trial_name)):
        return
    loaded, _ = fetch(data)
    try:
        run(spec, progress=False, extra_callbacks=[ReportCallback(tune.report, evaluated_only=True)], data=loaded)
    finally:  # also when ASHA stops the trial (Tune ends it from inside tune.report)
        if remote:  # results.json last: it marks a finished upload (_report_finished)
            st.upload_dir(os.path.join(spec.output_dir, trial_name), st.join(run_root, trial_name), last=RESULTS)


def _ray_train_trial(config: dict[str, Any], base: dict[str, Any], data: SharedData, run_root: str,
                     scaling: dict[str, Any]) -> None:
    """(Tune trial) one configuration as a Ray Train run, reporting to Tune; its workers map the sweep's
    dataset (``data``) from the object store (only the trial's prepared inputs are built for it)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raymmrec.ray.launch import Workers, launch

    spec = apply_point(spec_from_dict(base), config)
    spec.run_name = run_folder_name(tune.get_context().get_trial_id(), config)
    spec.output_dir = run_root
    spec.train.device = "cuda" if scaling["gpus"] else "cpu"
    if _report_finished(st.join(run_root, spec.run_name)):
        return
    workers = Workers(num_workers=scaling["num_workers"], cpus_per_worker=scaling["cpus_per_worker"],
                      wait_for_resources=True, allow_local_paths=True)
    launch(spec, workers, progress=False, train_callbacks=[TuneReportCallback()], data=data)


def _report_finished(run_folder: str) -> bool:
    """Report a trial whose run already finished (``results.json`` is written last) and return True.

    Tune snapshots its experiment state every few seconds, so after a killed driver it may start
    again a trial that had finished in the last seconds; that trial reports its recorded result
    instead of training (its files are left as they are).
    """
    from ray import tune

    try:
        res = json.loads(read_bytes(st.join(run_folder, RESULTS)))
    except FileNotFoundError:
        return False
    # the recorded cold-start metrics (a dict; a note is a string) as the best epoch's history entry
    extras = {f"{split}/{k}": v for split in COLD_SPLITS if isinstance(res.get(split), dict) for k, v in res[split].items()}
    state = TrainState(epoch=res["epochs_run"], best_epoch=res["best_epoch"], stopped_early=res["stopped_early"],
                       resumes=list(res.get("resumed_at", [])), best_valid=res["valid"], best_test=res["test"],
                       history=[{"epoch": res["best_epoch"], **extras}])
    tune.report(report_metrics(state, {"epoch": res["epochs_run"] - 1, "recorded": 1.0}))
    return True


class _Progress:
    """Tune callback: one line whenever the sweep's state changes (done / running / pending, best so far).

    A restored sweep runs the callback pickled with the first run's Tuner. Tune calls ``setup`` at
    the start of every run, restored or not: there it takes the settings of the callback built last
    in this process (this run's) and starts its clock and counts afresh.
    """

    settings: tuple[Any, ...] | None = None  # (total, key, label, enabled) of the callback built last

    def __new__(cls, *a: Any, **k: Any) -> Any:  # built on ray.tune.Callback, imported lazily
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self, total: int, key: str, label: str, enabled: bool) -> None:
                self.total, self.key, self.label, self.enabled = total, key, label, enabled
                self._start()

            def _start(self) -> None:
                self.best: tuple[float, str] | None = None
                self.t0 = time.perf_counter()
                self.last_counts = ""
                self.last_line = ""
                self.last_time = -math.inf

            def setup(self, **info: Any) -> None:
                # imported here: a restored (unpickled) callback's own globals are the first run's copies
                from raymmrec.ray.tune import _Progress as current

                if current.settings is not None:
                    self.total, self.key, self.label, self.enabled = current.settings
                self._start()

            def _say(self, trials: list[Any]) -> None:
                """A line when a trial starts or ends; a better best alone is shown at most every 30 s."""
                if not self.enabled:
                    return
                states = [t.status for t in trials]
                done = sum(s in ("TERMINATED", "ERROR") for s in states)
                running = states.count("RUNNING")
                pending = max(0, self.total - done - running)
                counts = f"{done}/{self.total} done, {running} running, {pending} pending"
                line = counts + (f"; best {self.label} {self.best[0]:.4f} ({self.best[1]})" if self.best else "")
                now = time.perf_counter()
                if line != self.last_line and (counts != self.last_counts or now - self.last_time >= 30):
                    self.last_counts, self.last_line, self.last_time = counts, line, now
                    print(f"[sweep {now - self.t0:6.0f}s] {line}", flush=True)

            def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
                value = result.get(self.key)
                if value is not None and math.isfinite(value) and (self.best is None or value > self.best[0]):
                    self.best = (float(value), trial_label(trial.config))
                self._say(trials)

            def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                self._say(trials)

            def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                self._say(trials)

            def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                self._say(trials)

        progress = Progress(*a, **k)
        cls.settings = (progress.total, progress.key, progress.label, progress.enabled)
        return progress


def _cluster_cpus_gpus() -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))


def _resources(args: SweepArgs, n_trials: int, device: str) -> tuple[dict[str, float], int, int]:
    """(per-trial resources, max concurrent trials, torch threads per trial); sets ``args.gpus_per_trial``
    (``device``: the spec's ``train.device``)."""
    from raymmrec.ray.devices import device_and_gpus

    cpus, gpus = _cluster_cpus_gpus()
    _, args.gpus_per_trial = device_and_gpus(device, args.gpus_per_trial, gpus, "trial")
    if args.workers_per_trial > 1:  # the trial's driver function only waits; its workers hold the resources
        concurrent = args.max_concurrent or 1
        return {"cpu": 0.01}, concurrent, 1
    if args.max_concurrent:
        concurrent = args.max_concurrent
    elif args.gpus_per_trial > 0:
        concurrent = max(1, int(gpus / args.gpus_per_trial)) if gpus else 1
    else:
        concurrent = max(1, int(cpus // (args.cpus_per_trial or 1)))
    concurrent = min(concurrent, n_trials)
    if args.cpus_per_trial:
        cpu = args.cpus_per_trial
    elif args.gpus_per_trial > 0:  # GPU trials: a CPU each, so that any GPU node (or an autoscaled one) fits them
        cpu = 1.0
    else:
        cpu = max(0.25, math.floor(cpus / concurrent * 4) / 4)
    res = {"cpu": cpu}
    if args.gpus_per_trial > 0:
        res["gpu"] = args.gpus_per_trial
    return res, concurrent, torch_threads(concurrent, cpu)


def _check_args(args: SweepArgs) -> None:
    if args.select not in ("valid", "test"):
        raise ConfigError(f"select: expected valid or test, got {args.select!r}")
    if args.scheduler not in (None, "asha", "fifo"):
        raise ConfigError(f"scheduler: expected asha or fifo, got {args.scheduler!r}")
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"samples: expected an integer >= 1, got {args.samples}")
    if args.workers_per_trial < 1:
        raise ConfigError(f"workers_per_trial: expected an integer >= 1, got {args.workers_per_trial}")


def default_name(spec: RunSpec, grid: str) -> str:
    src = os.path.basename(spec.data.source.rstrip("/")).replace(":", "-") or "data"
    return f"sweep-{spec.method}-{src}-{grid}"


def sweep(spec: RunSpec, args: SweepArgs, *, space: Space | None = None) -> SweepResult:
    """Run ``spec.method``'s ``args.grid`` space (or ``space``) through Ray Tune; see the module doc."""
    import ray
    from ray import tune

    from raymmrec.train.build import resolved_config

    _check_args(args)
    absolute_data_paths(spec)  # trials run in their own directories (data.source and data.forget)
    space = space if space is not None else search_space(spec.method, args.grid)
    check_space(spec, space)
    searched_data = sorted(k for k in space if k.startswith("data."))
    if searched_data:  # every trial maps the one dataset the sweep read
        raise ConfigError(f"search space: {', '.join(searched_data)}: a sweep reads its dataset once and shares it "
                          "with every trial; sweep data options as separate sweeps (one per value)")
    resolved_config(spec)  # a bad base config fails here, before Ray starts
    grid_only = is_grid(space)
    samples = args.samples or (1 if grid_only else 16)
    if grid_only and samples > 1:  # repetitions of a grid differ by seed (as MMRec's seed list does)
        space = {**space, "train.seed": Grid(tuple(spec.train.seed + i for i in range(samples)))}
        samples = 1
    n_trials = grid_size(space) * samples
    scheduler_name = args.scheduler or ("fifo" if grid_only else "asha")
    metric = spec.eval.valid_metric
    key = _metric_key(args.select, metric)
    storage = spec.output_dir
    if not st.is_remote(storage):
        storage = os.path.abspath(storage.removeprefix("file://"))
    name = args.name or default_name(spec, args.grid)
    root = st.join(storage, name)
    st.check_writable(storage)
    # what makes two sweeps the same experiment (where run folders go and their names do not)
    identity = {"base": {k: v for k, v in spec.to_dict().items() if k not in ("output_dir", "run_name")}, "space": {k: repr(v) for k, v in space.items()}, "samples": samples,
                "scheduler": scheduler_name, "workers_per_trial": args.workers_per_trial}
    _check_same_sweep(root, identity)
    say = (lambda msg: print(f"[raymmrec] {msg}", flush=True)) if args.progress else (lambda msg: None)
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=False)
    # snapshot Tune's experiment state every 2 s (default 10): fewer finished trials restarted after a kill
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # a Ray Train trial's first reports may precede its first evaluation (no selection metric yet)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if args.progress:  # our progress lines replace Tune's status tables and banners
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    resources, concurrent, threads = _resources(args, n_trials, spec.train.device)
    spec.train.device = "cuda" if args.gpus_per_trial > 0 else "cpu"
    base = spec.to_dict()
    # the dataset is read and checked once for the whole sweep (a bad one: its one-line error), and
    # every trial maps the same arrays from the object store (raymmrec.ray.shared)
    data = share(spec, prepare=False)
    say(f"{data.summary} (read and checked once for the sweep's {n_trials} trials in {data.seconds:.1f}s); "
        f"{concurrent} trials at a time, {resources} each")
    if args.workers_per_trial > 1:
        scaling = {"num_workers": args.workers_per_trial, "gpus": args.gpus_per_trial > 0,
                   "cpus_per_worker": args.cpus_per_trial}
        trainable = tune.with_parameters(_ray_train_trial, base=base, data=data, run_root=root, scaling=scaling)
    else:
        trainable = tune.with_parameters(_one_process_trial, base=base, data=data, threads=threads, run_root=root)
    trainable = tune.with_resources(trainable, resources)
    label = f"{args.select} {metric}"
    progress = _Progress(n_trials, key, label + (" [test selection]" if args.select == "test" else ""),
                         args.progress)
    storage_path, storage_fs = st.pyarrow_filesystem(storage)
    param_space = {k: _tune_domain(d) for k, d in space.items()}
    t_start = time.perf_counter()
    experiment = st.join(storage_path, name)  # the sweep folder as Tune addresses it (no scheme)
    if tune.Tuner.can_restore(experiment, storage_filesystem=storage_fs):
        say(f"restoring sweep {root}: finished trials are kept")
        # the restored Tuner runs the first run's (pickled) progress callback: its setup() adopts this run's
        tuner = tune.Tuner.restore(experiment, trainable,
                                   resume_unfinished=True, resume_errored=True, param_space=param_space,
                                   storage_filesystem=storage_fs)
    else:
        write_json(st.join(root, SWEEP_JSON), identity)
        scheduler = None
        if scheduler_name == "asha":
            from ray.tune.schedulers import ASHAScheduler

            # rungs in epochs (not reports: a Ray Train trial reports every checkpoint_every epochs);
            # trials that reach the last epoch end by themselves and write their results
            scheduler = ASHAScheduler(time_attr="epochs_run", max_t=spec.train.epochs,
                                      grace_period=min(10, spec.train.epochs), reduction_factor=3,
                                      stop_last_trials=False)
        from ray.tune.search import BasicVariantGenerator

        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=key, mode="max", num_samples=samples,
                # random points drawn from the run's seed: the same command samples the same sweep. The
                # generator holds the concurrency limit: Tune ignores max_concurrent_trials with a generator
                # (it warned so, and ran every trial the cluster could place: on an autoscaling cluster,
                # a node for each)
                search_alg=BasicVariantGenerator(random_state=spec.train.seed, max_concurrent=concurrent),
                scheduler=scheduler,
                # a finished trial's actor runs the next trial: no new process importing torch and
                # raymmrec per trial (all trials of a sweep ask for the same resources)
                reuse_actors=True,
                trial_name_creator=lambda t: trial_label(t.config),
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                      verbose=0, callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
    grid = tuner.fit()
    wall = time.perf_counter() - t_start
    done = grid.num_terminated + grid.num_errors
    if done < n_trials:  # Ctrl-C (Tune stops gracefully and returns) or a lost driver connection
        raise SweepInterrupted(f"sweep {root} stopped with {done} of {n_trials} trials done and no winner chosen; "
                               "rerun the same command to resume it")
    rows, curves = _collect(grid, space, metric, spec.eval.ks, spec.train.epochs)
    ok = [r for r in rows if r["status"] != "error" and r.get(f"{args.select} {metric}") is not None]
    if not ok:
        first = next((r.get("error") for r in rows if r.get("error")), "no trial reported a result")
        raise UserError(f"sweep {root}: every trial failed; the first error: {first}")
    failed = len(rows) - len(ok)
    if failed:
        say(f"{failed} of {len(rows)} trials failed (status 'error' in trials.csv); the winner is chosen among the rest")
    result = _write_outputs(root, spec, space, rows, curves, args, key, metric, wall, scheduler_name)
    if args.progress:
        say(f"{len(rows)} trials in {wall / 60:.1f} min; winner ({result.selected_by}): {result.best['trial']}")
        print(trials_table(rows, space, metric, args.select, limit=10), flush=True)
        say(f"sweep folder: {root}")
    return result


def _check_same_sweep(root: str, identity: dict[str, Any]) -> None:
    """Refuse to restore a sweep folder that holds another sweep (different base config or space)."""
    fs, path = st.filesystem(root)
    if not fs.exists(f"{path}/{SWEEP_JSON}"):
        return
    old = json.loads(fs.cat_file(f"{path}/{SWEEP_JSON}"))
    if isinstance(old.get("base"), dict):  # fill options added to raymmrec since with their defaults
        try:
            filled = spec_from_dict(old["base"]).to_dict()
            old["base"] = {k: v for k, v in filled.items() if k not in ("output_dir", "run_name")}
        except ConfigError:
            pass  # an option was removed or renamed: the comparison below reports the difference
    diffs = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diffs:
        raise UserError(f"sweep folder {root} holds a different sweep (differs in {', '.join(diffs)}); "
                        "choose another --name or remove the folder")


def _status(m: dict[str, Any], epochs: int, error: Any) -> str:
    if error is not None:
        return "error"
    if m.get("stopped_early") or int(m.get("epochs_run", 0)) >= epochs:
        return "finished"
    return "stopped (ASHA)"


def _collect(grid: Any, space: Space, metric: str, ks: list[int], epochs: int) -> tuple[list[dict], dict[str, Any]]:
    """One row per trial (config, status, metrics at its best validation epoch) and learning curves."""
    rows, curves = [], {}
    for r in grid:
        m = r.metrics or {}
        config = r.config or {}
        trial_id = m.get("trial_id") or "_".join(os.path.basename(str(r.path).rstrip("/")).split("_")[:2])
        row: dict[str, Any] = {"trial": trial_label(config), "dir": run_folder_name(trial_id, config)}
        row.update({short_name(k): config.get(k) for k in space})
        row["status"] = _status(m, epochs, r.error)
        if r.error is not None:
            row["error"] = " ".join(str(r.error).split())[-300:]
        row["best_epoch"] = m.get("best_epoch")
        row["epochs_run"] = m.get("epochs_run")
        for split in ("valid", "test"):  # every metric at every cut-off, e.g. "valid recall@20"
            row.update({f"{split} {k.split('/', 1)[1]}": v for k, v in m.items() if k.startswith(f"best_{split}/")})
        row["minutes"] = round(float(m.get("time_total_s", float("nan"))) / 60, 2)
        rows.append(row)
        df = r.metrics_dataframe
        col = f"valid/{metric}"
        if df is not None and col in df.columns and "epoch" in df.columns:
            curves[row["dir"]] = df[["epoch", col]].dropna().to_numpy().tolist()
    return rows, curves


def _sort_key(select: str, metric: str):  # noqa: ANN202
    """Best first by ``<select> <metric>``; ties broken by the other metric at the same cut-off,
    then by trial directory (creation order), so the winner does not depend on completion order."""
    name, _, k = metric.partition("@")
    other = f"{select} {'ndcg' if name == 'recall' else 'recall'}@{k}"

    def value(v: Any) -> float:
        return -float(v) if v is not None and math.isfinite(float(v)) else math.inf

    def key(row: dict[str, Any]) -> tuple[float, float, str]:
        return value(row.get(f"{select} {metric}")), value(row.get(other)), str(row.get("dir", ""))
    return key


def trials_table(rows: list[dict[str, Any]], space: Space, metric: str, select: str, limit: int | None = None,
                 markdown: bool = False) -> str:
    """Every trial (or the best ``limit``), best first by ``<select> <metric>``."""
    ordered = sorted(rows, key=_sort_key(select, metric))[:limit]
    cols = ["#", *[short_name(k) for k in space], "status", "best_epoch",
            f"valid {metric}", f"test {metric}"]
    k = metric.split("@")[1]
    other = "ndcg" if metric.startswith("recall") else "recall"
    cols += [f"valid {other}@{k}", f"test {other}@{k}", "minutes"]

    def cell(row: dict[str, Any], c: str, i: int) -> str:
        if c == "#":
            return str(i + 1)
        v = row.get(c)
        if isinstance(v, float):
            return f"{v:.4f}" if c != "minutes" and not c.startswith(tuple(short_name(s) for s in space)) else _fmt(v)
        return "" if v is None else str(v)

    table = [[cell(r, c, i) for c in cols] for i, r in enumerate(ordered)]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[j]) for r in table)) for j, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in table]
    return "\n".join(lines)


def _write_outputs(root: str, spec: RunSpec, space: Space, rows: list[dict[str, Any]], curves: dict[str, Any],
                   args: SweepArgs, key: str, metric: str, wall: float, scheduler: str) -> SweepResult:
    import pandas as pd

    from raymmrec.plots import plot_curves, plot_metric_vs_params

    ranked = sorted(rows, key=_sort_key(args.select, metric))
    best = next(r for r in ranked if r["status"] != "error")  # sweep() made sure one exists
    selected_by = f"{args.select} {metric}" if args.select == "valid" else f"{metric} {TEST_SELECTION_LABEL}"
    previous = 0.0
    try:  # a restored sweep: add the earlier invocations' time
        old = json.loads(read_bytes(st.join(root, SUMMARY)))
        previous = float(old.get("wall_s_total", old.get("wall_s", 0.0)))
    except (FileNotFoundError, ValueError):
        pass
    total = previous + wall
    frame = pd.DataFrame(ranked)
    frame["selected_by"] = selected_by  # every row says how the winner (row 1) was chosen
    write_bytes(st.join(root, TRIALS_CSV), frame.to_csv(index=False).encode())
    md = (f"# Sweep {os.path.basename(root)}: {spec.method} on {spec.data.source}\n\n"
          f"{len(rows)} trials, {scheduler} scheduling, {total / 60:.1f} min of sweep time; "
          f"winner selected by {selected_by}.\n\n"
          + trials_table(rows, space, metric, args.select, markdown=True) + "\n")
    write_bytes(st.join(root, TRIALS_MD), md.encode())
    point = {k: best[short_name(k)] for k in space}
    best_spec = apply_point(spec, point)
    best_spec.run_name = None
    header = (f"# best configuration of sweep {os.path.basename(root)} ({spec.method}), selected by {selected_by}\n"
              f"# valid {metric} {best.get('valid ' + metric)}, test {metric} {best.get('test ' + metric)}\n"
              f"# train it: raymmrec train --config best_config.yaml\n")
    write_bytes(st.join(root, BEST_YAML), (header + yaml.safe_dump(best_spec.to_dict(), sort_keys=False)).encode())
    for fname in (BEST, CONFIG, RESULTS):  # the winner's weights, loadable with --run <sweep>/best
        target = st.join(root, "best", fname)
        try:
            write_bytes(target, read_bytes(st.join(root, best["dir"], fname)))
        except FileNotFoundError:  # e.g. no results.json for a trial ASHA stopped: drop an older winner's
            fs, path = st.filesystem(target)
            if fs.exists(path):
                fs.rm(path)
    title = f"{spec.method} on {os.path.basename(spec.data.source.rstrip('/'))}"
    if args.select == "test":
        title += " [selected on TEST]"
    for fname, png in (("metric_vs_params.png", plot_metric_vs_params(rows, space, metric, title)),
                       ("learning_curves.png", plot_curves(curves, ranked[:args.top_curves], metric, title))):
        if png is not None:
            write_bytes(st.join(root, "plots", fname), png)
    summary = {"method": spec.method, "data": spec.data.source, "grid": args.grid, "scheduler": scheduler,
               "trials": len(rows), "failed": sum(r["status"] == "error" for r in rows), "wall_s": round(wall, 1),
               "wall_s_total": round(total, 1), "selected_by": selected_by, "metric": metric,
               "best": best, "sweep_args": asdict(args)}
    write_json(st.join(root, SUMMARY), summary)
    return SweepResult(root, best, ranked, wall, selected_by)


# ---------------------------------------------------------------------------------------------
# command line: `raymmrec tune` and jobs/tune.py


def add_sweep_arguments(p: Any, *, grid_default: str = "paper") -> None:
    p.add_argument("--grid", default=grid_default, choices=["paper", "wide"],
                   help="paper: the authors' grid; wide: a random space searched with ASHA")
    p.add_argument("--samples", type=int, default=None,
                   help="paper: repetitions of the grid (1); wide: number of sampled trials (16)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: fits the cluster)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="CPU resource per trial (or per worker)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="with GPUs (--device cuda or auto on a GPU cluster): a trial's share of one GPU, e.g. "
                        "0.5 (default 1)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help=">1: each trial is a Ray Train run with this many workers (see --shard)")
    p.add_argument("--shard", choices=("auto", "columns", "none"), default=None,
                   help="with --workers-per-trial > 1: how a trial's workers split the model (train.shard)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default=None,
                   help="asha stops bad trials early (default for --grid wide); fifo runs every trial to the end")
    p.add_argument("--select", choices=["valid", "test"], default="valid",
                   help="pick the winner on validation (default) or on test as MMRec does (labelled as such)")


def sweep_args_from(a: Any) -> SweepArgs:
    return SweepArgs(grid=a.grid, samples=a.samples, max_concurrent=a.max_concurrent,
                     cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                     workers_per_trial=a.workers_per_trial, scheduler=a.scheduler, select=a.select,
                     name=getattr(a, "name", None),
                     progress=not getattr(a, "no_progress", False))


def tune_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``raymmrec tune`` and ``jobs/tune.py``: one method's search space through Ray Tune."""
    import argparse

    from raymmrec.args import add_run_arguments, spec_from_args
    from raymmrec.errors import run_main

    p = argparse.ArgumentParser(prog=prog, description="Sweep a method's hyperparameters with Ray Tune; the "
                                "winner is selected on validation and its config, weights, tables and plots "
                                "are written to the sweep folder.")
    add_run_arguments(p, default_method="bm3")
    add_sweep_arguments(p)
    p.add_argument("--name", default=None, help="sweep folder name; rerunning with the same name resumes it")
    a = p.parse_args(argv)
    if a.shard is not None:
        a.overrides.append(f"train.shard={a.shard}")
    if a.run_name is not None:
        p.error("--run-name names one run; a sweep names its trials itself (use --name for the sweep folder)")
    return run_main(lambda: (sweep(spec_from_args(a), sweep_args_from(a)), 0)[1], verbose=a.verbose)
