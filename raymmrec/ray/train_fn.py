"""What every Ray Train worker runs: the pieces of :func:`raymmrec.train.build.build`, under DDP.

Each worker maps the job's dataset (every split, the features) and the prepared inputs that the
driver's loading task left in the object store, without copying and without reading the source
(:mod:`raymmrec.ray.shared`), and runs the core :class:`~raymmrec.train.loop.Trainer`. Every epoch, the
pairs are shuffled by (seed, epoch) and rank ``r`` takes its interleaved share of each global
batch (:func:`raymmrec.train.sampling.epoch_batches`), so pairs move across workers every epoch
and one worker replays the single-process run exactly. Evaluation shards users and all-reduces
metric sums. Rank 0 alone writes TensorBoard and ``best.pt``; every rank writes its own blocks of the
checkpoint under the run folder (``<run>/ckpt``, the layout a run in one process writes too:
:mod:`raymmrec.train.checkpoint`), which is what a restarted worker group resumes from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from raymmrec.config import spec_from_dict
from raymmrec.dist import DistContext
from raymmrec.shard import Columns
from raymmrec.ray.logs import lines_to_driver, note_worker_log, worker_stdout
from raymmrec.ray.shared import fetch
from raymmrec.train.artifacts import DIVERGED, resume_best
from raymmrec.files import join, write_json
from raymmrec.train.build import build, make_trainer, sharded_evaluate
from raymmrec.train.callbacks import (BestWeightsCallback, CheckpointCallback, ProgressCallback, ReportCallback,
                                      TensorBoardCallback)
from raymmrec.train.checkpoint import CKPT, LATEST, restore
from raymmrec.train.loop import Callback, Trainer, TrainingDiverged, TrainState

# Rank 0's lines: the driver's stdout through its queue (raymmrec.ray.logs), else this process's
# real stdout. Not sys.stdout: Ray Train patches print() in workers to also log what goes there.
OUT = worker_stdout


class SyncedTensorBoard(TensorBoardCallback):
    """Rank-0 TensorBoard written locally; for remote storage, copied there at checkpoints and at the end,
    the local folder (a temporary one) then removed."""

    def __init__(self, local_dir: str, remote_dir: str | None, *, temporary: bool = False) -> None:
        super().__init__(local_dir)
        self.remote_dir = remote_dir
        self.temporary = temporary  # local_dir is a staging folder of ours, removed after the last copy

    def sync(self) -> None:
        if self.remote_dir and self.writer is not None:
            from raymmrec.ray.storage import upload_dir

            self.writer.flush()
            upload_dir(self.logdir, self.remote_dir)

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        self.sync()
        super().on_fit_end(trainer, state)
        if self.temporary:
            shutil.rmtree(self.logdir, ignore_errors=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker; ``config = {"spec": RunSpec.to_dict(), ...}``.

    Rank 0's lines (``OUT``) go to the driver's queue ``config["lines"]``; the data warnings reach the
    driver from the loading task, Ray's own output stays in the worker's log (raymmrec.ray.logs). An
    error leaves with that log's location, for the driver's one line.
    """
    rank = ray.train.get_context().get_world_rank()
    with lines_to_driver(config.get("lines") if rank == 0 else None, redirect=False):
        try:
            _train_loop(config)
        except Exception as e:
            note_worker_log(e)
            raise


