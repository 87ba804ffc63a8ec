"""Core callbacks: progress bar, TensorBoard scalars, best weights, resumable checkpoints, metric reports."""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from raymmrec.train.artifacts import BEST, best_for_checkpoint, cpu_weights, report_metrics, write_best
from raymmrec.files import join, save_tensors
from raymmrec.train.checkpoint import ranks, save_checkpoint
from raymmrec.train.loop import Callback, Trainer, TrainState, unwrap


class ReportCallback(Callback):
    """Hand the epoch's metrics (:func:`~raymmrec.train.artifacts.report_metrics`) to ``report``
    (Ray Train's or Tune's) every ``every`` epochs and after the last one.

    A fit that trains no epoch (a resumed run whose last checkpoint was its final epoch, e.g. a Tune
    trial killed before it wrote ``results.json``) reports its recorded state once at the end, so
    whoever waits for the final metrics gets them. ``evaluated_only``: no report before the first
    evaluation (Tune needs the selection metric in every result). The decisions depend on the loop
    state only, the same on every rank, as Ray Train needs.
    """

    def __init__(self, report: Callable[[dict[str, Any]], Any], every: int = 1, evaluated_only: bool = False) -> None:
        self.report = report
        self.every = max(1, every)
        self.evaluated_only = evaluated_only
        self.reported = False

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        self.reported = False

    def _send(self, state: TrainState, logs: dict[str, float]) -> None:
        if self.evaluated_only and not state.best_valid:
            return
        self.report(report_metrics(state, logs))
        self.reported = True

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        done = state.stopped_early or state.epoch >= trainer.epochs
        if state.epoch % self.every == 0 or done:
            self._send(state, logs)

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        if not self.reported and state.epoch > 0:
            self._send(state, {"epoch": float(state.epoch - 1)})


class ProgressCallback(Callback):
    """A bar over epochs with loss, validation metric and best score; a log line otherwise.

    Epochs that take long get more: on a terminal a second bar over the epoch's steps, and in a log
    (not a terminal, e.g. a Ray job) a line every ``every_s`` seconds with the step, the seconds per step
    and the time left in the epoch, then one when evaluation starts.
    """

    def __init__(self, valid_metric: str = "recall@20", enabled: bool = True, stream: Any = None,
                 every_s: float = 60.0) -> None:
        self.valid_metric = valid_metric
        self.enabled = enabled
        self.stream = stream  # None: sys.stdout at the time of printing
        self.every_s = every_s
        self.bar: Any = None
        self.steps_bar: Any = None
        self._epoch_t0 = self._last_line = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _terminal(self) -> bool:
        return self.bar is not None and not self.bar.disable

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        if self.enabled:
            self.bar = tqdm(total=trainer.epochs, initial=state.epoch, desc="epochs", unit="ep",
                            dynamic_ncols=True, file=sys.stderr, disable=None)

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if step == 0:
            self._epoch_t0 = self._last_line = now
            return
        total = trainer.steps_per_epoch
        if self._terminal():
            if self.steps_bar is None and now - self._epoch_t0 > 2.0:  # only epochs long enough to watch
                self.steps_bar = tqdm(total=total, initial=step + 1, desc=f"epoch {epoch} steps", unit="step",
                                      dynamic_ncols=True, file=sys.stderr, leave=False)
            elif self.steps_bar is not None:
                self.steps_bar.update(1)
        elif now - self._last_line >= self.every_s:
            self._last_line = now
            per = (now - self._epoch_t0) / step  # the first step (start-up) is not counted
            left = f", about {per * (total - step - 1):.0f} s left in the epoch" if total else ""
            self._print(f"epoch {epoch}: step {step + 1}{f'/{total}' if total else ''}, {per:.2f} s/step{left}")

    def on_eval_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.enabled:
            return
        if self.steps_bar is not None:
            self.steps_bar.close()
            self.steps_bar = None
        if self._terminal():
            self.bar.set_postfix_str("evaluating")
        elif time.perf_counter() - self._epoch_t0 >= self.every_s:  # a long epoch: say why nothing moves
            self._print(f"epoch {epoch}: evaluating")

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.steps_bar is not None:
            self.steps_bar.close()
            self.steps_bar = None
        key = f"valid/{self.valid_metric}"
        line = {"loss": f"{logs['loss']:.4f}", "train_s": f"{logs['time/train_s']:.2f}"}
        if key in logs:
            line[self.valid_metric] = f"{logs[key]:.4f}"
            line["best"] = f"{state.best_score:.4f}@{state.best_epoch}"
        if self._terminal():
            self.bar.update(1)
            self.bar.set_postfix(line)
        else:  # not a terminal (e.g. a Ray job log): one line per epoch
            self._print(f"epoch {int(logs['epoch'])}: " + " ".join(f"{k}={v}" for k, v in line.items()))

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        if self.steps_bar is not None:
            self.steps_bar.close()
        if self.bar is not None:
            self.bar.close()


