"""What every Ray Train worker runs: the core :class:`~raymmrec.train.loop.Trainer`, wrapped in DDP.

Each worker loads the dataset's features and builds the full training graph itself (message
passing needs all of it), while the training pairs arrive as this worker's Ray Data shard.
Evaluation shards users across workers and all-reduces metric sums. Rank 0 alone writes
TensorBoard scalars and checkpoints; every rank calls ``ray.train.report`` (it is a barrier).

Determinism: an epoch's batch order, negatives and dropout are seeded by (seed, epoch, shard
content), not by rank, so a run restarted after a failure replays exactly the same steps even
if Ray Data hands the shards to the workers in another order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from raymmrec.config import spec_from_dict
from raymmrec.eval import Evaluator
from raymmrec.models.base import Batch, Recommender
from raymmrec.train.callbacks import ProgressCallback, TensorBoardCallback, checkpoint_payload
from raymmrec.train.checkpoint import load_checkpoint, save_checkpoint
from raymmrec.train.loop import Callback, EvalFn, Trainer, TrainState
from raymmrec.train.run import Setup, build_setup, check_same_run, restore
from raymmrec.train.sampling import dropout_seed, epoch_batches, epoch_generator

CKPT_FILE = "latest.pt"
# Ray Train patches print() in workers to both tee to stdout and log it, which doubles every line;
# writing to the process's real stdout gives one line, still streamed to the driver.
OUT = sys.__stdout__


def sharded_evaluate(evaluators: dict[str, Evaluator], rank: int, world: int, device: torch.device) -> EvalFn:
    """Each rank ranks its share of users; metric sums and user counts are all-reduced."""

    def evaluate(model: Recommender) -> dict[str, dict[str, float]]:
        score = model.scorer()
        out = {}
        for split, ev in evaluators.items():
            users = ev.shard_users(rank, world)
            sums = ev.metric_sums(score, users).to(torch.float64)
            packed = torch.cat([sums.cpu(), torch.tensor([float(len(users))], dtype=torch.float64)]).to(device)
            if world > 1:
                dist.all_reduce(packed)
            packed = packed.cpu()
            out[split] = ev.finalize(packed[:-1], int(packed[-1].item()))
        return out

    return evaluate


def shard_batches(setup: Setup, shard: Any, world: int):  # noqa: ANN201
    """Batches of this worker's Ray Data shard, ``batch_size / world`` pairs each."""
    spec = setup.spec
    local_bs = max(1, spec.train.batch_size // world)
    n_items = setup.data.n_items

    def batches(epoch: int) -> Iterator[Batch]:
        parts = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
        users = np.concatenate([p["user"] for p in parts]).astype(np.int64)
        items = np.concatenate([p["item"] for p in parts]).astype(np.int64)
        keys = users * n_items + items
        order = np.argsort(keys, kind="stable")  # canonical order: independent of block arrival
        users_t, items_t = torch.from_numpy(users[order]), torch.from_numpy(items[order])
        shard_id = int(keys[order[0]]) % 1_000_003 if len(keys) else 0
        torch.manual_seed(dropout_seed(spec.train.seed, epoch, shard_id))
        g = epoch_generator(spec.train.seed, epoch, stream=1 + shard_id)
        yield from epoch_batches(users_t, items_t, local_bs, g, setup.sampler)

    return batches


class RayReportCallback(Callback):
    """Report metrics every epoch; rank 0 attaches a checkpoint directory (every ``every`` epochs)."""

    def __init__(self, config: dict[str, Any], rank: int, every: int) -> None:
        self.config = config
        self.rank = rank
        self.every = max(1, every)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        metrics: dict[str, Any] = {k: float(v) for k, v in logs.items()}
        metrics.update({"best_epoch": state.best_epoch, "best_score": state.best_score,
                        "stopped_early": state.stopped_early, "epochs_run": state.epoch})
        metrics.update({f"best_test/{k}": v for k, v in state.best_test.items()})
        metrics.update({f"best_valid/{k}": v for k, v in state.best_valid.items()})
        done = state.stopped_early or state.epoch >= trainer.epochs
        if self.rank == 0 and (state.epoch % self.every == 0 or done):
            with tempfile.TemporaryDirectory(prefix="raymmrec-ckpt-") as tmp:
                save_checkpoint(Path(tmp) / CKPT_FILE, checkpoint_payload(trainer, state, self.config))
                # A small copy of the config lets the driver refuse a mismatched resume up front.
                (Path(tmp) / "config.json").write_text(json.dumps(self.config, indent=2))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


class SyncedTensorBoard(TensorBoardCallback):
    """Rank-0 TensorBoard: written locally, copied to the run's storage folder after each epoch."""

    def __init__(self, local_dir: str, remote_dir: str | None) -> None:
        super().__init__(local_dir)
        self.remote_dir = remote_dir

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        super().on_epoch_end(trainer, state, logs)
        if self.remote_dir:
            from raymmrec.ray.storage import upload_dir

            upload_dir(self.logdir, self.remote_dir)


def _quiet_report_logs() -> None:
    """Ray Train logs every report (all metrics, every rank, every epoch) on a logger named after
    its source file, which LoggingConfig does not reach; raise that logger to WARNING."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # internal layout changed: keep Ray's default
        pass


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker; ``config = {"spec": RunSpec.to_dict(), ...}``."""
    if not config.get("verbose", False):
        _quiet_report_logs()
    spec = spec_from_dict(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    t0 = time.perf_counter()
    setup = build_setup(spec, device)
    state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            payload = load_checkpoint(Path(d) / CKPT_FILE, map_location=device)
        check_same_run(payload["config"], spec, f"checkpoint of run {spec.resolved_run_name!r}")
        state = restore(setup, payload)
        if rank == 0:
            print(f"[raymmrec] resuming from checkpoint at epoch {state.epoch}", file=OUT, flush=True)
    model = setup.model
    if world > 1:  # DDP: gloo on CPU, NCCL on GPU; gradients written straight into the buckets
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    if rank == 0:
        print(f"[raymmrec] {setup.data.summary()}; {world} worker(s) on {device}; "
              f"setup {time.perf_counter() - t0:.1f}s", file=OUT, flush=True)
    batches = shard_batches(setup, ray.train.get_dataset_shard("train"), world)
    callbacks: list[Callback] = []
    if rank == 0:
        callbacks.append(ProgressCallback(spec.eval.valid_metric, enabled=config.get("progress", True), stream=OUT))
        tb_local = config.get("tb_local_dir") or tempfile.mkdtemp(prefix="raymmrec-tb-")
        callbacks.append(SyncedTensorBoard(tb_local, config.get("tb_remote_dir")))
    callbacks.append(RayReportCallback(spec.to_dict(), rank, spec.train.checkpoint_every))
    t = spec.train
    trainer = Trainer(model, setup.optimizer, batches,
                      sharded_evaluate(setup.evaluators, rank, world, device), epochs=t.epochs,
                      patience=t.patience, seed=t.seed, valid_metric=spec.eval.valid_metric,
                      eval_every=t.eval_every, callbacks=callbacks, device=device, rank=rank)
    fault = config.get("inject_fault")  # testing hook: {"rank": r, "epoch": e, "marker": path}
    if fault:
        trainer.callbacks.insert(0, _FaultInjector(rank, **fault))
    trainer.fit(state)


class _FaultInjector(Callback):
    """Kills this worker process once (tests of fault tolerance); a marker file makes it one-shot."""

    def __init__(self, my_rank: int, rank: int, epoch: int, marker: str) -> None:
        self.active = my_rank == rank
        self.epoch = epoch
        self.marker = Path(marker)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        if self.active and state.epoch == self.epoch and not self.marker.exists():
            self.marker.write_text("killed")
            os._exit(1)