def _train_loop(config: dict[str, Any]) -> None:
    spec = spec_from_dict(config["spec"])
    tctx = ray.train.get_context()
    rows = DistContext(tctx.get_world_rank(), tctx.get_world_size())  # evaluation: users split over ranks
    columns = config.get("shard") == "columns" and rows.distributed
    # column-sharded: every rank sees every batch and holds a block of every table's columns (raymmrec.shard)
    ctx = DistContext(columns=Columns(rows.rank, rows.world_size)) if columns else rows
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(int(config.get("threads", 1)))
    t0 = time.perf_counter()
    data, prepared = fetch(config["data"])  # read-only views of this node's object store: no copy, no read
    p = build(spec, device=device, data=data, prepared=prepared, ctx=ctx, release_features=True)
    state = None
    best_weights = None
    keeps_best = columns or rows.rank == 0  # column-sharded: every rank keeps its blocks of the best weights
    # every rank reads its own blocks of the run folder's checkpoint, written by any number of workers or
    # by one process; after a worker failure the restarted group resumes from it too
    resumed = restore(p, config["run_root"], join(config["run_root"], CKPT, LATEST))
    if resumed is not None:
        # the checkpoint alone sets every rank's state, early stopping included: the replay of the
        # epochs after it then decides as the killed run did (artifacts.resume_best)
        state, best_blocks = resumed
        if keeps_best:  # best.pt's writer (rank 0) puts it back to the checkpoint's best
            best_weights = resume_best(config["run_root"], state, best_blocks, p.model, p.config, rows.rank)
        del best_blocks
        if rows.rank == 0:
            print(f"[raymmrec] resuming from checkpoint at epoch {state.epoch}", file=OUT, flush=True)
    model: torch.nn.Module = p.model
    if ctx.distributed:  # DDP: gloo on CPU, NCCL on GPU; gradients written straight into the buckets
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    if rows.rank == 0:
        mode = "column-sharded" if columns else ("data-parallel" if rows.distributed else "one")
        print(f"[raymmrec] {p.summary}; {rows.world_size} worker(s) on {device} ({mode}); "
              f"setup {time.perf_counter() - t0:.1f}s", file=OUT, flush=True)
        for split, note in p.notes.items():
            print(f"[raymmrec] {split}: {note}", file=OUT, flush=True)
    callbacks: list[Callback] = []
    before_checkpoint: list = []
    best: BestWeightsCallback | None = None
    if rows.rank == 0:
        callbacks.append(ProgressCallback(spec.eval.valid_metric, enabled=config.get("progress", True), stream=OUT))
        local = config.get("tb_local_dir")
        tb = SyncedTensorBoard(local or tempfile.mkdtemp(prefix="raymmrec-tb-"), config.get("tb_remote_dir"),
                               temporary=local is None)
        callbacks.append(tb)
        before_checkpoint = [tb.sync]
    if keeps_best:
        best = BestWeightsCallback(config["run_root"], p.config, background=rows.rank == 0)
        best.resume(best_weights)
        callbacks.append(best)
    callbacks.append(CheckpointCallback(
        config["run_root"], p.config, every=config["checkpoint_every"], best=best, before=before_checkpoint,
        warn=lambda line: print(f"[raymmrec] warning: {line}", file=OUT, flush=True)))
    # Not every epoch: Ray Train V2's controller takes one report per worker every 2 s (its poll
    # interval) through a queue of one, so per-epoch reports of sub-second epochs stall training.
    # TensorBoard still gets every epoch; Ray (and Tune) see the metrics at each checkpoint, written to
    # the run folder (no Ray checkpoint is reported: a restarted worker group reads the run's own).
    callbacks.append(ReportCallback(ray.train.report, every=config["checkpoint_every"]))
    # testing hook: {"rank": r, "epoch": e, "marker": path}, {..., "error": msg} or {..., "pause": seconds}
    fault = config.get("inject_fault")
    if fault:
        callbacks.insert(0, _FaultInjector(rows.rank, **fault))
    trainer = make_trainer(p, sharded_evaluate(p.evaluators, rows, device, p.fixed_results), callbacks, model=model)
    try:
        trainer.fit(state)
    except TrainingDiverged as e:  # every rank raises at the same step; a retry would diverge again,
        if rows.rank == 0:  # so every rank returns normally and the driver reports the reason
            write_json(join(config["run_root"], DIVERGED), {"error": str(e)})


class _FaultInjector(Callback):
    """Kills this worker process once (tests of fault tolerance); a marker file makes it one-shot.
    With ``error``: raises ``RuntimeError(error)`` there instead, every time. With ``pause``: writes this
    worker's Ray node id to the marker and waits there up to ``pause`` seconds, for the test to take its
    node away (then exits as a killed worker would), once."""

    def __init__(self, my_rank: int, rank: int, epoch: int, marker: str = "", error: str | None = None,
                 pause: float | None = None) -> None:
        self.active = my_rank == rank
        self.epoch = epoch
        self.marker = Path(marker)
        self.error = error
        self.pause = pause

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        if self.active and state.epoch == self.epoch and self.error is not None:
            raise RuntimeError(self.error)
        if self.active and state.epoch == self.epoch and not self.marker.exists():
            if self.pause is not None:
                part = Path(f"{self.marker}.part")  # renamed: the test never reads half an id
                part.write_text(ray.get_runtime_context().get_node_id())
                part.rename(self.marker)
                time.sleep(self.pause)
            else:
                self.marker.write_text("killed")
            os._exit(1)