class TensorBoardCallback(Callback):
    """Scalars (losses by part, every metric, epoch times) to ``logdir``; appends on resume."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = str(logdir)
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.logdir, purge_step=state.epoch)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        step = int(logs["epoch"])
        for k, v in logs.items():
            if k != "epoch":
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()


class BestWeightsCallback(Callback):
    """``best.pt`` in the run folder (local or URL) on every improvement of the validation metric.

    Every rank that holds weights of its own keeps a CPU copy of them at the best epoch (a column-sharded
    rank: its blocks; data-parallel: rank 0 alone), for the checkpoints (:meth:`for_checkpoint`): a resume
    puts ``best.pt`` back to the checkpoint's best (:func:`~raymmrec.train.artifacts.resume_best`).
    Column-sharded, ``best.pt`` is assembled on rank 0 from every rank's blocks (a collective,
    :func:`~raymmrec.train.artifacts.write_best`); rank 0 writes it. Remote writes run on a background
    thread (one at a time; a newer best waits for the previous upload), so an upload never stalls
    training; :meth:`on_fit_end` waits for the last one.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any], background: bool = False) -> None:
        self.run_dir = str(run_dir)
        self.target = join(run_dir, BEST)
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None
        self.pending: Future | None = None
        self.weights: dict[str, Any] | None = None  # this rank's CPU copy of the best weights so far

    def resume(self, weights: dict[str, Any] | None) -> None:
        """Start from the best weights of the checkpoint resumed from."""
        self.weights = weights

    def for_checkpoint(self, state: TrainState) -> dict[str, Any] | None:
        """The best weights for a checkpoint taken now (None when they are the current weights)."""
        return best_for_checkpoint(state, self.weights)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        if state.best_epoch != int(logs["epoch"]):
            return
        model = unwrap(trainer.model)
        rank, _ = ranks(trainer.ctx)
        if getattr(model, "columns", None) is None and rank != 0:
            return  # data-parallel: rank 0's copy is the model
        self.weights = cpu_weights(model)  # snapshot now
        payload = write_best(self.run_dir, model, state, self.config, self.weights, rank)
        if payload is None:
            return
        if self.pool is None:
            save_tensors(self.target, payload)
            return
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(save_tensors, self.target, payload)

    def wait(self) -> None:
        """Block until the last background write is done (before a checkpoint claims that best)."""
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        self.wait()
        if self.pool is not None:
            self.pool.shutdown()


class CheckpointCallback(Callback):
    """The resumable checkpoint under ``<run>/ckpt`` (:mod:`raymmrec.train.checkpoint`): every ``every``
    epochs (0: never), or with ``every=None`` after the first epoch that ends ``seconds`` after the last
    save (one process only: ranks must decide alike); and after the last epoch. Every rank of a distributed
    run saves (each writes its own blocks), at the same epochs.

    The checkpoint holds the whole loop state, early stopping included, and (from ``best``, the
    run's :class:`BestWeightsCallback`) the best weights when they are not the current ones; a
    resume replays the epochs after it exactly (batches, negatives and dropout are seeded from
    (seed, epoch), so no RNG state is saved) and so ends as the uninterrupted run does.

    Writing BM3's checkpoint (weights and Adam state, 21 MB on lfm2k) takes about 0.1 s in one process,
    half an epoch there (``python -m benchmarks.bench_train checkpoint``): the time-based default bounds that cost, and
    a resume replays at most ``seconds`` of training. ``before``: called on every rank before each checkpoint (e.g. flushing
    TensorBoard); ``warn``: where rank 0 reports replicated parameters whose copies differ.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any], every: int | None = 1,
                 seconds: float = 60.0, best: BestWeightsCallback | None = None,
                 before: list[Any] | None = None, warn: Any = None) -> None:
        self.run_dir = str(run_dir)
        self.config = config
        self.every = every
        self.seconds = seconds
        self.best = best
        self.before = before or []
        self.warn = warn
        self.last = time.monotonic()

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        self.last = time.monotonic()
        if self.every is None and ranks(trainer.ctx)[1] > 1:
            raise ValueError("train.checkpoint_every: expected an integer >= 1 with several workers "
                             "(a time-based interval would differ between them)")

    def due(self, trainer: Trainer, state: TrainState) -> bool:
        """Whether a checkpoint is taken after the epoch that just ended (the same on every rank)."""
        done = state.stopped_early or state.epoch >= trainer.epochs
        if self.every is None:
            due = time.monotonic() - self.last >= self.seconds
        else:
            due = bool(self.every) and state.epoch % self.every == 0
        return due or (done and self.every != 0)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        if not self.due(trainer, state):
            return
        for f in self.before:
            f()
        if self.best is not None:
            self.best.wait()  # a checkpoint never claims a best that is not stored
        best = self.best.for_checkpoint(state) if self.best is not None else None
        save_checkpoint(self.run_dir, trainer, state, self.config, best, warn=self.warn)
        self.last = time.monotonic()
